"""Masked-denoising pre-training (``model.name: ssl_pretrain``; spec ``ssl_gan.md`` §5 with the §9 defaults).

Every step corrupts each structure of the batch afresh (:mod:`dismax.ssl.corruption`: species masking,
Gaussian noise with σ = σ̃ × the periodic minimum pair distance) and trains the backbone to recover the
masked species and the Cartesian noise: loss = L_species + ``position_weight`` · L_pos with L_species the
NLL over the masked atoms (``species_loss_all_atoms: true`` is the reference's all-atom loss, L6) and L_pos
the mean squared error of the predicted noise in Å² (the reference compares Cartesian noise with a
fractional target, L7). Adam (lr 1e-4 by default, Liu et al.); batches are padded static shapes (L9).

Validation every ``train.val_every`` epochs on the validation set with fixed corruption keys: the losses,
the masked-species accuracy with its trivial baseline (the training set's most common species), and the
RMS positional error after one denoising pass next to the input noise (the zero-displacement baseline).
``best/`` keeps the lowest validation loss. ``sample`` repairs corrupted validation structures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.config import load_config
from dismax.data.loader import BatchLoader, BucketedLoader
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import write_extxyz
from dismax.runs import RunDir, exclusive_lock, log
from dismax.ssl.backbone import Backbone, BackboneConfig
from dismax.ssl.corruption import CorruptionConfig
from dismax.ssl.data import DataConfig, PaddedSet, load_padded, size_buckets
from dismax.ssl.steps import Batch, Generator, apply_batch, corrupt_batch, reconstruct, reconstruction_terms
from dismax.structures import Crystals, StructureSet
from dismax.training import (LoopConfig, Panel, TrainingTask, check_data_source, check_loop_config,
                             load_run_state, train_loop)


@dataclass(frozen=True)
class ModelConfig:
    """The backbone, the corruption and the loss weights (position_weight: w_pos, paper 200)."""

    name: str = "ssl_pretrain"
    backbone: BackboneConfig = BackboneConfig()
    corruption: CorruptionConfig = CorruptionConfig()
    position_weight: float = 200.0
    species_loss_all_atoms: bool = False


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    epochs: int = 100
    batch_size: int = 8
    val_every: int = 1
    checkpoint_every: int = 5
    lr: float = 1e-4
    clip_norm: float = 10.0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """Parameters, Adam state, step counter and PRNG key (a pytree)."""

    params: dict
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array


def check_model(model: ModelConfig) -> None:
    """Errors of the backbone, corruption and loss keys (shared with the GAN and fine-tuning configs)."""
    b, c = model.backbone, model.corruption
    if not b.cutoff > 0 or b.n_layers < 1 or b.n_neighbors < 1 or b.n_images < 0 or not 0 <= b.l_max <= 3:
        raise DismaxConfigError("config keys 'model.backbone.*' need cutoff > 0, n_layers >= 1, n_neighbors >= 1, "
                                "n_images >= 0 and 0 <= l_max <= 3")
    if "1o" not in b.hidden_irreps:
        raise DismaxConfigError(f"config key 'model.backbone.hidden_irreps' is {b.hidden_irreps!r}; the noise head "
                                "needs vector (1o) features")
    if not 0 < c.mask_ratio <= 1 or not 0 <= c.species_mask_probability <= 1:
        raise DismaxConfigError("config keys 'model.corruption.mask_ratio' must be in (0, 1] and "
                                "'model.corruption.species_mask_probability' in [0, 1]")
    if c.sigma_ratio < 0 or c.single_atom_distance <= 0 or model.position_weight < 0:
        raise DismaxConfigError("config keys 'model.corruption.sigma_ratio' and 'model.position_weight' must be "
                                ">= 0 and 'model.corruption.single_atom_distance' > 0")
    if c.sigma_ratio_max is not None and c.sigma_ratio_max < c.sigma_ratio:
        raise DismaxConfigError(f"config key 'model.corruption.sigma_ratio_max' is {c.sigma_ratio_max}; it must be "
                                f">= 'model.corruption.sigma_ratio' ({c.sigma_ratio})")


def check(config: Config) -> None:
    """Every config error, before anything is written."""
    check_loop_config(config.train)
    check_model(config.model)
    if config.train.lr <= 0:
        raise DismaxConfigError(f"config key 'train.lr' is {config.train.lr}; it must be > 0")
    d = config.data
    if d.max_buckets < 1:
        raise DismaxConfigError(f"config key 'data.max_buckets' is {d.max_buckets}; it must be at least 1")
    if not d.path:
        check_data_source(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    elif not Path(d.path).expanduser().exists():
        raise DismaxConfigError(f"config key 'data.path' is '{d.path}', which does not exist")


@lru_cache(maxsize=None)
def make_optimizer(lr: float, clip_norm: float) -> optax.GradientTransformation:
    """Adam after global-norm clipping (cached: equal settings give one static object)."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(lr))


