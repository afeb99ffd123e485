"""Per-atom layers and species pooling: shapes, per-atom independence, permutation equivariance, values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.nn.pointwise import PerAtomMLP, species_pool, xavier_uniform


def test_xavier_uniform_bound_uses_the_given_fans():
    values = np.asarray(xavier_uniform(3, 1536)(jax.random.PRNGKey(0), (3, 512)))
    bound = math.sqrt(6 / (3 + 1536))
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound


def test_per_atom_mlp_acts_on_every_atom_separately():
    model = PerAtomMLP(features=(16, 8), first_kernel_width=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 3))
    params = model.init(jax.random.PRNGKey(2), x)
    out = model.apply(params, x)
    assert out.shape == (2, 10, 8)
    permutation = np.random.default_rng(0).permutation(10)
    np.testing.assert_allclose(np.asarray(model.apply(params, x[:, permutation])), np.asarray(out)[:, permutation],
                               rtol=1e-6)
    changed = model.apply(params, x.at[:, 4].set(5.0))
    np.testing.assert_array_equal(np.delete(np.asarray(changed), 4, axis=1), np.delete(np.asarray(out), 4, axis=1))


def test_species_pool_values_and_channel_major_order():
    features = jnp.arange(2 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 2)  # (B, N, C), species blocks (2, 3)
    mean = np.asarray(species_pool(features, (2, 3), "mean"))
    f = np.asarray(features)
    blocks = [f[:, :2].mean(axis=1), f[:, 2:].mean(axis=1)]                 # each (B, C)
    expected = np.stack(blocks, axis=-1).reshape(2, -1)                     # index c * n_el + e
    np.testing.assert_allclose(mean, expected)
    maximum = np.asarray(species_pool(features, (2, 3), "max"))
    np.testing.assert_allclose(maximum, np.stack([f[:, :2].max(axis=1), f[:, 2:].max(axis=1)], -1).reshape(2, -1))
    mix = np.asarray(species_pool(features, (2, 3), "mix"))
    np.testing.assert_allclose(mix, np.concatenate([mean, maximum], axis=-1))
    with pytest.raises(ValueError, match="sum to 4"):
        species_pool(features, (1, 3))
    with pytest.raises(ValueError, match="pooling mode"):
        species_pool(features, (2, 3), "median")
