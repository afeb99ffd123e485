"""Small FCC training sets for the CryinGAN tests."""

import itertools

import numpy as np

from dismax.io import write_extxyz
from dismax.structures import Crystals

FCC_BASIS = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def fcc_sites(repeats: tuple[int, int, int]) -> np.ndarray:
    """Fractional coordinates (n_sites, 3) of an FCC supercell of ``repeats`` conventional cells."""
    cells = np.array(list(itertools.product(*(range(r) for r in repeats))))
    return ((cells[:, None, :] + FCC_BASIS[None]).reshape(-1, 3) / np.asarray(repeats)) % 1.0


def write_fcc_dataset(path, n_structures=40, repeats=(2, 1, 1), counts=(5, 3), noise=0.02, seed=0,
                      lattice_constant=3.6):
    """Random two-element occupations of FCC sites with small Gaussian displacements (Å), as extxyz."""
    rng = np.random.default_rng(seed)
    sites = fcc_sites(repeats)
    lattice = np.diag(np.asarray(repeats, float) * lattice_constant)
    species = np.repeat([26, 28], counts)
    frac = np.stack([sites[rng.permutation(len(sites))] for _ in range(n_structures)])
    frac = (frac + rng.normal(0, noise, frac.shape) / np.diag(lattice)) % 1.0
    crystals = Crystals(frac, np.broadcast_to(lattice, (n_structures, 3, 3)),
                        np.broadcast_to(species, (n_structures, len(species))))
    return write_extxyz(crystals, path)
