"""Periodic geometry in JAX: wrapping, fractional/Cartesian conversion, minimum image, kNN, neighbour lists.

Conventions (see :mod:`dismax.structures`): ``frac`` (B, N, 3) fractional coordinates, ``lattice``
(B, 3, 3) with lattice vectors as rows in Å, so Cartesian positions are ``frac @ lattice``. Distances and
vectors are in Å.

Pair displacements are taken from centre ``i`` to neighbour ``j``: ``(frac[j] + image - frac[i]) @ lattice``
where ``image`` is an integer lattice translation (pymatgen's ``image``/``offset_vectors`` convention).
The search over periodic images starts from the *centred* fractional difference
``d = (frac[j] - frac[i])`` wrapped into [-0.5, 0.5) and adds the static offsets of
:func:`image_offsets` (``n_images`` per axis); reported ``images`` are always the true integer
translations. :func:`images_needed` gives the per-axis ``n_images`` so that every pair within a cutoff is
found (also when the cell is smaller than twice the cutoff); :func:`search_radius` gives the radius
within which a given ``n_images`` is complete, which is how a caller checks a kNN result.

Everything in the traced paths is pure ``jax.numpy``; functions taking ``n_images``, ``k`` or ``capacity``
need them static (Python ints/tuples). Neighbour selection runs without gradients and the selected
distances/vectors are recomputed differentiably, so gradients w.r.t. ``frac`` and ``lattice`` are exact and
finite (zero-length vectors get a zero gradient instead of NaN).
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError

ImageCounts = int | Sequence[int]


# ---------------------------------------------------------------------------------------------- basics
def _array_module(*arrays):
    """numpy when every argument is a NumPy array or scalar (host loops, no compilation), else jax.numpy."""
    return np if all(isinstance(a, (np.ndarray, np.generic, float, int)) for a in arrays) else jnp


def wrap(frac: jax.Array) -> jax.Array:
    """Wrap fractional coordinates (any shape) into [0, 1); values that round to 1.0 become 0.0.

    The gradient is the identity (the integer shift is piecewise constant).
    """
    wrapped = frac - jnp.floor(frac)
    return wrapped - (wrapped >= 1.0).astype(wrapped.dtype)


def wrap_centered(dfrac):
    """Fractional displacements (any shape) wrapped into [-1/2, 1/2): the cell-centred periodic image.

    NumPy in, NumPy out; the gradient is the identity (the integer shift is piecewise constant).
    """
    return dfrac - _array_module(dfrac).floor(dfrac + 0.5)


def frac_to_cart(frac: jax.Array, lattice: jax.Array) -> jax.Array:
    """Cartesian positions (..., N, 3) in Å from fractional ``frac`` (..., N, 3) and ``lattice`` (..., 3, 3)."""
    return jnp.einsum("...ni,...ij->...nj", frac, lattice)


def cart_to_frac(cart: jax.Array, lattice: jax.Array) -> jax.Array:
    """Fractional coordinates (..., N, 3) from Cartesian ``cart`` (..., N, 3) in Å and ``lattice`` (..., 3, 3).

    Not wrapped; apply :func:`wrap` if coordinates in [0, 1) are wanted.
    """
    # frac @ L = cart  <=>  L^T frac^T = cart^T
    solved = jnp.linalg.solve(jnp.swapaxes(lattice, -1, -2), jnp.swapaxes(cart, -1, -2))
    return jnp.swapaxes(solved, -1, -2)


def perpendicular_widths(lattice: jax.Array) -> jax.Array:
    """Distances (..., 3) in Å between opposite faces of the cell: width_i = volume / |a_j x a_k|.

    NumPy in, NumPy out (float64 host checks); JAX otherwise."""
    xp = _array_module(lattice)
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    cross = xp.stack([xp.cross(b, c), xp.cross(c, a), xp.cross(a, b)], axis=-2)
    volume = xp.abs(xp.sum(a * cross[..., 0, :], axis=-1))
    return volume[..., None] / xp.linalg.norm(cross, axis=-1)


def _image_counts(n_images: ImageCounts) -> tuple[int, int, int]:
    counts = (n_images,) * 3 if isinstance(n_images, (int, np.integer)) else tuple(n_images)
    if len(counts) != 3 or any(int(c) != c or c < 0 for c in counts):
        raise DismaxInputError(f"n_images must be a non-negative int or three of them, got {n_images!r}")
    return tuple(int(c) for c in counts)


def image_offsets(n_images: ImageCounts) -> np.ndarray:
    """Static integer image grid (M, 3), M = prod(2 n_a + 1), with the zero offset first.

    ``n_images`` is one int for all axes or a per-axis triple.
    """
    counts = _image_counts(n_images)
    grid = [o for o in itertools.product(*(range(-c, c + 1) for c in counts)) if any(o)]
    return np.array([(0, 0, 0)] + grid, dtype=np.int32).reshape(-1, 3)


def images_needed(lattice, cutoff: float) -> tuple[int, int, int]:
    """Per-axis ``n_images`` (host helper) so that every pair closer than ``cutoff`` Å is found.

    ``lattice`` is (3, 3) or (B, 3, 3) (the maximum over the batch is returned). Works for cells smaller
    than twice the cutoff: n_a = floor(cutoff / width_a + 1/2), because the centred difference is in
    [-1/2, 1/2) along each axis.
    """
    lattice = np.asarray(lattice, dtype=np.float64).reshape(-1, 3, 3)
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise DismaxInputError(f"cutoff must be a positive finite distance in Å, got {cutoff!r}")
    widths = np.asarray(perpendicular_widths(lattice))
    if not np.all(np.isfinite(widths)) or np.any(widths <= 0):
        bad = int(np.nonzero(~(np.isfinite(widths) & (widths > 0)).all(axis=-1))[0][0])
        raise DismaxInputError(f"structure {bad}: degenerate lattice (zero volume), cannot count images")
    counts = np.floor(cutoff / widths + 0.5 + 1e-6).astype(int).max(axis=0)
    return tuple(int(c) for c in counts)


def search_radius(lattice: jax.Array, n_images: ImageCounts) -> jax.Array:
    """Radius (...,) in Å below which a search with ``n_images`` finds every neighbour.

    A kNN or neighbour-list result is complete when its distances are below this radius.
    """
    counts = jnp.asarray(_image_counts(n_images), dtype=lattice.dtype)
    return jnp.min((counts + 0.5) * perpendicular_widths(lattice), axis=-1)


def minimum_image_range(lattice) -> tuple[int, int, int]:
    """Per-axis ``n_images`` (host helper) that makes :func:`minimum_image` exact for any cell shape.

    Any centred displacement is at most half the longest cell diagonal long, so the shortest image is
    within that radius. For ordinary (reduced) cells this is 1; very skewed cells may need more.
    """
    lattice = np.asarray(lattice, dtype=np.float64).reshape(-1, 3, 3)
    signs = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=np.float64)
    half_diagonal = 0.5 * np.linalg.norm(np.einsum("sk,bkj->bsj", signs, lattice), axis=-1).max()
    return images_needed(lattice, half_diagonal)


def _to_cart(frac: jax.Array, lattice: jax.Array) -> jax.Array:
    """``frac @ lattice`` for one (3, 3) lattice and any leading shape, as fused multiply-adds.

    (A batched matmul with a 3-long contraction is several times slower on CPU.)
    """
    return frac[..., 0:1] * lattice[0] + frac[..., 1:2] * lattice[1] + frac[..., 2:3] * lattice[2]


def _squared_norm(vectors: jax.Array) -> jax.Array:
    """x² + y² + z² of (..., 3) vectors, as element-wise adds.

    (A reduction over the 3-long minor axis runs several times slower on CPU: it dominated the kNN
    selection of a 32 × 264 × 264 batch.)
    """
    return vectors[..., 0] * vectors[..., 0] + vectors[..., 1] * vectors[..., 1] + vectors[..., 2] * vectors[..., 2]


def _safe_norm(vectors: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis with a zero (not NaN) gradient at the zero vector."""
    squared = _squared_norm(vectors)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _centred_difference(frac: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, N, 3) centred differences frac[j] - frac[i] - shift in [-1/2, 1/2) and the integer shift."""
    difference = frac[None, :, :] - frac[:, None, :]
    shift = jnp.floor(difference + 0.5)
    return difference - shift, shift


def _pair_shift(frac: jax.Array, centers: jax.Array, neighbors: jax.Array) -> jax.Array:
    """Integer shift floor(frac[j] - frac[i] + 1/2) of selected pairs, int32 (..., 3).

    Recomputed from the gathered coordinates (bit-identical to :func:`_centred_difference`) instead of
    gathering from the (N, N, 3) array, which is much slower on CPU.
    """
    return jnp.floor(frac[neighbors] - frac[centers] + 0.5).astype(jnp.int32)


def _check_batched(frac: jax.Array, lattice: jax.Array, name: str) -> None:
    if frac.ndim != 3 or frac.shape[-1] != 3 or lattice.shape != (frac.shape[0], 3, 3):
        raise DismaxInputError(
            f"{name}: expected frac (B, N, 3) and lattice (B, 3, 3), got {frac.shape} and {lattice.shape}"
        )


# ---------------------------------------------------------------------------------------- minimum image
def _closest_offset_index(centred: jax.Array, lattice: jax.Array, offsets: np.ndarray) -> jax.Array:
    """Index into ``offsets`` of the shortest image of each centred difference (...,3); no gradient.

    Scans the offsets with a running minimum so memory stays at the size of ``centred``; ties keep the
    earlier offset (the zero offset first).
    """
    centred_cart = jax.lax.stop_gradient(_to_cart(centred, lattice))
    offset_cart = jax.lax.stop_gradient(_to_cart(jnp.asarray(offsets, centred_cart.dtype), lattice))

    def step(carry, inputs):
        best_squared, best_index = carry
        index, shift = inputs
        squared = _squared_norm(centred_cart + shift)
        better = squared < best_squared
        return (jnp.where(better, squared, best_squared), jnp.where(better, index, best_index)), None

    init = (jnp.full(centred_cart.shape[:-1], jnp.inf, centred_cart.dtype),
            jnp.zeros(centred_cart.shape[:-1], jnp.int32))
    (_, best_index), _ = jax.lax.scan(step, init, (jnp.arange(len(offsets), dtype=jnp.int32), offset_cart))
    return best_index


def _minimum_image_single(dfrac: jax.Array, lattice: jax.Array, n_images: ImageCounts) -> jax.Array:
    offsets = image_offsets(n_images)
    centred = wrap_centered(dfrac)
    best = _closest_offset_index(centred, lattice, offsets)
    return _to_cart(centred + jnp.asarray(offsets, centred.dtype)[best], lattice)


@partial(jax.jit, static_argnames="n_images")
def _minimum_image_search(dfrac: jax.Array, lattice: jax.Array, n_images: ImageCounts) -> jax.Array:
    if lattice.ndim == 2:
        return _minimum_image_single(dfrac, lattice, n_images)
    return jax.vmap(partial(_minimum_image_single, n_images=n_images))(dfrac, lattice)


def minimum_image(dfrac, lattice, n_images: ImageCounts = 1):
    """Shortest periodic image of fractional displacements, as Cartesian vectors in Å.

    ``dfrac`` (B, ..., 3) with ``lattice`` (B, 3, 3), or ``dfrac`` (..., 3) with ``lattice`` (3, 3).
    The displacement is wrapped into [-1/2, 1/2) and the (2 n_images + 1)^3 neighbouring images are
    searched for the shortest, which is correct for skewed triclinic cells; n_images = 1 suffices for
    reduced cells, :func:`minimum_image_range` gives a guaranteed value for any cell. ``n_images = 0``
    keeps the wrapped (cell-centred) displacement, exact whenever the distance is below half the smallest
    perpendicular width; it also runs on NumPy arrays without compiling (for host loops over changing
    shapes), returning NumPy.
    """
    if n_images != 0:
        return _minimum_image_search(dfrac, lattice, n_images)
    centred = wrap_centered(dfrac)
    if lattice.ndim == 2:
        return centred @ lattice
    return (centred.reshape(centred.shape[0], -1, 3) @ lattice).reshape(centred.shape)


def coordinate_rms(frac_a, frac_b, lattice, n_images: ImageCounts = 1) -> jax.Array:
    """(B,) RMS over atoms of the minimum-image distance (Å) between two positions of the same atoms, fractional
    coordinates ``frac_a`` and ``frac_b`` (B, N, 3) in cells ``lattice`` (B, 3, 3)."""
    vectors = minimum_image(jnp.asarray(frac_a) - jnp.asarray(frac_b), jnp.asarray(lattice), n_images)
    return jnp.sqrt(jnp.mean(jnp.sum(vectors ** 2, -1), -1))


def displacements(points_cart, atoms_cart, lattice, n_images: ImageCounts = 0):
    """Minimum-image vectors (M, N, 3) in Å from each point (M, 3) to each atom (N, 3) (Cartesian, one
    cell (3, 3)); NumPy in, NumPy out, see :func:`minimum_image` for ``n_images``."""
    xp = _array_module(points_cart, atoms_cart, lattice)
    dfrac = (atoms_cart[None, :, :] - points_cart[:, None, :]) @ xp.linalg.inv(lattice)
    return minimum_image(dfrac, lattice, n_images)


def nearest_atom(points_cart: jax.Array, atoms_cart: jax.Array, atom_mask: jax.Array,
                 lattice: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index (M,) and minimum-image distance (M,) in Å of the closest atom with ``atom_mask`` (N,) True to
    each point (M, 3); atoms (N, 3) Cartesian in one cell (3, 3) smaller than twice the distances sought."""
    vectors = displacements(points_cart, atoms_cart, lattice)
    distances = jnp.sqrt(jnp.sum(vectors**2, axis=-1))
    distances = jnp.where(atom_mask[None, :], distances, jnp.inf)
    index = jnp.argmin(distances, axis=1)
    return index, jnp.take_along_axis(distances, index[:, None], axis=1)[:, 0]


