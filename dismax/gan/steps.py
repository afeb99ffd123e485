"""Training state and the jittable CryinGAN training step, single model or vmapped ensemble.

One step = one critic update on a real batch (both critics, joint loss L_coord + w·L_bond with gradient
penalties), optionally followed by a generator update with fresh noise (every ``gen_int`` batches).
All randomness comes from ``fold_in(state.key, state.step)``, so a run is reproducible from its seed
and resumable from any checkpoint. An ensemble is the same state with a leading member axis; every
member has its own parameters, optimiser states, PRNG key and distance weight ``w_dist``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.gan.config import ModelConfig, TrainConfig
from dismax.gan.features import bond_distances
from dismax.gan.losses import CriticTerms, critic_terms, interpolate, penalty_from_gradients
from dismax.gan.model import CombinedCritic, Critic, Generator, critic_input_gradient


#: XLA options the training steps are compiled with on CPU (:func:`step_compiler_options`; outside dismax
#: ``jax.jit(..., compiler_options=...)`` or ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=reduce`` before
#: jax starts): the matrix products run on XLA's own (Eigen) kernels instead of YNNPACK fusions, YNNPACK keeps
#: the reductions (XLA's experimental ``xla_cpu_experimental_ynn_fusion_type``, jax 0.10). The per-atom products
#: ((B·N, 512) × (512, 512) and their weight gradients) then take 10–15 % fewer CPU seconds per critic step on a
#: 2-core x86 CPU (``benchmarks/cryingan_step.py``); results change only by float32 rounding. CPU backend only.
CPU_PRODUCT_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def step_compiler_options(product_options: bool = True) -> dict | None:
    """The compiler options of the training steps: :data:`CPU_PRODUCT_OPTIONS` on the CPU backend when
    ``product_options``, else XLA's defaults (None; always on GPUs and TPUs)."""
    return CPU_PRODUCT_OPTIONS if product_options and jax.default_backend() == "cpu" else None


@flax.struct.dataclass
class GanState:
    """Everything that changes during training (a pytree; an ensemble stacks a leading axis)."""

    gen_params: Any
    gen_stats: Any
    critic_params: Any  # {"coord": ..., "dist": ...} or {"comb": ...} or {"coord": ...}
    gen_opt: Any
    critic_opt: Any
    w_dist: jax.Array  # weight of the bond-distance critic (λ), float32 scalar
    key: jax.Array  # uint32 (2,) raw PRNG key
    step: jax.Array  # int32 number of critic steps done


@dataclasses.dataclass(frozen=True)
class GanSetup:
    """The static description of a CryinGAN: the training cell, the networks and losses (``model``) and the
    optimiser settings (``train``), straight from the config (hashable, so compiled steps are cached).

    ``counts``: atoms per species block; ``lattice`` (3, 3) Å, rows are lattice vectors.
    """

    counts: tuple[int, ...]
    lattice: tuple[tuple[float, ...], ...]
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @property
    def n_atoms(self) -> int:
        return int(sum(self.counts))

    @property
    def lattice_array(self) -> np.ndarray:
        return np.asarray(self.lattice, np.float32)

    @property
    def has_dist_critic(self) -> bool:
        return self.model.critics == "separate" and self.model.use_distance

    def generator(self) -> Generator:
        return Generator(self.n_atoms, self.model.latent_dim, self.model.gen_channels, self.model.bn_eps)

    def critic_modules(self) -> dict:
        m = self.model
        if m.critics == "combined":
            return {"comb": CombinedCritic(self.counts, m.n_neighbors, m.coord_pooling)}
        modules = {"coord": Critic(self.counts, m.coord_pooling)}
        if m.use_distance:
            modules["dist"] = Critic(self.counts, m.dist_pooling)
        return modules

    def distances(self, frac: jax.Array) -> jax.Array:
        """Bond-distance features (B, N, K) in Å of fractional coordinates (B, N, 3)."""
        return bond_distances(frac, self.lattice_array, self.model.n_neighbors)

    def adam(self):
        return optax.scale_by_adam(b1=self.train.beta1, b2=self.train.beta2, eps=1e-8)


