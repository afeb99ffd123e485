"""CrysTens: a crystal as an (N + 12) × (N + 12) × 4 image (CrysTens §3.1; Dismai-Bench §2.2, §4.2.3).

Layout of one tensor T (rows, columns, channels), the same header in all four channels:

* header rows 0..11 over the atom columns 12..N+11 and, transposed, header columns 0..11 over the atom
  rows: per atom the atomic number, fractional x, y, z, the lattice lengths a, b, c (Å), the angles
  α, β, γ (degrees), the space-group number, and a zero separator row; the top-left 12 × 12 corner is zero;
* body T[12 + i, 12 + j]: channel 0 the minimum-image distance |r_i − r_j| (Å), channels 1–3 the
  "directional graphs" Δ_ij = x_i − x_j of the fractional coordinates (unwrapped, so x_j + Δ_ij = x_i).

Every per-atom value has 8 copies and every global value 8N. :func:`from_crystens` averages the copies
and places atom i at the mean of its own coordinates and the N − 1 predictions x_j + Δ_ij, with the
ground-truth lattice and no k-means clean-up (Dismai-Bench's reconstruction).

For the diffusion model every quantity (the 11 header rows and the 4 body channels) is min-max scaled on its
own over the training data, then mapped to [−1, 1] (Dismai-Bench's ``scaler.json`` and imagen's image
normalisation): :func:`crystens_ranges`, :func:`to_model_space`, :func:`from_model_space`. The atomic
numbers thus span the whole range (Li 3 → −1, O 8 → +1 in a Li–O set) instead of differing by a few
hundredths, which noise at the end of sampling would blur.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dismax.geometry import pairwise_minimum_image_distances

HEADER = 12
#: Quantities with their own min-max range: header rows 0..10 (atomic number, x, y, z, a, b, c, α, β, γ,
#: space group) then body channels 0..3 (distance, Δx, Δy, Δz).
N_HEADER_QUANTITIES = 11
N_QUANTITIES = N_HEADER_QUANTITIES + 4


def crystens_size(n_atoms: int) -> int:
    """Side length of the CrysTens image of an N-atom structure."""
    return n_atoms + HEADER


def lattice_parameters(lattice: jax.Array) -> jax.Array:
    """(..., 6) lengths a, b, c (Å) and angles α, β, γ (degrees) of lattice rows (..., 3, 3)."""
    lengths = jnp.linalg.norm(lattice, axis=-1)

    def angle(i, j):
        cosine = jnp.sum(lattice[..., i, :] * lattice[..., j, :], -1) / (lengths[..., i] * lengths[..., j])
        return jnp.degrees(jnp.arccos(jnp.clip(cosine, -1.0, 1.0)))

    return jnp.concatenate([lengths, jnp.stack([angle(1, 2), angle(0, 2), angle(0, 1)], -1)], -1)


def _header(frac, lattice, species, space_group):
    """(12, N) header columns of one structure."""
    n = frac.shape[0]
    globals_ = jnp.concatenate([lattice_parameters(lattice), jnp.asarray(space_group, frac.dtype)[None]])
    return jnp.concatenate([species[None].astype(frac.dtype), frac.T,
                            jnp.broadcast_to(globals_[:, None], (7, n)), jnp.zeros((1, n), frac.dtype)])


def to_crystens(frac: jax.Array, lattice: jax.Array, species: jax.Array, space_group: jax.Array) -> jax.Array:
    """CrysTens images (B, N + 12, N + 12, 4) of a batch: frac (B, N, 3), lattice (B, 3, 3), species (B, N),
    space_group (B,) international numbers (1 for the disordered cells of Dismai-Bench)."""
    distances = pairwise_minimum_image_distances(frac, lattice)

    def single(frac, lattice, species, space_group, distances):
        header = _header(frac, lattice, species, space_group)
        top = jnp.concatenate([jnp.zeros((HEADER, HEADER), frac.dtype), header], 1)
        body = jnp.concatenate([header.T[:, :, None] * jnp.ones(4, frac.dtype),
                                jnp.concatenate([distances[..., None], frac[:, None] - frac[None]], -1)], 1)
        return jnp.concatenate([jnp.broadcast_to(top[..., None], (*top.shape, 4)), body], 0)

    return jax.vmap(single)(frac, lattice, species, space_group, distances)


def average_header(tensor: jax.Array) -> jax.Array:
    """(B, 12, N) header values averaged over their 8 copies (two positions × four channels)."""
    top = tensor[:, :HEADER, HEADER:, :]
    left = jnp.swapaxes(tensor[:, HEADER:, :HEADER, :], 1, 2)
    return jnp.mean(jnp.concatenate([top, left], -1), -1)


def from_crystens(tensor: jax.Array, species_choices) -> tuple[jax.Array, jax.Array]:
    """(frac (B, N, 3) wrapped into [0, 1), species (B, N)) decoded from CrysTens images (B, S, S, 4).

    The atomic number is the averaged header value rounded to the nearest of ``species_choices`` (the
    dataset's elements); atom i's position is the mean of its averaged header coordinates x̂_i and the
    predictions x̂_j + Δ̂_ij, j ≠ i, where Δ̂_ij = (T_ij − T_ji) / 2 averages the two antisymmetric copies.
    The lattice is not decoded: Dismai-Bench uses the ground-truth lattice."""
    header = average_header(tensor)
    choices = jnp.asarray(np.asarray(species_choices), jnp.int32)
    nearest = jnp.argmin(jnp.abs(header[:, 0, :, None] - choices.astype(tensor.dtype)), -1)
    own = jnp.swapaxes(header[:, 1:4], 1, 2)
    graph = tensor[:, HEADER:, HEADER:, 1:4]
    delta = 0.5 * (graph - jnp.swapaxes(graph, 1, 2))
    n = own.shape[1]
    frac = jnp.mean(own, 1, keepdims=True) + jnp.sum(delta, 2) / n
    return frac - jnp.floor(frac), choices[nearest]


def crystens_ranges(tensors: jax.Array) -> tuple[tuple[float, float], ...]:
    """(min, max) of each of the ``N_QUANTITIES`` quantities over CrysTens images (B, S, S, 4) (header rows
    read from the top block; body channels including the diagonal, as Dismai-Bench's scaler)."""
    tensors = np.asarray(tensors)
    header = tensors[:, :N_HEADER_QUANTITIES, HEADER:, 0]
    body = tensors[:, HEADER:, HEADER:, :]
    lows = [*header.min((0, 2)), *body.min((0, 1, 2))]
    highs = [*header.max((0, 2)), *body.max((0, 1, 2))]
    return tuple((float(lo), float(hi)) for lo, hi in zip(lows, highs))


def merge_ranges(a, b) -> tuple[tuple[float, float], ...]:
    """The union of two :func:`crystens_ranges` results (ranges of data seen in chunks)."""
    return tuple((min(lo_a, lo_b), max(hi_a, hi_b)) for (lo_a, hi_a), (lo_b, hi_b) in zip(a, b))


def _affine(size: int, ranges) -> tuple[np.ndarray, np.ndarray]:
    """(low, span) arrays (S, S, 4) of the min-max map; constant quantities (span 0) and the separator row and
    corner use span 1, so they map to −1 in model space."""
    if len(ranges) != N_QUANTITIES:
        raise ValueError(f"CrysTens ranges need {N_QUANTITIES} (min, max) pairs, got {len(ranges)}")
    lows = np.array([lo for lo, _ in ranges], np.float32)
    spans = np.array([hi - lo for lo, hi in ranges], np.float32)
    spans = np.where(spans > 0, spans, 1.0).astype(np.float32)
    low, span = np.zeros((size, size, 4), np.float32), np.ones((size, size, 4), np.float32)
    for target, values in ((low, lows), (span, spans)):
        header = values[:N_HEADER_QUANTITIES]
        target[:N_HEADER_QUANTITIES, HEADER:] = header[:, None, None]
        target[HEADER:, :N_HEADER_QUANTITIES] = header[None, :, None]
        target[HEADER:, HEADER:] = values[N_HEADER_QUANTITIES:]
    return low, span


def to_model_space(tensors: jax.Array, ranges) -> jax.Array:
    """CrysTens images (B, S, S, 4) → the model's [−1, 1]: 2 (v − min)/(max − min) − 1 per quantity."""
    low, span = _affine(tensors.shape[1], ranges)
    return 2.0 * (tensors - low) / span - 1.0


def from_model_space(x: jax.Array, ranges) -> jax.Array:
    """The inverse of :func:`to_model_space`."""
    low, span = _affine(x.shape[1], ranges)
    return (x + 1.0) / 2.0 * span + low


def space_groups(frac: np.ndarray, lattice: np.ndarray, species: np.ndarray, symprec: float = 0.01) -> np.ndarray:
    """(B,) international space-group numbers from spglib (host code, once per dataset)."""
    import spglib  # only the dataset preparation needs symmetry analysis

    out = []
    for f, l, s in zip(np.asarray(frac, np.float64), np.asarray(lattice, np.float64), np.asarray(species)):
        dataset = spglib.get_symmetry_dataset((l, f, s), symprec=symprec)
        out.append(1 if dataset is None else int(dataset.number))
    return np.asarray(out, np.int32)
