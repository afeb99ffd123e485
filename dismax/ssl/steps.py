"""Batched pieces shared by the pre-training, GAN and evaluation code of :mod:`dismax.ssl`.

A batch is ``Batch(frac (B,N,3), lattice (B,3,3), species (B,N), atom_mask (B,N))`` (padded, see
:mod:`dismax.ssl.data`). The generator is the pre-trained backbone: from a corrupted structure it predicts
the species of the masked atoms and the Cartesian positional noise; one denoising pass gives
positions wrap(noisy − L⁻ᵀ·predicted noise) and the species argmax + 1 on the masked atoms (the visible
atoms keep theirs: with the loss on masked atoms only, L6, the other logits are untrained).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dismax.geometry import cart_to_frac, wrap
from dismax.ssl.corruption import CorruptionConfig, Corrupted, corrupt


class Batch(NamedTuple):
    frac: jax.Array
    lattice: jax.Array
    species: jax.Array
    atom_mask: jax.Array


def corrupt_batch(key, batch: Batch, config: CorruptionConfig) -> Corrupted:
    """Corrupt every structure of ``batch`` with its own key (Corrupted with a leading batch axis); with
    ``config.faithful`` one coin decides the masking mode of the whole batch, as in the reference."""
    keys = jax.random.split(key, batch.frac.shape[0])
    whole_species = None
    if config.faithful:
        coin = jax.random.uniform(jax.random.fold_in(key, 1))
        whole_species = jnp.broadcast_to(coin < config.species_mask_probability,
                                         batch.frac.shape[:1])
    return jax.vmap(partial(corrupt, config=config))(keys, batch.frac, batch.lattice, batch.species, batch.atom_mask,
                                                     whole_species=whole_species)


def apply_batch(network, params, frac, lattice, species, atom_mask):
    """The backbone on every structure of a batch (``species`` ints (B,N) or probabilities (B,N,119))."""
    return jax.vmap(lambda f, l, s, m: network.apply(params, f, l, s, m))(frac, lattice, species, atom_mask)


def reconstruction_terms(logits, predicted_noise, batch: Batch, corrupted: Corrupted, all_atoms: bool = False):
    """Losses and diagnostics of one denoising pass (means over the batch's real atoms):

    species_loss: NLL of the true class (Z − 1) over masked atoms (all real atoms with ``all_atoms``, the
    reference's L6); position_loss: mean over real atoms and xyz of (predicted − true noise)² in Å²;
    accuracy: argmax = true species on masked atoms; residual_rms / input_rms: RMS Cartesian error (Å)
    after the pass / of the input noise (a zero-displacement prediction keeps input_rms).
    """
    real = batch.atom_mask.astype(logits.dtype)
    target = jnp.maximum(batch.species - 1, 0)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], axis=-1)[..., 0]
    weight = real if all_atoms else corrupted.masked.astype(logits.dtype)
    n_weight = jnp.maximum(jnp.sum(weight), 1.0)
    n_real = jnp.maximum(jnp.sum(real), 1.0)
    residual = (predicted_noise - corrupted.noise) * real[..., None]
    masked = corrupted.masked.astype(logits.dtype)
    correct = (jnp.argmax(logits, axis=-1) == target).astype(logits.dtype)
    return {
        "species_loss": jnp.sum(nll * weight) / n_weight,
        "position_loss": jnp.sum(residual**2) / (3.0 * n_real),
        "accuracy": jnp.sum(correct * masked) / jnp.maximum(jnp.sum(masked), 1.0),
        "residual_rms": jnp.sqrt(jnp.sum(residual**2) / n_real),
        "input_rms": jnp.sqrt(jnp.sum(corrupted.noise**2) / n_real),
    }


def reconstruct(logits, predicted_noise, lattice, corrupted: Corrupted):
    """(frac (B,N,3), species (B,N)) after one denoising pass (see module docstring)."""
    frac = wrap(corrupted.frac - cart_to_frac(predicted_noise, lattice))
    species = jnp.where(corrupted.masked, jnp.argmax(logits, axis=-1) + 1, corrupted.species)
    return frac, species.astype(jnp.int32)


class Generator(NamedTuple):
    """A trained generator: the backbone network and parameters, the corruption its inputs get by default
    and the data it was trained on (a :class:`dismax.ssl.data.DataConfig`)."""

    network: object
    params: dict
    corruption: CorruptionConfig
    data: object


def transfer_params(source, target):
    """``target`` with every leaf that ``source`` has at the same path and shape copied from ``source`` (a
    pre-trained backbone into a discriminator or property model; new heads keep their fresh values)."""
    flat_source = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(source)}

    def pick(path, leaf):
        found = flat_source.get(jax.tree_util.keystr(path))
        # a copy: a state holding one buffer twice cannot be donated to a jitted step
        return jnp.array(found, copy=True) if found is not None and found.shape == leaf.shape else leaf

    return jax.tree_util.tree_map_with_path(pick, target)


def committed(state):
    """``state`` with every array committed to this process's first device. A state mixing restored (committed)
    and fresh (uncommitted) arrays makes a jitted step compile twice: its outputs are all committed."""
    return jax.device_put(state, jax.local_devices()[0])