# ---------------------------------------------------------------------------------------- lattice sites
def nearest_fcc_vector(u):
    """Closest point of the FCC lattice {n in Z^3, n_x + n_y + n_z even} (the D3 lattice) to each row of
    ``u`` (..., 3), all in units of half the cubic lattice constant (Conway & Sloane's rounding rule: round
    every coordinate; if the sum is odd, round the worst-rounded coordinate the other way). NumPy or JAX."""
    xp = _array_module(u)
    rounded = xp.round(u)
    error = u - rounded
    odd = (xp.sum(rounded, axis=-1) % 2) != 0
    worst = xp.argmax(xp.abs(error), axis=-1)
    flip = (xp.arange(3) == worst[..., None]).astype(u.dtype) * xp.where(error >= 0, 1.0, -1.0)
    return xp.where(odd[..., None], rounded + flip, rounded)


# ------------------------------------------------------------------------------------------------- RDF
def _histogram_bins(values, r_min: float, r_max: float, n_bins: int):
    """Bin index and in-range mask reproducing ``numpy.histogram`` for uniform bins (float64 inputs)."""
    edges = jnp.linspace(r_min, r_max, n_bins + 1)
    index = ((values - r_min) * (n_bins / (r_max - r_min))).astype(jnp.int32)
    index = jnp.clip(index, 0, n_bins - 1)
    index = jnp.where(values < edges[index], index - 1, index)
    index = jnp.clip(index, 0, n_bins - 1)
    index = jnp.where((values >= edges[index + 1]) & (index != n_bins - 1), index + 1, index)
    inside = (values >= r_min) & (values <= r_max)
    return index, inside