def init_state(setup: GanSetup, key: jax.Array, w_dist: float | jax.Array) -> GanState:
    """Fresh parameters (Xavier-uniform, zero bias, BN γ=1 β=0) and Adam states from ``key``."""
    key = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    k_gen, k_coord, k_dist, k_run = jax.random.split(key, 4)
    n = setup.n_atoms
    gen_vars = setup.generator().init(k_gen, jnp.zeros((2, setup.model.latent_dim)), train=False)
    critic_keys = {"coord": k_coord, "comb": k_coord, "dist": k_dist}
    critic_inputs = {"coord": jnp.zeros((1, n, 3)), "comb": jnp.zeros((1, n, 3)),
                     "dist": jnp.zeros((1, n, setup.model.n_neighbors))}
    critic_params = {name: module.init(critic_keys[name], critic_inputs[name])["params"]
                     for name, module in setup.critic_modules().items()}
    adam = setup.adam()
    return GanState(
        gen_params=gen_vars["params"],
        gen_stats=gen_vars["batch_stats"],
        critic_params=critic_params,
        gen_opt=adam.init(gen_vars["params"]),
        critic_opt=adam.init(critic_params),
        w_dist=jnp.asarray(w_dist, jnp.float32),
        key=k_run,
        step=jnp.zeros((), jnp.int32),
    )


def step_keys(state: GanState):
    """The PRNG keys of one training step: z of the critic step, α of the two penalties, z of the generator."""
    key = jax.random.fold_in(state.key, state.step)
    return jax.random.split(key, 4)


def _generate(setup: GanSetup, params, stats, z, train: bool):
    variables = {"params": params, "batch_stats": stats}
    if train:
        fake, updated = setup.generator().apply(variables, z, train=True, mutable=["batch_stats"])
        return fake, updated["batch_stats"]
    return setup.generator().apply(variables, z, train=False), stats


def _scores(setup: GanSetup, critic_params, frac, w_dist):
    """Critic score CD(frac) + w·DD(dist(frac)) (or the combined critic's score), batch mean."""
    modules = setup.critic_modules()
    if setup.model.critics == "combined":
        return modules["comb"].apply({"params": critic_params["comb"]}, frac).mean()
    score = modules["coord"].apply({"params": critic_params["coord"]}, frac).mean()
    if setup.has_dist_critic:
        dist = modules["dist"].apply({"params": critic_params["dist"]}, setup.distances(frac)).mean()
        score = score + w_dist * dist
    return score


def _apply_adam(adam, opt_state, grads, params, learning_rates):
    updates, opt_state = adam.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u, lr: p - lr * u, params, updates, learning_rates)
    return params, opt_state


def _critic_terms(setup: GanSetup, name: str, params, real: jax.Array, fake: jax.Array,
                  key: jax.Array) -> CriticTerms:
    """Scores and gradient penalty of critic ``name`` (:func:`dismax.gan.losses.critic_terms`).

    A :class:`Critic` gets its input gradient from :func:`critic_input_gradient`, so the penalty's
    parameter gradient is an ordinary backward pass; the combined critic (whose input passes through the
    neighbour search) uses the generic double backward.
    """
    module = setup.critic_modules()[name]
    critic = functools.partial(module.apply, {"params": params})
    if not isinstance(module, Critic):
        return critic_terms(critic, real, fake, key, setup.model.gp_weight, setup.model.gp_on)
    outputs = critic(jnp.concatenate([real, fake], axis=0))
    gradients = critic_input_gradient(params, interpolate(real, fake, key), module.counts, module.pooling,
                                      setup.model.gp_on)
    batch = real.shape[0]
    return CriticTerms(real=outputs[:batch].mean(), fake=outputs[batch:].mean(),
                       penalty=penalty_from_gradients(gradients, setup.model.gp_weight))


