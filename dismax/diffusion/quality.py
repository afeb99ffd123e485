"""Quick structural checks of generated cells: FCC-site occupancy and nearest-site distances (alloys), RDF peak
and coordination (a-Si), close pairs.

These are sanity measures for training runs, not the Dismai-Bench metrics (see dismax.bench).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from dismax.geometry import image_offsets, images_needed, minimum_image, nearest_fcc_vector, pair_distance_histogram


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
        candidates = points - nearest_fcc_vector(points)  # (N, 3)
        shifted = points[None, :, :] - candidates[:, None, :]  # (C, N, 3)
        distance = np.linalg.norm(shifted - nearest_fcc_vector(shifted), axis=-1) * half
        out[b] = np.max(np.mean(distance < tolerance, axis=-1))
    return out


def rdf_and_coordination(frac: np.ndarray, lattice: np.ndarray, r_max: float = 5.0, n_bins: int = 100,
                         bond_cutoff: float = 2.85):
    """(bin centres (n_bins,), mean g(r) (n_bins,), mean coordination within ``bond_cutoff`` Å).

    frac (B, N, 3), lattice (B, 3, 3); every periodic image within ``r_max`` counts. The coordination is
    read from a second histogram with one bin [0, bond_cutoff].
    """
    frac = np.asarray(frac, np.float32)
    lattice = np.asarray(lattice, np.float32)
    b, n = frac.shape[:2]
    counts = np.zeros(n_bins)
    bonds = 0.0
    for one_frac, one_lattice in zip(frac, lattice):
        images = jnp.asarray(image_offsets(images_needed(one_lattice, max(r_max, bond_cutoff))), jnp.float32)
        counts += np.asarray(pair_distance_histogram(jnp.asarray(one_frac), jnp.asarray(one_lattice), images,
                                                     r_max=float(r_max), n_bins=n_bins))
        bonds += float(pair_distance_histogram(jnp.asarray(one_frac), jnp.asarray(one_lattice), images,
                                               r_max=float(bond_cutoff), n_bins=1)[0])
    edges = np.linspace(0.0, r_max, n_bins + 1)
    density = n / np.abs(np.linalg.det(lattice.astype(np.float64))).mean()
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = counts / (b * n * density * shells)
    return 0.5 * (edges[1:] + edges[:-1]), g, bonds / (b * n)


# The 12 nearest-neighbour vectors of the FCC lattice in site-grid units (half a conventional cell).
FCC_NEIGHBOURS = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, v)) == 2], float)
_CANDIDATES = np.concatenate([np.zeros((1, 3)), FCC_NEIGHBOURS])


def site_displacements(frac: np.ndarray, lattice: np.ndarray, repeats: int, shift: np.ndarray | None = None):
    """Cartesian vectors (..., N, 3) in Å from every atom to its nearest FCC site, and the site's grid index.

    frac (..., N, 3); lattice (3, 3) rows are lattice vectors; sites at (shift + grid point / (2·repeats))
    with FCC grid points (integer vectors of even sum); ``shift`` (..., 3) fractional, zero by default.
    The nearest site in Cartesian space is searched among the nearest grid point in fractional space and
    its 12 neighbours (exact for cubic cells, and for moderately distorted ones).
    """
    scale = 2 * repeats
    u = frac * scale if shift is None else (frac - shift[..., None, :]) * scale
    base = nearest_fcc_vector(u)
    points = base[..., None, :] + _CANDIDATES  # (..., N, 13, 3)
    vectors = ((points - u[..., None, :]) / scale) @ lattice
    best = np.argmin(np.sum(vectors ** 2, axis=-1), axis=-1)
    vectors = np.take_along_axis(vectors, best[..., None, None], -2)[..., 0, :]
    grid = np.take_along_axis(points, best[..., None, None], -2)[..., 0, :].astype(np.int64) % scale
    return vectors, grid


def best_translation(frac: np.ndarray, lattice: np.ndarray, repeats: int, n_anchors: int = 64,
                     refine: int = 10, cutoff: float = 0.8) -> np.ndarray:
    """Fractional shift (3,) of the FCC site lattice minimising the atoms' mean distance to their sites.

    Candidates: the zero shift and the shifts that put a site exactly on one of ``n_anchors`` evenly spread
    atoms; the best candidate is refined by moving the lattice onto the mean displacement of the atoms
    within ``cutoff`` Å of a site (never accepting a worse shift).
    """
    inverse = np.linalg.inv(lattice)
    anchors = np.unique(np.linspace(0, len(frac) - 1, min(n_anchors, len(frac))).astype(int))
    to_site, _ = site_displacements(frac[anchors], lattice, repeats)
    shifts = np.concatenate([np.zeros((1, 3)), -(to_site @ inverse)])  # lattice moved onto each anchor
    vectors, _ = site_displacements(np.broadcast_to(frac, (len(shifts),) + frac.shape), lattice, repeats, shifts)
    costs = np.linalg.norm(vectors, axis=-1).mean(axis=-1)
    best = int(np.argmin(costs))
    shift, cost = shifts[best], costs[best]
    for _ in range(refine):
        vectors, _ = site_displacements(frac, lattice, repeats, shift)
        near = np.linalg.norm(vectors, axis=-1) < cutoff
        if not near.any():
            break
        trial = shift - vectors[near].mean(axis=0) @ inverse
        trial_vectors, _ = site_displacements(frac, lattice, repeats, trial)
        trial_cost = np.linalg.norm(trial_vectors, axis=-1).mean()
        if trial_cost >= cost - 1e-9:
            break
        shift, cost = trial, trial_cost
    return shift


def site_statistics(frac: np.ndarray, lattice: np.ndarray, repeats: int = 4, align: bool = True,
                    tolerance: float = np.inf):
    """Per-atom nearest-site distances (B, N) in Å and per-structure fraction of distinct sites (B,): the
    number of different sites nearest to an atom closer than ``tolerance`` Å, divided by N.

    ``align``: move the site lattice by the best global translation of every structure first.
    """
    frac = np.asarray(frac, float)
    lattice = np.asarray(lattice, float).reshape(-1, 3, 3)
    distances, distinct = np.empty(frac.shape[:2]), np.empty(len(frac))
    for b in range(len(frac)):
        cell = lattice[b if len(lattice) > 1 else 0]
        shift = best_translation(frac[b], cell, repeats) if align else np.zeros(3)
        vectors, grid = site_displacements(frac[b], cell, repeats, shift)
        distances[b] = np.linalg.norm(vectors, axis=-1)
        distinct[b] = len(np.unique(grid[distances[b] < tolerance], axis=0)) / frac.shape[1]
    return distances, distinct


def aligned_site_fraction(frac: np.ndarray, lattice: np.ndarray, repeats: int,
                          tolerance: float = 0.8) -> tuple[float, float]:
    """(atoms, sites): the fraction of all atoms of ``frac`` (B, N, 3) within ``tolerance`` Å of a site of the
    ``repeats``³ FCC supercell ``lattice`` after the best global translation of each structure, and the
    fraction counting every site once (distinct sites with an atom that close, over N). A collapsed
    generator that piles all atoms onto one site scores 1 on the first and 1/N on the second."""
    distances, distinct = site_statistics(frac, lattice, repeats, align=True, tolerance=tolerance)
    return float(np.mean(distances < tolerance)), float(np.mean(distinct))


def neighbour_statistics(frac: np.ndarray, lattice: np.ndarray, cutoff: float = 1.5, k: int = 6):
    """Mean number of atom pairs closer than ``cutoff`` Å per structure and the mean k-NN distance (Å)."""
    close, knn = [], []
    cell = np.asarray(lattice, float).reshape(-1, 3, 3)[0]
    for one in np.asarray(frac, float):
        distances = np.linalg.norm(minimum_image(one[None] - one[:, None], cell, n_images=0), axis=-1)
        np.fill_diagonal(distances, np.inf)
        close.append(np.sum(distances < cutoff) / 2)
        knn.append(np.sort(distances, axis=1)[:, :k].mean())
    return float(np.mean(close)), float(np.mean(knn))
