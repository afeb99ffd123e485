"""The U-Net's mixing across frames (imagen-pytorch's Unet3D): causal temporal convolutions, PEG and attention
with a relative-position bias, identity at initialisation, present at every level of a video U-Net; its
noise-level input (the log-SNR through learned sinusoids)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.diffusion.unet import (FrameConv, LearnedSinusoidalEmbedding, RelativePositionBias, TemporalAttention,
                                  TemporalMixing, UNet)


def _perturbed(params, scale=0.3, seed=4):
    """Random parameters away from the identity initialisation (host random numbers: drawing them with
    jax.random would compile one program per parameter shape)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + scale * rng.normal(size=a.shape).astype(a.dtype), params)


def _video(seed=2, shape=(2, 6, 2, 2, 8)):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_temporal_blocks_are_the_identity_at_initialisation():
    x = _video()
    attention = TemporalAttention(heads=2, head_dim=8)
    np.testing.assert_array_equal(jax.jit(attention.apply)(jax.jit(attention.init)(jax.random.PRNGKey(0), x), x), x)
    pseudo3d = FrameConv(8, temporal=True)
    params = jax.jit(pseudo3d.init)(jax.random.PRNGKey(0), x)
    spatial = jax.jit(FrameConv(8).apply)({"params": {"Conv_0": params["params"]["Conv_0"]}}, x)
    np.testing.assert_allclose(jax.jit(pseudo3d.apply)(params, x), spatial, atol=1e-6)


@pytest.mark.parametrize("module", [TemporalAttention(heads=2, head_dim=8), TemporalMixing(heads=2, head_dim=8),
                                    FrameConv(8, temporal=True)], ids=["attention", "peg+attention", "pseudo3d"])
def test_frames_see_only_their_predecessors(module):
    x = _video()
    params = _perturbed(module.init(jax.random.PRNGKey(0), x))
    changed = x.at[:, 3:].add(_video(seed=5)[:, 3:])
    before, after = module.apply(params, x), module.apply(params, changed)
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-5)
    assert np.all(np.abs(np.asarray(after - before)[:, 3:]).max((0, 2, 3, 4)) > 1e-3)


def test_temporal_attention_uses_other_frames():
    """Beyond the residual: frame 4's output moves when only frame 1 changes (not by a constant: LayerNorm
    removes that)."""
    x = _video()
    module = TemporalAttention(heads=2, head_dim=8)
    params = _perturbed(module.init(jax.random.PRNGKey(0), x))
    delta = module.apply(params, x.at[:, 1].add(_video(seed=5)[:, 1]))[:, 4] - module.apply(params, x)[:, 4]
    assert float(jnp.abs(delta).max()) > 1e-3


def test_relative_position_bias_depends_only_on_the_frame_offset():
    module = RelativePositionBias(heads=3, width=8)
    params = _perturbed(module.init(jax.random.PRNGKey(0), 5))
    bias = np.asarray(module.apply(params, 5))
    assert bias.shape == (3, 5, 5)
    for offset in range(-4, 5):
        diagonal = np.diagonal(bias, offset, axis1=1, axis2=2)
        np.testing.assert_allclose(diagonal, diagonal[:, :1].repeat(diagonal.shape[1], 1), atol=1e-6)
    assert np.ptp(bias[0, 4]) > 1e-3                                 # different offsets, different biases


@pytest.mark.slow  # ~150 s; test_temporal_blocks_are_the_identity_at_initialisation covers the frame mixing by default
def test_video_unet_mixes_frames_at_every_level_and_an_image_unet_has_none():
    x = _video(shape=(1, 5, 4, 4, 3))
    video = UNet(3, dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True), temporal=True,
                 heads=2, head_dim=8)
    params = jax.eval_shape(video.init, jax.random.PRNGKey(0), x, jnp.zeros(1))["params"]   # structure only
    mixing = sorted(name for name in params if name.startswith("TemporalMixing"))
    assert len(mixing) == 1 + 2 + 1 + 2                               # initial conv, two down, middle, two up
    resnets = [params[name] for name in params if name.startswith("ResnetBlock")]
    assert all("Conv_1" in block[conv] for block in resnets for conv in ("FrameConv_0", "FrameConv_1"))
    image = UNet(3, dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True), heads=2, head_dim=8)
    image_params = jax.eval_shape(image.init, jax.random.PRNGKey(0), x[:, :1], jnp.zeros(1))["params"]
    assert not any(name.startswith("TemporalMixing") for name in image_params)
    assert not any("Conv_1" in image_params[name]["FrameConv_0"] for name in image_params
                   if name.startswith("ResnetBlock"))
    out = jax.eval_shape(video.apply, {"params": params}, x, jnp.full(1, 0.5))
    assert out.shape == x.shape


def test_noise_level_embedding_is_the_level_and_its_learned_sinusoids():
    """imagen-pytorch's LearnedSinusoidalPosEmb: [λ, sin(2π w λ), cos(2π w λ)] with w learned (N(0, 1) at init)."""
    level = jnp.array([-20.0, -1.5, 0.0, 3.0, 11.0])
    module = LearnedSinusoidalEmbedding(16)
    params = module.init(jax.random.PRNGKey(0), level)
    frequencies = np.asarray(params["params"]["frequencies"])
    features = np.asarray(module.apply(params, level))
    assert features.shape == (5, 17) and frequencies.shape == (8,)
    np.testing.assert_array_equal(features[:, 0], level)
    angles = 2 * np.pi * np.asarray(level)[:, None] * frequencies
    np.testing.assert_allclose(features[:, 1:], np.concatenate([np.sin(angles), np.cos(angles)], -1), atol=2e-5)


def test_unet_output_depends_on_the_noise_level():
    x = _video(shape=(2, 3, 4, 4, 3))
    net = UNet(3, dim=8, dim_mults=(1,), num_resnet_blocks=1, layer_attns=(False,), temporal=True, heads=1,
               head_dim=8)
    # random values of the parameters' shapes: compiling the U-Net's initialisation takes half a minute
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jnp.zeros(2))
    params = _perturbed(jax.tree.map(lambda shape: np.zeros(shape.shape, shape.dtype), shapes))
    apply = jax.jit(net.apply)
    low, high = apply(params, x, jnp.array([-5.0, -5.0])), apply(params, x, jnp.array([-5.0, 5.0]))
    np.testing.assert_allclose(high[0], low[0], atol=1e-6)            # each sample sees its own level
    assert float(jnp.abs(high[1] - low[1]).max()) > 1e-2