def critic_loss(setup: GanSetup, critic_params, real_coords, real_dists, fake, fake_dists, w_dist, keys):
    """Joint critic loss L_D = [CD(fake) − CD(real) + GP] + w·[DD(fake) − DD(real) + GP] and its metrics.

    real/fake coordinates (B, N, 3), bond distances (B, N, K) (None without a distance critic);
    ``keys`` = (PRNG key of the coordinate penalty's α, of the distance penalty's α). Returns (loss,
    metrics) with distance_dis (Wasserstein estimate), cost_dis, D_real, D_fake, D_dist_real, D_dist_fake.
    """
    k_coord, k_dist = keys
    first = "comb" if setup.model.critics == "combined" else "coord"
    coord = _critic_terms(setup, first, critic_params[first], real_coords, fake, k_coord)
    metrics = {"D_real": coord.real, "D_fake": coord.fake}
    loss, wasserstein = coord.loss, coord.wasserstein
    if setup.has_dist_critic:
        dist = _critic_terms(setup, "dist", critic_params["dist"], real_dists, fake_dists, k_dist)
        loss = loss + w_dist * dist.loss
        wasserstein = wasserstein + w_dist * dist.wasserstein
        metrics.update(D_dist_real=dist.real, D_dist_fake=dist.fake)
    else:
        metrics.update(D_dist_real=jnp.zeros(()), D_dist_fake=jnp.zeros(()))
    metrics.update(cost_dis=loss, distance_dis=wasserstein)
    return loss, metrics


def generator_loss(setup: GanSetup, gen_params, gen_stats, critic_params, z, w_dist):
    """L_G = −CD(G(z)) − w·DD(dist(G(z))) (or −C_comb(G(z))), generator in training mode.

    Returns (loss, updated BatchNorm statistics).
    """
    fake, stats = _generate(setup, gen_params, gen_stats, z, train=True)
    return -_scores(setup, critic_params, fake, w_dist), stats


def critic_update(setup: GanSetup, state: GanState, real_coords: jax.Array, real_dists: jax.Array | None,
                  lr_scale: jax.Array):
    """One joint update of the critics on a real batch; returns (state, metrics), ``step`` unchanged.

    real_coords (B, N, 3) fractional; real_dists (B, N, K) Å (ignored without a distance critic).
    The fake batch comes from the generator in training mode, so its BatchNorm running statistics are
    updated as in the reference. Metrics: distance_dis (Wasserstein estimate), cost_dis, D_real, D_fake,
    D_dist_real, D_dist_fake (zeros without a distance critic).
    """
    k_z, k_coord, k_dist, _ = step_keys(state)
    batch = real_coords.shape[0]
    z = jax.random.normal(k_z, (batch, setup.model.latent_dim))
    fake, gen_stats = _generate(setup, state.gen_params, state.gen_stats, z, train=True)
    fake = jax.lax.stop_gradient(fake)
    fake_dists = setup.distances(fake) if setup.has_dist_critic else None

    loss_fn = functools.partial(critic_loss, setup, real_coords=real_coords, real_dists=real_dists, fake=fake,
                                fake_dists=fake_dists, w_dist=state.w_dist, keys=(k_coord, k_dist))
    critic_grads, metrics = jax.grad(loss_fn, has_aux=True)(state.critic_params)
    base_lr = {"coord": setup.train.lr_coord, "comb": setup.train.lr_coord, "dist": setup.train.lr_dist}
    critic_lr_tree = {name: jax.tree.map(lambda _, lr=lr_scale * base_lr[name]: lr, params)
                      for name, params in state.critic_params.items()}
    critic_params, critic_opt = _apply_adam(setup.adam(), state.critic_opt, critic_grads,
                                            state.critic_params, critic_lr_tree)
    return state.replace(gen_stats=gen_stats, critic_params=critic_params, critic_opt=critic_opt), metrics