def initial_params(network: Backbone, key, n_atoms: int = 2):
    """Fresh parameters (their shapes do not depend on the atom count)."""
    frac = jax.random.uniform(key, (n_atoms, 3))
    return jax.jit(network.init)(key, frac, 6.0 * jnp.eye(3), jnp.ones(n_atoms, jnp.int32), jnp.ones(n_atoms, bool))


def as_batch(data) -> Batch:
    """A loader batch (Crystals, atom_mask) or a PaddedSet as the steps' Batch."""
    crystals, atom_mask = data
    return Batch(jnp.asarray(crystals.frac), jnp.asarray(crystals.lattice), jnp.asarray(crystals.species),
                 jnp.asarray(atom_mask))


def pretrain_losses(network, params, batch: Batch, key, model: ModelConfig):
    """(total loss, reconstruction terms) of one freshly corrupted batch."""
    corrupted = corrupt_batch(key, batch, model.corruption)
    logits, noise = apply_batch(network, params, corrupted.frac, batch.lattice, corrupted.species, batch.atom_mask)
    terms = reconstruction_terms(logits, noise, batch, corrupted, model.species_loss_all_atoms)
    return terms["species_loss"] + model.position_weight * terms["position_loss"], terms


@partial(jax.jit, static_argnames=("network", "optimizer", "model"), donate_argnums=(0,))
def train_step(state: TrainState, batch: Batch, *, network, optimizer, model: ModelConfig):
    """One Adam step on a fresh corruption; returns (state, {"loss", terms...})."""
    key, step_key = jax.random.split(state.key)
    (loss, terms), grads = jax.value_and_grad(
        lambda p: pretrain_losses(network, p, batch, step_key, model), has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1, key), \
        {"loss": loss, **terms}


@partial(jax.jit, static_argnames=("network", "model"))
def eval_terms(params, batch: Batch, key, majority, *, network, model: ModelConfig):
    """Validation terms of one batch, with the majority-species baseline accuracy on the same masks."""
    loss, terms = pretrain_losses(network, params, batch, key, model)
    corrupted = corrupt_batch(key, batch, model.corruption)
    masked = corrupted.masked.astype(jnp.float32)
    baseline = jnp.sum((batch.species == majority) * masked) / jnp.maximum(jnp.sum(masked), 1.0)
    return {"loss": loss, **terms, "majority_accuracy": baseline}


def validation_metrics(network, params, val: PaddedSet, batch_size: int, model: ModelConfig, seed: int,
                       majority: int) -> dict:
    """Mean validation terms over fixed-key batches (the last batch completed with the first structures)."""
    order = np.resize(np.arange(len(val)), -(-len(val) // batch_size) * batch_size)
    rows = []
    for i, start in enumerate(range(0, len(order), batch_size)):
        batch = as_batch(val.take(order[start:start + batch_size]))
        key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), i)
        rows.append(eval_terms(params, batch, key, majority, network=network, model=model))
    return {f"val_{k}": float(np.mean([np.asarray(r[k]) for r in rows])) for k in rows[0]}


def majority_species(train: PaddedSet) -> int:
    """The most common atomic number among the real atoms of the training set."""
    values, counts = np.unique(np.asarray(train.crystals.species)[train.atom_mask], return_counts=True)
    return int(values[np.argmax(counts)])


PANELS = (Panel("loss", ("train_loss", "val_loss"), log_scale=True),
          Panel("masked species accuracy", ("train_accuracy", "val_accuracy", "val_majority_accuracy")),
          Panel("positional RMS error (Å)", ("train_residual_rms", "val_residual_rms", "val_input_rms")))
EVAL_COLUMNS = ("val_loss", "val_species_loss", "val_position_loss", "val_accuracy", "val_residual_rms",
                "val_input_rms", "val_majority_accuracy")


def training_loader(train_set: PaddedSet, data: DataConfig, batch_size: int, seed: int):
    """Shuffled training batches: one padded shape, or one per size bucket (``data.max_buckets`` > 1; each
    bucket's shape compiles the step once)."""
    if data.max_buckets > 1:
        return BucketedLoader([tuple(part) for part in size_buckets(train_set, data.max_buckets)], batch_size,
                              seed=seed)
    return BatchLoader(tuple(train_set), batch_size, seed=seed)