@partial(jax.jit, static_argnames=("r_min", "r_max", "n_bins"))
def pair_distance_histogram(frac: jax.Array, lattice: jax.Array, images: jax.Array, r_max: float, n_bins: int,
                            r_min: float = 0.0, mask_i: jax.Array | None = None,
                            mask_j: jax.Array | None = None) -> jax.Array:
    """RDF counts (n_bins,): (i, j, image) triples of one cell with 0 < d, r_min <= d <= r_max Å.

    ``frac`` (N, 3), ``lattice`` (3, 3), ``images`` (M, 3) integer offsets added to the centred difference
    frac[j] - frac[i] (``image_offsets(images_needed(lattice, r_max))`` finds every pair; a pruned list
    saves work); optional ``mask_i``/``mask_j`` (N,) restrict centres/neighbours. Bins are those of
    ``numpy.histogram`` on [r_min, r_max] (last bin closed); use float64 for bin decisions equal to NumPy.
    Normalising g_k = h_k V / (N_i N_j V_k) with shell volumes V_k gives g(r).
    """
    everyone = jnp.ones(frac.shape[0], bool)
    mask_i = everyone if mask_i is None else mask_i
    mask_j = everyone if mask_j is None else mask_j
    difference = wrap_centered(frac[None, :, :] - frac[:, None, :])
    vectors = (difference @ lattice)[:, :, None, :] + (images @ lattice)[None, None, :, :]   # (N, N, M, 3)
    distances = jnp.sqrt(jnp.sum(vectors**2, axis=-1))
    index, inside = _histogram_bins(distances, r_min, r_max, n_bins)
    pair = mask_i[:, None, None] & mask_j[None, :, None]
    keep = inside & pair & (distances > 0.0)
    return jnp.zeros(n_bins, distances.dtype).at[index.ravel()].add(keep.ravel().astype(distances.dtype))


