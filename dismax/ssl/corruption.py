"""Corruption of crystals for masked-denoising (spec ``ssl_gan.md`` §4 with the dismax fixes L3–L5, L7).

One structure per call (vmap over a batch), pure JAX so it runs inside the jitted training step:

- **species masking**: with probability ``species_mask_probability`` all atoms of one species, chosen
  uniformly among the species present, else ⌈``mask_ratio``·N⌉ distinct atoms drawn uniformly without
  replacement (every atom reachable; the reference's ``randint(0, N − 1)`` never masks the last atom and
  draws with replacement, L3). Masked atoms get species 0. A one-atom cell masks its atom (L4).
- **positional noise**: Gaussian, σ = ``sigma_ratio`` × the minimum periodic (minimum-image) distance
  between the real atoms, per Cartesian component in Å, added to the Cartesian positions and wrapped into
  the cell. The reference's in-cell distance misses close pairs across the boundary (L5); a one-atom cell
  has no pair, so σ = ``sigma_ratio`` × ``single_atom_distance``. With ``sigma_ratio_max`` set (training
  only), every structure draws its own σ̃ uniformly from [``sigma_ratio``, ``sigma_ratio_max``], so a model
  meets every noise level of the evaluation (σ̃ 0.1 and 0.2) during training.

``faithful=True`` reproduces the reference's biased masking (``src/mask.py``): one coin per batch decides the
mode for every structure (:func:`dismax.ssl.steps.corrupt_batch`); count mode draws ⌈N·ratio⌉ (float32,
so N = 100 gives 16) atom indices with ``randint(0, N − 1)``, i.e. with replacement and never the last atom
(L3); species mode masks the species of the atom at one such index, so species are chosen by abundance and the
last atom's species only through other atoms. The reference errors on a one-atom cell (L4); here that atom
is masked in both modes.

The noise is returned in Cartesian Å, the frame of the backbone's equivariant vector head (L7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from dismax.geometry import cart_to_frac, pairwise_minimum_image_distances, wrap
from dismax.ssl.backbone import MASK_TOKEN


@dataclass(frozen=True)
class CorruptionConfig:
    """mask_ratio: fraction of atoms masked in count mode; species_mask_probability: chance of masking a
    whole species; sigma_ratio: σ̃ (σ in units of the minimum pair distance); single_atom_distance: the
    distance (Å) standing in for the minimum pair distance of one-atom cells; sigma_ratio_max: if set, σ̃ is
    drawn per structure uniformly from [sigma_ratio, sigma_ratio_max]; faithful: the reference's biased
    masking (module docstring)."""

    mask_ratio: float = 0.15
    species_mask_probability: float = 0.5
    sigma_ratio: float = 0.1
    single_atom_distance: float = 2.0
    sigma_ratio_max: Optional[float] = None
    faithful: bool = False


class Corrupted(NamedTuple):
    """frac (N, 3) noisy fractional coordinates; species (N,) with 0 on masked atoms; masked (N,) bool;
    noise (N, 3) the Cartesian displacement in Å (0 on padding); sigma () in Å."""

    frac: jax.Array
    species: jax.Array
    masked: jax.Array
    noise: jax.Array
    sigma: jax.Array


def masked_count(n_atoms, ratio: float):
    """⌈ratio · n⌉ atoms, at least one (the tolerance keeps ⌈0.15 · 20⌉ = 3 despite rounding)."""
    return jnp.maximum(jnp.ceil(ratio * n_atoms - 1e-6), 1).astype(jnp.int32)


def count_mask(key, atom_mask, ratio: float):
    """(N,) bool: ⌈ratio · n_real⌉ distinct real atoms, uniformly without replacement."""
    scores = jnp.where(atom_mask, jax.random.uniform(key, atom_mask.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores))
    return atom_mask & (rank < masked_count(jnp.sum(atom_mask), ratio))


def species_mask(key, species, atom_mask):
    """(N,) bool: every real atom of one species, chosen uniformly among the species present."""
    earlier = jnp.tril(jnp.ones((species.shape[0],) * 2, bool), k=-1)
    seen_before = jnp.any(earlier & (species[:, None] == species[None, :]) & atom_mask[None, :], axis=1)
    first = atom_mask & ~seen_before
    scores = jnp.where(first, jax.random.uniform(key, species.shape), -1.0)
    chosen = species[jnp.argmax(scores)]
    return atom_mask & (species == chosen)


def reference_draws(key, atom_mask, count):
    """(N,) bool: the real atoms hit by the first ``count`` of N draws of the reference's
    ``randint(0, n_real − 1)`` (with replacement, never the last real atom; the only atom of a one-atom cell)."""
    n_real = jnp.sum(atom_mask)
    real_atoms = jnp.argsort(~atom_mask, stable=True)      # indices of the real atoms first, in order
    draws = jax.random.randint(key, atom_mask.shape, 0, jnp.maximum(n_real - 1, 1))
    used = jnp.arange(atom_mask.shape[0]) < count
    return jnp.zeros(atom_mask.shape, bool).at[real_atoms[draws]].max(used) & atom_mask


def reference_count_mask(key, atom_mask, ratio: float):
    """The reference's count masking (L3): ⌈n·ratio⌉ in float32 draws, with replacement, last atom excluded."""
    count = jnp.ceil(jnp.sum(atom_mask).astype(jnp.float32) * jnp.float32(ratio)).astype(jnp.int32)
    return reference_draws(key, atom_mask, count)


