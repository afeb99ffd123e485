"""Radial basis and cutoff envelope against their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np

from dismax.nn.radial import bessel_basis, polynomial_envelope


def test_bessel_basis_equals_closed_form_and_its_limit_at_zero():
    cutoff, n_basis = 5.0, 8
    r = np.array([0.3, 1.0, 2.5, 4.9])
    n = np.arange(1, n_basis + 1)
    expected = np.sqrt(2 / cutoff) * np.sin(n * np.pi * r[:, None] / cutoff) / r[:, None]
    values = np.asarray(bessel_basis(jnp.asarray(r), n_basis, cutoff))
    assert values.shape == (4, n_basis)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    at_zero = np.asarray(bessel_basis(jnp.zeros(1), n_basis, cutoff))[0]
    np.testing.assert_allclose(at_zero, np.sqrt(2 / cutoff) * n * np.pi / cutoff, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda x: bessel_basis(x, n_basis, cutoff).sum())(0.0))))


def test_polynomial_envelope_is_one_at_zero_and_vanishes_smoothly_at_the_cutoff():
    cutoff, p = 4.0, 6
    r = np.linspace(0.0, 5.0, 11)
    x = r / cutoff
    expected = np.where(x < 1, 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1)
                        - p * (p + 1) / 2 * x ** (p + 2), 0.0)
    np.testing.assert_allclose(np.asarray(polynomial_envelope(jnp.asarray(r), cutoff, p)), expected, atol=1e-6)
    assert float(polynomial_envelope(jnp.asarray(0.0), cutoff)) == 1.0
    first = jax.grad(lambda s: polynomial_envelope(s, cutoff))
    second = jax.grad(first)
    just_below = jnp.asarray(cutoff * (1 - 1e-4))
    assert abs(float(polynomial_envelope(just_below, cutoff))) < 1e-8
    assert abs(float(first(just_below))) < 1e-5 and abs(float(second(just_below))) < 1e-2
    assert float(polynomial_envelope(jnp.asarray(cutoff), cutoff)) == 0.0
