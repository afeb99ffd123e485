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


def mean_fourier_context(frac, n_freq: int):
    """Mean over all atoms j of the Fourier features of (f_j - f_i) mod 1, for every atom i, in O(N·F).

    frac (N, 3) → (N, 2·3·n_freq), the same ordering as :func:`fractional_fourier_features`. Uses
    mean_j e^{2πik(f_j - f_i)} = S(k) e^{-2πik f_i} with the per-axis structure factor S(k) = mean_j e^{2πik f_j},
    so it equals the mean-aggregated pair features of a dense N × N graph without building it. The phases
    of the cell-wide Bragg reflections relative to each atom are what tells an atom where the global lattice is.
    """
    sin, cos = jnp.split(fractional_fourier_features(frac, n_freq), 2, axis=-1)  # each (N, 3F)
    structure_sin, structure_cos = jnp.mean(sin, axis=0), jnp.mean(cos, axis=0)
    # sin(a_j - a_i) and cos(a_j - a_i) averaged over j
    mean_sin = structure_sin * cos - structure_cos * sin
    mean_cos = structure_cos * cos + structure_sin * sin
    return jnp.concatenate([mean_sin, mean_cos], axis=-1)


def sinusoidal_time_embedding(t, dim: int):
    """Transformer-style embedding of (integer or real) time steps t (...,) → (..., dim)."""
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = jnp.exp(-scale * jnp.arange(half, dtype=jnp.float32))
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
