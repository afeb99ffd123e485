"""Quick structural checks of generated cells: FCC-site occupancy (alloys), RDF peak and coordination (a-Si).

These are sanity measures for training runs, not the Dismai-Bench metrics (see dismax.bench).
"""

from __future__ import annotations

import numpy as np


def nearest_d3(y: np.ndarray) -> np.ndarray:
    """Nearest point of the D3 lattice (integer vectors with even coordinate sum, i.e. FCC in units of
    half the cubic lattice constant) to each row of y (..., 3) (Conway & Sloane's rounding rule)."""
    rounded = np.round(y)
    odd = (np.sum(rounded, axis=-1) % 2) != 0
    error = y - rounded
    worst = np.argmax(np.abs(error), axis=-1)
    flip = np.take_along_axis(np.where(error >= 0, 1.0, -1.0), worst[..., None], axis=-1)[..., 0]
    fixed = rounded.copy()
    np.put_along_axis(fixed, worst[..., None], (np.take_along_axis(rounded, worst[..., None], -1)[..., 0]
                                                 + flip)[..., None], axis=-1)
    return np.where(odd[..., None], fixed, rounded)


def fcc_site_fraction(frac: np.ndarray, cells_per_side: int, lattice_constant: float,
                      tolerance: float = 0.5) -> np.ndarray:
    """Fraction (B,) of atoms within ``tolerance`` Å of an FCC site, after the best global translation.

    frac (B, N, 3) of cubic supercells of ``cells_per_side``³ conventional FCC cells. Candidate translations
    are the offsets of every atom from its own nearest site; the best candidate is kept per structure.
    """
    half = lattice_constant / 2
    y = np.asarray(frac, np.float64) * 2 * cells_per_side  # units of a/2
    out = np.empty(len(y))
    for b, points in enumerate(y):
        candidates = points - nearest_d3(points)  # (N, 3)
        shifted = points[None, :, :] - candidates[:, None, :]  # (C, N, 3)
        distance = np.linalg.norm(shifted - nearest_d3(shifted), axis=-1) * half
        out[b] = np.max(np.mean(distance < tolerance, axis=-1))
    return out


def rdf_and_coordination(frac: np.ndarray, lattice: np.ndarray, r_max: float = 5.0, n_bins: int = 100,
                         bond_cutoff: float = 2.85):
    """(bin centres (n_bins,), mean g(r) (n_bins,), mean coordination within ``bond_cutoff`` Å).

    Minimum-image distances, so r_max must stay below half the smallest cell width.
    """
    import jax.numpy as jnp

    from dismax.geometry import pairwise_minimum_image_distances

    distances = np.asarray(pairwise_minimum_image_distances(jnp.asarray(frac, jnp.float32),
                                                            jnp.asarray(lattice, jnp.float32)))
    b, n = distances.shape[:2]
    off_diagonal = distances[:, ~np.eye(n, dtype=bool)]
    edges = np.linspace(0.0, r_max, n_bins + 1)
    counts, _ = np.histogram(off_diagonal, bins=edges)
    density = n / np.abs(np.linalg.det(np.asarray(lattice, np.float64))).mean()
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = counts / (b * n * density * shells)
    coordination = float(np.sum(off_diagonal < bond_cutoff) / (b * n))
    return 0.5 * (edges[1:] + edges[:-1]), g, coordination
