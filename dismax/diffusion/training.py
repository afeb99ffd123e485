"""Denoising score-matching loss, optimiser and the jitted train step with a parameter EMA.

A batch is (frac (B,N,3), lattice (B,3,3), species (B,N)); one time step t ~ U{1..T} per crystal; the
coordinate loss is the MSE between the denoiser's score output and the normalised wrapped-normal score
target, averaged over crystals, atoms and xyz (DiffCSP coordinate loss). By default the lattice and
composition stay clean (Dismai-Bench setting: no lattice diffusion).

Optional lattice diffusion (``LatticeDiffusion``, DiffCSP): the raw lattice is noised with the DDPM
cosine schedule at the same t, the noisy lattice is the network input (its Gram features), the network's
lattice head predicts the noise ε and the loss adds ``cost`` · MSE(ε̂, ε). Teacher forcing (Dismai-Bench's
modification) feeds the clean lattice instead and leaves the lattice loss out (reported as 0), so only the
coordinate loss trains the model.

Ensembles: a state with a leading member axis trained by ``ensemble_train_step`` (jit of vmap of the same
step); each member has its own parameters, EMA, optimiser state and PRNG key, and its own batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.diffusion.noise import BetaSchedule, SigmaSchedule, noise_coordinates, noise_lattice


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """params and their EMA, optimiser state, step counter and PRNG key (a pytree)."""

    params: dict
    ema_params: dict
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array


@dataclass(frozen=True)
class LatticeDiffusion:
    """Lattice diffusion settings (static): the DDPM β schedule and the lattice-loss weight."""

    schedule: BetaSchedule = BetaSchedule()
    cost: float = 1.0


@lru_cache(maxsize=None)
def make_optimizer(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   clip_value: float | None = 0.5) -> optax.GradientTransformation:
    """Adam (DiffCSP settings) after elementwise clipping by value; the learning rate is a
    hyperparameter in the state so a plateau scheduler can change it between epochs. Cached, so equal
    settings give the same object (no recompilation of the jitted train step)."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1, b2=b2, eps=eps)
    return optax.chain(optax.clip(clip_value), adam) if clip_value else optax.chain(adam)


def set_learning_rate(opt_state, lr):
    """Return ``opt_state`` with the injected learning rate replaced (host-side, between epochs); ``lr`` is
    a float, or an (M,) array for an ensemble state."""
    adam_state = opt_state[-1]
    hyper = dict(adam_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, dtype=jnp.asarray(hyper["learning_rate"]).dtype)
    return (*opt_state[:-1], adam_state._replace(hyperparams=hyper))


def learning_rates(opt_state) -> np.ndarray:
    """Learning rate of every member, (M,) float64 (M = 1 for a single state)."""
    return np.atleast_1d(np.asarray(opt_state[-1].hyperparams["learning_rate"], np.float64))


@partial(jax.jit, static_argnums=(0, 1))
def init_state(network, optimizer, example, key) -> TrainState:
    """Initialise parameters on one example crystal (frac (N,3), lattice (3,3), species (N,))."""
    init_key, state_key = jax.random.split(key)
    frac, lattice, species = example
    params = network.init(init_key, frac, lattice, species, jnp.int32(1))
    return TrainState(params=params, ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), key=state_key)


def init_ensemble(network, optimizer, example, seeds, abstract: bool = False) -> TrainState:
    """States of the members stacked on a leading axis (host arrays): member k is exactly
    ``init_state(.., PRNGKey(seeds[k]))``. ``abstract`` gives only shapes and dtypes (a restore template)."""
    if abstract:
        one = jax.eval_shape(lambda: init_state(network, optimizer, example, jax.random.PRNGKey(0)))
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(seeds), *x.shape), x.dtype), one)
    states = [init_state(network, optimizer, example, jax.random.PRNGKey(int(s))) for s in seeds]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *states)


def member_state(state: TrainState, index: int) -> TrainState:
    """One member of an ensemble state (drops the leading axis; host-side indexing, no compilation).
    Abstract leaves (``jax.ShapeDtypeStruct``) give abstract members."""
    if isinstance(jax.tree.leaves(state)[0], jax.ShapeDtypeStruct):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
    return jax.tree.map(lambda x: np.asarray(x)[index], state)