@partial(jax.jit, static_argnames="n_images")
def pairwise_minimum_image_distances(frac: jax.Array, lattice: jax.Array,
                                     n_images: ImageCounts = 1) -> jax.Array:
    """Minimum-image distances (B, N, N) in Å between all atoms of ``frac`` (B, N, 3); zero diagonal."""
    _check_batched(frac, lattice, "pairwise_minimum_image_distances")

    def single(frac_one, lattice_one):
        centred, _ = _centred_difference(frac_one)
        offsets = image_offsets(n_images)
        best = _closest_offset_index(centred, lattice_one, offsets)
        return _safe_norm(_to_cart(centred + jnp.asarray(offsets, centred.dtype)[best], lattice_one))

    return jax.vmap(single)(frac, lattice)


# ------------------------------------------------------------------------------------ nearest neighbours
class Neighbors(NamedTuple):
    """Fixed-K nearest neighbours of every atom (a pytree).

    distances (B, N, K) in Å, ascending; indices (B, N, K) neighbour atom j; images (B, N, K, 3) int32
    translations so that vectors = (frac[j] + image - frac[i]) @ lattice, (B, N, K, 3) in Å.
    """

    distances: jax.Array
    indices: jax.Array
    images: jax.Array
    vectors: jax.Array


def _select_knn_centred(frac: jax.Array, lattice: jax.Array, atom_mask: jax.Array, k: int):
    """K nearest neighbours (N, K) among centred differences only and their images (N, K, 3); atoms outside
    ``atom_mask`` (N,) are never chosen while real atoms remain.

    Exact whenever the K-th distance is below half the smallest perpendicular width: a vector shorter
    than that has all fractional components in (-1/2, 1/2), so it is the centred one, and every other
    image (and every self image) is longer. (Only top_k's indices are used: consuming its values makes
    XLA on CPU fall back to a several times slower sort.)
    """
    n = frac.shape[0]
    centred, _ = _centred_difference(frac)
    squared = _squared_norm(_to_cart(centred, lattice))
    squared = jnp.where(jnp.eye(n, dtype=bool) | ~atom_mask[None, :], jnp.inf, squared)
    _, indices = jax.lax.top_k(-squared, k)
    images = -_pair_shift(frac, jnp.arange(n)[:, None], indices)
    return indices.astype(jnp.int32), images


