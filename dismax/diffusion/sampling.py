"""Samplers for the fractional-coordinate score model: DiffCSP predictor–corrector and annealed Langevin.

Both run as one jitted ``lax.scan`` over steps, vmapped over a chunk of structures that share one
lattice and species list; only the current coordinates are carried (no trajectory is stored). Per-step
keys are ``fold_in(chunk_key, step)``. ``score`` below is the true score ∇ log p, i.e. network · √λ_t.

PC step at visited level t with next visited level t' (σ_{t'} = 0 after the last):
  corrector  F ← F + γ_t s(F, t) + √(2γ_t) z,   γ_t = step_lr (σ_t/σ_1)²
  predictor  F ← F + (σ_t² − σ_{t'}²) s(F, t) + √(σ_{t'}² (σ_t² − σ_{t'}²)/σ_t²) z,   wrapped mod 1
with z = 0 at the last step. ``reference_compatible=True`` uses σ_{t−1} of the full schedule as in the
published code (too-small predictor steps when levels are skipped).
With lattice diffusion (``predictor_corrector_lattice``) every structure also carries its own lattice,
L_T ~ N(0, I); both network calls see the current L_t and the predictor call's lattice noise ε̂ gives the
DDPM ancestral step L ← a (L − b ε̂) + c z (``BetaSchedule.ancestral_coefficients`` between the visited
levels t → t', DiffCSP's step for t' = t − 1). A sampled lattice with negative determinant is returned as
(−L, −F mod 1), the same atoms in a right-handed cell.
Annealed Langevin (CDVAE-style, on fractional coordinates): for each visited level, largest first,
``steps_per_level`` updates F ← F + η s(F, t) + √(2η) z with η = step_lr (σ_t/σ_1)², wrapped mod 1.
"""

from __future__ import annotations

import contextlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dismax.diffusion.noise import BetaSchedule, SigmaSchedule


_step_bar = None    # the progress bar the samplers' steps advance (see step_progress)


def _report_step(_index) -> None:
    if _step_bar is not None:
        _step_bar.update(1)


@contextlib.contextmanager
def step_progress(bar):
    """While the block runs, every sampler step (one host callback per step of the jitted loop) advances
    the tqdm-like ``bar`` by one, so a long chunk shows progress and an ETA."""
    global _step_bar
    previous, _step_bar = _step_bar, bar
    try:
        yield bar
    finally:
        _step_bar = previous


def visited_steps(n_total: int, n_visit: int) -> np.ndarray:
    """Descending distinct time indices T..1 (integer linspace) of length ≤ n_visit."""
    n_visit = max(1, min(n_visit, n_total))
    steps = np.unique(np.round(np.linspace(n_total, 1, n_visit)).astype(np.int32))[::-1]
    return steps.copy()


def _score_fn(network, params, lattice, species, sqrt_lambdas):
    def score(frac, t):
        out = jax.vmap(lambda f: network.apply(params, f, lattice, species, t))(frac)
        return out * sqrt_lambdas[t]
    return score


_PC_STATIC = ("network", "schedule", "n_steps", "reference_compatible", "n_structures")


@partial(jax.jit, static_argnames=_PC_STATIC)
def predictor_corrector(params, lattice, species, key, *, network, schedule: SigmaSchedule, n_steps: int,
                        step_lr: float, n_structures: int, reference_compatible: bool = False):
    """Sample ``n_structures`` fractional-coordinate sets (n_structures, N, 3) for one lattice/species."""
    frac, _ = _predictor_corrector(params, lattice, species, key, network, schedule, n_steps, step_lr, n_structures,
                                   reference_compatible, None)
    return frac


@partial(jax.jit, static_argnames=(*_PC_STATIC, "lattice_schedule"))
def predictor_corrector_lattice(params, species, key, *, network, schedule: SigmaSchedule,
                                lattice_schedule: BetaSchedule, n_steps: int, step_lr: float, n_structures: int,
                                reference_compatible: bool = False):
    """Sample coordinates and lattices jointly (network with a lattice head): returns
    (frac (n_structures, N, 3), lattice (n_structures, 3, 3) with positive determinant)."""
    frac, lattice = _predictor_corrector(params, None, species, key, network, schedule, n_steps, step_lr,
                                         n_structures, reference_compatible, lattice_schedule)
    flip = jnp.linalg.det(lattice) < 0
    return (jnp.where(flip[:, None, None], jnp.mod(-frac, 1.0), frac),
            jnp.where(flip[:, None, None], -lattice, lattice))


