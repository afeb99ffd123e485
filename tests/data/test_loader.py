"""Batch loader: determinism in (seed, step), epoch coverage, resumption and the 63 lattice translations."""

import json

import numpy as np
import pytest

from dismax import cluster_expansion
from dismax.data.loader import BatchLoader, BucketedLoader, assign_buckets, choose_buckets, cubic_translations, translate
from dismax.errors import DismaxConfigError
from dismax.structures import Crystals


def alloy_like(n_structures: int, seed: int = 0) -> Crystals:
    """Random Fe154 Ni51 Cr51 configurations on the 256-site FCC cell, atoms in species blocks."""
    lattice = cluster_expansion.fcc_lattice()
    rng = np.random.default_rng(seed)
    species_of_site = np.repeat(np.arange(3), cluster_expansion.COMPOSITION)
    occupations = np.stack([rng.permutation(species_of_site) for _ in range(n_structures)])
    order = np.argsort(occupations, axis=1, kind="stable")
    species = np.asarray(cluster_expansion.ATOMIC_NUMBERS)[np.take_along_axis(occupations, order, axis=1)]
    return Crystals(lattice.frac[order], np.broadcast_to(lattice.lattice, (n_structures, 3, 3)).copy(), species)


def occupation_on_sites(frac: np.ndarray, species: np.ndarray) -> np.ndarray:
    """Species index per lattice site (raises KeyError if an atom is off-lattice)."""
    lattice = cluster_expansion.fcc_lattice()
    site_of = {tuple(np.round(f * 8).astype(int) % 8): k for k, f in enumerate(lattice.frac)}
    occupation = -np.ones(lattice.n_sites, int)
    for f, z in zip(frac, species):
        key = np.round(f * 8).astype(int) % 8
        assert np.allclose(f * 8, np.round(f * 8), atol=1e-9)
        occupation[site_of[tuple(key)]] = cluster_expansion.ATOMIC_NUMBERS.index(int(z))
    assert (occupation >= 0).all()
    return occupation


def test_translations_are_lattice_symmetries():
    shifts = cubic_translations()
    assert shifts.shape == (64, 3) and np.all(shifts[0] == 0)
    assert len({tuple(s) for s in shifts}) == 64
    data = alloy_like(1)
    lattice = cluster_expansion.fcc_lattice()
    import jax.numpy as jnp

    base = occupation_on_sites(data.frac[0], data.species[0])
    base_counts = np.asarray(cluster_expansion.pair_counts(jnp.asarray(base), lattice))
    for t in (1, 17, 63):
        moved = translate(data, shifts[t][None])
        assert np.all((moved.frac >= 0) & (moved.frac < 1))
        np.testing.assert_array_equal(moved.species, data.species)  # species blocks unchanged
        occupation = occupation_on_sites(moved.frac[0], moved.species[0])
        assert not np.array_equal(occupation, base)
        # a translation permutes sites and keeps every pair count, hence the CE energy
        counts = cluster_expansion.pair_counts(jnp.asarray(occupation), lattice)
        np.testing.assert_array_equal(np.asarray(counts), base_counts)


def test_deterministic_in_seed_and_step():
    data = alloy_like(10)
    a = BatchLoader(data, batch_size=3, seed=4, augment="online")
    b = BatchLoader(data, batch_size=3, seed=4, augment="online")
    steps = [7, 0, 3, 7, 12]
    for step in steps:  # random access, different order on each loader
        np.testing.assert_array_equal(a.batch(step).frac, b.batch(step).frac)
    for step in reversed(steps):
        np.testing.assert_array_equal(a.batch(step).frac, b.batch(step).frac)
    c = BatchLoader(data, batch_size=3, seed=5, augment="online")
    assert not all(np.array_equal(a.batch(s).frac, c.batch(s).frac) for s in range(3))


def test_epochs_cover_every_structure_once():
    data = alloy_like(12)
    loader = BatchLoader(data, batch_size=4, seed=1)
    assert loader.steps_per_epoch == 3
    for epoch in range(2):
        seen = np.concatenate([loader.indices(epoch * 3 + k)[0] for k in range(3)])
        assert sorted(seen.tolist()) == list(range(12))
    first = np.concatenate([loader.indices(k)[0] for k in range(3)])
    second = np.concatenate([loader.indices(3 + k)[0] for k in range(3)])
    assert not np.array_equal(first, second)  # reshuffled each epoch


