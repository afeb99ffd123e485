"""Continuous-time Gaussian diffusion of images/videos (imagen-pytorch's GaussianDiffusionContinuousTimes).

Cosine log-SNR schedule λ(t) = −log(max(cos((t + s)/(1 + s) · π/2)^−2 − 1, 1e-5)), s = 0.008, t ∈ [0, 1];
α = √sigmoid(λ), σ = √sigmoid(−λ). The U-Nets are told the noise level as λ(t) (imagen-pytorch's
``get_condition``), not t. Training draws t ~ U(0, 1) per sample and regresses (MSE) the
``objective`` of x_t = α x_0 + σ ε: ``noise`` ε (imagen's default, Dismai-Bench's setting; x̂_0 = (x_t − σ ε̂)/α
amplifies errors by σ/α, so near t = 1 it needs long training) or ``v`` = α ε − σ x_0 (imagen's
``pred_objectives='v'``; x̂_0 = α x_t − σ v̂ stays well conditioned at every t). With ``min_snr_gamma`` γ each
sample's MSE is weighted as imagen-pytorch (1.26.2, the version of the published scripts) does by default
(``min_snr_loss_weight=True``, γ = 5; Hang et al. 2023): min(SNR, γ)/SNR for ``noise``, min(SNR, γ)/(SNR + 1)
for ``v``, SNR = exp λ, which keeps the many nearly clean, easy samples from dominating; None: plain MSE.
Sampling is ancestral over ``n_steps`` equal time steps from t = 1 to 0 with the posterior q(x_s | x_t, x̂_0):
c = −expm1(λ_t − λ_s), mean α_s (x_t (1 − c)/α_t + c x̂_0), variance σ_s² c, and x̂_0 kept in [−1, 1] (the data
are scaled into that range) by ``threshold`` (below).

A cascade (CrysTens) adds a super-resolution stage: it is conditioned on the low-resolution image resized to
its size (nearest neighbour, as imagen-pytorch's default ``resize_mode``) and noise-augmented to level ``t_aug`` on
imagen's separate *linear* low-resolution schedule λ_aug(t) = −log(expm1(1e-4 + 10 t²)) (one ``t_aug`` ~ U(0, 1)
per batch in training, ``LOWRES_SAMPLE_NOISE`` in sampling: Imagen's defaults). Both stages are trained at every
step on the same batch with one Adam over the joint parameters {"base", "sr"}; Adam is elementwise, so this
equals training each U-Net on its own.

``threshold`` in sampling is imagen's dynamic thresholding (on by default there, percentile 0.95): each sample's
x̂_0 is clipped to ±s and divided by s, s = max(1, the percentile of |x̂_0|); None clips to [−1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import optax

from dismax.diffusion.trainer import TrainState

COSINE_OFFSET = 0.008
LOWRES_SAMPLE_NOISE = 0.2
DENOISING_PROBE_TIME = 0.05  # the late-sampling noise level at which validation measures the one-step x̂_0


def log_snr(t: jax.Array) -> jax.Array:
    """Cosine-schedule log signal-to-noise ratio λ(t), t ∈ [0, 1]."""
    cosine = jnp.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2)
    return -jnp.log(jnp.maximum(cosine ** -2 - 1, 1e-5))


def alpha_sigma(log_snr_value: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sqrt(jax.nn.sigmoid(log_snr_value)), jnp.sqrt(jax.nn.sigmoid(-log_snr_value))


def _expand(values: jax.Array, like: jax.Array) -> jax.Array:
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def noise_to(x0: jax.Array, t: jax.Array, noise: jax.Array, schedule=log_snr) -> jax.Array:
    """x_t = α(t) x_0 + σ(t) ε for per-sample times t (B,) of ``schedule`` (a log-SNR function of t: the
    cosine one, or :func:`lowres_log_snr` for a cascade's conditioning image)."""
    alpha, sigma = alpha_sigma(schedule(t))
    return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise


def lowres_log_snr(t: jax.Array) -> jax.Array:
    """Log-SNR of imagen's linear schedule, which noises the low-resolution conditioning image of a cascade."""
    return -jnp.log(jnp.expm1(1e-4 + 10.0 * t ** 2))


def resize(x: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest-neighbour resize of videos (B, F, H, W, C) to (B, F, height, width, C) as torch's
    ``interpolate(mode='nearest')`` (imagen's default): output pixel i takes input pixel ⌊i · in/out⌋."""

    def source(n_in, n_out):
        return jnp.minimum(jnp.floor(jnp.arange(n_out) * (n_in / n_out)).astype(jnp.int32), n_in - 1)

    return x[:, :, source(x.shape[2], height)][:, :, :, source(x.shape[3], width)]


@dataclass(frozen=True)
class Cascade:
    """Static description of the diffusion model: the base U-Net at ``low_size`` (None: the full size, no
    super-resolution stage) and the super-resolution U-Net ``sr`` to the full size."""

    base: object
    sr: object | None = None
    low_size: int | None = None
    objective: str = "noise"
    min_snr_gamma: float | None = None


OBJECTIVES = ("noise", "v")


def regression_target(objective: str, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """What the network regresses at times t (B,): ε (``noise``) or v = α ε − σ x_0 (``v``)."""
    if objective == "noise":
        return noise
    alpha, sigma = alpha_sigma(log_snr(t))
    return _expand(alpha, x0) * noise - _expand(sigma, x0) * x0


def loss_weight(objective: str, min_snr_gamma: float | None, t: jax.Array) -> jax.Array:
    """(B,) weight of each sample's MSE at times t (B,): imagen-pytorch's min-SNR weighting (module docstring),
    or ones when ``min_snr_gamma`` is None."""
    if min_snr_gamma is None:
        return jnp.ones_like(t)
    snr = jnp.exp(log_snr(t))
    return jnp.minimum(snr, min_snr_gamma) / (snr if objective == "noise" else snr + 1)


def predicted_x0(objective: str, output: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """x̂_0 from the network output at x_t and times t (B,) (not clipped)."""
    alpha, sigma = alpha_sigma(log_snr(t))
    alpha, sigma = _expand(alpha, x_t), _expand(sigma, x_t)
    if objective == "noise":
        return (x_t - sigma * output) / alpha
    return alpha * x_t - sigma * output


def stage_losses(cascade: Cascade, params: dict, x0: jax.Array, key: jax.Array) -> dict:
    """Noise-regression MSE of every stage on clean data x0 (B, F, H, W, C): {"base", "sr"}."""
    keys = jax.random.split(key, 5)
    batch = x0.shape[0]
    low = x0 if cascade.sr is None else resize(x0, cascade.low_size, cascade.low_size)

    def mse(network, stage_params, clean, time_key, noise_key, **cond):
        t = jax.random.uniform(time_key, (batch,))
        noise = jax.random.normal(noise_key, clean.shape, clean.dtype)
        output = network.apply(stage_params, noise_to(clean, t, noise), log_snr(t), **cond)
        per_sample = jnp.mean((output - regression_target(cascade.objective, clean, noise, t)) ** 2,
                              axis=tuple(range(1, clean.ndim)))
        return jnp.mean(loss_weight(cascade.objective, cascade.min_snr_gamma, t) * per_sample)

    losses = {"base": mse(cascade.base, params["base"], low, keys[0], keys[1])}
    if cascade.sr is not None:
        t_aug = jnp.full((batch,), jax.random.uniform(keys[2]))
        cond = noise_to(resize(low, *x0.shape[2:4]), t_aug, jax.random.normal(keys[3], x0.shape, x0.dtype),
                        lowres_log_snr)
        losses["sr"] = mse(cascade.sr, params["sr"], x0, keys[4], jax.random.fold_in(keys[4], 1), cond=cond,
                           cond_noise_level=lowres_log_snr(t_aug))
    return losses


def init_params(cascade: Cascade, example: jax.Array, key: jax.Array) -> dict:
    """Parameters {"base", "sr"} for data shaped like ``example`` (B, F, H, W, C)."""
    base_key, sr_key = jax.random.split(key)
    t = jnp.zeros(example.shape[:1])
    low = example if cascade.sr is None else resize(example, cascade.low_size, cascade.low_size)
    params = {"base": cascade.base.init(base_key, low, t)}
    if cascade.sr is not None:
        params["sr"] = cascade.sr.init(sr_key, example, t, cond=example, cond_noise_level=t)
    return params


def make_optimizer(lr, b1: float, b2: float) -> optax.GradientTransformation:
    """Adam with the learning rate (a number or a schedule of the step count) as an injected hyperparameter,
    so the state records the rate of the last step (Imagen: lr 1e-4, betas (0.9, 0.99))."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1, b2=b2)


@partial(jax.jit, static_argnames=("cascade", "optimizer"))
def init_state(example: jax.Array, key: jax.Array, cascade: Cascade, optimizer) -> TrainState:
    """The first training state for data shaped like ``example`` (B, F, H, W, C). Jitted with the cascade and
    optimizer static, so runs with equal settings (a bench run's seeds) compile it once per process."""
    init_key, state_key = jax.random.split(key)
    params = init_params(cascade, example, init_key)
    return TrainState(params=params, ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), key=state_key)


@partial(jax.jit, static_argnames=("cascade", "optimizer", "ema_decay"), donate_argnums=(0,))
def train_step(state: TrainState, x0: jax.Array, cascade: Cascade, optimizer, ema_decay: float):
    """One Adam step on clean data x0 (B, F, H, W, C) with a parameter EMA: (state, {"loss", "base", "sr"})."""
    key, step_key = jax.random.split(state.key)

    def loss_fn(params):
        losses = stage_losses(cascade, params, x0, step_key)
        return sum(losses.values()), losses

    (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    return TrainState(params, ema, opt_state, state.step + 1, key), {"loss": loss, **losses}


@partial(jax.jit, static_argnames=("cascade",))
def eval_losses(params: dict, x0: jax.Array, key: jax.Array, cascade: Cascade) -> dict:
    """Stage losses with a fixed key (validation)."""
    losses = stage_losses(cascade, params, x0, key)
    return {"loss": sum(losses.values()), **losses}


@partial(jax.jit, static_argnames=("cascade",))
def denoised_estimate(params: dict, x0: jax.Array, key: jax.Array, cascade: Cascade,
                      t: float = DENOISING_PROBE_TIME) -> jax.Array:
    """x̂_0 (clipped to [−1, 1]) of clean data x0 (B, F, H, W, C) noised to time t, from the last stage (a
    cascade's super-resolution stage conditioned, as in sampling, on x0's low-resolution image noise-augmented to
    ``LOWRES_SAMPLE_NOISE``). How far it lies from x0 says how well the fine detail (e.g. the coordinates) is
    learned, which the noise-regression loss mixes with every other pixel."""
    noise_key, aug_key = jax.random.split(key)
    times = jnp.full((x0.shape[0],), t)
    x_t = noise_to(x0, times, jax.random.normal(noise_key, x0.shape, x0.dtype))
    if cascade.sr is None:
        output = cascade.base.apply(params["base"], x_t, log_snr(times))
    else:
        t_aug = jnp.full((x0.shape[0],), LOWRES_SAMPLE_NOISE)
        low = resize(resize(x0, cascade.low_size, cascade.low_size), *x0.shape[2:4])
        cond = noise_to(low, t_aug, jax.random.normal(aug_key, x0.shape, x0.dtype), lowres_log_snr)
        output = cascade.sr.apply(params["sr"], x_t, log_snr(times), cond=cond,
                                  cond_noise_level=lowres_log_snr(t_aug))
    return jnp.clip(predicted_x0(cascade.objective, output, x_t, times), -1.0, 1.0)


def threshold_x0(x0: jax.Array, threshold: float | None) -> jax.Array:
    """x̂_0 (B, ...) limited to [−1, 1]: imagen's dynamic thresholding at percentile ``threshold`` (module
    docstring), or a plain clip when None."""
    if threshold is None:
        return jnp.clip(x0, -1.0, 1.0)
    s = jnp.maximum(jnp.quantile(jnp.abs(x0.reshape(x0.shape[0], -1)), threshold, axis=-1), 1.0)
    s = _expand(s, x0)
    return jnp.clip(x0, -s, s) / s


def ancestral_sample(network, params, key: jax.Array, shape: tuple, n_steps: int, cond=None, cond_time=None,
                     objective: str = "noise", threshold: float | None = None):
    """x_0 (shape) from pure noise by ``n_steps`` posterior steps of a network trained on ``objective``
    (module docstring); ``cond`` was noise-augmented to ``cond_time`` of the low-resolution schedule."""
    times = jnp.linspace(1.0, 0.0, n_steps + 1)
    init_key, loop_key = jax.random.split(key)
    batch = shape[0]
    extra = {} if cond is None else {"cond": cond, "cond_noise_level": lowres_log_snr(cond_time)}

    def step(x, inputs):
        index, t, s = inputs
        lam_t, lam_s = log_snr(t), log_snr(s)
        (alpha_t, _), (alpha_s, sigma_s) = alpha_sigma(lam_t), alpha_sigma(lam_s)
        times_t = jnp.full((batch,), t)
        output = network.apply(params, x, jnp.full((batch,), lam_t), **extra)
        x0 = threshold_x0(predicted_x0(objective, output, x, times_t), threshold)
        c = -jnp.expm1(lam_t - lam_s)
        mean = alpha_s * (x * (1 - c) / alpha_t + c * x0)
        noise = jax.random.normal(jax.random.fold_in(loop_key, index), x.shape, x.dtype)
        return jnp.where(index == n_steps - 1, x0, mean + jnp.sqrt(sigma_s ** 2 * c) * noise), None

    x, _ = jax.lax.scan(step, jax.random.normal(init_key, shape),
                        (jnp.arange(n_steps), times[:-1], times[1:]))
    return x


@partial(jax.jit, static_argnames=("cascade", "shape", "n_steps", "threshold"))
def sample_cascade(params: dict, key: jax.Array, cascade: Cascade, shape: tuple, n_steps: int,
                   threshold: float | None = None) -> jax.Array:
    """Samples (shape = (B, F, H, W, C)) in [−1, 1]: the base stage, then super-resolution if any."""
    base_key, sr_key, aug_key = jax.random.split(key, 3)
    options = dict(objective=cascade.objective, threshold=threshold)
    if cascade.sr is None:
        return ancestral_sample(cascade.base, params["base"], base_key, shape, n_steps, **options)
    low_shape = (*shape[:2], cascade.low_size, cascade.low_size, shape[-1])
    low = ancestral_sample(cascade.base, params["base"], base_key, low_shape, n_steps, **options)
    t_aug = jnp.full((shape[0],), LOWRES_SAMPLE_NOISE)
    cond = noise_to(resize(low, *shape[2:4]), t_aug, jax.random.normal(aug_key, shape), lowres_log_snr)
    return ancestral_sample(cascade.sr, params["sr"], sr_key, shape, n_steps, cond=cond, cond_time=t_aug, **options)
