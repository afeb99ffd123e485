"""Trainer for the periodic coordinate diffusion model (``model.name: diffusion``).

``train(config, run)``: the shared training loop (:mod:`dismax.training`: epochs over shuffled mini-batches
of the ``BatchLoader``, checkpoints, resume, metrics rows per member and epoch, ``plots/losses.png``, batch
sharding over the 'data' mesh) with a jitted train step (Adam, clipping by value, parameter EMA) and
validation every ``train.val_every`` epochs with reduce-on-plateau of the learning rate (DiffCSP: factor
0.6, patience 30, min 1e-4).

The step: denoising score matching. A batch is (frac (B,N,3), lattice (B,3,3), species (B,N)); one time step
t ~ U{1..T} per crystal; the coordinate loss is the MSE between the denoiser's score output and the
normalised wrapped-normal score target, averaged over crystals, atoms and xyz (DiffCSP coordinate loss). By
default the lattice and composition stay clean (Dismai-Bench setting: no lattice diffusion).

``train.n_seeds`` > 1 trains an ensemble: member k has seed ``seed + k`` (its own initialisation, PRNG
stream, data order, EMA, optimiser state and plateau schedule) and all members take one jit(vmap) step
together, so member k equals a single run with seed ``seed + k``; checkpoints hold every member and
``metrics.csv`` has one row per member and epoch.

``model.lattice_diffusion`` (off by default, as in Dismai-Bench) also diffuses the lattice (DDPM cosine
schedule, DiffCSP): the raw lattice is noised at the same t, the noisy lattice is the network input, the
network's lattice head predicts the noise ε and the loss adds ``model.cost_lattice`` · MSE(ε̂, ε). During the
first ``train.teacher_forcing_epochs`` epochs the clean lattice is the input and the lattice loss is left out
(reported as 0; Dismai-Bench's teacher forcing; its ``teacher_forcing_max_epoch: E`` compares Lightning's
0-based epoch, so it teacher-forces E + 1 epochs, i.e. ``teacher_forcing_epochs: E + 1`` here). The plateau scheduler
then monitors the validation coordinate loss (Dismai-Bench's ``val_coord_loss``).

``sample(run, n, out, seed)``: generates n structures with the lattice and species of a reference
structure of the dataset (``sample.reference_index`` in the validation set), in chunks of
``sample.batch_size``; each chunk is written to its own part file as soon as it is done (a rerun skips
finished chunks) and the parts are joined into ``out`` at the end. ``member`` picks the ensemble member;
with lattice diffusion the lattices are sampled too (PC sampler only).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.config import load_config
from dismax.data.loader import BatchLoader, read_training_structures
from dismax.data.registry import dataset_files
from dismax.devices import process_share
from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
from dismax.diffusion.noise import BetaSchedule, SigmaSchedule, noise_coordinates, noise_lattice
from dismax.diffusion.sampling import (annealed_langevin, predictor_corrector, predictor_corrector_lattice,
                                      step_progress, visited_steps)
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import write_extxyz
from dismax.runs import RunDir, exclusive_lock, log, progress, write_in_parts
from dismax.structures import Crystals
from dismax.training import (LoopConfig, Panel, TrainingTask, check_data_source, check_loop_config,
                             load_run_state, train_loop)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "diffusion"
    denoiser: DenoiserConfig = DenoiserConfig()
    sigma_begin: float = 0.005
    sigma_end: float = 0.1
    n_steps: int = 1000
    lattice_diffusion: bool = False
    cost_lattice: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A registered/buildable dataset (``dataset``, ``size``, ``dataset_seed``) or explicit extxyz files."""

    dataset: str = "alloy_300K_wide"
    size: str = "small"
    dataset_seed: int = 0
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    max_train: Optional[int] = None
    max_val: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The shared loop keys (``val_every``: epochs between validations) and the DiffCSP optimiser, EMA and
    plateau schedule; ``n_seeds`` members (seeds ``seed``, ``seed + 1``, ...)."""

    epochs: int = 1000
    batch_size: int = 4
    val_every: int = 5
    checkpoint_every: int = 5
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_value: float = 0.5
    plateau_factor: float = 0.6
    plateau_patience: int = 30
    min_lr: float = 1e-4
    ema_decay: float = 0.999
    n_seeds: int = 1
    teacher_forcing_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """sampler: 'pc' (DiffCSP predictor–corrector) or 'langevin' (annealed Langevin)."""

    sampler: str = "pc"
    n_steps: int = 1000
    step_lr: float = 1e-5
    reference_compatible: bool = False
    langevin_levels: int = 50
    langevin_steps_per_level: int = 100
    langevin_step_lr: float = 1e-5
    batch_size: int = 20
    use_ema: bool = True
    reference_index: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    seed: int = 42


# ------------------------------------------------------------------------------------ state and step
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


# ---------------------------------------------------------------------------------------------- data
def load_data(config: DataConfig) -> tuple[Crystals, Crystals]:
    """Training and validation sets (numpy Crystals, float32); both must have the same atom count."""
    train_path, val_path = dataset_files(config.dataset, config.size, config.dataset_seed, config.train_file,
                                         config.val_file)
    train, val = read_training_structures(train_path), read_training_structures(val_path)
    if config.max_train:
        train = train[: config.max_train]
    if config.max_val:
        val = val[: config.max_val]
    if train.n_atoms != val.n_atoms:
        raise DismaxInputError(f"'{val_path}' has {val.n_atoms} atoms per structure but '{train_path}' has "
                               f"{train.n_atoms}; the model needs one atom count")
    return _as_float32(train), _as_float32(val)


def _as_float32(c: Crystals) -> Crystals:
    return Crystals(np.asarray(c.frac, np.float32), np.asarray(c.lattice, np.float32),
                    np.asarray(c.species, np.int32))


def _arrays(c: Crystals) -> tuple:
    """(frac, lattice, species) of a Crystals batch as the step's batch tuple."""
    return (jnp.asarray(c.frac), jnp.asarray(c.lattice), jnp.asarray(c.species))


