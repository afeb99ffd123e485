"""CryinGAN networks: the point-cloud generator and the coordinate / bond-distance critics.

Shapes: latent z (B, latent_dim); generated fractional coordinates (B, N, 3); critic inputs (B, N, F)
with F = 3 (coordinates) or K (sorted distances to the K nearest periodic neighbours, Å); critic outputs
(B, 10), whose mean is the critic score. Atoms are ordered in contiguous species blocks of ``counts``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dismax.gan.features import bond_distances
from dismax.nn.batchnorm import BatchNormReLU
from dismax.nn.pointwise import PerAtomMLP, dense, species_pool, xavier_uniform

CRITIC_ATOM_FEATURES = (512, 512, 256)
CRITIC_HEAD_FEATURES = (1000, 200)
CRITIC_OUTPUTS = 10


class Generator(nn.Module):
    """z (B, latent_dim) → fractional coordinates (B, N, 3) in (0, 1).

    Linear(latent → channels·N) + ReLU; per-atom transposed conv (1, 3) channels → 256 × 3 positions;
    then a point-wise 256 → 512 → 256 → 1 MLP over every (atom, coordinate) position with BatchNorm +
    ReLU after each hidden layer; sigmoid.

    ``bn_eps`` defaults to 0.8: the reference passes 0.8 as the second positional argument of
    ``BatchNorm2d``, which is eps (not momentum), and the published models were trained with that large
    eps, which damps the normalisation of low-variance channels. ``bn_eps=1e-5`` gives the usual
    BatchNorm. BN statistics are per channel over (B, N, 3); momentum 0.9 in Flax = PyTorch's 0.1.
    """

    n_atoms: int
    latent_dim: int = 64
    channels: int = 128
    bn_eps: float = 0.8

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        batch = z.shape[0]
        h = nn.relu(dense(self.channels * self.n_atoms, name="l1")(z))
        # PyTorch's view(B, C, N, 1): the flat vector is channel-major
        h = h.reshape(batch, self.channels, self.n_atoms).transpose(0, 2, 1)  # (B, N, C)
        # ConvTranspose2d(C → 256, kernel (1, 3)): weight (C, 256, 1, 3), PyTorch fans in 256·3 / out C·3
        kernel = self.param("map1_kernel", xavier_uniform(256 * 3, self.channels * 3), (self.channels, 3, 256))
        bias = self.param("map1_bias", nn.initializers.zeros, (256,))
        # atoms as rows, then every (structure, atom, coordinate) position as a row: 2-D matrices make the
        # weight gradients contract one axis without transposed copies of the activations, and BatchNorm's
        # statistics over the rows are those over (B, N, 3)
        h = h.reshape(batch * self.n_atoms, self.channels) @ kernel.reshape(self.channels, 3 * 256)
        # each bias before a BatchNorm is folded into it (cancelled by the batch mean in training mode)
        h = self._norm_relu(h.reshape(-1, 256), bias, train, "bn1")
        h = self._norm_relu(*DenseBeforeNorm(512, name="map2")(h), train, "bn2")
        h = self._norm_relu(*DenseBeforeNorm(256, name="map3")(h), train, "bn3")
        h = dense(1, name="map4")(h).reshape(batch, self.n_atoms, 3)
        return nn.sigmoid(h)

    def _norm_relu(self, h, input_bias, train, name):
        return BatchNormReLU(momentum=0.9, epsilon=self.bn_eps, name=name)(h, train, input_bias)


class DenseBeforeNorm(nn.Module):
    """A dense layer (Glorot-uniform kernel, zero bias; the parameters of :func:`dense`) that returns
    (x @ kernel, bias) unadded, for a following :class:`BatchNormReLU` to fold the bias in."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.xavier_uniform(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ kernel, bias


class CriticHead(nn.Module):
    """Pooled features → Linear 1000 → 200 → 10 with LeakyReLU(0.2) between."""

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        h = pooled
        for i, width in enumerate(CRITIC_HEAD_FEATURES):
            h = nn.leaky_relu(dense(width, name=f"fc_{i}")(h), 0.2)
        return dense(CRITIC_OUTPUTS, name="out")(h)


