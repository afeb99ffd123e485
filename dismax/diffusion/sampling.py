"""Samplers for the fractional-coordinate score model: DiffCSP predictor–corrector and annealed Langevin.

Both run as one jitted ``lax.scan`` over steps, vmapped over a chunk of structures that share one
lattice and species list; only the current coordinates are carried (no trajectory is stored). Per-step
keys are ``fold_in(chunk_key, step)``. ``score`` below is the true score ∇ log p, i.e. network · √λ_t.

PC step at visited level t with next visited level t' (σ_{t'} = 0 after the last):
  corrector  F ← F + γ_t s(F, t) + √(2γ_t) z,   γ_t = step_lr (σ_t/σ_1)²
  predictor  F ← F + (σ_t² − σ_{t'}²) s(F, t) + √(σ_{t'}² (σ_t² − σ_{t'}²)/σ_t²) z,   wrapped mod 1
with z = 0 at the last step. ``reference_compatible=True`` uses σ_{t−1} of the full schedule as in the
published code (too-small predictor steps when levels are skipped).
Annealed Langevin (CDVAE-style, on fractional coordinates): for each visited level, largest first,
``steps_per_level`` updates F ← F + η s(F, t) + √(2η) z with η = step_lr (σ_t/σ_1)², wrapped mod 1.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dismax.diffusion.noise import SigmaSchedule


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


@partial(jax.jit, static_argnames=("network", "schedule", "n_steps", "reference_compatible", "n_structures"))
def predictor_corrector(params, lattice, species, key, *, network, schedule: SigmaSchedule, n_steps: int,
                        step_lr: float, n_structures: int, reference_compatible: bool = False):
    """Sample ``n_structures`` fractional-coordinate sets (n_structures, N, 3) for one lattice/species."""
    sigmas, sqrt_lambdas = schedule.tables()
    steps = visited_steps(schedule.n_steps, n_steps)
    next_steps = steps - 1 if reference_compatible else np.append(steps[1:], 0)
    is_last = np.arange(len(steps)) == len(steps) - 1
    score = _score_fn(network, params, lattice, species, sqrt_lambdas)
    init_key, loop_key = jax.random.split(key)
    frac0 = jax.random.uniform(init_key, (n_structures, species.shape[0], 3))

    def step(frac, inputs):
        index, t, t_next, last = inputs
        k_corr, k_pred = jax.random.split(jax.random.fold_in(loop_key, index))
        noise_scale = jnp.where(last, 0.0, 1.0)
        sigma, sigma_next = sigmas[t], sigmas[t_next]
        gamma = step_lr * (sigma / sigmas[1]) ** 2
        frac = frac + gamma * score(frac, t) + noise_scale * jnp.sqrt(2 * gamma) * jax.random.normal(k_corr, frac.shape)
        delta = sigma**2 - sigma_next**2
        std = jnp.sqrt(sigma_next**2 * delta / sigma**2)
        frac = frac + delta * score(frac, t) + noise_scale * std * jax.random.normal(k_pred, frac.shape)
        return jnp.mod(frac, 1.0), None

    inputs = (jnp.arange(len(steps)), jnp.asarray(steps), jnp.asarray(next_steps), jnp.asarray(is_last))
    frac, _ = jax.lax.scan(step, frac0, inputs)
    return frac


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
            noise_key = jax.random.fold_in(loop_key, level_index * steps_per_level + step_index)
            frac = frac + eta * score(frac, t) + jnp.sqrt(2 * eta) * jax.random.normal(noise_key, frac.shape)
            return jnp.mod(frac, 1.0), None

        frac, _ = jax.lax.scan(inner, frac, jnp.arange(steps_per_level))
        return frac, None

    frac, _ = jax.lax.scan(level, frac0, (jnp.arange(len(levels)), jnp.asarray(levels)))
    return frac
