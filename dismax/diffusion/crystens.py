"""CrysTens: a crystal as an (N + 12) × (N + 12) × 4 image (CrysTens §3.1; Dismai-Bench §2.2, §4.2.3).

Layout of one tensor T (rows, columns, channels), the same header in all four channels:

* header rows 0..11 over the atom columns 12..N+11 and, transposed, header columns 0..11 over the atom
  rows: per atom the atomic number, fractional x, y, z, the lattice lengths a, b, c (Å), the angles
  α, β, γ (degrees), the space-group number, and a zero separator row; the top-left 12 × 12 corner is zero;
* body T[12 + i, 12 + j]: channel 0 the minimum-image distance |r_i − r_j| (Å), channels 1–3 the
  "directional graphs" Δ_ij = x_i − x_j of the fractional coordinates (unwrapped, so x_j + Δ_ij = x_i).

Every per-atom value has 8 copies and every global value 8N. :func:`from_crystens` averages the copies
and places atom i at the mean of its own coordinates and the N − 1 predictions x_j + Δ_ij, with the
ground-truth lattice and no k-means clean-up (Dismai-Bench's reconstruction). :func:`crystens_scale`
gives the divisors that bring every entry into [−1, 1] for the diffusion model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dismax.geometry import pairwise_minimum_image_distances

HEADER = 12
#: Divisors of the non-length header rows: atomic number, x, y, z, (a, b, c scaled separately),
#: α, β, γ, space group, separator.
MAX_ATOMIC_NUMBER = 100.0
MAX_ANGLE = 180.0
MAX_SPACE_GROUP = 230.0


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


def crystens_scale(n_atoms: int, length_scale: float) -> np.ndarray:
    """(S, S, 4) divisors that map a CrysTens image into [−1, 1]: ``length_scale`` (Å) must be at least the
    largest a + b + c of the dataset (lattice lengths and minimum-image distances stay below it)."""
    size = crystens_size(n_atoms)
    per_row = np.array([MAX_ATOMIC_NUMBER, 1, 1, 1, length_scale, length_scale, length_scale,
                        MAX_ANGLE, MAX_ANGLE, MAX_ANGLE, MAX_SPACE_GROUP, 1], np.float32)
    scale = np.ones((size, size, 4), np.float32)
    scale[:HEADER, HEADER:] = per_row[:, None, None]
    scale[HEADER:, :HEADER] = per_row[None, :, None]
    scale[HEADER:, HEADER:, 0] = length_scale
    return scale


def space_groups(frac: np.ndarray, lattice: np.ndarray, species: np.ndarray, symprec: float = 0.01) -> np.ndarray:
    """(B,) international space-group numbers from spglib (host code, once per dataset)."""
    import spglib  # only the dataset preparation needs symmetry analysis

    out = []
    for f, l, s in zip(np.asarray(frac, np.float64), np.asarray(lattice, np.float64), np.asarray(species)):
        dataset = spglib.get_symmetry_dataset((l, f, s), symprec=symprec)
        out.append(1 if dataset is None else int(dataset.number))
    return np.asarray(out, np.int32)
