"""Denoising score-matching loss, optimiser and the jitted train step with a parameter EMA.

A batch is (frac (B,N,3), lattice (B,3,3), species (B,N)); one time step t ~ U{1..T} per crystal; the loss
is the MSE between the denoiser output and the normalised wrapped-normal score target, averaged over
crystals, atoms and xyz (DiffCSP coordinate loss). The lattice and composition stay clean (Dismai-Bench
setting: no lattice diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import optax

from dismax.diffusion.noise import SigmaSchedule, noise_coordinates


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """params and their EMA, optimiser state, step counter and PRNG key (a pytree)."""

    params: dict
    ema_params: dict
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array


@lru_cache(maxsize=None)
def make_optimizer(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   clip_value: float | None = 0.5) -> optax.GradientTransformation:
    """Adam (DiffCSP settings) after elementwise clipping by value; the learning rate is a
    hyperparameter in the state so a plateau scheduler can change it between epochs. Cached, so equal
    settings give the same object (no recompilation of the jitted train step)."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1, b2=b2, eps=eps)
    return optax.chain(optax.clip(clip_value), adam) if clip_value else optax.chain(adam)


def set_learning_rate(opt_state, lr: float):
    """Return ``opt_state`` with the injected learning rate replaced (host-side, between epochs)."""
    adam_state = opt_state[-1]
    hyper = dict(adam_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, dtype=jnp.asarray(hyper["learning_rate"]).dtype)
    return (*opt_state[:-1], adam_state._replace(hyperparams=hyper))


def get_learning_rate(opt_state) -> float:
    return float(opt_state[-1].hyperparams["learning_rate"])


def init_state(network, optimizer, example, key) -> TrainState:
    """Initialise parameters on one example crystal (frac (N,3), lattice (3,3), species (N,))."""
    init_key, state_key = jax.random.split(key)
    frac, lattice, species = example
    params = jax.jit(network.init)(init_key, frac, lattice, species, jnp.int32(1))
    return TrainState(params=params, ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), key=state_key)


def denoising_loss(network, params, batch, key, schedule: SigmaSchedule):
    """Mean squared error between network output and normalised score target for one batch."""
    frac, lattice, species = batch
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (frac.shape[0],), 1, schedule.n_steps + 1)
    noisy, target = noise_coordinates(noise_key, frac, t, schedule)
    prediction = jax.vmap(lambda f, l, s, tt: network.apply(params, f, l, s, tt))(noisy, lattice, species, t)
    return jnp.mean((prediction - target) ** 2)


@partial(jax.jit, static_argnames=("network", "optimizer", "schedule", "ema_decay"), donate_argnums=(0,))
def train_step(state: TrainState, batch, *, network, optimizer, schedule: SigmaSchedule, ema_decay: float):
    """One optimiser step: returns (new state, loss)."""
    key, step_key = jax.random.split(state.key)
    loss, grads = jax.value_and_grad(lambda p: denoising_loss(network, p, batch, step_key, schedule))(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    return TrainState(params, ema, opt_state, state.step + 1, key), loss


@partial(jax.jit, static_argnames=("network", "schedule"))
def eval_loss(params, batch, key, *, network, schedule: SigmaSchedule):
    """Loss with a fixed key (so validation losses of different epochs are comparable)."""
    return denoising_loss(network, params, batch, key, schedule)
