"""Radial distribution function as the published a-Si scripts define it, computed over periodic images.

The reference builds a 2x2x2 supercell and histograms all i != j minimum-image distances with vasppy
(0-10 Å, 500 bins, g_k = h_k / (rho V_k N_j), rho = N_i / V). Every atom of that supercell is an image of an
original atom with the same surroundings, so the same g(r) follows from the original cell with all periodic
images within r_max: g_k = h_k V / (N_i N_j V_k), h_k counting (i, j, image) triples with 0 < d < r_max
(self-distance excluded, self-images included). Bin assignment follows ``numpy.histogram`` exactly
(float64, last bin closed).
"""

from __future__ import annotations

import functools
import itertools

import jax.numpy as jnp
import numpy as np

from dismax.bench.periodic import float64
from dismax.geometry import pair_distance_histogram, perpendicular_widths

R_MAX = 10.0      # Å
N_BINS = 500      # bin width 0.02 Å


def bin_centres(r_max: float = R_MAX, n_bins: int = N_BINS, r_min: float = 0.0) -> np.ndarray:
    """Bin mid-points (n_bins,) in Å, as vasppy's ``r``."""
    edges = np.linspace(r_min, r_max, n_bins + 1)
    return edges[:-1] + (r_max - r_min) / n_bins / 2.0


def shell_volumes(r_max: float = R_MAX, n_bins: int = N_BINS, r_min: float = 0.0) -> np.ndarray:
    """Spherical shell volumes (n_bins,) in Å^3."""
    edges = np.linspace(r_min, r_max, n_bins + 1)
    return 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)


def _box_min_distance(image: np.ndarray, lattice: np.ndarray) -> float:
    """Exact min of |x @ lattice| over x in image + [-1/2, 1/2]^3 (convex QP solved over all active sets)."""
    metric = lattice @ lattice.T
    best = np.inf
    for state in itertools.product((-1, 0, 1), repeat=3):          # -1/+1: coordinate at a bound, 0: free
        state = np.array(state)
        x = image + 0.5 * state
        free = state == 0
        if free.any():
            fixed = ~free
            rhs = -metric[np.ix_(free, fixed)] @ x[fixed] if fixed.any() else np.zeros(free.sum())
            x[free] = np.linalg.solve(metric[np.ix_(free, free)], rhs)
            if np.any(np.abs(x[free] - image[free]) > 0.5 + 1e-12):
                continue
        best = min(best, float(np.sqrt(max(x @ metric @ x, 0.0))))
    return best


def image_grid(lattice: np.ndarray, r_max: float) -> np.ndarray:
    """Integer image offsets (M, 3) that can bring a centred pair difference (in [-1/2, 1/2)^3) closer
    than r_max; images whose whole box lies beyond r_max are left out."""
    lattice = np.asarray(lattice, float)
    return _image_grid_cached(lattice.tobytes(), float(r_max))


@functools.lru_cache(maxsize=64)
def _image_grid_cached(lattice_bytes: bytes, r_max: float) -> np.ndarray:
    lattice = np.frombuffer(lattice_bytes, dtype=float).reshape(3, 3)
    counts = np.floor(r_max / perpendicular_widths(lattice) + 0.5 + 1e-9).astype(int)
    grid = np.array(list(itertools.product(*(range(-c, c + 1) for c in counts))), dtype=float)
    return grid[[_box_min_distance(image, lattice) < r_max for image in grid]]


@float64
def rdf(frac: np.ndarray, lattice: np.ndarray, numbers: np.ndarray | None = None, species_i: int | None = None,
        species_j: int | None = None, r_max: float = R_MAX, n_bins: int = N_BINS, r_min: float = 0.0,
        progress=None) -> np.ndarray:
    """g(r) (B, n_bins) of structures frac (B, N, 3), lattice (B, 3, 3) Å, optional numbers (B, N).

    ``species_i`` / ``species_j`` (atomic numbers) restrict the centre / neighbour atoms (default all).
    Equals vasppy's ``RadialDistributionFunction`` on the 2x2x2 supercell used by the published scripts
    whenever r_max is below half the supercell width.
    """
    frac = np.asarray(frac, float)
    lattice = np.asarray(lattice, float)
    if frac.ndim == 2:
        frac, lattice = frac[None], lattice[None]
        numbers = None if numbers is None else np.asarray(numbers)[None]
    volumes_shell = shell_volumes(r_max, n_bins, r_min)
    rows = []
    indices = range(len(frac))
    for b in (progress(indices) if progress else indices):
        everything = np.ones(frac.shape[1], bool)
        mask_i = everything if species_i is None else np.asarray(numbers[b]) == species_i
        mask_j = everything if species_j is None else np.asarray(numbers[b]) == species_j
        images = image_grid(lattice[b], r_max)
        counts = np.asarray(pair_distance_histogram(
            jnp.asarray(frac[b]), jnp.asarray(lattice[b]), jnp.asarray(images), r_max=r_max, n_bins=n_bins,
            r_min=r_min, mask_i=jnp.asarray(mask_i), mask_j=jnp.asarray(mask_j)))
        volume = abs(np.linalg.det(lattice[b]))
        rows.append(counts * volume / (mask_i.sum() * mask_j.sum() * volumes_shell))
    return np.array(rows)
