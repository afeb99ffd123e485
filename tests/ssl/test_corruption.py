"""Corruption statistics (spec ssl_gan.md §4 with fixes L3–L5): exact counts without replacement, every
atom reachable, whole-species masking, periodic σ, the one-atom cell; the faithful mode's reference bias."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dismax.ssl.corruption import (CorruptionConfig, corrupt, count_mask, masked_count, minimum_distance,
                                   reference_count_mask, reference_species_mask, species_mask)
from dismax.ssl.steps import Batch, corrupt_batch

ONE_KEYS = jax.random.split(jax.random.PRNGKey(0), 2000)


def test_count_masking_is_exact_distinct_and_reaches_every_atom():
    n_real, n_pad = 20, 4
    atom_mask = jnp.arange(n_real + n_pad) < n_real
    masks = np.asarray(jax.vmap(lambda k: count_mask(k, atom_mask, 0.15))(ONE_KEYS))
    assert int(masked_count(20, 0.15)) == 3 == math.ceil(0.15 * 20 - 1e-9)
    assert (masks.sum(axis=1) == 3).all()            # exact ⌈0.15·N⌉, hence distinct (a bool mask)
    assert not masks[:, n_real:].any()               # padding never masked
    hits = masks[:, :n_real].mean(axis=0)
    assert (hits > 0).all() and masks[:, n_real - 1].any()   # the last atom too (reference L3 misses it)
    np.testing.assert_allclose(hits, 3 / 20, atol=0.03)      # uniform
    assert int(masked_count(1, 0.15)) == 1 and int(masked_count(7, 0.15)) == 2


def test_species_masking_masks_one_whole_species_uniformly():
    species = jnp.array([26, 28, 26, 24, 28, 26, 0])
    atom_mask = jnp.array([True] * 6 + [False])
    masks = np.asarray(jax.vmap(lambda k: species_mask(k, species, atom_mask))(ONE_KEYS))
    chosen = []
    for mask in masks:
        masked_species = set(np.asarray(species)[mask].tolist())
        assert len(masked_species) == 1
        z = masked_species.pop()
        np.testing.assert_array_equal(mask, (np.asarray(species) == z) & np.asarray(atom_mask))
        chosen.append(z)
    fractions = [np.mean(np.array(chosen) == z) for z in (24, 26, 28)]
    np.testing.assert_allclose(fractions, 1 / 3, atol=0.04)   # uniform over species, not over atoms


def test_whole_species_probability_and_mask_token():
    species = jnp.array([3, 3, 3, 3, 8, 8, 8, 8, 8, 8])
    atom_mask = jnp.ones(10, bool)
    frac = jax.random.uniform(jax.random.PRNGKey(1), (10, 3))
    config = CorruptionConfig(mask_ratio=0.15, species_mask_probability=0.5)
    out = jax.vmap(lambda k: corrupt(k, frac, 4.0 * jnp.eye(3), species, atom_mask, config))(ONE_KEYS[:400])
    counts = np.asarray(out.masked.sum(axis=1))
    whole = np.isin(counts, (4, 6))
    assert set(counts.tolist()) <= {2, 4, 6}
    assert 0.4 < whole.mean() < 0.6
    assert (np.asarray(out.species)[np.asarray(out.masked)] == 0).all()
    assert (np.asarray(out.species)[~np.asarray(out.masked)] != 0).all()


def test_sigma_uses_periodic_close_pairs_and_single_atom_fallback():
    lattice = 10.0 * jnp.eye(3)
    frac = jnp.array([[0.01, 0.5, 0.5], [0.99, 0.5, 0.5], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    atom_mask = jnp.array([True, True, True, False])   # the padding atom at the origin is 1 Å from atom 0
    np.testing.assert_allclose(minimum_distance(frac, lattice, atom_mask, 2.0), 0.2, rtol=1e-5)
    config = CorruptionConfig(sigma_ratio=0.1)
    out = corrupt(jax.random.PRNGKey(0), frac, lattice, jnp.array([1, 1, 1, 0]), atom_mask, config)
    np.testing.assert_allclose(out.sigma, 0.02, rtol=1e-5)
    assert not np.asarray(out.noise)[3].any()
    one = corrupt(jax.random.PRNGKey(0), frac[:1], lattice, jnp.array([26]), jnp.array([True]), config)
    assert bool(one.masked[0]) and int(one.species[0]) == 0
    np.testing.assert_allclose(one.sigma, 0.1 * config.single_atom_distance, rtol=1e-6)
    assert np.isfinite(np.asarray(one.frac)).all()


def test_noise_has_the_requested_scale_and_positions_wrap():
    lattice = jnp.array([[8.0, 0, 0], [1.0, 7.0, 0], [0.5, 0.3, 9.0]])
    frac = jax.random.uniform(jax.random.PRNGKey(3), (64, 3))
    atom_mask = jnp.ones(64, bool)
    config = CorruptionConfig(sigma_ratio=0.2)
    out = jax.vmap(lambda k: corrupt(k, frac, lattice, jnp.ones(64, jnp.int32), atom_mask, config))(ONE_KEYS[:50])
    sigma = float(out.sigma[0])
    np.testing.assert_allclose(np.std(np.asarray(out.noise)), sigma, rtol=0.05)
    noisy = np.asarray(out.frac)
    assert (noisy >= 0).all() and (noisy < 1).all()
    moved = (noisy - np.asarray(frac)) - np.round(noisy - np.asarray(frac))
    np.testing.assert_allclose(moved @ np.asarray(lattice), np.asarray(out.noise), atol=1e-4)


def test_faithful_count_masking_reproduces_the_reference_bias():
    n_real, n_pad = 20, 4
    atom_mask = jnp.arange(n_real + n_pad) < n_real
    masks = np.asarray(jax.jit(jax.vmap(lambda k: reference_count_mask(k, atom_mask, 0.15)))(ONE_KEYS))
    counts = masks.sum(axis=1)
    assert not masks[:, n_real - 1:].any()            # randint(0, N − 1): never the last atom, never padding
    assert counts.max() == 3 and counts.min() < 3     # ⌈0.15·20⌉ = 3 draws, with replacement
    np.testing.assert_allclose(counts.mean(), 19 * (1 - (18 / 19) ** 3), atol=0.05)
    np.testing.assert_allclose(masks[:, :n_real - 1].mean(axis=0), 1 - (18 / 19) ** 3, atol=0.03)
    hundred = jnp.ones(100, bool)                      # torch's float32 ⌈100 · 0.15⌉ is 16 draws
    most = jax.jit(jax.vmap(lambda k: reference_count_mask(k, hundred, 0.15).sum()))(ONE_KEYS[:200]).max()
    assert int(most) == 16
    one = reference_count_mask(ONE_KEYS[0], jnp.array([True, False]), 0.15)
    np.testing.assert_array_equal(one, [True, False])  # the reference errors on one atom (L4)


def test_faithful_species_masking_follows_abundance_and_skips_the_last_atom():
    species = jnp.array([26, 26, 26, 26, 26, 26, 28, 28, 24, 0])
    atom_mask = jnp.array([True] * 9 + [False])
    masks = np.asarray(jax.jit(jax.vmap(lambda k: reference_species_mask(k, species, atom_mask)))(ONE_KEYS))
    chosen = np.array([np.unique(np.asarray(species)[m]).item() for m in masks])
    assert not (chosen == 24).any()                    # Cr sits only on the last atom: never drawn
    np.testing.assert_allclose([np.mean(chosen == 26), np.mean(chosen == 28)], [6 / 8, 2 / 8], atol=0.03)
    for mask, z in zip(masks[:50], chosen[:50]):
        np.testing.assert_array_equal(mask, (np.asarray(species) == z) & np.asarray(atom_mask))


def test_faithful_batches_share_one_masking_mode():
    species = jnp.tile(jnp.array([3] * 10 + [8] * 10), (6, 1))
    batch = Batch(jax.random.uniform(jax.random.PRNGKey(2), (6, 20, 3)), jnp.tile(5.0 * jnp.eye(3), (6, 1, 1)),
                  species, jnp.ones((6, 20), bool))
    for faithful in (False, True):
        config = CorruptionConfig(species_mask_probability=0.5, faithful=faithful)
        counts = jax.jit(jax.vmap(lambda k: corrupt_batch(k, batch, config).masked.sum(axis=1)))(ONE_KEYS[:40])
        whole = np.asarray(counts) == 10
        mixed = np.sum(whole.any(axis=1) & ~whole.all(axis=1))
        assert (mixed == 0) if faithful else (mixed > 10)
        assert whole.all(axis=1).any() and (~whole).all(axis=1).any()


def test_sigma_ratio_range_draws_each_structure_its_own_level():
    lattice = 10.0 * jnp.eye(3)
    frac = jnp.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.5, 0.5, 0.5]])   # minimum distance 2 Å
    atom_mask = jnp.ones(3, bool)
    config = CorruptionConfig(sigma_ratio=0.05, sigma_ratio_max=0.25)
    out = jax.vmap(lambda k: corrupt(k, frac, lattice, jnp.ones(3, jnp.int32), atom_mask, config))(ONE_KEYS)
    ratios = np.asarray(out.sigma) / 2.0
    assert ratios.min() >= 0.05 - 1e-6 and ratios.max() <= 0.25 + 1e-6
    assert ratios.min() < 0.07 and ratios.max() > 0.23                     # the whole range is used
    np.testing.assert_allclose(ratios.mean(), 0.15, atol=0.01)             # uniform
    fixed = corrupt(ONE_KEYS[0], frac, lattice, jnp.ones(3, jnp.int32), atom_mask, CorruptionConfig(sigma_ratio=0.1))
    np.testing.assert_allclose(fixed.sigma, 0.2, rtol=1e-6)                # without the range σ̃ is fixed