def _select_knn_images(frac: jax.Array, lattice: jax.Array, atom_mask: jax.Array, k: int, offsets: np.ndarray):
    """K nearest neighbours (N, K) and their images (N, K, 3) over all offsets, merged offset by offset
    (atoms outside ``atom_mask`` (N,) last)."""
    n = frac.shape[0]
    centred, _ = _centred_difference(frac)
    centred_cart = _to_cart(centred, lattice)
    offset_cart = _to_cart(jnp.asarray(offsets, frac.dtype), lattice)
    is_self = jnp.eye(n, dtype=bool)
    columns = jnp.arange(n, dtype=jnp.int32)

    def step(carry, inputs):
        best_squared, best_code = carry
        index, offset = inputs
        squared = _squared_norm(centred_cart + offset)
        squared = jnp.where((is_self & (index == 0)) | ~atom_mask[None, :], jnp.inf, squared)
        codes = jnp.broadcast_to(index * n + columns, (n, n))
        merged_squared = jnp.concatenate([best_squared, squared], axis=-1)
        merged_codes = jnp.concatenate([best_code, codes], axis=-1)
        _, position = jax.lax.top_k(-merged_squared, k)
        return (jnp.take_along_axis(merged_squared, position, axis=-1),
                jnp.take_along_axis(merged_codes, position, axis=-1)), None

    init = (jnp.full((n, k), jnp.inf, frac.dtype), jnp.zeros((n, k), jnp.int32))
    (_, codes), _ = jax.lax.scan(step, init, (jnp.arange(len(offsets), dtype=jnp.int32), offset_cart))
    indices = codes % n
    offset_index = codes // n
    images = jnp.asarray(offsets)[offset_index] - _pair_shift(frac, jnp.arange(n)[:, None], indices)
    return indices, images