def schedule_of(config: Config) -> SigmaSchedule:
    return SigmaSchedule(config.model.sigma_begin, config.model.sigma_end, config.model.n_steps)


def lattice_diffusion_of(config: Config):
    """The static lattice-diffusion settings, or None when the lattice stays clean."""
    if not config.model.lattice_diffusion:
        return None
    return LatticeDiffusion(BetaSchedule(config.model.n_steps), config.model.cost_lattice)


def member_seeds(config: Config) -> list[int]:
    """Seed of every ensemble member: seed, seed + 1, ..."""
    return [config.seed + k for k in range(config.train.n_seeds)]


def seed_ensemble(config: Config, seeds: list[int]) -> list[str] | None:
    """Config overrides that train ``seeds`` as one vmapped ensemble whose member k is the single run with
    seed ``seeds[k]``, or None when that is impossible (members are seed, seed + 1, ...: the seeds must be
    consecutive and increasing, and the config must not be an ensemble already)."""
    if config.train.n_seeds != 1 or list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        return None
    return [f"seed={seeds[0]}", f"train.n_seeds={len(seeds)}"]


def check(config: Config, n_train: int | None = None) -> None:
    """Every config error, before anything is written (with ``n_train``, the training-set size, too)."""
    check_loop_config(config.train)
    if n_train is not None and config.train.batch_size > n_train:
        raise DismaxConfigError(f"config key 'train.batch_size' is {config.train.batch_size} but the training "
                                f"set has only {n_train} structures")
    if config.sample.sampler not in ("pc", "langevin"):
        raise DismaxConfigError(f"config key 'sample.sampler' is {config.sample.sampler!r}; valid: pc, langevin")
    if config.train.n_seeds < 1:
        raise DismaxConfigError(f"config key 'train.n_seeds' is {config.train.n_seeds}; it must be at least 1")
    if not (-2**31 <= config.seed and config.seed + config.train.n_seeds <= 2**31):
        raise DismaxConfigError(f"config key 'seed' is {config.seed}; member seeds must fit in 32-bit integers")
    if config.model.lattice_diffusion:
        if config.model.cost_lattice < 1e-5:
            raise DismaxConfigError(f"config key 'model.cost_lattice' is {config.model.cost_lattice}; with lattice "
                                    f"diffusion it must be at least 1e-5 (DiffCSP keeps the lattice clean below "
                                    f"that; set model.lattice_diffusion: false instead)")
        if config.sample.sampler != "pc":
            raise DismaxConfigError("config key 'sample.sampler' is 'langevin' but only the 'pc' sampler samples "
                                    "the lattice (model.lattice_diffusion is true)")
    elif config.train.teacher_forcing_epochs:
        raise DismaxConfigError("config key 'train.teacher_forcing_epochs' is set but model.lattice_diffusion is "
                                "false; teacher forcing only applies to lattice diffusion")
    build_denoiser(config.model.denoiser, lattice_head=config.model.lattice_diffusion)
    d = config.data
    check_data_source(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)


