"""Small periodic-geometry kernels used by the benchmark metrics (JAX, float64 callers).

All functions take Cartesian or fractional coordinates with lattice vectors as rows (Å) and use the
minimum-image convention on fractional differences, which is exact when the search radius is below half
of every plane spacing of the cell (true for all Dismai-Bench systems and radii used here).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def float64(function):
    """Run ``function`` with 64-bit JAX arrays (bin and tolerance decisions must match NumPy exactly)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return function(*args, **kwargs)

    return wrapper


def plane_spacings(lattice: np.ndarray) -> np.ndarray:
    """Distances (3,) in Å between lattice planes parallel to (b, c), (c, a), (a, b)."""
    lattice = np.asarray(lattice, float)
    volume = abs(np.linalg.det(lattice))
    crosses = np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]])
    return volume / np.linalg.norm(crosses, axis=1)


def min_image_vectors(points_cart: jax.Array, atoms_cart: jax.Array, lattice: jax.Array) -> jax.Array:
    """Minimum-image vectors atom - point, shape (M, N, 3) in Å, for points (M, 3) and atoms (N, 3)."""
    inverse = jnp.linalg.inv(lattice)
    delta_frac = (atoms_cart[None, :, :] - points_cart[:, None, :]) @ inverse
    delta_frac = delta_frac - jnp.round(delta_frac)
    return delta_frac @ lattice


def min_image_vectors_np(points_cart: np.ndarray, atoms_cart: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`min_image_vectors` for small sequential loops (no compilation per shape)."""
    lattice = np.asarray(lattice, float)
    delta_frac = (np.asarray(atoms_cart)[None, :, :] - np.asarray(points_cart)[:, None, :]) @ np.linalg.inv(lattice)
    delta_frac -= np.round(delta_frac)
    return delta_frac @ lattice


def nearest_atom(points_cart: jax.Array, atoms_cart: jax.Array, atom_mask: jax.Array,
                 lattice: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index (M,) and minimum-image distance (M,) in Å of the closest valid atom to each point."""
    vectors = min_image_vectors(points_cart, atoms_cart, lattice)
    distances = jnp.sqrt(jnp.sum(vectors**2, axis=-1))
    distances = jnp.where(atom_mask[None, :], distances, jnp.inf)
    index = jnp.argmin(distances, axis=1)
    return index, jnp.take_along_axis(distances, index[:, None], axis=1)[:, 0]


nearest_atom_jit = jax.jit(nearest_atom)
