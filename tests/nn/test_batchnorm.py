"""BatchNormReLU against Flax's BatchNorm + relu: outputs, running statistics, folded input bias, gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.nn.batchnorm import BatchNormReLU, batch_norm_relu

ROWS, CHANNELS = 96, 7


class FlaxBatchNormReLU(nn.Module):
    """The composition BatchNormReLU replaces: relu(BatchNorm(h + input_bias))."""

    momentum: float
    epsilon: float

    @nn.compact
    def __call__(self, h, train, input_bias):
        norm = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon)
        return nn.relu(norm(h + input_bias))


def inputs(seed=0):
    """Activations (rows, C) with channel means far from zero, a bias (C,), an output cotangent."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    h = 3.0 * jax.random.normal(k1, (ROWS, CHANNELS)) + jax.random.normal(k2, (CHANNELS,)) * 4.0
    return h, jax.random.normal(k3, (CHANNELS,)), jax.random.normal(k4, (ROWS, CHANNELS))


def variables(seed=1):
    """Non-trivial scale, offset and running statistics shared by both implementations."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {"params": {"scale": 1.0 + 0.5 * jax.random.normal(k1, (CHANNELS,)),
                       "bias": 0.5 * jax.random.normal(k2, (CHANNELS,))},
            "batch_stats": {"mean": jax.random.normal(k3, (CHANNELS,)),
                            "var": jax.random.uniform(k4, (CHANNELS,), minval=0.5, maxval=3.0)}}


def flax_names(tree):
    """Our variables in the Flax module's layout (its BatchNorm is the submodule BatchNorm_0)."""
    return {collection: {"BatchNorm_0": values} for collection, values in tree.items()}


@pytest.mark.parametrize("epsilon", [0.8, 1e-5])
def test_training_mode_matches_flax_batchnorm_of_the_biased_input(epsilon):
    h, input_bias, _ = inputs()
    ours, theirs = BatchNormReLU(0.9, epsilon), FlaxBatchNormReLU(0.9, epsilon)
    tree = variables()
    out, updated = ours.apply(tree, h, True, input_bias, mutable=["batch_stats"])
    want, want_updated = theirs.apply(flax_names(tree), h, True, input_bias, mutable=["batch_stats"])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
        np.testing.assert_allclose(updated["batch_stats"][key], want_updated["batch_stats"]["BatchNorm_0"][key],
                                   rtol=1e-5, atol=1e-6)
    assert np.mean(np.asarray(out) > 0) > 0.2 and np.mean(np.asarray(out) == 0) > 0.2  # both ReLU branches


def test_evaluation_mode_subtracts_the_bias_folded_into_the_running_mean():
    h, input_bias, _ = inputs()
    tree = variables()
    out = BatchNormReLU(0.9, 0.8).apply(tree, h, False, input_bias)
    want = FlaxBatchNormReLU(0.9, 0.8).apply(flax_names(tree), h, False, input_bias)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    without_bias = BatchNormReLU(0.9, 0.8).apply(tree, h, False)
    assert not np.allclose(out, without_bias)


@pytest.mark.parametrize("train", [True, False])
def test_gradients_match_autodiff_of_flax_batchnorm(train):
    h, input_bias, cotangent = inputs(2)
    tree = variables(3)

    def loss(module, names):
        def value(h, params, input_bias):
            out = module.apply(names({"params": params, "batch_stats": tree["batch_stats"]}), h, train, input_bias,
                               mutable=["batch_stats"])[0]
            return jnp.sum(out * cotangent)
        return jax.grad(value, argnums=(0, 1, 2))(h, tree["params"], input_bias)

    ours = loss(BatchNormReLU(0.9, 0.8), lambda t: t)
    d_h, d_params, d_bias = loss(FlaxBatchNormReLU(0.9, 0.8), flax_names)
    np.testing.assert_allclose(ours[0], d_h, rtol=1e-4, atol=1e-6)
    for key in ("scale", "bias"):
        np.testing.assert_allclose(ours[1][key], d_params[key], rtol=1e-4, atol=1e-5)
    # training mode: the batch mean cancels the input bias exactly; evaluation mode: it shifts the output
    np.testing.assert_allclose(ours[2], d_bias, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(ours[2]) == 0) if train else np.abs(np.asarray(ours[2])).max() > 1e-2


def test_statistics_outputs_carry_their_own_gradients():
    """The returned batch mean and variance are differentiable like the plain formulas."""
    h, _, cotangent = inputs(4)
    scale, offset = jnp.linspace(0.5, 1.5, CHANNELS), jnp.linspace(-0.3, 0.3, CHANNELS)
    weights = jnp.arange(1.0, CHANNELS + 1.0)

    def plain(h, scale, offset):
        mean = h.mean(0)
        variance = jnp.maximum((h * h).mean(0) - mean * mean, 0.0)
        out = jnp.maximum((h - mean) * jax.lax.rsqrt(variance + 0.8) * scale + offset, 0.0)
        return out, mean, variance

    def loss(function):
        def value(h, scale, offset):
            out, mean, variance = function(h, scale, offset)
            return jnp.sum(out * cotangent) + jnp.sum(weights * mean) - jnp.sum(weights * variance) / 7.0
        return jax.grad(value, argnums=(0, 1, 2))(h, scale, offset)

    for got, want in zip(loss(lambda *a: batch_norm_relu(*a, 0.8)), loss(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
