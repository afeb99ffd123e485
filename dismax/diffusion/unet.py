"""Imagen-style U-Nets for the image (CrysTens) and video (UniMat) diffusion baselines, in Flax linen.

One module serves both: inputs are videos (B, F, H, W, C); an image is a video with one frame. Each level
has ``num_resnet_blocks`` ResNet blocks (GroupNorm, SiLU, 3 × 3 convolutions applied per frame, a
scale/shift from the conditioning embedding), optional attention, and a stride-2 down-sampling of H and W;
the up path mirrors it with skip connections. In a video U-Net (``temporal``) every frame also gets a
learned position embedding (its atom index) in its conditioning, and the attention levels attend across
frames at each pixel as well as across the pixels of each frame (imagen-pytorch's Unet3D: spatial then
temporal attention). ``cond`` (a low-resolution image already resized to the output size) is concatenated
to the input channels and ``cond_time`` (its noise-augmentation level) added to the time embedding: the
super-resolution stage of a cascade. H and W are padded to a multiple of 2^(levels − 1) and cropped back.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_embedding(values: jnp.ndarray, dim: int) -> jnp.ndarray:
    """(..., dim) sine/cosine features of ``values`` (...,) at log-spaced frequencies (transformer style)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(10000.0) * jnp.arange(half) / max(half - 1, 1))
    angles = values[..., None] * frequencies
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


class FrameConv(nn.Module):
    """A 2D convolution applied to every frame of a video (B, F, H, W, C) (frames folded into the batch:
    XLA compiles and runs 2D convolutions much faster than 3D ones with a unit kernel axis)."""

    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        b, f = x.shape[:2]
        y = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding="SAME")(
            x.reshape(b * f, *x.shape[2:]))
        return y.reshape(b, f, *y.shape[1:])


def _conv(features: int, kernel: int = 3, stride: int = 1) -> FrameConv:
    return FrameConv(features, kernel, stride)


class ResnetBlock(nn.Module):
    features: int
    groups: int = 8

    @nn.compact
    def __call__(self, x, embedding):
        """x (B, F, H, W, C), embedding (B, F, E) → (B, F, H, W, features)."""
        h = _conv(self.features)(nn.silu(nn.GroupNorm(min(self.groups, x.shape[-1]))(x)))
        scale, shift = jnp.split(nn.Dense(2 * self.features)(nn.silu(embedding)), 2, -1)
        h = nn.GroupNorm(self.groups)(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = _conv(self.features)(nn.silu(h))
        skip = x if x.shape[-1] == self.features else nn.Dense(self.features)(x)
        return h + skip


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over the pixels of each frame, then (``temporal``) over frames."""

    heads: int = 4
    head_dim: int = 32
    temporal: bool = False

    def _attend(self, tokens):
        attention = nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.heads * self.head_dim)
        normed = nn.LayerNorm()(tokens)
        return tokens + attention(normed, normed)

    @nn.compact
    def __call__(self, x):
        b, f, h, w, c = x.shape
        x = self._attend(x.reshape(b, f, h * w, c)).reshape(b, f, h, w, c)
        if self.temporal and f > 1:
            pixels = jnp.moveaxis(x.reshape(b, f, h * w, c), 1, 2)
            x = jnp.moveaxis(self._attend(pixels), 2, 1).reshape(b, f, h, w, c)
        return x


class UNet(nn.Module):
    """Predicts the noise ε of x_t (B, F, H, W, out_channels) from x_t and the diffusion time t ∈ [0, 1]."""

    out_channels: int
    dim: int = 64
    dim_mults: Sequence[int] = (1, 2, 4)
    num_resnet_blocks: int = 2
    layer_attns: Sequence[bool] = (False, False, True)
    temporal: bool = False
    max_frames: int = 512
    heads: int = 4
    head_dim: int = 32

    @nn.compact
    def __call__(self, x, time, cond=None, cond_time=None):
        b, f, height, width, _ = x.shape
        if f > self.max_frames:
            raise ValueError(f"UNet: {f} frames exceed max_frames={self.max_frames}")
        multiple = 2 ** (len(self.dim_mults) - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        if cond is not None:
            x = jnp.concatenate([x, cond], -1)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, pad_h), (0, pad_w), (0, 0)))

        width_emb = 4 * self.dim
        embedding = nn.Dense(width_emb)(sinusoidal_embedding(1000.0 * time, self.dim))
        if cond_time is not None:
            embedding = embedding + nn.Dense(width_emb, name="cond_time")(sinusoidal_embedding(1000.0 * cond_time,
                                                                                               self.dim))
        embedding = nn.Dense(width_emb)(nn.silu(embedding))[:, None, :]
        if self.temporal:
            frames = nn.Embed(self.max_frames, width_emb, name="frame_position")(jnp.arange(f))
            embedding = embedding + frames[None]
        embedding = jnp.broadcast_to(embedding, (b, f, width_emb))

        h = _conv(self.dim, kernel=7)(x)
        skips = []
        levels = len(self.dim_mults)
        for level, (mult, attend) in enumerate(zip(self.dim_mults, self.layer_attns)):
            for _ in range(self.num_resnet_blocks):
                h = ResnetBlock(self.dim * mult)(h, embedding)
                if attend:
                    h = Attention(self.heads, self.head_dim, self.temporal)(h)
                skips.append(h)
            if level < levels - 1:
                h = _conv(self.dim * mult, kernel=4, stride=2)(h)
        h = ResnetBlock(self.dim * self.dim_mults[-1])(h, embedding)
        h = Attention(self.heads, self.head_dim, self.temporal)(h)
        h = ResnetBlock(self.dim * self.dim_mults[-1])(h, embedding)
        for level in reversed(range(levels)):
            mult, attend = self.dim_mults[level], self.layer_attns[level]
            for _ in range(self.num_resnet_blocks):
                h = ResnetBlock(self.dim * mult)(jnp.concatenate([h, skips.pop()], -1), embedding)
                if attend:
                    h = Attention(self.heads, self.head_dim, self.temporal)(h)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, 2), 2, 3)
                h = _conv(self.dim * self.dim_mults[level - 1])(h)
        h = ResnetBlock(self.dim)(h, embedding)
        out = _conv(self.out_channels)(nn.silu(nn.GroupNorm(8)(h)))
        return out[:, :, :height, :width]