def test_offline_augmentation_covers_all_translations():
    data = alloy_like(3)
    loader = BatchLoader(data, batch_size=8, seed=2, augment="offline")
    assert loader.epoch_size == 192 and loader.steps_per_epoch == 24
    pairs = [tuple(p) for step in range(24) for p in zip(*loader.indices(step))]
    assert len(set(pairs)) == 192
    # online: one translation per structure per epoch, all 64 used over many epochs
    online = BatchLoader(data, batch_size=3, seed=2, augment="online")
    used = {int(t) for step in range(200) for t in online.indices(step)[1]}
    assert len(used) == 64
    batch = loader.batch(5)
    structure, translation = loader.indices(5)
    expected = translate(Crystals(data.frac[structure], data.lattice[structure], data.species[structure]),
                         cubic_translations()[translation])
    np.testing.assert_array_equal(batch.frac, expected.frac)


def test_resume_from_saved_state():
    data = alloy_like(10)
    loader = BatchLoader(data, batch_size=4, seed=3, augment="online")
    for _ in range(6):
        next(loader)
    saved = json.loads(json.dumps(loader.state()))
    expected = [next(loader).frac for _ in range(4)]
    resumed = BatchLoader(data, batch_size=4, seed=3, augment="online").restore(saved)
    for want in expected:
        np.testing.assert_array_equal(next(resumed).frac, want)
    with pytest.raises(DismaxConfigError, match="seed"):
        BatchLoader(data, batch_size=4, seed=9, augment="online").restore(saved)


def test_bad_settings():
    data = alloy_like(2)
    with pytest.raises(DismaxConfigError, match="augment"):
        BatchLoader(data, batch_size=1, augment="rotate")
    with pytest.raises(DismaxConfigError, match="exceeds"):
        BatchLoader(data, batch_size=3)


def test_size_buckets():
    assert choose_buckets([8, 16, 8, 12]) == (8, 12, 16)  # few counts: one bucket each, no padding
    assert choose_buckets(list(range(1, 101)), max_buckets=4) == (25, 50, 75, 100)
    np.testing.assert_array_equal(assign_buckets([3, 8, 9, 16], (8, 16)), [0, 0, 1, 1])
    with pytest.raises(DismaxConfigError, match="frame 1 has 17 atoms, more than the largest bucket"):
        assign_buckets([3, 17], (8, 16))


def test_bucketed_loader_serves_one_bucket_per_batch_and_covers_every_frame():
    buckets = [{"x": np.arange(5)[:, None] * np.ones((1, 8))}, {"x": 100 + np.arange(2)[:, None] * np.ones((1, 16))}]
    loader = BucketedLoader(buckets, batch_size=2, seed=3)
    assert loader.steps_per_epoch == 3 + 1  # the last batch of each bucket is completed
    seen = []
    for step in range(loader.steps_per_epoch):
        x = loader.batch(step)["x"]
        assert x.shape in ((2, 8), (2, 16))
        seen += list(x[:, 0])
    assert set(seen) == {0, 1, 2, 3, 4, 100, 101} and len(seen) == 8
    again = BucketedLoader(buckets, batch_size=2, seed=3)
    assert all(np.array_equal(loader.batch(s)["x"], again.batch(s)["x"]) for s in range(12))
    other_epoch = [tuple(loader.batch(s)["x"][:, 0]) for s in range(4, 8)]
    assert other_epoch != [tuple(loader.batch(s)["x"][:, 0]) for s in range(4)]
    loader.step = 5
    resumed = BucketedLoader(buckets, batch_size=2, seed=3).restore(loader.state())
    assert resumed.step == 5
    with pytest.raises(DismaxConfigError, match="settings differ"):
        BucketedLoader(buckets, batch_size=1, seed=3).restore(loader.state())


def test_process_parts_concatenate_to_the_global_batch():
    data = alloy_like(10)
    loader = BatchLoader(data, batch_size=4, seed=2, augment="online")
    parts = [loader.batch(3, part=p, n_parts=2).frac for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), loader.batch(3).frac)
    buckets = [{"x": np.arange(6)[:, None] * np.ones((1, 8))}]
    bucketed = BucketedLoader(buckets, batch_size=4, seed=1)
    np.testing.assert_array_equal(np.concatenate([bucketed.batch(2, p, 4)["x"] for p in range(4)]),
                                  bucketed.batch(2)["x"])
    for bad in [(0, 3), (2, 2), (-1, 2)]:
        with pytest.raises(DismaxConfigError, match="cannot be split"):
            loader.batch(0, *bad)
        with pytest.raises(DismaxConfigError, match="cannot be split"):
            bucketed.batch(0, *bad)
