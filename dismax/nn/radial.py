"""Radial bases for message passing: Bessel functions with a smooth polynomial cutoff envelope."""

from __future__ import annotations

import jax.numpy as jnp


def bessel_basis(r, n_basis: int, cutoff: float):
    """sqrt(2/r_c) sin(nπ r/r_c)/r for n = 1..n_basis: (...,) → (..., n_basis); finite at r = 0."""
    n = jnp.arange(1, n_basis + 1, dtype=r.dtype)
    safe_r = jnp.where(r > 1e-9, r, 1e-9)
    values = jnp.sqrt(2.0 / cutoff) * jnp.sin(n * jnp.pi * safe_r[..., None] / cutoff) / safe_r[..., None]
    limit = jnp.sqrt(2.0 / cutoff) * n * jnp.pi / cutoff
    return jnp.where(r[..., None] > 1e-9, values, limit)


def polynomial_envelope(r, cutoff: float, p: int = 6):
    """DimeNet polynomial envelope u(r/r_c): 1 at 0, smooth (C²) decay to exactly 0 at and beyond r_c."""
    x = r / cutoff
    value = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
    return jnp.where(x < 1.0, value, 0.0)
