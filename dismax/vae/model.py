"""The Dis-GEN VAE in flax.linen: CNN encoder over the Wyckoff-site matrix A, MLP over the crystal
vector c, Gaussian latent, and a mirrored decoder with seven heads.

Shapes: sites (B, 9, 183) are read as 9 channels along a 183-long feature axis (flax Conv wants
(B, length, channels), so they are transposed), crystal (B, 236). With kernels (5, 3, 2), strides
(2, 3, 2) and VALID padding the feature axis goes 183 -> 90 -> 30 -> 15 and back.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dismax.vae import representation as rep


def _batch_norm(train: bool) -> nn.BatchNorm:
    # PyTorch BatchNorm1d defaults: momentum 0.1 (flax 0.9), eps 1e-5
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class WyckoffEncoder(nn.Module):
    """(sites (B, 9, 183), crystal (B, 236)) -> (mean, log variance), each (B, latent_dim)."""

    latent_dim: int = 256
    max_filter: int = 16
    kernels: Sequence[int] = (5, 3, 2)
    strides: Sequence[int] = (2, 3, 2)
    site_dense: int = 1024

    @nn.compact
    def __call__(self, sites, crystal, train: bool):
        x = jnp.swapaxes(sites, 1, 2)  # (B, 183, 9)
        for multiple, kernel, stride in zip((2, 4, 8), self.kernels, self.strides):
            x = nn.Conv(self.max_filter * multiple, (kernel,), strides=(stride,), padding="VALID")(x)
            x = nn.relu(_batch_norm(train)(x))
        x = nn.relu(nn.Dense(self.site_dense)(x.reshape(x.shape[0], -1)))
        y = nn.relu(nn.Dense(256)(crystal))
        y = nn.relu(nn.Dense(128)(y))
        joint = jnp.concatenate([x, y], axis=-1)
        return nn.Dense(self.latent_dim, name="mean")(joint), nn.Dense(self.latent_dim, name="log_var")(joint)


class WyckoffDecoder(nn.Module):
    """z (B, latent_dim) -> dict of head outputs (see `WyckoffVAE`)."""

    max_filter: int = 16
    kernels: Sequence[int] = (5, 3, 2)
    strides: Sequence[int] = (2, 3, 2)

    @nn.compact
    def __call__(self, z, train: bool):
        crystal = nn.relu(nn.Dense(rep.N_CRYSTAL)(z))
        length = rep.N_FEATURES
        for kernel, stride in zip(self.kernels, self.strides):
            length = (length - kernel) // stride + 1
        channels = self.max_filter * 8
        x = nn.Dense(channels * length)(z).reshape(z.shape[0], length, channels)
        for multiple, kernel, stride in zip((4, 2, None), self.kernels[::-1], self.strides[::-1]):
            features = rep.N_SITES if multiple is None else self.max_filter * multiple
            x = nn.ConvTranspose(features, (kernel,), strides=(stride,), padding="VALID")(x)
            x = nn.relu(_batch_norm(train)(x))
        if x.shape[1] != rep.N_FEATURES:
            raise ValueError(f"decoder produces {x.shape[1]} features, expected {rep.N_FEATURES}")
        sites = jnp.swapaxes(x, 1, 2)  # (B, 9, 183)
        return {
            "element_logits": nn.Dense(rep.N_ELEMENTS, name="element")(sites),
            "letter_logits": nn.Dense(rep.N_LETTERS, name="letter")(sites),
            "multiplicity_logits": nn.Dense(rep.N_MULTIPLICITIES, name="multiplicity")(sites),
            "xyz": nn.Dense(3, name="xyz")(sites),
            "disorder_logits": nn.Dense(1, name="disorder")(sites)[..., 0],
            "spacegroup_logits": nn.Dense(rep.N_SPACEGROUPS, name="spacegroup")(crystal),
            "lattice": nn.Dense(rep.N_LATTICE, name="lattice")(crystal),
        }


class WyckoffVAE(nn.Module):
    """Encoder + reparameterised Gaussian latent + decoder.

    Outputs: element_logits (B, 9, 101) (softmax = occupancy), letter_logits (B, 9, 27),
    multiplicity_logits (B, 9, 51), xyz (B, 9, 3) fractional, disorder_logits (B, 9),
    spacegroup_logits (B, 230), lattice (B, 6) standardised; plus mean and log_var (B, latent_dim).
    """

    latent_dim: int = 256
    max_filter: int = 16
    kernels: Sequence[int] = (5, 3, 2)
    strides: Sequence[int] = (2, 3, 2)
    site_dense: int = 1024

    def setup(self):
        self.encoder = WyckoffEncoder(self.latent_dim, self.max_filter, self.kernels, self.strides, self.site_dense)
        self.decoder = WyckoffDecoder(self.max_filter, self.kernels, self.strides)

    def __call__(self, sites, crystal, key, train: bool = True):
        mean, log_var = self.encoder(sites, crystal, train)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
        outputs = self.decoder(z, train)
        return {**outputs, "mean": mean, "log_var": log_var}

    def encode(self, sites, crystal, train: bool = False):
        return self.encoder(sites, crystal, train)

    def decode(self, z, train: bool = False):
        return self.decoder(z, train)
