"""Dis-GEN-style Wyckoff VAE for crystals with partial occupancies and vacancies.

Modules: `wyckoff` (Wyckoff table in origin choice 2, projection, orbits), `ingest` (CIF folders/archives
to Wyckoff genes with the Dis-GEN filters and a rejection report), `genes`, `representation` (the (A, c)
arrays and their decoding), `structure` (genes to disordered pymatgen Structures and symmetrised CIFs),
`model`, `losses`, `steps`, `samplers`, `generate` (generation and reconstruction metrics), `chemistry`
(validity, charge neutrality), `conditional` (latent optimisation), `demo` (synthetic demonstration set),
`trainer` (`python -m dismax.train` with `model.name: wyckoff_vae`, and `python -m dismax.sample`).
"""
