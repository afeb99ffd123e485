"""Move atoms apart (interface and a-Si post-processing), batched in JAX with per-structure masks.

Per iteration every pair closer than ``min_dist`` (1.5 Å) is listed once as (i < j) in sorted order and
processed in that order with in-place updates: atom j is put ``min_dist + 0.1`` Å from atom i along their
displacement (atom i never moves). Iterations repeat while a structure still has close pairs, at most
``max_iter`` (100) times; a structure whose last iteration still found close pairs is rejected.

Default: minimum-image displacements and wrapped coordinates. ``reference_compatible=True`` uses the raw
in-cell Cartesian displacement and leaves coordinates unwrapped, as the published script does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dismax.bench.periodic import float64
from dismax.errors import DismaxInputError

MIN_DIST = 1.5      # Å
PUSH = 0.1          # Å beyond MIN_DIST
MAX_ITER = 100


@dataclass
class MoveApartResult:
    """frac (B, N, 3) moved coordinates (fractional; unwrapped in reference mode), ok (B,) accepted,
    iterations (B,) calls made, first_count (B,) close pairs in the input, final_count (B,)."""

    frac: np.ndarray
    ok: np.ndarray
    iterations: np.ndarray
    first_count: np.ndarray
    final_count: np.ndarray


def _close_pairs(cart, lattice, min_dist, capacity):
    """Sorted unique close pairs (capacity, 2) (padding -1), their count, all by minimum image."""
    inverse = jnp.linalg.inv(lattice)
    delta = (cart[None, :, :] - cart[:, None, :]) @ inverse
    delta = delta - jnp.round(delta)
    distance = jnp.sqrt(jnp.sum((delta @ lattice) ** 2, axis=-1))
    n = cart.shape[0]
    upper = jnp.arange(n)[:, None] < jnp.arange(n)[None, :]
    close = upper & (distance < min_dist)
    rows, cols = jnp.nonzero(close, size=capacity, fill_value=-1)
    return jnp.stack([rows, cols], axis=1), jnp.sum(close)


def _one_iteration(cart, lattice, active, min_dist, capacity, reference_compatible):
    pairs, count = _close_pairs(cart, lattice, min_dist, capacity)
    target = min_dist + PUSH
    inverse = jnp.linalg.inv(lattice)

    def move(k, positions):
        i, j = pairs[k, 0], pairs[k, 1]
        vector = positions[j] - positions[i]
        if not reference_compatible:
            frac_vector = vector @ inverse
            vector = (frac_vector - jnp.round(frac_vector)) @ lattice
        norm = jnp.linalg.norm(vector)
        moved = positions[i] + vector * (target / norm)
        return positions.at[j].set(jnp.where(active & (k < count), moved, positions[j]))

    cart = jax.lax.fori_loop(0, jnp.minimum(count, capacity), move, cart)
    if not reference_compatible:
        frac = cart @ inverse
        cart = (frac - jnp.floor(frac)) @ lattice
    return cart, count


@partial(jax.jit, static_argnames=("capacity", "reference_compatible"))
def _move_apart_batch(cart, lattice, min_dist, capacity, max_iter, reference_compatible):
    batch = cart.shape[0]
    iteration = partial(_one_iteration, min_dist=min_dist, capacity=capacity,
                        reference_compatible=reference_compatible)

    def condition(state):
        _, _, counts, iterations, _ = state
        return jnp.any((counts > 0) & (iterations < max_iter))

    def body(state):
        cart, first, counts, iterations, overflow = state
        active = (counts > 0) & (iterations < max_iter)
        new_cart, new_counts = jax.vmap(iteration)(cart, lattice, active)
        new_counts = new_counts.astype(jnp.int32)
        first = jnp.where(iterations == 0, new_counts, first)
        counts = jnp.where(active, new_counts, counts)
        cart = jnp.where(active[:, None, None], new_cart, cart)
        overflow = overflow | jnp.any(active & (new_counts > capacity))
        return cart, first, counts, iterations + active.astype(jnp.int32), overflow

    initial = (cart, jnp.zeros(batch, jnp.int32), jnp.ones(batch, jnp.int32), jnp.zeros(batch, jnp.int32),
               jnp.array(False))
    return jax.lax.while_loop(condition, body, initial)


@float64
def move_atoms_apart(frac: np.ndarray, lattice: np.ndarray, min_dist: float = MIN_DIST, max_iter: int = MAX_ITER,
                     reference_compatible: bool = False, capacity: int | None = None) -> MoveApartResult:
    """Push apart atoms closer than ``min_dist`` Å in structures frac (B, N, 3), lattice (B, 3, 3)."""
    frac = np.asarray(frac, float)
    lattice = np.asarray(lattice, float)
    if frac.ndim != 3 or lattice.shape != (frac.shape[0], 3, 3):
        raise DismaxInputError(f"move_atoms_apart expects frac (B, N, 3) and lattice (B, 3, 3), got "
                               f"{frac.shape} and {lattice.shape}")
    capacity = capacity or 8 * frac.shape[1]
    cart = np.einsum("bni,bij->bnj", frac, lattice)
    cart, first, counts, iterations, overflow = _move_apart_batch(
        jnp.asarray(cart), jnp.asarray(lattice), min_dist, capacity, max_iter, reference_compatible)
    if bool(overflow):
        raise DismaxInputError(f"more than {capacity} close pairs in one structure; pass a larger capacity")
    frac_out = np.einsum("bnj,bji->bni", np.asarray(cart), np.linalg.inv(lattice))
    counts = np.asarray(counts)
    return MoveApartResult(frac_out, counts == 0, np.asarray(iterations), np.asarray(first), counts)