def denoising_losses(network, params, batch, key, schedule: SigmaSchedule,
                     lattice_diffusion: LatticeDiffusion | None = None, teacher_forcing=False):
    """(total loss, {"coord_loss", "lattice_loss"}) for one batch; without lattice diffusion the lattice
    loss is 0 and the total is the coordinate loss. ``teacher_forcing`` may be a traced bool."""
    frac, lattice, species = batch
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (frac.shape[0],), 1, schedule.n_steps + 1)
    noisy, target = noise_coordinates(noise_key, frac, t, schedule)

    def apply(lattice_input):
        return jax.vmap(lambda f, l, s, tt: network.apply(params, f, l, s, tt))(noisy, lattice_input, species, t)

    if lattice_diffusion is None:
        coord_loss = jnp.mean((apply(lattice) - target) ** 2)
        return coord_loss, {"coord_loss": coord_loss, "lattice_loss": jnp.zeros_like(coord_loss)}
    noisy_lattice, epsilon = noise_lattice(jax.random.fold_in(key, 1), lattice, t, lattice_diffusion.schedule)
    prediction, lattice_prediction = apply(jnp.where(teacher_forcing, lattice, noisy_lattice))
    coord_loss = jnp.mean((prediction - target) ** 2)
    lattice_loss = jnp.where(teacher_forcing, 0.0, jnp.mean((lattice_prediction - epsilon) ** 2))
    return coord_loss + lattice_diffusion.cost * lattice_loss, {"coord_loss": coord_loss, "lattice_loss": lattice_loss}


def _train_step(state: TrainState, batch, teacher_forcing, *, network, optimizer, schedule, ema_decay,
                lattice_diffusion):
    key, step_key = jax.random.split(state.key)

    def loss_fn(params):
        return denoising_losses(network, params, batch, step_key, schedule, lattice_diffusion, teacher_forcing)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    return TrainState(params, ema, opt_state, state.step + 1, key), {"loss": loss, **parts}


_STATIC = ("network", "optimizer", "schedule", "ema_decay", "lattice_diffusion")


@partial(jax.jit, static_argnames=_STATIC, donate_argnums=(0,))
def train_step(state: TrainState, batch, teacher_forcing=False, *, network, optimizer, schedule: SigmaSchedule,
               ema_decay: float, lattice_diffusion: LatticeDiffusion | None = None):
    """One optimiser step of a single state: returns (new state, total loss)."""
    state, losses = _train_step(state, batch, teacher_forcing, network=network, optimizer=optimizer,
                                schedule=schedule, ema_decay=ema_decay, lattice_diffusion=lattice_diffusion)
    return state, losses["loss"]


@partial(jax.jit, static_argnames=_STATIC, donate_argnums=(0,))
def ensemble_train_step(state: TrainState, batch, teacher_forcing=False, *, network, optimizer,
                        schedule: SigmaSchedule, ema_decay: float, lattice_diffusion: LatticeDiffusion | None = None):
    """One step of every member: ``state`` and ``batch`` have a leading member axis (M, ...); returns
    (state, {"loss", "coord_loss", "lattice_loss"} each (M,))."""
    step = partial(_train_step, network=network, optimizer=optimizer, schedule=schedule, ema_decay=ema_decay,
                   lattice_diffusion=lattice_diffusion)
    return jax.vmap(step, in_axes=(0, 0, None))(state, batch, teacher_forcing)


@partial(jax.jit, static_argnames=("network", "schedule", "lattice_diffusion"))
def ensemble_eval_losses(params, batch, keys, teacher_forcing=False, *, network, schedule: SigmaSchedule,
                         lattice_diffusion: LatticeDiffusion | None = None):
    """Validation losses of every member on one shared batch: params and keys have a leading member axis."""
    return jax.vmap(lambda p, k: denoising_losses(network, p, batch, k, schedule, lattice_diffusion,
                                                  teacher_forcing))(params, keys)