class Critic(nn.Module):
    """Per-atom MLP (F → 512 → 512 → 256), per-species pooling, head: (B, N, F) → (B, 10).

    Used as the coordinate critic (F = 3) and the bond-distance critic (F = K neighbour distances).
    """

    counts: Sequence[int]
    pooling: str = "mean"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = PerAtomMLP(CRITIC_ATOM_FEATURES, first_kernel_width=x.shape[-1], name="atoms")(x)
        return CriticHead(name="head")(species_pool(features, tuple(self.counts), self.pooling))


def critic_input_gradient(params, x: jax.Array, counts: Sequence[int], pooling: str = "mean",
                          reduction: str = "sum", negative_slope: float = 0.2) -> jax.Array:
    """Gradient (B, N, F) of each sample's sum (or mean) of the :class:`Critic`'s 10 outputs w.r.t. its
    input x (B, N, F), written as an explicit backward pass.

    ``params`` is the critic's parameter dict. A forward pass with frozen parameters gives the LeakyReLU
    slopes (1 where the pre-activation is ≥ 0, ``negative_slope`` elsewhere) and the pooling's choice of
    atoms; both are piecewise constant in the parameters, so the gradient is a product of the weight
    matrices and these fixed factors, and its derivative w.r.t. the parameters (the gradient penalty's)
    is one ordinary backward pass of this function instead of a generic double backward. The per-atom
    layers act on all B·N atoms as one (B·N, C) matrix.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    batch, n_atoms, width = x.shape
    frozen = jax.lax.stop_gradient(params)
    atom_layers = [f"layer_{i}" for i in range(len(CRITIC_ATOM_FEATURES))]
    head_layers = [f"fc_{i}" for i in range(len(CRITIC_HEAD_FEATURES))]

    def slopes(pre):
        return jnp.where(pre >= 0, 1.0, negative_slope).astype(pre.dtype)

    # forward pass: keep the slopes of every LeakyReLU and the pooling's backward map
    h = jax.lax.stop_gradient(x).reshape(batch * n_atoms, width)
    atom_slopes = []
    for name in atom_layers:
        pre = h @ frozen["atoms"][name]["kernel"] + frozen["atoms"][name]["bias"]
        atom_slopes.append(slopes(pre))
        h = pre * atom_slopes[-1]
    pooled, pool_backward = jax.vjp(lambda f: species_pool(f, tuple(counts), pooling),
                                    h.reshape(batch, n_atoms, -1))
    hidden, head_slopes = pooled, []
    for name in head_layers:
        pre = hidden @ frozen["head"][name]["kernel"] + frozen["head"][name]["bias"]
        head_slopes.append(slopes(pre))
        hidden = pre * head_slopes[-1]

    # backward pass: the output cotangent is the same for every sample (1, or 1/10 for the mean)
    out_kernel = params["head"]["out"]["kernel"]  # (200, 10)
    g = out_kernel.sum(axis=1) if reduction == "sum" else out_kernel.mean(axis=1)
    for name, slope in zip(reversed(head_layers), reversed(head_slopes)):
        g = (g * slope) @ params["head"][name]["kernel"].T
    g = pool_backward(g)[0].reshape(batch * n_atoms, -1)
    for name, slope in zip(reversed(atom_layers), reversed(atom_slopes)):
        g = (g * slope) @ params["atoms"][name]["kernel"].T
    return g.reshape(batch, n_atoms, width)


class CombinedCritic(nn.Module):
    """CryinGAN-comb: one critic on fractional coordinates (B, N, 3) → (B, 10).

    A coordinate branch and a bond-distance branch (distances to the K nearest neighbours computed from
    the fractional coordinates with the identity lattice, i.e. minimum image in fractional space) are
    pooled separately; the pooled vectors are concatenated and passed through one head.
    """

    counts: Sequence[int]
    n_neighbors: int = 6
    pooling: str = "mean"

    @nn.compact
    def __call__(self, frac: jax.Array) -> jax.Array:
        counts = tuple(self.counts)
        frac_distances = bond_distances(frac, jnp.eye(3, dtype=frac.dtype), self.n_neighbors)
        coord = PerAtomMLP(CRITIC_ATOM_FEATURES, first_kernel_width=3, name="coord_atoms")(frac)
        dist = PerAtomMLP(CRITIC_ATOM_FEATURES, first_kernel_width=self.n_neighbors,
                          name="dist_atoms")(frac_distances)
        pooled = jnp.concatenate(
            [species_pool(coord, counts, self.pooling), species_pool(dist, counts, self.pooling)], axis=-1
        )
        return CriticHead(name="head")(pooled)

