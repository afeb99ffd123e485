"""U-Net baselines: noise schedule, augmentation, representation and config checks (no U-Net compiled)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.config import load_config
from dismax.diffusion.unet_diffusion import (OBJECTIVES, Cascade, alpha_sigma, ancestral_sample,
                                             denoised_estimate, log_snr, loss_weight, lowres_log_snr, noise_to,
                                             predicted_x0, regression_target, resize, stage_losses, threshold_x0)
from dismax.diffusion.unet_trainer import (AugmentConfig, Config, ModelConfig, check, permutable_atoms,
                                           permutation_copies, representation)
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.geometry import coordinate_rms
from dismax.io import write_extxyz
from tests.diffusion.unet_cells import alloy_cells, interface_cells


def test_cosine_log_snr_schedule():
    t = jnp.linspace(0.0, 1.0, 11)
    lam = np.asarray(log_snr(t))
    assert np.all(np.diff(lam) < 0)
    alpha, sigma = alpha_sigma(log_snr(t))
    np.testing.assert_allclose(np.asarray(alpha ** 2 + sigma ** 2), 1.0, atol=1e-6)
    # imagen's cosine schedule: α(t) = cos((t + s)/(1 + s) · π/2) away from the clamp
    s = 0.008
    np.testing.assert_allclose(np.asarray(alpha)[1:-1], np.cos((np.asarray(t)[1:-1] + s) / (1 + s) * np.pi / 2),
                               rtol=1e-4)
    x0, noise = jnp.ones((2, 1, 2, 2, 1)), jnp.zeros((2, 1, 2, 2, 1))
    np.testing.assert_allclose(np.asarray(noise_to(x0, jnp.array([0.0, 1.0]), noise))[:, 0, 0, 0, 0],
                               [float(alpha[0]), float(alpha[-1])], rtol=1e-6)


def test_interface_region_permutation_keeps_the_rest():
    cells = interface_cells(2)
    config = AugmentConfig(permute="interface", copies=3)
    movable = permutable_atoms(np.asarray(cells.species[0]), config)
    species = np.asarray(cells.species[0])
    assert movable.sum() == 30
    assert np.flatnonzero(movable & (species == 3)).tolist() == list(range(9))
    assert (movable & (species == 21)).sum() == 3 and (movable & (species == 17)).sum() == 18
    augmented, source = permutation_copies(cells, config, seed=0)
    assert len(augmented) == 8 and source.tolist() == [0, 1] * 4
    assert np.array_equal(augmented.frac[:2], cells.frac)
    for row in range(2, 8):
        original = np.asarray(cells.frac[source[row]])
        frac = np.asarray(augmented.frac[row])
        assert np.array_equal(frac[~movable], original[~movable])
        assert not np.array_equal(frac[movable], original[movable])
        for z in (3, 21, 17):  # a permutation within each element
            chosen = movable & (species == z)
            assert sorted(map(tuple, frac[chosen])) == sorted(map(tuple, original[chosen]))
    everything = permutation_copies(cells, AugmentConfig(permute="all", copies=1), seed=0)[0]
    assert np.mean(np.all(everything.frac[2] == cells.frac[0], -1)) < 0.1
    assert len(permutation_copies(cells, AugmentConfig(permute="none"), seed=0)[0]) == 2
    with pytest.raises(DismaxInputError, match="first 9 atoms of element 3"):
        permutable_atoms(np.full(5, 3), config)


@pytest.mark.parametrize("kind", ["crystens", "unimat"])
def test_representation_round_trip_in_model_space(kind):
    cells = alloy_cells(2)
    rep = representation(Config(model=ModelConfig(name=kind)), cells, np.ones(2, np.int32))
    assert rep.species_order == tuple(dict.fromkeys(np.asarray(cells.species[0]).tolist()))
    x = rep.encode(cells.frac, cells.lattice, cells.species, jnp.ones(2, jnp.int32))
    assert x.shape == (2, *rep.shape) and float(jnp.max(jnp.abs(x))) <= 1.0 + 2e-6
    frac, species, valid = rep.decode(x)
    assert np.array_equal(np.asarray(species), np.asarray(cells.species)) and np.all(np.asarray(valid))
    assert coordinate_rms(frac, cells.frac, cells.lattice).max() < 1e-5
    # a swapped species changes the composition: failed
    broken = np.array(species)
    broken[0, 0] = 28 if broken[0, 0] != 28 else 26
    from dismax.diffusion.unimat import composition_matches
    assert np.asarray(composition_matches(jnp.asarray(broken), rep.species_order, rep.composition)).tolist() == \
        [False, True]


def test_shipped_configs_load_and_check(tmp_path):
    data = tmp_path / "cells.extxyz"
    write_extxyz(alloy_cells(1), data)
    files = [f"data.train_file={data}", f"data.val_file={data}"]
    for name in ("crystens", "unimat"):
        for family in ("alloy", "a_si", "interface", "alloy_small", "a_si_small"):
            config = load_config(f"configs/{name}_{family}.yaml", files)
            assert config.model.name == name
            small = family.endswith("small")
            assert config.model.objective == ("v" if small else "noise")
            # the paper configs keep imagen-pytorch 1.26.2's defaults (the published scripts' version)
            assert config.model.min_snr_gamma == (None if small else 5.0)
            assert (config.model.heads, config.model.head_dim) == ((2, 16) if small else (8, 64))
            assert config.sample.dynamic_threshold == 0.95
            check(config)
    for family in ("a_si_cpu", "interface_cpu"):  # the CPU-trained UniMat runs of the README
        config = load_config(f"configs/unimat_{family}.yaml", files)
        assert (config.model.name, config.model.objective, config.train.lr_schedule) == ("unimat", "v", "cosine")
        assert config.model.min_snr_gamma is None
        check(config)
    assert load_config("configs/unimat_interface.yaml").augment.permute == "interface"
    assert load_config("configs/unimat_interface.yaml").model.layer_attns == (False, True, True)
    with pytest.raises(DismaxConfigError, match="one entry per level"):
        check(load_config("configs/unimat_alloy.yaml", ["model.layer_attns=[true]"]))
    with pytest.raises(DismaxConfigError, match="low_size"):
        check(load_config("configs/crystens_alloy.yaml", ["model.low_size=30"]))
    with pytest.raises(DismaxConfigError, match="dynamic_threshold"):
        check(load_config("configs/unimat_alloy.yaml", ["sample.dynamic_threshold=1.5"]))
    with pytest.raises(DismaxConfigError, match="min_snr_gamma"):
        check(load_config("configs/unimat_alloy.yaml", ["model.min_snr_gamma=0"]))


class _OracleMixture:
    """A stand-in network that knows the clean samples x*_k (K, ...) exactly: the posterior mean
    x̂_0 = Σ_k w_k x*_k, w ∝ exp(−|x_t − α x*_k|²/(2σ²)), returned as the ``objective`` output (exact for an
    equal-weight mixture of point masses). Like the U-Net it is given the noise level as the log-SNR λ."""

    def __init__(self, points, objective="noise"):
        self.points, self.objective = points, objective

    def apply(self, params, x, noise_level, **cond):
        alpha, sigma = alpha_sigma(noise_level)
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        offsets = (x[:, None] - alpha[:, None] * self.points[None]).reshape(x.shape[0], len(self.points), -1)
        weights = jax.nn.softmax(-0.5 * jnp.sum(offsets ** 2, -1) / sigma.reshape(-1, 1) ** 2, -1)
        x0 = jnp.einsum("bk,k...->b...", weights, self.points)
        noise = (x - alpha * x0) / sigma
        return noise if self.objective == "noise" else alpha * noise - sigma * x0


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_ancestral_sampler_lands_on_the_points_of_an_exact_denoiser(objective):
    """Four clean videos, two of them only 0.02 apart: every sample is one of them (the sampler, the
    schedule and both objectives are consistent)."""
    rng = np.random.default_rng(0)
    points = jnp.asarray(rng.uniform(-0.9, 0.9, (4, 5, 4, 4, 3)), jnp.float32)
    points = points.at[1].set(points[0] + 0.02 * jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32))
    sample = ancestral_sample(_OracleMixture(points, objective), None, jax.random.PRNGKey(0), (12, 5, 4, 4, 3),
                              100, objective=objective)
    distances = np.sqrt(np.mean((np.asarray(sample)[:, None] - np.asarray(points)[None]) ** 2, (2, 3, 4, 5)))
    assert np.all(distances.min(1) < 1e-3), distances.min(1)
    assert len(set(distances.argmin(1).tolist())) >= 3


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_denoised_estimate_is_the_last_stages_one_step_prediction(objective):
    """An exact denoiser of one clean video returns it from any noised input, also from a cascade's
    super-resolution stage, whatever the base stage knows; its x̂_0 is clipped to [−1, 1]."""
    rng = np.random.default_rng(4)
    point = jnp.asarray(rng.uniform(-0.9, 0.9, (1, 3, 8, 8, 2)), jnp.float32)
    other = jnp.asarray(rng.uniform(-0.9, 0.9, (2, 3, 8, 8, 2)), jnp.float32)
    single = Cascade(_OracleMixture(point, objective), objective=objective)
    cascade = Cascade(_OracleMixture(point[..., :4, :4, :] * 0, objective), _OracleMixture(point, objective),
                      low_size=4, objective=objective)
    for model in (single, cascade):
        for x0 in (jnp.repeat(point, 2, 0), other):
            estimate = denoised_estimate({"base": None, "sr": None}, x0, jax.random.PRNGKey(1), model)
            np.testing.assert_allclose(np.asarray(estimate), np.repeat(np.asarray(point), 2, 0), atol=2e-4)
    loud = Cascade(_OracleMixture(point * 3, objective), objective=objective)
    estimate = denoised_estimate({"base": None}, other, jax.random.PRNGKey(1), loud)
    np.testing.assert_allclose(np.asarray(estimate), np.clip(np.repeat(np.asarray(point) * 3, 2, 0), -1, 1),
                               atol=5e-4)


def test_v_objective_round_trip():
    """v = α ε − σ x_0 and x̂_0 = α x_t − σ v invert each other at every t (also near t = 1, where
    x̂_0 = (x_t − σ ε)/α would amplify any error of ε̂)."""
    x0 = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (5, 1, 3, 3, 2)), jnp.float32)
    noise = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
    t = jnp.array([0.0, 0.3, 0.7, 0.95, 0.999])
    x_t = noise_to(x0, t, noise)
    for objective in OBJECTIVES:
        target = regression_target(objective, x0, noise, t)
        np.testing.assert_allclose(np.asarray(predicted_x0(objective, target, x_t, t))[:4], np.asarray(x0)[:4],
                                   atol=2e-4)
    v_error = predicted_x0("v", regression_target("v", x0, noise, t) + 0.01, x_t, t) - x0
    assert float(jnp.max(jnp.abs(v_error))) <= 0.0101


def test_min_snr_loss_weight_is_imagens():
    """imagen-pytorch 1.26.2's default weighting: min(SNR, 5)/SNR (noise) and min(SNR, 5)/(SNR + 1) (v), SNR =
    α²/σ² of the cosine schedule; the weighted loss is the mean of each sample's MSE times its weight."""
    t = jnp.array([0.02, 0.3, 0.5, 0.9])
    s = 0.008
    alpha = np.cos((np.asarray(t, np.float64) + s) / (1 + s) * np.pi / 2)
    snr = alpha ** 2 / (1 - alpha ** 2)
    assert snr[0] > 5 > snr[-1]
    np.testing.assert_allclose(np.asarray(loss_weight("noise", 5.0, t)), np.minimum(snr, 5) / snr, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(loss_weight("v", 5.0, t)), np.minimum(snr, 5) / (snr + 1), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(loss_weight("v", None, t)), np.ones(4))

    class Zero:
        def apply(self, params, x, noise_level, **cond):
            return jnp.zeros_like(x)

    x0 = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (6, 2, 4, 4, 3)), jnp.float32)
    key = jax.random.PRNGKey(7)
    for objective in OBJECTIVES:
        plain = stage_losses(Cascade(Zero(), objective=objective), {"base": None}, x0, key)["base"]
        weighted = stage_losses(Cascade(Zero(), objective=objective, min_snr_gamma=5.0), {"base": None}, x0,
                                key)["base"]
        keys = jax.random.split(key, 5)
        times = jax.random.uniform(keys[0], (6,))
        noise = jax.random.normal(keys[1], x0.shape)
        per_sample = np.mean(np.asarray(regression_target(objective, x0, noise, times)) ** 2, (1, 2, 3, 4))
        np.testing.assert_allclose(float(plain), per_sample.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(weighted),
                                   np.mean(per_sample * np.asarray(loss_weight(objective, 5.0, times))), rtol=1e-5)


