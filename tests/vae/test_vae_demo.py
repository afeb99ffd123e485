import numpy as np

from dismax.vae import demo
from dismax.vae.ingest import ingest_cifs
from dismax.vae.structure import symmetry_matches


def test_demo_crystals_are_symmetric_disordered_and_ingestible(tmp_path):
    genes = [demo.random_gene(np.random.default_rng(seed)) for seed in range(12)]
    assert all(symmetry_matches(g) for g in genes)
    assert sum(g.n_disordered > 0 for g in genes) >= 3
    assert demo.build(tmp_path, n=4, seed=3) == 4
    result = ingest_cifs(tmp_path, workers=1)
    assert len(result.genes) + len(result.rejections) == 4
    # a rejection can only come from the analysis finding a higher symmetry than the one drawn
    assert all("differs from the declared" in reason for _, reason in result.rejections)
    assert len(result.genes) >= 2
