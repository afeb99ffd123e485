"""Imagen-style U-Nets for the image (CrysTens) and video (UniMat) diffusion baselines, in Flax linen.

One module serves both: inputs are videos (B, F, H, W, C); an image is a video with one frame. Each level
has ``num_resnet_blocks`` ResNet blocks (GroupNorm, SiLU, 3 × 3 convolutions applied per frame, a
scale/shift from the noise-level embedding), optional attention over the pixels of each frame, and a stride-2
down-sampling of H and W; the up path mirrors it with skip connections. A video U-Net (``temporal``)
follows imagen-pytorch's Unet3D (the video U-Net UniMat and Dismai-Bench use): every 3 × 3 convolution of a
ResNet block is followed by a causal convolution over frames (kernel 3, identity at initialisation), and
after the initial convolution, after every level (down and up) and in the middle, a causal depth-wise
convolution over frames (a positional-encoding generator, PEG) and causal attention across frames at each
pixel with a learned relative-position bias (:class:`TemporalAttention`). Frames see only their
predecessors (GroupNorm statistics are the one exception: they span the whole video), which is how the net
knows which frame is which atom. As in imagen-pytorch, the noise level the U-Net sees is the log-SNR λ of
x_t (not the time t): :class:`LearnedSinusoidalEmbedding`, a dense layer, SiLU and a dense layer give the
embedding every ResNet block turns into its scale and shift. ``cond`` (a low-resolution image already
resized to the output size) is concatenated to the input channels and the embedding of
``cond_noise_level`` (its noise-augmentation log-SNR) added to the noise-level embedding: the
super-resolution stage of a cascade. H and W are padded to a multiple of 2^(levels − 1) and
cropped back.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class LearnedSinusoidalEmbedding(nn.Module):
    """(B, dim + 1) features of a noise level (B,): the level itself and sin/cos of 2π w · level at ``dim / 2``
    learned frequencies w (initialised N(0, 1)); imagen-pytorch's LearnedSinusoidalPosEmb, which its U-Nets
    apply to the log-SNR."""

    dim: int = 16

    @nn.compact
    def __call__(self, level):
        frequencies = self.param("frequencies", nn.initializers.normal(1.0), (self.dim // 2,))
        angles = 2 * math.pi * level[:, None] * frequencies
        return jnp.concatenate([level[:, None], jnp.sin(angles), jnp.cos(angles)], -1)


def _identity_last_tap(key, shape, dtype=jnp.float32):
    """Kernel (K, C, C) of a causal convolution over frames that passes the current frame through unchanged
    (imagen-pytorch's stated intent, "initialized to be identity"; its centred Dirac kernel under causal
    padding passes the previous frame instead)."""
    return jnp.zeros(shape, dtype).at[-1].set(jnp.eye(shape[1], shape[2], dtype=dtype))


def causal_frame_conv(x, features: int, kernel: int = 3, depthwise: bool = False, identity_init: bool = False):
    """A causal 1D convolution over the frames of x (B, F, H, W, C) at every pixel: frame f sees frames
    f − kernel + 1 … f (zeros before the first). Call inside a compact module."""
    b, f, h, w, c = x.shape
    series = jnp.moveaxis(x, 1, 3).reshape(b * h * w, f, c)
    series = jnp.pad(series, ((0, 0), (kernel - 1, 0), (0, 0)))
    kwargs = dict(kernel_init=_identity_last_tap) if identity_init else {}
    y = nn.Conv(features, (kernel,), padding="VALID", feature_group_count=c if depthwise else 1, **kwargs)(series)
    return jnp.moveaxis(y.reshape(b, h, w, f, features), 3, 1)


class FrameConv(nn.Module):
    """A 2D convolution applied to every frame of a video (B, F, H, W, C) (frames folded into the batch:
    XLA compiles and runs 2D convolutions much faster than 3D ones with a unit kernel axis); ``temporal``
    adds imagen-pytorch's pseudo-3D step, a causal convolution over frames (kernel 3, identity at init)."""

    features: int
    kernel: int = 3
    stride: int = 1
    temporal: bool = False

    @nn.compact
    def __call__(self, x):
        b, f = x.shape[:2]
        y = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding="SAME")(
            x.reshape(b * f, *x.shape[2:]))
        y = y.reshape(b, f, *y.shape[1:])
        if self.temporal and f > 1:
            y = causal_frame_conv(y, self.features, identity_init=True)
        return y


