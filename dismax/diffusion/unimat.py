"""UniMat: a crystal as a video with one 4 × 4 × 3 frame per atom (Dismai-Bench §2.2, §4.2.4).

The species is the pixel position: the k-th element of ``species_order`` (order of first appearance in the
dataset, at most 16) owns pixel k in row-major order from the top left. That pixel holds the atom's
fractional x, y, z min-max scaled to [0, 1] over the training data (``ranges``, one (min, max) per axis);
every other pixel is −1. This is Dismai-Bench's layout (its ``scaler.json`` and ``auto_normalize_img =
False``): a gap of at least 1 separates an atom from the background, also for atoms at the origin. No
lattice is encoded (Dismai-Bench reconstructs with the ground-truth lattice).

Decoding takes, per frame, the pixel with the largest channel sum as the species and maps its values back
to fractional coordinates in [0, 1); a structure whose decoded composition differs from the dataset's is
marked failed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError

FRAME = 4
BACKGROUND = -1.0


def _pixel_of_species(species: jax.Array, species_order) -> jax.Array:
    order = jnp.asarray(np.asarray(species_order), species.dtype)
    return jnp.argmax(species[..., None] == order, -1)


def check_species_order(species_order) -> tuple[int, ...]:
    """The element order as a tuple; at most FRAME² distinct elements fit in a frame."""
    order = tuple(int(z) for z in species_order)
    if len(order) > FRAME * FRAME or len(set(order)) != len(order):
        raise DismaxInputError(f"UniMat frames hold at most {FRAME * FRAME} distinct elements, got {order}")
    return order


def coordinate_ranges(frac) -> tuple[tuple[float, float], ...]:
    """(min, max) of each fractional coordinate axis over a dataset frac (B, N, 3)."""
    frac = np.asarray(frac)
    return tuple((float(lo), float(hi)) for lo, hi in zip(frac.min((0, 1)), frac.max((0, 1))))


def _low_span(ranges) -> tuple[np.ndarray, np.ndarray]:
    low = np.array([lo for lo, _ in ranges], np.float32)
    span = np.array([hi - lo for lo, hi in ranges], np.float32)
    return low, np.where(span > 0, span, 1.0).astype(np.float32)


def to_unimat(frac: jax.Array, species: jax.Array, species_order, ranges=((0.0, 1.0),) * 3) -> jax.Array:
    """Videos (B, N, 4, 4, 3) of frac (B, N, 3) and species (B, N); every species must be in ``species_order``;
    ``ranges`` (:func:`coordinate_ranges`) maps each axis to [0, 1]."""
    low, span = _low_span(ranges)
    pixel = _pixel_of_species(species, species_order)
    one_hot = jax.nn.one_hot(pixel, FRAME * FRAME, dtype=frac.dtype)[..., None]
    flat = one_hot * ((frac - low) / span)[..., None, :] + (1.0 - one_hot) * BACKGROUND
    return flat.reshape(*frac.shape[:2], FRAME, FRAME, 3)


def from_unimat(video: jax.Array, species_order, composition,
                ranges=((0.0, 1.0),) * 3) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(frac (B, N, 3) in [0, 1), species (B, N), valid (B,)) of videos (B, N, 4, 4, 3).

    ``composition`` (len(species_order),) is the atom count of each element; a frame whose brightest pixel
    belongs to no element decodes to species 0, and any composition mismatch makes the structure invalid."""
    low, span = _low_span(ranges)
    order = np.asarray(species_order)
    flat = video.reshape(*video.shape[:2], FRAME * FRAME, 3)
    pixel = jnp.argmax(jnp.sum(flat, -1), -1)
    pixel_species = jnp.zeros(FRAME * FRAME, jnp.int32).at[: len(order)].set(jnp.asarray(order, jnp.int32))
    values = jnp.take_along_axis(flat, pixel[..., None, None], 2)[..., 0, :]
    frac = values * span + low
    species = pixel_species[pixel]
    return frac - jnp.floor(frac), species, composition_matches(species, species_order, composition)


def composition_matches(species: jax.Array, species_order, composition) -> jax.Array:
    """(B,) True where structure b has exactly ``composition[k]`` atoms of element ``species_order[k]`` and
    no others (species (B, N))."""
    order = jnp.asarray(np.asarray(species_order), species.dtype)
    counts = jnp.sum(species[..., None] == order, 1)
    return jnp.all(counts == jnp.asarray(composition), -1) & (jnp.sum(counts, -1) == species.shape[1])
