"""Optional lattice diffusion: cosine β schedule, lattice head, teacher forcing, joint PC sampling."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
from dismax.diffusion.noise import BetaSchedule, SigmaSchedule, cosine_alpha_bar, wrap_centered, wrapped_normal_score
from dismax.diffusion.sampling import predictor_corrector_lattice
from dismax.diffusion.trainer import LatticeDiffusion, denoising_losses
from dismax.errors import DismaxConfigError

TINY = DenoiserConfig(name="cspnet", hidden=8, n_layers=1, n_freq=2, time_dim=8)


def test_cosine_schedule_alpha_bar_matches_closed_form():
    schedule = BetaSchedule(1000)
    betas, alpha_bars = schedule.betas, schedule.alpha_bars
    t = np.arange(1001)
    closed = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(cosine_alpha_bar(t, 1000), closed, rtol=1e-12)
    assert betas[0] == 0.0 and alpha_bars[0] == 1.0 and betas.shape == (1001,)
    assert betas[1:].min() >= 1e-4 and betas.max() <= 0.9999
    # the first few β are raised to the 1e-4 floor; after them ᾱ_t / ᾱ_u follows the closed form exactly
    clipped = np.flatnonzero(1.0 - closed[1:] / closed[:-1] < 1e-4) + 1
    assert 0 < len(clipped) < 30 and np.all(clipped == np.arange(1, len(clipped) + 1))
    first = len(clipped)
    np.testing.assert_allclose(alpha_bars[first:1000] / alpha_bars[first], closed[first:1000] / closed[first],
                               rtol=1e-10)
    np.testing.assert_allclose(alpha_bars[1:1000], closed[1:1000], rtol=5e-4)  # the floor's small effect
    # the last β is clipped at 0.9999 (the closed form reaches ᾱ_T = 0)
    np.testing.assert_allclose(alpha_bars[1000], alpha_bars[999] * 1e-4, rtol=1e-9)


def test_ancestral_coefficients_are_diffcsp_step_and_compose_consistently():
    schedule = BetaSchedule(1000)
    alphas, alpha_bars, betas = 1.0 - schedule.betas, schedule.alpha_bars, schedule.betas
    t = np.array([1000, 500, 2, 1])
    a, b, c = schedule.ancestral_coefficients(t, t - 1)
    np.testing.assert_allclose(a, 1 / np.sqrt(alphas[t]), rtol=1e-6)
    np.testing.assert_allclose(b, (1 - alphas[t]) / np.sqrt(1 - alpha_bars[t]), rtol=1e-6)
    posterior = np.sqrt(betas[t] * (1 - alpha_bars[t - 1]) / (1 - alpha_bars[t]))
    np.testing.assert_allclose(c, posterior, rtol=1e-5)
    assert c[-1] == 0.0
    # skipping levels: with the true noise ε̂ = ε, L_t = √ᾱ_t L_0 + √(1 − ᾱ_t) ε is mapped to a sample of the
    # forward marginal at t': signal coefficient √ᾱ_t', noise variance 1 − ᾱ_t'
    t, t_next = np.array([800, 999, 40]), np.array([300, 10, 0])
    a, b, c = (x.astype(np.float64) for x in schedule.ancestral_coefficients(t, t_next))
    np.testing.assert_allclose(a * np.sqrt(alpha_bars[t]), np.sqrt(alpha_bars[t_next]), rtol=1e-5)
    noise_variance = (a * (np.sqrt(1 - alpha_bars[t]) - b)) ** 2 + c**2
    np.testing.assert_allclose(noise_variance, 1 - alpha_bars[t_next], rtol=1e-5, atol=1e-7)


def _random_params(network, example, seed=0):
    """Random parameters (host-side, no compiled initialiser) with the structure of ``network.init``."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(network.init, jax.random.PRNGKey(0), *example, jnp.int32(1))
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes), shapes


def test_lattice_head_is_additive_and_rotates_with_the_cell():
    frac = jax.random.uniform(jax.random.PRNGKey(0), (5, 3))
    lattice = jnp.eye(3) * 4.0 + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (3, 3))
    species = jnp.array([13, 13, 28, 28, 28])
    plain, with_head = build_denoiser(TINY), build_denoiser(TINY, lattice_head=True)
    params, _ = _random_params(with_head, (frac, lattice, species))
    _, plain_shapes = _random_params(plain, (frac, lattice, species))
    assert set(params["params"]) - set(plain_shapes["params"]) == {"lattice_head"}
    assert params["params"]["lattice_head"]["kernel"].shape == (TINY.hidden, 9)
    params_plain = {"params": {k: v for k, v in params["params"].items() if k != "lattice_head"}}
    assert jax.tree.structure(params_plain) == jax.tree.structure(plain_shapes)
    rotation = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0], jnp.float32)

    @jax.jit
    def outputs(params, params_plain):
        return (with_head.apply(params, frac, lattice, species, 5),
                with_head.apply(params, frac, lattice @ rotation.T, species, 5),
                plain.apply(params_plain, frac, lattice, species, 5))

    (coord, eps), (coord_r, eps_r), coord_plain = outputs(params, params_plain)
    np.testing.assert_allclose(coord, coord_plain, atol=1e-6)  # same coordinate function, shared names
    np.testing.assert_allclose(coord_r, coord, atol=1e-4)
    assert np.abs(np.asarray(eps)).max() > 1e-3
    np.testing.assert_allclose(eps_r, eps @ rotation.T, atol=1e-4)  # M(Gram)·L rotates with L
    with pytest.raises(DismaxConfigError, match="lattice_diffusion"):
        build_denoiser(DenoiserConfig(name="equivariant"), lattice_head=True)