# ------------------------------------------------------------------------------------------ training
def build(config: Config, example: Crystals, abstract: bool = False):
    """(network, optimizer, schedule, initial state) for ``config``; ``example`` supplies the shapes. The
    state has a leading member axis of length ``train.n_seeds``; ``abstract`` gives only its shapes and
    dtypes (a template for restoring a checkpoint)."""
    network = build_denoiser(config.model.denoiser, lattice_head=config.model.lattice_diffusion)
    t = config.train
    optimizer = make_optimizer(t.lr, t.beta1, t.beta2, t.eps, t.clip_value)
    example = tuple(a[0] for a in _arrays(example[:1]))
    state = init_ensemble(network, optimizer, example, member_seeds(config), abstract)
    return network, optimizer, schedule_of(config), state


def validation_losses(params, val: Crystals, config: Config, network, schedule, teacher_forcing: bool) -> dict:
    """Mean validation losses of every member, {"loss", "coord_loss", "lattice_loss"} each (M,). Member k
    uses the fixed keys of seed ``seed + k`` (as a single run with that seed)."""
    size = config.train.batch_size
    seeds = member_seeds(config)
    totals = []
    for i in range(max(1, len(val) // size)):
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s + 1), i) for s in seeds])
        loss, parts = ensemble_eval_losses(params, _arrays(val[i * size:(i + 1) * size]), keys,
                                           teacher_forcing, network=network, schedule=schedule,
                                           lattice_diffusion=lattice_diffusion_of(config))
        totals.append({"loss": loss, **parts})
    return {k: np.mean([np.asarray(x[k], np.float64) for x in totals], axis=0) for k in totals[0]}


PANELS = (Panel("score-matching loss", ("train_loss", "val_loss", "val_loss_ema"), log_scale=True),)


def make_task(config: Config, run: RunDir) -> TrainingTask:
    """The diffusion ensemble as a task of the shared training loop (reads the data)."""
    train_set, val_set = load_data(config.data)
    check(config, len(train_set))
    network, optimizer, schedule, state = build(config, train_set)
    lattice_diffusion = lattice_diffusion_of(config)
    t = config.train
    seeds = member_seeds(config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params)) // t.n_seeds
    log.info("diffusion: %s denoiser, %d parameters, %d member(s), %s, %d training / %d validation structures of "
             "%d atoms", config.model.denoiser.name, n_params, t.n_seeds,
             "lattice diffusion" if lattice_diffusion else "fixed lattice", len(train_set), len(val_set),
             train_set.n_atoms)
    step_options = dict(network=network, optimizer=optimizer, schedule=schedule, ema_decay=t.ema_decay,
                        lattice_diffusion=lattice_diffusion)
    plateaus = {"plateaus": [{"best": math.inf, "bad_epochs": 0} for _ in seeds]}

    def teacher_forcing(epoch: int) -> bool:
        return lattice_diffusion is not None and epoch < t.teacher_forcing_epochs

    def step(state, batch, epoch, index):
        state, losses = ensemble_train_step(state, (batch.frac, batch.lattice, batch.species), teacher_forcing(epoch),
                                            **step_options)
        return state, {f"train_{k}": v for k, v in losses.items()}

    def evaluate(state, epoch):
        forced = teacher_forcing(epoch)
        val = validation_losses(state.params, val_set, config, network, schedule, forced)
        val_ema = validation_losses(state.ema_params, val_set, config, network, schedule, forced)
        monitored = val["coord_loss"] if lattice_diffusion else val["loss"]
        lrs = [_plateau_lr(plateaus["plateaus"][m], float(monitored[m]), lr, t)
               for m, lr in enumerate(learning_rates(state.opt_state))]
        state = dataclasses.replace(state, opt_state=set_learning_rate(state.opt_state, np.asarray(lrs)))
        return state, {**{f"val_{k}": v for k, v in val.items()}, "val_loss_ema": val_ema["loss"]}

    def sample(state, member, n, key):
        params = member_state(state, member).ema_params
        reference = val_set[config.sample.reference_index]
        frac, lattices = generate(params, network, schedule, jnp.asarray(reference.lattice[0]),
                                  jnp.asarray(reference.species[0]), key, config.sample, n, lattice_diffusion)
        return Crystals(np.asarray(frac), np.asarray(lattices), np.repeat(reference.species, n, 0))

    return TrainingTask(
        name="diffusion", state=state, loaders=[BatchLoader(train_set, t.batch_size, seed=s) for s in seeds],
        step=step, members=[{"member": m, "seed": s} for m, s in enumerate(seeds)], evaluate=evaluate,
        eval_columns=("val_loss", "val_coord_loss", "val_lattice_loss", "val_loss_ema"),
        monitor=lambda v: float(np.mean(v["val_loss_ema"])) if np.isfinite(v["val_loss_ema"]).all() else None,
        epoch_columns=lambda state, epoch: {"lr": learning_rates(state.opt_state),
                                            "teacher_forcing": float(teacher_forcing(epoch))},
        host_state=plateaus, sample=sample, loss_column="train_loss", panels=PANELS, member_batches=True)


