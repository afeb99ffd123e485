"""Fourier features of fractional differences and the time embedding against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np

from dismax.nn.periodic import fractional_fourier_features, mean_fourier_context, sinusoidal_time_embedding


def test_fourier_features_order_and_integer_shift_invariance():
    diff = jnp.asarray([[0.1, -0.3, 0.45]])
    n_freq = 3
    features = np.asarray(fractional_fourier_features(diff, n_freq))
    assert features.shape == (1, 2 * 3 * n_freq)
    angles = 2 * np.pi * np.asarray(diff)[0][:, None] * np.arange(n_freq)            # (component, k)
    np.testing.assert_allclose(features[0], np.concatenate([np.sin(angles).ravel(), np.cos(angles).ravel()]),
                               atol=1e-6)
    shifted = np.asarray(fractional_fourier_features(diff + jnp.asarray([[1.0, -2.0, 3.0]]), n_freq))
    np.testing.assert_allclose(shifted, features, atol=1e-5)


def test_mean_fourier_context_equals_the_dense_pair_average():
    frac = jax.random.uniform(jax.random.PRNGKey(0), (7, 3))
    n_freq = 4
    pairs = fractional_fourier_features(frac[None, :, :] - frac[:, None, :], n_freq)   # (i, j, F)
    np.testing.assert_allclose(np.asarray(mean_fourier_context(frac, n_freq)), np.asarray(pairs.mean(axis=1)),
                               atol=1e-5)
    translated = mean_fourier_context((frac + jnp.asarray([0.3, 0.7, 0.1])) % 1.0, n_freq)
    np.testing.assert_allclose(np.asarray(translated), np.asarray(mean_fourier_context(frac, n_freq)), atol=1e-5)


def test_sinusoidal_time_embedding_closed_form():
    t = jnp.asarray([0, 1, 250])
    dim = 8
    embedding = np.asarray(sinusoidal_time_embedding(t, dim))
    frequencies = np.exp(-np.log(10000.0) / (dim // 2 - 1) * np.arange(dim // 2))
    arguments = np.asarray(t)[:, None] * frequencies
    np.testing.assert_allclose(embedding, np.concatenate([np.sin(arguments), np.cos(arguments)], -1), atol=1e-4)
