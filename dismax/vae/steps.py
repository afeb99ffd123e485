"""Train state and jitted steps of the Wyckoff VAE (pure functions of (state, batch))."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.vae import representation as rep
from dismax.vae.losses import LossWeights, loss_terms, total_loss
from dismax.vae.model import WyckoffVAE


@flax.struct.dataclass
class TrainState:
    """params, BatchNorm statistics, Adam state, step counter and PRNG key."""

    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    step: jnp.ndarray
    key: jnp.ndarray


def create_state(model: WyckoffVAE, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """Initialise parameters with flax's default distributions, drawn on the host.

    Kernels: LeCun normal (truncated normal, variance 1 / fan_in, fan_in = product of all but the last
    axis); biases 0; BatchNorm scale 1, mean 0, variance 1. Drawing them with numpy avoids compiling
    the model's init function (slow on CPU for no benefit).
    """
    sites = jnp.zeros((2, rep.N_SITES, rep.N_FEATURES))
    crystal = jnp.zeros((2, rep.N_CRYSTAL))
    shapes = jax.eval_shape(functools.partial(model.init, train=True), jax.random.PRNGKey(0), sites, crystal,
                            jax.random.PRNGKey(1))
    rng = np.random.default_rng(seed)

    def initial(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            std = np.sqrt(1.0 / fan_in) / 0.87962566103423978  # truncated-normal correction, as in flax
            draw = np.clip(rng.standard_normal(leaf.shape), -2.0, 2.0)
            while np.any(np.abs(draw) >= 2.0):  # resample values at the truncation bounds
                bad = np.abs(draw) >= 2.0
                draw[bad] = rng.standard_normal(int(bad.sum()))
            return jnp.asarray(draw * std, leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(initial, shapes)
    params = variables["params"]
    return TrainState(params=params, batch_stats=variables["batch_stats"], opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed))


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
    """jitted (state, sites, lattice_scaled, spacegroup, mask) -> (metrics, outputs) with running BatchNorm
    statistics and z = posterior mean (deterministic reconstruction); mask (B,) marks real structures."""

    @jax.jit
    def eval_step(state: TrainState, sites, lattice_scaled, spacegroup, mask):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        crystal = _crystal(lattice_scaled, spacegroup)
        mean, log_var = model.apply(variables, sites, crystal, train=False, method=WyckoffVAE.encode)
        outputs = model.apply(variables, mean, train=False, method=WyckoffVAE.decode)
        outputs = {**outputs, "mean": mean, "log_var": log_var}
        terms = loss_terms(outputs, sites, lattice_scaled, spacegroup, weights, mask)
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
