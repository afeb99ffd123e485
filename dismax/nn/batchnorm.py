"""BatchNorm + ReLU over the rows of a (rows, channels) matrix, with a hand-written backward pass.

Same numbers as ``flax.linen.BatchNorm`` followed by ``relu`` (statistics per channel over the rows, the
fast variance E[h²] − E[h]² clipped at zero, biased running variance, Flax momentum). The normalisation is
one per-channel affine map h · slope + intercept in both passes, and the backward pass needs only the
channel sums Σd and Σd·h of the masked cotangent d, so besides these plain reductions the forward pass
makes one element-wise pass (normalise-shift-ReLU) and the backward two (the mask, then the input
cotangent slope · d + h · u + v), where autodiff of the composed operations also writes the centred and
normalised activations and reduces for the bias gradient.

A bias added to the input right before the normalisation (``input_bias``) cancels in training mode (the
batch mean absorbs it): it is never added to the (rows, channels) matrix, only to the batch mean that
feeds the running mean, and subtracted from the running mean in evaluation mode. Outputs and running
statistics equal those of BatchNorm(h + input_bias); its gradient is exactly zero in training mode.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _statistics(h: jax.Array):
    """Per-channel batch mean and variance E[h²] − E[h]² (clipped at zero) of h (rows, C), one pass."""
    rows = h.shape[0]
    mean = jnp.sum(h, axis=0) / rows
    return mean, jnp.maximum(jnp.sum(h * h, axis=0) / rows - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu(h: jax.Array, scale: jax.Array, offset: jax.Array, epsilon: float):
    """Training-mode relu((h − μ) / sqrt(σ² + ε) · scale + offset) with μ, σ² the per-channel batch
    statistics of h (rows, C); returns (output (rows, C), μ (C,), σ² (C,)), all differentiable."""
    return _batch_norm_relu_forward(h, scale, offset, epsilon)[0]


def _batch_norm_relu_forward(h, scale, offset, epsilon):
    mean, variance = _statistics(h)
    inverse_std = jax.lax.rsqrt(variance + epsilon)
    # per-channel affine map h · slope + intercept, so every pass over h is one fused element-wise map
    slope = inverse_std * scale
    intercept = offset - mean * slope
    output = jnp.maximum(h * slope + intercept, 0.0)
    return (output, mean, variance), (h, mean, inverse_std, slope, intercept)


def _batch_norm_relu_backward(epsilon, residuals, cotangents):
    del epsilon  # inverse_std carries it
    h, mean, inverse_std, slope, intercept = residuals
    d_output, d_mean, d_variance = cotangents
    rows = h.shape[0]
    # one reduction pass for both channel sums; the ReLU mask is recomputed from h, and the normalised
    # activations (h − μ)·inverse_std enter through Σ d·h − μ Σ d so no (rows, C) temporary is kept
    d_pre = jnp.where(h * slope + intercept > 0, d_output, 0.0)
    d_offset = jnp.sum(d_pre, axis=0)
    d_scale = inverse_std * (jnp.sum(d_pre * h, axis=0) - mean * d_offset)
    # d_h = slope · (d_pre − (d_offset + normalised · d_scale) / rows) + (d_mean + 2 d_variance (h − μ)) / rows
    # (the clip of the variance at zero acts only on rounding noise of a constant channel, where h − μ is
    # rounding noise too, and is not differentiated), written as slope · d_pre + h · u + v
    u = (2.0 * d_variance - slope * inverse_std * d_scale) / rows
    v = (d_mean - slope * d_offset) / rows - mean * u
    return slope * d_pre + h * u + v, d_scale, d_offset


batch_norm_relu.defvjp(_batch_norm_relu_forward, _batch_norm_relu_backward)


class BatchNormReLU(nn.Module):
    """relu(BatchNorm(h + input_bias)) over the rows of h (rows, C), Flax BatchNorm's parameters and
    statistics: params ``scale`` (ones), ``bias`` (zeros); batch_stats ``mean`` (zeros), ``var`` (ones).

    ``momentum`` is Flax's (running = momentum · running + (1 − momentum) · batch); ``input_bias`` (C,)
    is the bias of the layer before, folded in without touching h (see the module docstring).
    """

    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, h: jax.Array, train: bool, input_bias: jax.Array | None = None) -> jax.Array:
        channels = h.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        offset = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,))
        input_bias = jnp.zeros((channels,), h.dtype) if input_bias is None else input_bias
        if not train:
            inverse_std = jax.lax.rsqrt(running_var.value + self.epsilon)
            shift = running_mean.value - input_bias
            return jnp.maximum((h - shift) * (inverse_std * scale) + offset, 0.0)
        output, mean, variance = batch_norm_relu(h, scale, offset, self.epsilon)
        if not self.is_initializing():
            keep = self.momentum
            running_mean.value = keep * running_mean.value + (1.0 - keep) * jax.lax.stop_gradient(mean + input_bias)
            running_var.value = keep * running_var.value + (1.0 - keep) * jax.lax.stop_gradient(variance)
        return output
