"""Periodic and time features: Fourier features of fractional differences, sinusoidal time embedding.

Fourier features of a wrapped fractional difference d = (f_j - f_i) mod 1 use integer frequencies
k = 0..n_freq-1, so they are invariant to integer shifts of either atom and to global translations.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def fractional_fourier_features(diff, n_freq: int):
    """sin/cos(2πk d) for k = 0..n_freq-1 of each component: (..., 3) → (..., 2 * 3 * n_freq).

    Ordering follows DiffCSP: all sines (component-major, then frequency), then all cosines.
    """
    freqs = 2.0 * jnp.pi * jnp.arange(n_freq, dtype=diff.dtype)
    angles = (diff[..., :, None] * freqs).reshape(*diff.shape[:-1], -1)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sinusoidal_time_embedding(t, dim: int):
    """Transformer-style embedding of (integer or real) time steps t (...,) → (..., dim)."""
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = jnp.exp(-scale * jnp.arange(half, dtype=jnp.float32))
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