def _gather_vectors(frac, lattice, centers, neighbors, images):
    """Cartesian vectors (frac[neighbor] + image - frac[center]) @ lattice, differentiable."""
    return _to_cart(frac[neighbors] + images.astype(frac.dtype) - frac[centers], lattice)


@partial(jax.jit, static_argnames=("k", "n_images"))
def knn(frac: jax.Array, lattice: jax.Array, k: int, n_images: ImageCounts = 1,
        atom_mask: jax.Array | None = None) -> Neighbors:
    """K nearest neighbours of every atom over periodic images, self (zero offset) excluded.

    ``frac`` (B, N, 3), ``lattice`` (B, 3, 3); returns :class:`Neighbors` with distances sorted
    ascending. Other atoms and the atom's own periodic images are candidates. Selection runs without
    gradients: first among the centred (B, N, N) differences, which is exact when every K-th distance is
    below half the smallest perpendicular width; otherwise (small or very thin cells) by a memory-lean
    scan over the image offsets that merges a running top-K (never a B·N·N·M·3 tensor). Distances and
    vectors are then recomputed from the chosen (j, image), so they are differentiable w.r.t. ``frac``
    and ``lattice``. The result is complete where
    ``distances[..., -1] < search_radius(lattice, n_images)[:, None]`` (spec: check this for CryinGAN).
    Under an outer ``jax.vmap`` (one structure per call) the image search still runs only when some
    structure of the vmapped batch needs it. ``atom_mask`` (B, N) marks the real atoms of padded
    structures: padding atoms fill a real atom's slots only after all its real candidates (callers mask
    those slots), so the real atoms' neighbours do not depend on the padding.
    """
    _check_batched(frac, lattice, "knn")
    atom_mask = jnp.ones(frac.shape[:2], bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
    offsets = image_offsets(n_images)
    n = frac.shape[1]
    if k < 1 or k > n * len(offsets) - 1:
        raise DismaxInputError(
            f"knn: k={k} must be between 1 and the {n * len(offsets) - 1} candidates "
            f"({n} atoms x {len(offsets)} images minus self); increase n_images"
        )

    frac_fixed, lattice_fixed = jax.lax.stop_gradient(frac), jax.lax.stop_gradient(lattice)
    if k > n - 1:  # more neighbours than other atoms in the cell: only the image search can supply them
        indices, images = jax.vmap(partial(_select_knn_images, k=k, offsets=offsets))(
            frac_fixed, lattice_fixed, atom_mask)
    else:
        indices, images = jax.vmap(partial(_select_knn_centred, k=k))(frac_fixed, lattice_fixed, atom_mask)
    centers = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], indices.shape[1:])
    if len(offsets) > 1 and k <= n - 1:
        selected = _safe_norm(jax.vmap(_gather_vectors, in_axes=(0, 0, None, 0, 0))(
            frac_fixed, lattice_fixed, centers, indices, images))
        real_neighbour = jnp.take_along_axis(atom_mask[:, None, :], indices, axis=-1)
        kth_distance = jnp.max(jnp.where(real_neighbour, selected, jnp.inf), axis=-1)
        kth_distance = jnp.where(atom_mask, kth_distance, 0.0)  # padding rows need no search
        safe_radius = 0.5 * (1.0 - 1e-4) * jnp.min(perpendicular_widths(lattice_fixed), axis=-1)

        def full_search(carry):
            # + 0 while the loop runs, but it ties the search to the carry (see below)
            frac_in = frac_fixed + jnp.where(carry[0], 1.0, 0.0).astype(frac_fixed.dtype)
            return True, *jax.vmap(partial(_select_knn_images, k=k, offsets=offsets))(frac_in, lattice_fixed,
                                                                                     atom_mask)

        # the cheap centred search is exact when every K-th neighbour is within half the smallest width
        # (the usual case); otherwise search all image offsets for the whole batch. A while loop of at most
        # one pass rather than lax.cond: under an outer jax.vmap (a denoiser applied per structure) a cond
        # becomes a select that always runs the full search (12x slower for 8 x 256 atoms), while a
        # batched while loop runs its body only when some structure needs it. The body depends on the
        # carry so that XLA cannot hoist the otherwise loop-invariant search out of the loop.
        _, indices, images = jax.lax.while_loop(
            lambda carry: jnp.logical_not(carry[0]), full_search,
            (jnp.all(kth_distance < safe_radius[:, None]), indices, images))
    vectors = jax.vmap(_gather_vectors, in_axes=(0, 0, None, 0, 0))(frac, lattice, centers, indices, images)
    distances = _safe_norm(vectors)
    order = jnp.argsort(jax.lax.stop_gradient(distances), axis=-1)
    return Neighbors(
        jnp.take_along_axis(distances, order, axis=-1),
        jnp.take_along_axis(indices, order, axis=-1),
        jnp.take_along_axis(images, order[..., None], axis=-2),
        jnp.take_along_axis(vectors, order[..., None], axis=-2),
    )