def _conv(features: int, kernel: int = 3, stride: int = 1) -> FrameConv:
    return FrameConv(features, kernel, stride)


class ResnetBlock(nn.Module):
    features: int
    groups: int = 8
    temporal: bool = False

    @nn.compact
    def __call__(self, x, embedding):
        """x (B, F, H, W, C), embedding (B, 1, E) → (B, F, H, W, features)."""
        h = FrameConv(self.features, temporal=self.temporal)(nn.silu(nn.GroupNorm(min(self.groups, x.shape[-1]))(x)))
        scale, shift = jnp.split(nn.Dense(2 * self.features)(nn.silu(embedding)), 2, -1)
        h = nn.GroupNorm(self.groups)(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = FrameConv(self.features, temporal=self.temporal)(nn.silu(h))
        skip = x if x.shape[-1] == self.features else nn.Dense(self.features)(x)
        return h + skip


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over the pixels of each frame."""

    heads: int = 4
    head_dim: int = 32

    @nn.compact
    def __call__(self, x):
        b, f, h, w, c = x.shape
        tokens = x.reshape(b, f, h * w, c)
        normed = nn.LayerNorm()(tokens)
        attention = nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.heads * self.head_dim)
        return (tokens + attention(normed, normed)).reshape(b, f, h, w, c)


class RelativePositionBias(nn.Module):
    """(heads, F, F) attention bias b[h, i, j] = MLP(i − j): imagen-pytorch's DynamicPositionBias (an MLP of
    depth 2, LayerNorm and SiLU after each hidden layer, on the scalar frame offset)."""

    heads: int
    width: int
    depth: int = 2

    @nn.compact
    def __call__(self, n_frames: int):
        offsets = jnp.arange(-n_frames + 1, n_frames, dtype=jnp.float32)[:, None]
        hidden = offsets
        for _ in range(self.depth):
            hidden = nn.silu(nn.LayerNorm()(nn.Dense(self.width)(hidden)))
        table = nn.Dense(self.heads)(hidden)                                  # (2F − 1, heads)
        index = jnp.arange(n_frames)[:, None] - jnp.arange(n_frames)[None, :] + n_frames - 1
        return jnp.moveaxis(table[index], -1, 0)


class TemporalAttention(nn.Module):
    """Residual causal attention across the frames of x (B, F, H, W, C) at each pixel, as imagen-pytorch's
    Unet3D temporal attention: pre-LayerNorm, multi-head queries with one shared key/value head, a learned
    null key/value every frame may attend to, l2-normalised queries and keys with learned per-dimension
    scales and a fixed logit scale of 8, the relative-position bias, and an output LayerNorm whose gain
    starts at zero (the block is the identity at initialisation)."""

    heads: int = 4
    head_dim: int = 32
    logit_scale: float = 8.0

    @nn.compact
    def __call__(self, x):
        b, f, h, w, c = x.shape
        tokens = jnp.moveaxis(x, 1, 3).reshape(b * h * w, f, c)
        normed = nn.LayerNorm()(tokens)
        q = nn.Dense(self.heads * self.head_dim, use_bias=False)(normed).reshape(-1, f, self.heads, self.head_dim)
        k, v = jnp.split(nn.Dense(2 * self.head_dim, use_bias=False)(normed), 2, -1)
        null_kv = self.param("null_kv", nn.initializers.normal(1.0), (2, self.head_dim))
        k = jnp.concatenate([jnp.broadcast_to(null_kv[0], (k.shape[0], 1, self.head_dim)), k], 1)
        v = jnp.concatenate([jnp.broadcast_to(null_kv[1], (v.shape[0], 1, self.head_dim)), v], 1)
        q_scale = self.param("q_scale", nn.initializers.ones, (self.head_dim,))
        k_scale = self.param("k_scale", nn.initializers.ones, (self.head_dim,))
        q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12) * q_scale
        k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12) * k_scale
        logits = self.logit_scale * jnp.einsum("nihd,njd->nhij", q, k)          # (n, heads, F, F + 1)
        null_bias = self.param("null_bias", nn.initializers.normal(1.0), (self.heads,))
        bias = jnp.concatenate([jnp.broadcast_to(null_bias[:, None, None], (self.heads, f, 1)),
                                RelativePositionBias(self.heads, c)(f)], -1)
        visible = jnp.concatenate([jnp.ones((f, 1), bool), jnp.tril(jnp.ones((f, f), bool))], -1)
        logits = jnp.where(visible, logits + bias, -jnp.finfo(logits.dtype).max)
        out = jnp.einsum("nhij,njd->nihd", jax.nn.softmax(logits, -1), v).reshape(-1, f, self.heads * self.head_dim)
        out = nn.LayerNorm(use_bias=False, scale_init=nn.initializers.zeros)(nn.Dense(c, use_bias=False)(out))
        return x + jnp.moveaxis(out.reshape(b, h, w, f, c), 3, 1)


class TemporalMixing(nn.Module):
    """Unet3D's per-level mixing across frames: a residual causal depth-wise convolution over frames
    (kernel 3, the PEG), then :class:`TemporalAttention`; the identity for a single frame."""

    heads: int = 4
    head_dim: int = 32

    @nn.compact
    def __call__(self, x):
        if x.shape[1] == 1:
            return x
        x = x + causal_frame_conv(x, x.shape[-1], depthwise=True)
        return TemporalAttention(self.heads, self.head_dim)(x)


class UNet(nn.Module):
    """Predicts the regression target (noise ε or v) of x_t (B, F, H, W, out_channels) from x_t and its noise
    level, the log-SNR λ (B,)."""

    out_channels: int
    dim: int = 64
    dim_mults: Sequence[int] = (1, 2, 4)
    num_resnet_blocks: int = 2
    layer_attns: Sequence[bool] = (False, False, True)
    temporal: bool = False
    heads: int = 4
    head_dim: int = 32

    @nn.compact
    def __call__(self, x, noise_level, cond=None, cond_noise_level=None):
        b, f, height, width, _ = x.shape
        multiple = 2 ** (len(self.dim_mults) - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        if cond is not None:
            x = jnp.concatenate([x, cond], -1)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, pad_h), (0, pad_w), (0, 0)))

        width_emb = 4 * self.dim
        embedding = nn.Dense(width_emb)(nn.silu(nn.Dense(width_emb)(LearnedSinusoidalEmbedding()(noise_level))))
        if cond_noise_level is not None:
            hidden = nn.silu(nn.Dense(width_emb)(LearnedSinusoidalEmbedding()(cond_noise_level)))
            embedding = embedding + nn.Dense(width_emb)(hidden)
        embedding = embedding[:, None, :]

        def resnet(features, h):
            return ResnetBlock(features, temporal=self.temporal)(h, embedding)

        def across_frames(h):
            return TemporalMixing(self.heads, self.head_dim)(h) if self.temporal else h

        h = across_frames(_conv(self.dim, kernel=7)(x))
        skips = []
        levels = len(self.dim_mults)
        for level, (mult, attend) in enumerate(zip(self.dim_mults, self.layer_attns)):
            for _ in range(self.num_resnet_blocks):
                h = resnet(self.dim * mult, h)
                if attend:
                    h = Attention(self.heads, self.head_dim)(h)
                skips.append(h)
            h = skips[-1] = across_frames(h)
            if level < levels - 1:
                h = _conv(self.dim * mult, kernel=4, stride=2)(h)
        h = resnet(self.dim * self.dim_mults[-1], h)
        h = across_frames(Attention(self.heads, self.head_dim)(h))
        h = resnet(self.dim * self.dim_mults[-1], h)
        for level in reversed(range(levels)):
            mult, attend = self.dim_mults[level], self.layer_attns[level]
            for _ in range(self.num_resnet_blocks):
                h = resnet(self.dim * mult, jnp.concatenate([h, skips.pop()], -1))
                if attend:
                    h = Attention(self.heads, self.head_dim)(h)
            h = across_frames(h)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, 2), 2, 3)
                h = _conv(self.dim * self.dim_mults[level - 1])(h)
        h = resnet(self.dim, h)
        out = _conv(self.out_channels)(nn.silu(nn.GroupNorm(8)(h)))
        return out[:, :, :height, :width]
