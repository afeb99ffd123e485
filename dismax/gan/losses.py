"""WGAN-GP losses of CryinGAN.

A critic maps a batch (B, ...) to (B, 10); its score is the mean of the 10 outputs over the batch.
The gradient penalty (Gulrajani et al.) is taken at random interpolates between real and fake inputs:
GP = weight · mean_b (‖∇_x̂ f(x̂_b)‖₂ − 1)², where f is the *sum* of the 10 outputs (the reference's
convention, ``gp_on="sum"``) or their mean (``gp_on="mean"``), and the norm runs over all entries of
one sample.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

GP_REDUCTIONS = ("sum", "mean")


class CriticTerms(NamedTuple):
    """Scores (batch means of the 10-output mean) and gradient penalty of one critic."""

    real: jax.Array
    fake: jax.Array
    penalty: jax.Array

    @property
    def loss(self) -> jax.Array:
        """Critic loss D(fake) − D(real) + GP."""
        return self.fake - self.real + self.penalty

    @property
    def wasserstein(self) -> jax.Array:
        return self.real - self.fake


def interpolate(real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
    """α·real + (1 − α)·fake with one α ~ U[0, 1) per sample, treated as a constant input."""
    alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    return jax.lax.stop_gradient(alpha * real + (1.0 - alpha) * fake)


def penalty_from_gradients(gradients: jax.Array, weight: float = 10.0) -> jax.Array:
    """weight · mean over samples of (‖g_b‖₂ − 1)², g_b flattened per sample."""
    norms = jnp.sqrt(jnp.sum(gradients.reshape(gradients.shape[0], -1) ** 2, axis=1))
    return weight * jnp.mean((norms - 1.0) ** 2)


def critic_terms(critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array, key: jax.Array,
                 gp_weight: float = 10.0, gp_on: str = "sum") -> CriticTerms:
    """Scores on real and fake inputs (one pass over [real; fake]) and the gradient penalty.

    ``critic`` must treat samples independently (no batch statistics), so the input gradient of the
    summed interpolate outputs gives every sample's own gradient; the penalty is differentiable in the
    critic's parameters (double backpropagation).
    """
    if gp_on not in GP_REDUCTIONS:
        raise ValueError(f"gp_on must be one of {GP_REDUCTIONS}, got {gp_on!r}")
    batch = real.shape[0]
    outputs = critic(jnp.concatenate([real, fake], axis=0))

    def interpolate_output(x):
        out = critic(x)
        return (out.sum(-1) if gp_on == "sum" else out.mean(-1)).sum()

    gradients = jax.grad(interpolate_output)(interpolate(real, fake, key))
    return CriticTerms(
        real=outputs[:batch].mean(),
        fake=outputs[batch:].mean(),
        penalty=penalty_from_gradients(gradients, gp_weight),
    )
