"""UniMat: a crystal as a video with one 4 × 4 × 3 frame per atom (Dismai-Bench §2.2, §4.2.4).

The species is the pixel position: the k-th element of ``species_order`` (order of first appearance in the
dataset, at most 16) owns pixel k in row-major order from the top left. That pixel holds the atom's
fractional x, y, z mapped to [−1, 1] by v = 2x − 1; every other pixel is −1. To keep an atom at the origin
distinguishable from the background, coordinates below ``ORIGIN_SHIFT`` are written as their periodic image
x + 1 (v ≈ 1). No lattice is encoded (Dismai-Bench reconstructs with the ground-truth lattice).

Decoding takes, per frame, the pixel with the largest channel sum as the species and maps its values back
to [0, 1); a structure whose decoded composition differs from the dataset's is marked failed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError

FRAME = 4
BACKGROUND = -1.0
ORIGIN_SHIFT = 1e-6


def _pixel_of_species(species: jax.Array, species_order) -> jax.Array:
    order = jnp.asarray(np.asarray(species_order), species.dtype)
    return jnp.argmax(species[..., None] == order, -1)


def check_species_order(species_order) -> tuple[int, ...]:
    """The element order as a tuple; at most FRAME² distinct elements fit in a frame."""
    order = tuple(int(z) for z in species_order)
    if len(order) > FRAME * FRAME or len(set(order)) != len(order):
        raise DismaxInputError(f"UniMat frames hold at most {FRAME * FRAME} distinct elements, got {order}")
    return order


def to_unimat(frac: jax.Array, species: jax.Array, species_order) -> jax.Array:
    """Videos (B, N, 4, 4, 3) of frac (B, N, 3) and species (B, N); every species must be in ``species_order``."""
    pixel = _pixel_of_species(species, species_order)
    shifted = jnp.where(frac < ORIGIN_SHIFT, frac + 1.0, frac)
    values = 2.0 * shifted - 1.0
    one_hot = jax.nn.one_hot(pixel, FRAME * FRAME, dtype=frac.dtype)[..., None]
    flat = one_hot * values[..., None, :] + (1.0 - one_hot) * BACKGROUND
    return flat.reshape(*frac.shape[:2], FRAME, FRAME, 3)


def from_unimat(video: jax.Array, species_order, composition) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(frac (B, N, 3) in [0, 1), species (B, N), valid (B,)) of videos (B, N, 4, 4, 3).

    ``composition`` (len(species_order),) is the atom count of each element; a frame whose brightest pixel
    belongs to no element decodes to species 0, and any composition mismatch makes the structure invalid."""
    order = np.asarray(species_order)
    flat = video.reshape(*video.shape[:2], FRAME * FRAME, 3)
    pixel = jnp.argmax(jnp.sum(flat, -1), -1)
    pixel_species = jnp.zeros(FRAME * FRAME, jnp.int32).at[: len(order)].set(jnp.asarray(order, jnp.int32))
    values = jnp.take_along_axis(flat, pixel[..., None, None], 2)[..., 0, :]
    frac = (values + 1.0) / 2.0
    species = pixel_species[pixel]
    return frac - jnp.floor(frac), species, composition_matches(species, species_order, composition)


def composition_matches(species: jax.Array, species_order, composition) -> jax.Array:
    """(B,) True where structure b has exactly ``composition[k]`` atoms of element ``species_order[k]`` and
    no others (species (B, N))."""
    order = jnp.asarray(np.asarray(species_order), species.dtype)
    counts = jnp.sum(species[..., None] == order, 1)
    return jnp.all(counts == jnp.asarray(composition), -1) & (jnp.sum(counts, -1) == species.shape[1])