def make_task(config: Config, run: RunDir) -> TrainingTask:
    """Pre-training as a task of the shared training loop (reads the data)."""
    train_set, val_set = load_padded(config.data)
    t = config.train
    if t.batch_size > len(train_set):
        raise DismaxConfigError(f"config key 'train.batch_size' is {t.batch_size} but there are only "
                                f"{len(train_set)} training structures")
    network = Backbone(config.model.backbone)
    optimizer = make_optimizer(t.lr, t.clip_norm)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = initial_params(network, init_key)
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), state_key)
    majority = majority_species(train_set)
    log.info("ssl_pretrain: %d parameters, %d training / %d validation structures padded to %d atoms, "
             "majority species Z=%d", sum(x.size for x in jax.tree.leaves(params)), len(train_set), len(val_set),
             train_set.crystals.n_atoms, majority)

    def step(state, data, epoch, index):
        state, metrics = train_step(state, as_batch(data), network=network, optimizer=optimizer, model=config.model)
        return state, {f"train_{k}": v for k, v in metrics.items()}

    def evaluate(state, epoch):
        return state, validation_metrics(network, state.params, val_set, t.batch_size, config.model, config.seed,
                                         majority)

    return TrainingTask(
        name="ssl_pretrain", state=state, loaders=[training_loader(train_set, config.data, t.batch_size, config.seed)],
        step=step, members=[{"member": 0, "seed": config.seed}], evaluate=evaluate, eval_columns=EVAL_COLUMNS,
        monitor=lambda v: float(v["val_loss"][0]) if np.isfinite(v["val_loss"][0]) else None,
        loss_column="train_loss", panels=PANELS)


def run_training(check_config, task_of, config, run: RunDir, evaluation=None) -> None:
    """Check ``config``, then train (or resume) ``task_of(config, run)`` in the locked ``run`` (every ssl model)."""
    check_config(config)
    with exclusive_lock(run.path, "run directory"):
        train_loop(task_of(config, run), config.train, run, evaluation)


def train(config: Config, run: RunDir, evaluation=None) -> None:
    """Pre-train (or resume) the backbone of ``config`` in ``run``; see the module docstring."""
    run_training(check, make_task, config, run, evaluation)


def restore_generator(run: RunDir, which: str = "latest") -> Generator:
    """The generator of a pre-training run's checkpoint (``which``: 'latest' or 'best')."""
    config = load_config(run.config_path, config_class=Config)
    network = Backbone(config.model.backbone)
    optimizer = make_optimizer(config.train.lr, config.train.clip_norm)

    def fresh():
        params = initial_params(network, jax.random.PRNGKey(0))
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), jax.random.PRNGKey(0))

    state, _ = load_run_state(run, jax.eval_shape(fresh), which)
    return Generator(network, state.params, config.model.corruption, config.data)


@partial(jax.jit, static_argnames=("network", "corruption"))
def repair(params, batch: Batch, key, *, network, corruption: CorruptionConfig):
    """Corrupt ``batch`` and reconstruct it with one pass: (frac, species, Corrupted)."""
    corrupted = corrupt_batch(key, batch, corruption)
    logits, noise = apply_batch(network, params, corrupted.frac, batch.lattice, corrupted.species, batch.atom_mask)
    frac, species = reconstruct(logits, noise, batch.lattice, corrupted)
    return frac, species, corrupted


def unpad(frac, lattice, species, atom_mask) -> StructureSet:
    """The real atoms of padded arrays as a StructureSet (host side)."""
    frac, lattice, species, atom_mask = (np.asarray(x) for x in (frac, lattice, species, atom_mask))
    return StructureSet.from_structures([Crystals(frac[b][atom_mask[b]][None], lattice[b][None],
                                                  species[b][atom_mask[b]][None]) for b in range(len(frac))])


def write_repaired(generator: Generator, n: int, out: Path, seed: int) -> Path:
    """Write ``n`` repaired structures (the generator's validation structures, cycled, corrupted with its
    default corruption and reconstructed in one pass) to the extxyz file ``out``."""
    if n < 1:
        raise DismaxInputError(f"--n is {n}; it must be at least 1")
    _, val_set = load_padded(generator.data)
    chosen = val_set.take(np.resize(np.arange(len(val_set)), n))
    frac, species, _ = repair(generator.params, as_batch(chosen), jax.random.PRNGKey(seed), network=generator.network,
                              corruption=generator.corruption)
    return write_extxyz(unpad(frac, chosen.crystals.lattice, species, chosen.atom_mask), out)


def sample(run: RunDir, n: int, out: Path, seed: int = 0, checkpoint: str = "latest", **options) -> Path:
    """Write ``n`` repaired validation structures to ``out`` (see :func:`write_repaired`)."""
    return write_repaired(restore_generator(run, checkpoint), n, out, seed)
