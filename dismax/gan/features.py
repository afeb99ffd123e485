"""Bond-distance features of CryinGAN: sorted distances to the K nearest periodic neighbours."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError
from dismax.geometry import knn, search_radius


def bond_distances(frac: jax.Array, lattice: jax.Array, k: int = 6) -> jax.Array:
    """Distances (B, N, k) in Å from every atom to its k nearest neighbours, ascending, differentiable.

    frac: (B, N, 3) fractional coordinates; lattice: (3, 3) or (B, 3, 3), rows are lattice vectors (Å).
    Neighbours are searched among the periodic images within one cell in each direction of the centred
    differences (a superset of the reference's 27-image cloud), the atom itself excluded; gradients flow
    through the distances, not through the neighbour selection.
    """
    lattice = jnp.broadcast_to(jnp.asarray(lattice, frac.dtype), frac.shape[:1] + (3, 3))
    return knn(frac, lattice, k, n_images=1).distances


def check_search_radius(distances: np.ndarray, lattice: np.ndarray, source: str) -> None:
    """Raise if a k-th neighbour distance (B, N, k) reaches the radius one image shell covers exactly."""
    radius = float(search_radius(jnp.asarray(lattice, jnp.float32), 1))
    largest = float(np.max(distances))
    if largest >= radius:
        raise DismaxInputError(
            f"{source}: a {distances.shape[-1]}-th nearest-neighbour distance of {largest:.3f} Å is not below "
            f"{radius:.3f} Å, the radius one shell of periodic images covers; the cell is too small"
        )