def train(config: Config, run: RunDir, evaluation=None) -> None:
    """Train (or resume) the diffusion model of ``config`` in ``run``; see the module docstring."""
    check(config)
    with exclusive_lock(run.path, "run directory"):
        train_loop(make_task(config, run), config.train, run, evaluation)


def _plateau_lr(plateau: dict, val_loss: float, lr: float, t: TrainConfig) -> float:
    """Reduce-on-plateau over validation epochs (patience counted in epochs, as in DiffCSP); updates
    ``plateau`` in place and returns the learning rate for the next epoch."""
    if val_loss < plateau["best"]:
        plateau["best"], plateau["bad_epochs"] = val_loss, 0
        return lr
    plateau["bad_epochs"] += t.val_every
    if plateau["bad_epochs"] > t.plateau_patience:
        plateau["bad_epochs"] = 0
        return max(t.min_lr, lr * t.plateau_factor)
    return lr


# ------------------------------------------------------------------------------------------ sampling
def generate(params, network, schedule, lattice, species, key, config: SampleConfig, n_structures: int,
             lattice_diffusion=None):
    """One chunk with the configured sampler: (frac (n_structures, N, 3), lattices (n_structures, 3, 3));
    the lattices are ``lattice`` repeated unless the model diffuses the lattice."""
    if lattice_diffusion is not None:
        return predictor_corrector_lattice(params, species, key, network=network, schedule=schedule,
                                           lattice_schedule=lattice_diffusion.schedule, n_steps=config.n_steps,
                                           step_lr=config.step_lr, n_structures=n_structures,
                                           reference_compatible=config.reference_compatible)
    if config.sampler == "pc":
        frac = predictor_corrector(params, lattice, species, key, network=network, schedule=schedule,
                                   n_steps=config.n_steps, step_lr=config.step_lr, n_structures=n_structures,
                                   reference_compatible=config.reference_compatible)
    else:
        frac = annealed_langevin(params, lattice, species, key, network=network, schedule=schedule,
                                 n_levels=config.langevin_levels, steps_per_level=config.langevin_steps_per_level,
                                 step_lr=config.langevin_step_lr, n_structures=n_structures)
    return frac, jnp.broadcast_to(lattice, (n_structures, 3, 3))


def sample(run: RunDir, n: int, out: Path, seed: int = 0, member: int = 0, checkpoint: str = "latest",
           batch_size: int | None = None, **options) -> Path:
    """Write ``n`` generated structures of ensemble member ``member`` to the extxyz file ``out`` (see module
    docstring)."""
    config = load_config(run.config_path, config_class=Config)
    if not 0 <= member < config.train.n_seeds:
        raise DismaxInputError(f"--member {member} is out of range; run '{run.path}' has {config.train.n_seeds} "
                               f"member(s)")
    overrides = {k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(SampleConfig)}}
    sample_config = dataclasses.replace(config.sample, **overrides)
    check(dataclasses.replace(config, sample=sample_config))
    _, val_set = load_data(config.data)
    if not 0 <= sample_config.reference_index < len(val_set):
        raise DismaxConfigError(f"config key 'sample.reference_index' is {sample_config.reference_index}; the "
                                f"validation set has {len(val_set)} structures")
    reference = val_set[sample_config.reference_index]
    network, _, schedule, state = build(config, reference, abstract=True)
    state = member_state(load_run_state(run, state, checkpoint)[0], member)
    params = state.ema_params if sample_config.use_ema else state.params
    lattice, species = jnp.asarray(reference.lattice[0]), jnp.asarray(reference.species[0])
    lattice_diffusion = lattice_diffusion_of(config)
    chunk = batch_size or sample_config.batch_size
    key = jax.random.PRNGKey(seed)
    n_parts = math.ceil(n / chunk)
    steps_per_chunk = (len(visited_steps(config.model.n_steps, sample_config.langevin_levels))
                       * sample_config.langevin_steps_per_level if sample_config.sampler == "langevin"
                       else len(visited_steps(config.model.n_steps, sample_config.n_steps)))

    def write_chunk(i, path):
        keep = min(chunk, n - i * chunk)
        frac, lattices = generate(params, network, schedule, lattice, species, jax.random.fold_in(key, i),
                                  sample_config, chunk, lattice_diffusion)
        write_extxyz(Crystals(np.asarray(frac)[:keep], np.asarray(lattices)[:keep],
                              np.repeat(reference.species, keep, 0)), path)

    bar = progress(total=len(process_share(n_parts)) * steps_per_chunk, desc="sampling steps", unit="step")
    with step_progress(bar):
        written = write_in_parts(Path(out), n_parts, write_chunk, desc="sampling chunks")
    bar.close()
    return written