def _predictor_corrector(params, lattice, species, key, network, schedule: SigmaSchedule, n_steps: int,
                         step_lr: float, n_structures: int, reference_compatible: bool,
                         lattice_schedule: BetaSchedule | None):
    """The PC scan; with ``lattice_schedule`` the lattice is sampled too, else ``lattice`` (3, 3) is fixed."""
    sigmas, sqrt_lambdas = schedule.tables()
    steps = visited_steps(schedule.n_steps, n_steps)
    next_steps = steps - 1 if reference_compatible else np.append(steps[1:], 0)
    is_last = np.arange(len(steps)) == len(steps) - 1
    init_key, loop_key = jax.random.split(key)
    frac0 = jax.random.uniform(init_key, (n_structures, species.shape[0], 3))
    if lattice_schedule is None:
        lattice0, lattice_axis = lattice, None
        coefficients = np.zeros((3, len(steps)), np.float32)
    else:
        lattice0, lattice_axis = jax.random.normal(jax.random.fold_in(init_key, 1), (n_structures, 3, 3)), 0
        coefficients = np.stack(lattice_schedule.ancestral_coefficients(steps, next_steps))

    def network_outputs(frac, lattice, t):
        """(true coordinate score (n, N, 3), predicted lattice noise (n, 3, 3) or None)."""
        out = jax.vmap(lambda f, l: network.apply(params, f, l, species, t), in_axes=(0, lattice_axis))(frac, lattice)
        coord, lattice_noise = (out, None) if lattice_schedule is None else out
        return coord * sqrt_lambdas[t], lattice_noise

    def step(carry, inputs):
        frac, lattice = carry
        index, t, t_next, last, a, b, c = inputs
        jax.debug.callback(_report_step, index)
        k_corr, k_pred = jax.random.split(jax.random.fold_in(loop_key, index))
        noise_scale = jnp.where(last, 0.0, 1.0)
        sigma, sigma_next = sigmas[t], sigmas[t_next]
        gamma = step_lr * (sigma / sigmas[1]) ** 2
        score, _ = network_outputs(frac, lattice, t)
        frac = frac + gamma * score + noise_scale * jnp.sqrt(2 * gamma) * jax.random.normal(k_corr, frac.shape)
        delta = sigma**2 - sigma_next**2
        std = jnp.sqrt(sigma_next**2 * delta / sigma**2)
        score, lattice_noise = network_outputs(frac, lattice, t)
        frac = frac + delta * score + noise_scale * std * jax.random.normal(k_pred, frac.shape)
        if lattice_schedule is not None:
            z = jax.random.normal(jax.random.fold_in(k_pred, 1), lattice.shape)
            lattice = a * (lattice - b * lattice_noise) + noise_scale * c * z
        return (jnp.mod(frac, 1.0), lattice), None

    inputs = (jnp.arange(len(steps)), jnp.asarray(steps), jnp.asarray(next_steps), jnp.asarray(is_last),
              *(jnp.asarray(x) for x in coefficients))
    (frac, lattice), _ = jax.lax.scan(step, (frac0, lattice0), inputs)
    return frac, lattice


@partial(jax.jit, static_argnames=("network", "schedule", "n_levels", "steps_per_level", "n_structures"))
def annealed_langevin(params, lattice, species, key, *, network, schedule: SigmaSchedule, n_levels: int,
                      steps_per_level: int, step_lr: float, n_structures: int):
    """CDVAE-style annealed Langevin dynamics on fractional coordinates; returns (n_structures, N, 3)."""
    sigmas, sqrt_lambdas = schedule.tables()
    levels = visited_steps(schedule.n_steps, n_levels)
    score = _score_fn(network, params, lattice, species, sqrt_lambdas)
    init_key, loop_key = jax.random.split(key)
    frac0 = jax.random.uniform(init_key, (n_structures, species.shape[0], 3))

    def level(frac, inputs):
        level_index, t = inputs
        eta = step_lr * (sigmas[t] / sigmas[1]) ** 2

        def inner(frac, step_index):
            jax.debug.callback(_report_step, step_index)
            noise_key = jax.random.fold_in(loop_key, level_index * steps_per_level + step_index)
            frac = frac + eta * score(frac, t) + jnp.sqrt(2 * eta) * jax.random.normal(noise_key, frac.shape)
            return jnp.mod(frac, 1.0), None

        frac, _ = jax.lax.scan(inner, frac, jnp.arange(steps_per_level))
        return frac, None

    frac, _ = jax.lax.scan(level, frac0, (jnp.arange(len(levels)), jnp.asarray(levels)))
    return frac