def generator_update(setup: GanSetup, state: GanState, batch: int, lr_scale: jax.Array):
    """One generator update with fresh noise against the current critics; returns (state, cost_gen).

    L_G = −CD(G(z)) − w·DD(dist(G(z))) (or −C_comb(G(z))); ``step`` unchanged.
    """
    *_, k_zgen = step_keys(state)
    z_gen = jax.random.normal(k_zgen, (batch, setup.model.latent_dim))

    (cost_gen, gen_stats), gen_grads = jax.value_and_grad(generator_loss, argnums=1, has_aux=True)(
        setup, state.gen_params, state.gen_stats, state.critic_params, z_gen, state.w_dist)
    gen_lr = jax.tree.map(lambda _: lr_scale * setup.train.lr_gen, state.gen_params)
    gen_params, gen_opt = _apply_adam(setup.adam(), state.gen_opt, gen_grads, state.gen_params, gen_lr)
    return state.replace(gen_params=gen_params, gen_stats=gen_stats, gen_opt=gen_opt), cost_gen


def train_step(setup: GanSetup, state: GanState, real_coords: jax.Array, real_dists: jax.Array | None,
               lr_scale: jax.Array, update_generator: bool):
    """One critic update, then a generator update when ``update_generator``; returns (state, metrics).

    ``lr_scale`` multiplies every learning rate (step decay). Metrics are those of :func:`critic_update`
    plus ``cost_gen`` when the generator was updated.
    """
    state, metrics = critic_update(setup, state, real_coords, real_dists, lr_scale)
    if update_generator:
        state, metrics["cost_gen"] = generator_update(setup, state, real_coords.shape[0], lr_scale)
    return state.replace(step=state.step + 1), metrics


def generate(setup: GanSetup, state: GanState, key: jax.Array, n: int) -> jax.Array:
    """n fractional-coordinate sets (n, N, 3) from the generator in eval mode (running BN statistics)."""
    z = jax.random.normal(key, (n, setup.model.latent_dim))
    return _generate(setup, state.gen_params, state.gen_stats, z, train=False)[0]


# ---------------------------------------------------------------------------------------- ensembles
def init_ensemble(setup: GanSetup, seeds, w_dists) -> GanState:
    """Stacked states, one member per (seed, w) pair of the equally long sequences ``seeds``, ``w_dists``."""
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    return jax.vmap(functools.partial(init_state, setup))(keys, jnp.asarray(w_dists, jnp.float32))


@functools.lru_cache(maxsize=16)
def ensemble_step_fn(setup: GanSetup, update_generator: bool, per_member_data: bool, product_options: bool = True):
    """jit(vmap(train_step)) over the member axis (cached per setup, so repeated runs compile once).

    Signature (state, real_coords, real_dists, lr_scale) → (state, metrics (M,) each); the real batch is
    shared by all members, or has a leading member axis when ``per_member_data``. On CPU the step is compiled
    with :data:`CPU_PRODUCT_OPTIONS` unless ``product_options`` is False (XLA's defaults: the same numbers to
    float32 rounding).
    """
    data_axis = 0 if per_member_data else None
    step = functools.partial(train_step, setup, update_generator=update_generator)
    return jax.jit(jax.vmap(step, in_axes=(0, data_axis, data_axis, None)), donate_argnums=0,
                   compiler_options=step_compiler_options(product_options))


@functools.lru_cache(maxsize=16)
def ensemble_sampler(setup: GanSetup, n: int):
    """jit(vmap(generate)): (state, key) → (M, n, N, 3) samples of every member from the same noise."""
    return jax.jit(jax.vmap(lambda state, key: generate(setup, state, key, n), in_axes=(0, None)))


def member_state(state: GanState, index: int) -> GanState:
    """One member of an ensemble state (drops the leading axis)."""
    return jax.tree.map(lambda x: x[index], state)
