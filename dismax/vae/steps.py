"""Train state and jitted steps of the Wyckoff VAE (pure functions of (state, batch))."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dismax.vae import representation as rep
from dismax.vae.losses import TERMS, LossWeights, loss_terms, total_loss
from dismax.vae.model import WyckoffVAE


@flax.struct.dataclass
class TrainState:
    """params, BatchNorm statistics, Adam state, step counter and PRNG key."""

    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    step: jnp.ndarray
    key: jnp.ndarray


def create_state(model: WyckoffVAE, optimizer: optax.GradientTransformation, key) -> TrainState:
    """Initialise parameters on a dummy batch of 2."""
    init_key, sample_key, state_key = jax.random.split(key, 3)
    sites = jnp.tile(jnp.asarray(rep.padding_row()), (2, rep.N_SITES, 1))
    crystal = jnp.zeros((2, rep.N_CRYSTAL))
    variables = jax.jit(functools.partial(model.init, train=True))(init_key, sites, crystal, sample_key)
    params = variables["params"]
    return TrainState(params=params, batch_stats=variables["batch_stats"], opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), key=state_key)


def make_train_step(model: WyckoffVAE, optimizer: optax.GradientTransformation, weights: LossWeights):
    """jitted (state, sites (B,9,183), lattice_scaled (B,6), spacegroup (B,)) -> (state, metrics)."""

    @jax.jit
    def train_step(state: TrainState, sites, lattice_scaled, spacegroup):
        key = jax.random.fold_in(state.key, state.step)
        crystal = _crystal(lattice_scaled, spacegroup)

        def loss_fn(params):
            outputs, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, sites, crystal,
                                           key, train=True, mutable=["batch_stats"])
            terms = loss_terms(outputs, sites, lattice_scaled, spacegroup, weights)
            return total_loss(terms, weights), (terms, updates["batch_stats"])

        (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1)
        return new_state, {"loss": loss, **terms}

    return train_step


def _crystal(lattice_scaled, spacegroup):
    onehot = jax.nn.one_hot(spacegroup - 1, rep.N_SPACEGROUPS, dtype=lattice_scaled.dtype)
    return jnp.concatenate([lattice_scaled, onehot], axis=-1)


def make_eval_step(model: WyckoffVAE, weights: LossWeights):
    """jitted (state, sites, lattice_scaled, spacegroup) -> (metrics, outputs) with running BatchNorm
    statistics and z = posterior mean (deterministic reconstruction)."""

    @jax.jit
    def eval_step(state: TrainState, sites, lattice_scaled, spacegroup):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        crystal = _crystal(lattice_scaled, spacegroup)
        mean, log_var = model.apply(variables, sites, crystal, train=False, method=WyckoffVAE.encode)
        outputs = model.apply(variables, mean, train=False, method=WyckoffVAE.decode)
        outputs = {**outputs, "mean": mean, "log_var": log_var}
        terms = loss_terms(outputs, sites, lattice_scaled, spacegroup, weights)
        return {"loss": total_loss(terms, weights), **terms}, outputs

    return eval_step


@functools.partial(jax.jit, static_argnums=(0,))
def decode_latents(model: WyckoffVAE, variables: dict, z):
    """Decoder outputs for latents z (B, latent_dim) with running BatchNorm statistics."""
    return model.apply(variables, z, train=False, method=WyckoffVAE.decode)


@functools.partial(jax.jit, static_argnums=(0,))
def encode_means(model: WyckoffVAE, variables: dict, sites, lattice_scaled, spacegroup):
    """Posterior means (B, latent_dim)."""
    mean, _ = model.apply(variables, sites, _crystal(lattice_scaled, spacegroup), train=False,
                          method=WyckoffVAE.encode)
    return mean


__all__ = ["TERMS", "TrainState", "create_state", "make_train_step", "make_eval_step", "decode_latents",
           "encode_means"]
