"""Dismai-Bench post-processing and metrics.

Modules: ``alloy`` (lattice-site assignment, cluster counts, fingerprint, SRO, CE energy), ``rdf``,
``motifs`` (CrystalNN fingerprints and bond angles), ``postprocess`` (move atoms apart), ``bootstrap``
(distances with pivotal CIs), ``pipeline`` (scoring with per-structure status, report), ``cli``.
"""