def reference_species_mask(key, species, atom_mask):
    """The reference's species masking: every real atom of the species at one ``randint(0, n − 1)`` index."""
    chosen = jnp.max(jnp.where(reference_draws(key, atom_mask, 1), species, -1))
    return atom_mask & (species == chosen)


def mask_species(key, species, atom_mask, config: CorruptionConfig, whole_species=None):
    """(masked species (N,), masked (N,) bool) by the §4.1 scheme (see module docstring); ``whole_species``
    (bool) imposes the mode instead of drawing it (the faithful per-batch coin)."""
    choice_key, count_key, species_key = jax.random.split(key, 3)
    if whole_species is None:
        whole_species = jax.random.uniform(choice_key) < config.species_mask_probability
    if config.faithful:
        by_species = reference_species_mask(species_key, species, atom_mask)
        by_count = reference_count_mask(count_key, atom_mask, config.mask_ratio)
    else:
        by_species = species_mask(species_key, species, atom_mask)
        by_count = count_mask(count_key, atom_mask, config.mask_ratio)
    masked = jnp.where(whole_species, by_species, by_count)
    return jnp.where(masked, MASK_TOKEN, species), masked


def minimum_distance(frac, lattice, atom_mask, single_atom_distance: float):
    """Smallest minimum-image distance (Å) between two real atoms; ``single_atom_distance`` for one atom."""
    distances = pairwise_minimum_image_distances(frac[None], lattice[None])[0]
    n = frac.shape[0]
    pair = atom_mask[:, None] & atom_mask[None, :] & ~jnp.eye(n, dtype=bool)
    smallest = jnp.min(jnp.where(pair, distances, jnp.inf))
    return jnp.where(jnp.any(pair), smallest, single_atom_distance)


def add_noise(key, frac, lattice, atom_mask, sigma):
    """(noisy frac (N, 3) wrapped into [0, 1), Cartesian noise (N, 3) in Å, zero on padding)."""
    noise = sigma * jax.random.normal(key, frac.shape, frac.dtype) * atom_mask[:, None]
    return wrap(frac + cart_to_frac(noise, lattice)), noise


def corrupt_with_mask(key, frac, lattice, species, atom_mask, masked, config: CorruptionConfig) -> Corrupted:
    """Mask the atoms ``masked`` (N,) bool (e.g. the evaluation's fixed masks) and add positional noise."""
    ratio = config.sigma_ratio
    if config.sigma_ratio_max is not None:
        key, ratio_key = jax.random.split(key)
        ratio = jax.random.uniform(ratio_key, (), minval=config.sigma_ratio, maxval=config.sigma_ratio_max)
    sigma = ratio * minimum_distance(frac, lattice, atom_mask, config.single_atom_distance)
    noisy, noise = add_noise(key, frac, lattice, atom_mask, sigma)
    return Corrupted(noisy, jnp.where(masked, MASK_TOKEN, species), masked, noise, sigma)


def corrupt(key, frac, lattice, species, atom_mask, config: CorruptionConfig, whole_species=None) -> Corrupted:
    """Mask species and add positional noise to one structure (see module docstring and :func:`mask_species`)."""
    mask_key, noise_key = jax.random.split(key)
    _, masked = mask_species(mask_key, species, atom_mask, config, whole_species)
    return corrupt_with_mask(noise_key, frac, lattice, species, atom_mask, masked, config)