def test_teacher_forcing_feeds_the_clean_lattice_and_drops_the_lattice_loss():
    network, plain = build_denoiser(TINY, lattice_head=True), build_denoiser(TINY)
    schedule, lattice_diffusion = SigmaSchedule(0.005, 0.1, 100), LatticeDiffusion(BetaSchedule(100), 1.0)
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.random((3, 5, 3)), jnp.float32), jnp.asarray(np.eye(3) * 4.0 + 0.2 * rng.normal(
        size=(3, 3, 3)), jnp.float32), jnp.full((3, 5), 14, jnp.int32))
    params, _ = _random_params(network, tuple(x[0] for x in batch))
    coord_params = {"params": {k: v for k, v in params["params"].items() if k != "lattice_head"}}
    key = jax.random.PRNGKey(7)

    @jax.jit
    def losses(params, coord_params):
        with_tf = denoising_losses(network, params, batch, key, schedule, lattice_diffusion, True)
        without_tf = denoising_losses(network, params, batch, key, schedule, lattice_diffusion, False)
        # the coordinate loss of the same noise with the clean lattice as input
        clean = denoising_losses(plain, coord_params, batch, key, schedule)[0]
        return with_tf, without_tf, clean

    (loss_tf, parts_tf), (loss, parts), clean_loss = losses(params, coord_params)
    # teacher forcing: only the coordinate loss (so no gradient reaches the lattice head), clean lattice input
    assert float(parts_tf["lattice_loss"]) == 0.0
    np.testing.assert_allclose(float(loss_tf), float(parts_tf["coord_loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(parts_tf["coord_loss"]), float(clean_loss), rtol=1e-5)
    # without teacher forcing: noisy lattice input (another coordinate loss) and the lattice loss is added
    assert float(parts["lattice_loss"]) > 0 and abs(float(parts["coord_loss"]) - float(clean_loss)) > 1e-6
    np.testing.assert_allclose(float(loss), float(parts["coord_loss"] + parts["lattice_loss"]), rtol=1e-6)


TARGET_FRAC = np.array([[0.1, 0.2, 0.3], [0.6, 0.5, 0.45]])


@dataclass(frozen=True)
class ExactPointModel:
    """Exact normalised coordinate score and exact lattice noise of a point-mass structure; the "parameters"
    are the target lattice (3, 3), so one compiled sampler serves every target."""

    schedule: SigmaSchedule
    lattice_schedule: BetaSchedule

    def apply(self, target_lattice, frac, lattice, species, t):
        sigmas, sqrt_lambdas = self.schedule.tables()
        alpha_bar = jnp.asarray(self.lattice_schedule.alpha_bars, jnp.float32)[t]
        eps = (lattice - jnp.sqrt(alpha_bar) * target_lattice) / jnp.sqrt(1 - alpha_bar)
        return wrapped_normal_score(frac - jnp.asarray(TARGET_FRAC), sigmas[t]) / sqrt_lambdas[t], eps


@pytest.mark.parametrize("handedness", [1.0, -1.0])
def test_joint_sampler_with_exact_model_returns_the_structure_in_a_right_handed_cell(handedness):
    schedule, lattice_schedule = SigmaSchedule(0.005, 0.1, 1000), BetaSchedule(1000)
    target = np.diag([4.0, 5.0, 6.0 * handedness]) + 0.3
    net = ExactPointModel(schedule, lattice_schedule)
    frac, lattice = predictor_corrector_lattice(jnp.asarray(target, jnp.float32), jnp.array([14, 14]),
                                                jax.random.PRNGKey(0), network=net, schedule=schedule,
                                                lattice_schedule=lattice_schedule, n_steps=40, step_lr=1e-5,
                                                n_structures=4)
    frac, lattice = np.asarray(frac), np.asarray(lattice)
    assert np.all(np.linalg.det(lattice) > 0)
    np.testing.assert_allclose(lattice, np.broadcast_to(handedness * target, lattice.shape), atol=1e-3)
    expected = np.mod(handedness * TARGET_FRAC, 1.0)
    assert np.abs(wrap_centered(frac - expected)).max() < 0.03
