"""Float64 execution for the benchmark metrics (the periodic geometry itself lives in :mod:`dismax.geometry`)."""

from __future__ import annotations

import functools

import jax


def float64(function):
    """Run ``function`` with 64-bit JAX arrays (bin and tolerance decisions must match NumPy exactly)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return function(*args, **kwargs)

    return wrapper
