import numpy as np

from dismax.diffusion.quality import fcc_site_fraction, rdf_and_coordination


def _fcc_supercell(cells=2):
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.array([[i, j, k] for i in range(cells) for j in range(cells) for k in range(cells)])
    return ((grid[:, None, :] + basis[None]).reshape(-1, 3) / cells)


def test_fcc_site_fraction_recognises_translated_fcc_and_rejects_random():
    rng = np.random.default_rng(1)
    frac = _fcc_supercell(2)
    shifted = np.mod(frac + rng.random(3) + 0.002 * rng.standard_normal(frac.shape), 1.0)
    result = fcc_site_fraction(np.stack([shifted, rng.random(frac.shape)]), cells_per_side=2, lattice_constant=3.6)
    assert result[0] == 1.0 and result[1] < 0.5


def test_rdf_of_fcc_peaks_at_nearest_neighbour_distance_with_12_neighbours():
    a = 3.6
    frac = _fcc_supercell(3)[None]
    lattice = np.eye(3)[None] * 3 * a
    centres, g, coordination = rdf_and_coordination(frac, lattice, r_max=5.0, bond_cutoff=3.0)
    assert abs(centres[np.argmax(g)] - a / np.sqrt(2)) < 0.05
    assert coordination == 12.0