# -------------------------------------------------------------------------------------- neighbour lists
class NeighborList(NamedTuple):
    """Cutoff neighbour list with a fixed capacity C per structure (a pytree).

    centers, neighbors (B, C) int32 atom indices i and j (in message-passing terms neighbors are the
    senders and centers the receivers); images (B, C, 3) int32; vectors (B, C, 3) in Å =
    (frac[j] + image - frac[i]) @ lattice; distances (B, C) in Å; mask (B, C) True for real pairs.
    Pairs are sorted by (center, neighbor, image offset) and padding comes last with centers = neighbors = N
    (out of range, so ``segment_sum(..., num_segments=N)`` drops it), zero images, vectors and distances.
    n_pairs (B,) is the true number of pairs within the cutoff, overflow (B,) is n_pairs > C: then the
    list holds only C of them and must be rebuilt with a larger capacity.
    """

    centers: jax.Array
    neighbors: jax.Array
    images: jax.Array
    vectors: jax.Array
    distances: jax.Array
    mask: jax.Array
    n_pairs: jax.Array
    overflow: jax.Array

    @property
    def senders(self) -> jax.Array:
        return self.neighbors

    @property
    def receivers(self) -> jax.Array:
        return self.centers


def _select_pairs(frac: jax.Array, lattice: jax.Array, cutoff: jax.Array, capacity: int, offsets: np.ndarray):
    """Pairs within the cutoff compacted into ``capacity`` slots, and the true pair count; no gradient.

    Candidates are laid out (center, neighbor, offset); slot p takes the (p+1)-th candidate inside the
    cutoff, found by a binary search in the running count (a gather of size C instead of a scatter of
    size N²M).
    """
    n, n_offsets = frac.shape[0], len(offsets)
    centred, _ = _centred_difference(frac)
    offset_cart = _to_cart(jnp.asarray(offsets, frac.dtype), lattice)
    squared = _squared_norm(_to_cart(centred, lattice)[:, :, None, :] + offset_cart)
    is_self = jnp.eye(n, dtype=bool)[:, :, None] & (jnp.arange(n_offsets) == 0)
    within = (squared <= jnp.asarray(cutoff, frac.dtype) ** 2) & ~is_self
    running_count = jnp.cumsum(within.reshape(-1), dtype=jnp.int32)
    count = running_count[-1]
    slots = jnp.arange(capacity, dtype=jnp.int32)
    candidate = jnp.searchsorted(running_count, slots + 1, side="left").astype(jnp.int32)
    mask = slots < count
    candidate = jnp.where(mask, candidate, 0)
    centers, rest = candidate // (n * n_offsets), candidate % (n * n_offsets)
    neighbors, offset_index = rest // n_offsets, rest % n_offsets
    images = jnp.asarray(offsets)[offset_index] - _pair_shift(frac, centers, neighbors)
    images = jnp.where(mask[:, None], images, 0)
    return centers, neighbors, images, mask, count


