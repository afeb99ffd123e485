"""Synthetic alloy, a-Si and interface-like cells for the CrysTens/UniMat tests."""

from __future__ import annotations

import numpy as np

from dismax.structures import Crystals

# Interface: 264 atoms, Li 72, Sc 12, Co 36, Cl 72, O 72 in element blocks (Dismai-Bench §1).
INTERFACE_BLOCKS = ((3, 72), (21, 12), (27, 36), (17, 72), (8, 72))


def alloy_cells(n: int, seed: int = 0) -> Crystals:
    """Fe–Ni–Cr on the 256 sites of a 4×4×4 FCC cell (a = 3.6 Å), random occupations; some atoms at 0."""
    rng = np.random.default_rng(seed)
    basis = np.array([(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)])
    cells = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    frac = ((cells + basis) / 4).reshape(-1, 3)
    species = np.repeat([24, 26, 28], [51, 154, 51])
    return Crystals(np.stack([frac] * n).astype(np.float32),
                    np.broadcast_to(np.eye(3) * 14.4, (n, 3, 3)).astype(np.float32),
                    np.stack([rng.permutation(species) for _ in range(n)]).astype(np.int32))


def a_si_cells(n: int, seed: int = 0) -> Crystals:
    """256 Si at random positions in a 16.4 Å cube."""
    rng = np.random.default_rng(seed)
    return Crystals(rng.random((n, 256, 3)).astype(np.float32),
                    np.broadcast_to(np.eye(3) * 16.4, (n, 3, 3)).astype(np.float32),
                    np.full((n, 256), 14, np.int32))


def interface_cells(n: int, seed: int = 0, blocks=INTERFACE_BLOCKS) -> Crystals:
    """Five-species cells in the interface's triclinic cell (a = 12.47 Å, b = 17.20 Å, γ = 75.67°,
    c = 40 Å) with fixed element blocks and random positions."""
    rng = np.random.default_rng(seed)
    gamma = np.radians(75.6674)
    lattice = np.array([[12.46997, 0, 0], [17.19967 * np.cos(gamma), 17.19967 * np.sin(gamma), 0], [0, 0, 40.0]])
    species = np.concatenate([np.full(count, z) for z, count in blocks])
    return Crystals(rng.random((n, len(species), 3)).astype(np.float32),
                    np.broadcast_to(lattice, (n, 3, 3)).astype(np.float32),
                    np.broadcast_to(species, (n, len(species))).astype(np.int32))