def test_low_resolution_conditioning_follows_imagens_linear_schedule_and_nearest_resize():
    """α² = exp(−(1e-4 + 10 t²)) on the linear schedule (λ = −log expm1(1e-4 + 10 t²)), and the resize picks
    the pixels torch's interpolate(mode='nearest') picks, shrinking and growing."""
    torch = pytest.importorskip("torch")
    t = jnp.array([0.0, 0.2, 0.5, 1.0])
    alpha, sigma = alpha_sigma(lowres_log_snr(t))
    np.testing.assert_allclose(np.asarray(alpha) ** 2, np.exp(-(1e-4 + 10 * np.asarray(t) ** 2)), rtol=1e-5)
    low = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (4, 1, 3, 3, 2)), jnp.float32)
    augmented = noise_to(low, t, jnp.ones_like(low), lowres_log_snr)
    np.testing.assert_allclose(np.asarray(augmented), np.asarray(alpha)[:, None, None, None, None] * np.asarray(low)
                               + np.asarray(sigma)[:, None, None, None, None], rtol=1e-5, atol=1e-6)
    image = np.random.default_rng(7).normal(size=(2, 1, 20, 20, 4)).astype(np.float32)
    for size in (8, 64, 276):
        for source in (image, np.asarray(resize(jnp.asarray(image), 8, 8))):
            expected = torch.nn.functional.interpolate(torch.from_numpy(np.array(source[:, 0])).permute(0, 3, 1, 2), (size, size),
                                                       mode="nearest").permute(0, 2, 3, 1).numpy()
            np.testing.assert_array_equal(np.asarray(resize(jnp.asarray(source), size, size))[:, 0], expected)


def test_dynamic_thresholding_is_imagens():
    """s = max(1, the 0.95 quantile of |x̂_0|) per sample (torch.quantile's linear interpolation), x̂_0 clipped
    to ±s and divided by s; a sample inside [−1, 1] is unchanged; None clips."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x0 = np.stack([rng.uniform(-0.9, 0.9, (3, 4, 4, 3)), 3 * rng.normal(size=(3, 4, 4, 3)),
                   rng.normal(size=(3, 4, 4, 3))]).astype(np.float32)
    flat = torch.from_numpy(x0).reshape(3, -1)
    s = torch.quantile(flat.abs(), 0.95, dim=-1).clamp(min=1.0)[:, None]
    expected = (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).numpy()
    thresholded = np.asarray(threshold_x0(jnp.asarray(x0), 0.95))
    np.testing.assert_allclose(thresholded, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(thresholded[0], x0[0])
    assert np.abs(thresholded).max() <= 1.0
    np.testing.assert_array_equal(np.asarray(threshold_x0(jnp.asarray(x0), None)), np.clip(x0, -1, 1))