@partial(jax.jit, static_argnames=("capacity", "n_images"))
def neighbor_list(frac: jax.Array, lattice: jax.Array, cutoff: float, capacity: int,
                  n_images: ImageCounts = 1) -> NeighborList:
    """All ordered pairs (i, j, image) with distance <= ``cutoff`` Å, at most ``capacity`` per structure.

    ``frac`` (B, N, 3), ``lattice`` (B, 3, 3), ``cutoff`` scalar (may be traced). Both directions of a
    pair are listed (as pymatgen's ``get_neighbor_list``); an atom's own periodic images count, the atom
    itself does not. Pass ``n_images = images_needed(lattice, cutoff)`` (host side) for a complete list,
    including cells smaller than twice the cutoff. Never silently truncated: check ``overflow`` (e.g.
    ``bool(nl.overflow.any())`` outside jit) and rebuild with ``capacity >= nl.n_pairs.max()``. Memory
    is O(N² + capacity) per structure. Vectors and distances are differentiable.
    """
    _check_batched(frac, lattice, "neighbor_list")
    if capacity < 1:
        raise DismaxInputError(f"neighbor_list: capacity must be a positive int, got {capacity!r}")
    offsets = image_offsets(n_images)

    n = frac.shape[1]

    def select(inputs):
        frac_one, lattice_one = inputs
        return _select_pairs(frac_one, lattice_one, cutoff, capacity, offsets)

    # one structure at a time: the O(N² M) candidate arrays are never held for the whole batch
    centers, neighbors, images, mask, count = jax.lax.map(
        select, (jax.lax.stop_gradient(frac), jax.lax.stop_gradient(lattice)))
    vectors = jax.vmap(_gather_vectors)(frac, lattice, centers, neighbors, images)
    vectors = jnp.where(mask[..., None], vectors, 0.0)
    padding = jnp.int32(n)
    return NeighborList(jnp.where(mask, centers, padding), jnp.where(mask, neighbors, padding), images,
                        vectors, _safe_norm(vectors), mask, count, count > capacity)


# ------------------------------------------------------------------------------------ neighbour tables
def reverse_slots(indices: jax.Array, images: jax.Array) -> jax.Array:
    """For each slot of a per-atom neighbour table, the slot of the same pair seen from the other end.

    ``indices`` (..., N, K) neighbour atom j of atom i in slot k and ``images`` (..., N, K, 3) its integer
    image. Returns (..., N, K) int32: the slot s with ``indices[j, s] == i`` and ``images[j, s] == -image``,
    or K where j's row does not hold that pair. With it, a sum over the pairs that *point at* atom j is a
    gather over j's own row (``values[indices, reverse]``) instead of a scatter-add over all rows, which is
    what makes per-slot gradients (forces) cheap on CPU. O(N·K²) per structure; no gradient.
    """
    k = indices.shape[-1]

    def one(indices, images):
        n = indices.shape[0]
        back_indices = indices[indices]  # (N, K, K): row of atom j = indices[i, k]
        back_images = images[indices]  # (N, K, K, 3)
        centres = jnp.arange(n, dtype=indices.dtype)[:, None, None]
        match = (back_indices == centres) & jnp.all(back_images == -images[:, :, None, :], axis=-1)
        return jnp.where(jnp.any(match, axis=-1), jnp.argmax(match, axis=-1), k).astype(jnp.int32)

    batch_shape = indices.shape[:-2]
    flat = jax.vmap(one)(indices.reshape((-1,) + indices.shape[-2:]), images.reshape((-1,) + images.shape[-3:]))
    return flat.reshape(batch_shape + indices.shape[-2:])


def gather_reverse(values: jax.Array, indices: jax.Array, reverse: jax.Array) -> jax.Array:
    """``values`` (N, K, ...) of one structure's neighbour table read from the other end of each pair:
    result[i, k] = values[indices[i, k], reverse[i, k]], zero where the reverse slot is absent (K)."""
    n, k = indices.shape
    present = reverse < k
    gathered = values.reshape((n * k,) + values.shape[2:])[indices * k + jnp.where(present, reverse, 0)]
    return jnp.where(present.reshape(present.shape + (1,) * (values.ndim - 2)), gathered, 0)
