"""Per-atom (point-wise) layers and per-species pooling for fixed-composition point clouds.

A PyTorch ``Conv2d`` with kernel (1, F) over a (B, 1, N, F) tensor, or a 1×1 convolution over channels,
is a dense layer applied to every atom separately; these blocks use dense layers on (..., N, F) arrays
instead (faster under ``vmap``) and offer the PyTorch initialisation so both start from the same
distribution of weights.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLING_MODES = ("mean", "max", "mix")


def xavier_uniform(fan_in: int, fan_out: int) -> Callable:
    """Uniform(−b, b) with b = sqrt(6 / (fan_in + fan_out)), the fans given explicitly.

    PyTorch computes fans of a conv kernel as channels × kernel size, which differs from the fans of the
    equivalent dense kernel (e.g. Conv2d(1 → 512, kernel (1, 3)) has fan_in 3, fan_out 1536); passing the
    PyTorch fans reproduces ``torch.nn.init.xavier_uniform_`` for the layer being replaced.
    """
    bound = math.sqrt(6.0 / (fan_in + fan_out))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int | None = None, fan_out: int | None = None, name: str | None = None):
    """``nn.Dense`` with Xavier-uniform weights (optionally PyTorch conv fans) and zero bias.

    Without explicit fans it is ordinary Glorot-uniform (fans of the dense kernel itself).
    """
    kernel_init = (xavier_uniform(fan_in, fan_out) if fan_in is not None
                   else nn.initializers.xavier_uniform())
    return nn.Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=name)


class PerAtomMLP(nn.Module):
    """Dense layers applied to every atom of (..., N, F) → (..., N, features[-1]), LeakyReLU after each.

    ``first_kernel_width`` is the width F of the (1, F) convolution the first layer stands for; it only
    sets the PyTorch-style fans of the first layer's initialisation (fan_in = F, fan_out = features[0]·F).
    """

    features: Sequence[int]
    negative_slope: float = 0.2
    first_kernel_width: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # all atoms of all structures as the rows of one matrix: the weight gradients then contract one
        # axis of 2-D arrays, which XLA does without transposed copies of the activations
        leading = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        for i, width in enumerate(self.features):
            if i == 0 and self.first_kernel_width is not None:
                kw = self.first_kernel_width
                layer = dense(width, fan_in=kw, fan_out=width * kw, name=f"layer_{i}")
            else:
                layer = dense(width, name=f"layer_{i}")
            x = nn.leaky_relu(layer(x), self.negative_slope)
        return x.reshape(leading + x.shape[-1:])


def species_pool(features: jax.Array, counts: Sequence[int], mode: str = "mean") -> jax.Array:
    """Pool per-atom features over contiguous species blocks.

    features: (..., N, C) with atoms ordered in blocks of ``counts`` (static ints summing to N).
    Returns (..., C·n_el) flattened channel-major (index c·n_el + e, PyTorch's ``view`` of (C, n_el));
    ``mode='mix'`` returns the mean-pooled then the max-pooled vector, (..., 2·C·n_el).
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES}")
    if sum(counts) != features.shape[-2]:
        raise ValueError(f"species counts {tuple(counts)} sum to {sum(counts)}, features have {features.shape[-2]} atoms")

    def pool(reduce):
        parts, start = [], 0
        for count in counts:
            parts.append(reduce(features[..., start:start + count, :], axis=-2))
            start += count
        stacked = jnp.stack(parts, axis=-1)  # (..., C, n_el)
        return stacked.reshape(stacked.shape[:-2] + (-1,))

    if mode == "mean":
        return pool(jnp.mean)
    if mode == "max":
        return pool(jnp.max)
    return jnp.concatenate([pool(jnp.mean), pool(jnp.max)], axis=-1)
