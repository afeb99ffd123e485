"""Trainer of the U-Net baselines (``model.name: crystens`` or ``unimat``; Dismai-Bench §2.2, §4.2.3–4.2.4).

``crystens``: structures become CrysTens images (N + 12)² × 4 scaled into [−1, 1]
(:mod:`dismax.diffusion.crystens`); an Imagen cascade of a base U-Net at ``model.low_size``² and a
super-resolution U-Net to the full size. ``unimat``: structures become videos of N 4 × 4 × 3 frames
(:mod:`dismax.diffusion.unimat`) for one video U-Net. Both use continuous-time DDPM
(:mod:`dismax.diffusion.unet_diffusion`), Adam (lr 1e-4, betas (0.9, 0.99)), batch 8, a parameter EMA,
and ``sample.n_steps`` = 100 sampling steps.

Augmentation (``augment.permute``): ``interface`` adds ``augment.copies`` (49) copies of every training
structure in which the interface-region atoms — the first ``region_counts[k]`` atoms of element
``region_species[k]`` (Li 9, Sc 3, Cl 18: the interface block convention of the interface dataset) — are
randomly permuted among atoms of the same element; ``all`` permutes all atoms within their elements (the
paper's failing control); ``none`` trains on the data as they are. Copies are drawn once from the seed.

Training runs ``train.steps`` steps over batches of the shared :class:`dismax.data.loader.BatchLoader`,
writes ``metrics.csv`` every ``train.log_every`` steps, and every ``train.checkpoint_every`` steps a
checkpoint (with the validation loss of the EMA parameters on fixed noise); a killed run resumes from the
newest checkpoint.

``sample(run, n, out)`` decodes generated images/videos with the ground-truth lattice of validation
structure ``sample.reference_index``; structures whose composition differs from the dataset's are failed.
The valid ones are written to ``out`` (extxyz) and ``<out>.summary.json`` records how many failed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from dismax.data.loader import BatchLoader
from dismax.diffusion.crystens import crystens_scale, from_crystens, lattice_parameters, space_groups, to_crystens
from dismax.diffusion.trainer import DataConfig, load_data
from dismax.diffusion.unet import UNet
from dismax.diffusion.unet_diffusion import Cascade, eval_losses, init_state, make_optimizer, sample_cascade, train_step
from dismax.diffusion.unimat import check_species_order, composition_matches, from_unimat, to_unimat
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.runs import RunDir, atomic_write_text, log, progress
from dismax.structures import Crystals


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """U-Net settings (imagen-pytorch names). CrysTens: a base U-Net at ``low_size``² and a super-resolution
    U-Net (``sr_layer_attns``) to the full size; UniMat: one video U-Net (``layer_attns``)."""

    name: Literal["crystens", "unimat"] = "unimat"
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4)
    num_resnet_blocks: int = 3
    layer_attns: tuple[bool, ...] = (False, True, True)
    heads: int = 4
    head_dim: int = 32
    low_size: int = 64
    sr_layer_attns: tuple[bool, ...] = (False, False, False)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    permute: Literal["none", "interface", "all"] = "none"
    copies: int = 49
    region_species: tuple[int, ...] = (3, 21, 17)
    region_counts: tuple[int, ...] = (9, 3, 18)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 150_000
    batch_size: int = 8
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    ema_decay: float = 0.9999
    log_every: int = 100
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    n_steps: int = 100
    batch_size: int = 8
    use_ema: bool = True
    reference_index: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    seed: int = 42


# ------------------------------------------------------------------------------------ representation
@dataclasses.dataclass(frozen=True)
class Representation:
    """Static encoder/decoder between structures and the U-Net's data (B, F, H, W, C) in [−1, 1]."""

    kind: str
    n_atoms: int
    species_order: tuple[int, ...]
    composition: tuple[int, ...]
    length_scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(F, H, W, C) of one structure."""
        if self.kind == "crystens":
            size = self.n_atoms + 12
            return (1, size, size, 4)
        return (self.n_atoms, 4, 4, 3)

    def encode(self, frac, lattice, species, space_group):
        if self.kind == "crystens":
            image = to_crystens(frac, lattice, species, space_group) / crystens_scale(self.n_atoms, self.length_scale)
            return image[:, None]
        return to_unimat(frac, species, self.species_order)

    def decode(self, x):
        """(frac (B, N, 3), species (B, N), valid (B,)) of generated data."""
        if self.kind == "crystens":
            frac, species = from_crystens(x[:, 0] * crystens_scale(self.n_atoms, self.length_scale),
                                          self.species_order)
            return frac, species, composition_matches(species, self.species_order, self.composition)
        return from_unimat(x, self.species_order, self.composition)


def representation(config: Config, data: Crystals) -> Representation:
    """The representation of ``data`` (one composition in a fixed order of first appearance)."""
    species = np.asarray(data.species)
    order = check_species_order(dict.fromkeys(species[0].tolist()))
    composition = tuple(int(np.sum(species[0] == z)) for z in order)
    if not np.all(species == species[:1]) and config.augment.permute == "none":
        log.warning("%s: the atom order of the species differs between structures; the U-Net baselines rely on "
                    "a fixed order", config.model.name)
    length_scale = float(np.max(np.asarray(lattice_parameters(jnp.asarray(data.lattice)))[:, :3].sum(-1)))
    return Representation(config.model.name, data.n_atoms, order, composition, length_scale)


@partial(jax.jit, static_argnames="rep")
def _encode(rep: Representation, frac, lattice, species, space_group):
    return rep.encode(frac, lattice, species, space_group)


@partial(jax.jit, static_argnames="rep")
def _decode(rep: Representation, x):
    return rep.decode(x)


def build_cascade(model: ModelConfig, rep: Representation) -> Cascade:
    common = dict(dim=model.dim, dim_mults=model.dim_mults, num_resnet_blocks=model.num_resnet_blocks,
                  heads=model.heads, head_dim=model.head_dim)
    channels = rep.shape[-1]
    if model.name == "unimat":
        return Cascade(UNet(channels, layer_attns=model.layer_attns, temporal=True,
                            max_frames=rep.n_atoms, **common))
    return Cascade(UNet(channels, layer_attns=model.layer_attns, **common),
                   UNet(channels, layer_attns=model.sr_layer_attns, **common), model.low_size)


# -------------------------------------------------------------------------------------- augmentation
def permutable_atoms(species: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """(N,) bool: the atoms the augmentation may permute (within their element) for one species row."""
    if config.permute == "all":
        return np.ones(len(species), bool)
    chosen = np.zeros(len(species), bool)
    for z, count in zip(config.region_species, config.region_counts):
        positions = np.flatnonzero(species == z)
        if len(positions) < count:
            raise DismaxInputError(f"augment.region_counts asks for {count} atoms of element {z} but the structures "
                                   f"have {len(positions)}")
        chosen[positions[:count]] = True
    return chosen


def permutation_copies(data: Crystals, config: AugmentConfig, seed: int) -> tuple[Crystals, np.ndarray]:
    """(the data followed by ``copies`` permuted copies of every structure, source structure index of each
    row). Each copy permutes the permutable atoms among atoms of the same element (species unchanged)."""
    data = data.to_numpy()
    if config.permute == "none" or config.copies == 0:
        return data, np.arange(len(data))
    frac, rows = [data.frac], [np.arange(len(data))]
    for copy in range(1, config.copies + 1):
        permuted = data.frac.copy()
        for b in range(len(data)):
            rng = np.random.default_rng([seed, b, copy])
            species = data.species[b]
            movable = permutable_atoms(species, config)
            for z in np.unique(species[movable]):
                slots = np.flatnonzero(movable & (species == z))
                permuted[b, slots] = data.frac[b, rng.permutation(slots)]
        frac.append(permuted)
        rows.append(np.arange(len(data)))
    source = np.concatenate(rows)
    return Crystals(np.concatenate(frac), data.lattice[source], data.species[source]), source


# ------------------------------------------------------------------------------------------ training
def _check(config: Config) -> None:
    t, m = config.train, config.model
    if len(m.layer_attns) != len(m.dim_mults) or len(m.sr_layer_attns) != len(m.dim_mults):
        raise DismaxConfigError(f"config keys 'model.layer_attns' and 'model.sr_layer_attns' need one entry per "
                                f"level of 'model.dim_mults' ({len(m.dim_mults)})")
    if m.dim % 8 or m.dim < 8:
        raise DismaxConfigError(f"config key 'model.dim' is {m.dim}; it must be a positive multiple of 8 "
                                f"(GroupNorm with 8 groups)")
    if m.name == "crystens" and m.low_size % 2 ** (len(m.dim_mults) - 1):
        raise DismaxConfigError(f"config key 'model.low_size' is {m.low_size}; it must be divisible by "
                                f"{2 ** (len(m.dim_mults) - 1)} for {len(m.dim_mults)} U-Net levels")
    for key, value in (("train.steps", t.steps), ("train.batch_size", t.batch_size), ("train.log_every", t.log_every),
                       ("train.checkpoint_every", t.checkpoint_every), ("sample.n_steps", config.sample.n_steps),
                       ("sample.batch_size", config.sample.batch_size)):
        if value < 1:
            raise DismaxConfigError(f"config key '{key}' is {value}; it must be at least 1")
    if len(config.augment.region_species) != len(config.augment.region_counts):
        raise DismaxConfigError("config keys 'augment.region_species' and 'augment.region_counts' must have the "
                                "same length")


def build(config: Config, data: Crystals, abstract: bool = False):
    """(representation, cascade, optimizer, initial state or its shapes) for ``config`` on ``data``."""
    rep = representation(config, data)
    cascade = build_cascade(config.model, rep)
    optimizer = make_optimizer(config.train.lr, config.train.beta1, config.train.beta2)
    example = jnp.zeros((1, *rep.shape), jnp.float32)
    init = partial(init_state, cascade, optimizer, example, jax.random.PRNGKey(config.seed))
    return rep, cascade, optimizer, (jax.eval_shape(init) if abstract else jax.jit(init)())


def train(config: Config, run: RunDir) -> None:
    from dismax.checkpoint import Checkpointer

    _check(config)
    t = config.train
    train_set, val_set = load_data(config.data)
    rep, cascade, optimizer, state = build(config, train_set)
    augmented, source = permutation_copies(train_set, config.augment, config.seed)
    groups = space_groups(train_set.frac, train_set.lattice, train_set.species)[source]
    val_groups = space_groups(val_set.frac, val_set.lattice, val_set.species)
    loader = BatchLoader(augmented, t.batch_size, seed=config.seed)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("%s: %d parameters, data %s per structure, %d training structures (%d with augmentation '%s'), "
             "%d validation", config.model.name, n_params, "×".join(map(str, rep.shape)), len(train_set),
             len(augmented), config.augment.permute, len(val_set))
    checkpointer = Checkpointer(run.checkpoints, keep=t.keep_checkpoints)
    restored = checkpointer.restore(state)
    if restored is not None:
        _, state, meta = restored
        loader.restore(meta["loader"])
        run.truncate_metrics(lambda row: row.get("step", 0) <= loader.step)
        log.info("resumed at step %d", loader.step)
    val_index = np.arange(min(len(val_set), t.batch_size))
    val_x0 = _encode(rep, val_set.frac[val_index], val_set.lattice[val_index], val_set.species[val_index],
                     val_groups[val_index])
    window, started = [], time.perf_counter()
    for step in progress(range(loader.step, t.steps), total=t.steps, initial=loader.step, desc=config.model.name):
        batch = loader.batch(step)
        x0 = _encode(rep, batch.frac, batch.lattice, batch.species, groups[loader.indices(step)[0]])
        state, losses = train_step(state, x0, cascade, optimizer, t.ema_decay)
        loader.step = step + 1
        window.append(losses)
        last = step + 1 == t.steps
        if (step + 1) % t.log_every == 0 or last:
            means = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
            if not np.isfinite(means["loss"]):
                raise DismaxInputError(f"training loss became {means['loss']} at step {step + 1}; lower train.lr")
            seconds = time.perf_counter() - started
            run.append_metrics({"step": step + 1, **{f"train_{k}": v for k, v in means.items()},
                                "seconds_per_step": seconds / len(window)})
            log.info("step %d: loss %.4f (%.2f s/step)", step + 1, means["loss"], seconds / len(window))
            window, started = [], time.perf_counter()
        if (step + 1) % t.checkpoint_every == 0 or last:
            val = eval_losses(state.ema_params, val_x0, jax.random.PRNGKey(config.seed + 1), cascade)
            log.info("step %d: validation loss (EMA) %.4f", step + 1, float(val["loss"]))
            checkpointer.save(step + 1, state, meta={"loader": loader.state()}, metric=float(val["loss"]))
    checkpointer.close()


# ------------------------------------------------------------------------------------------ sampling
def generate(params, rep: Representation, cascade: Cascade, key, n_structures: int, n_steps: int):
    """(frac (n, N, 3), species (n, N), valid (n,)) of ``n_structures`` samples."""
    x = sample_cascade(params, key, cascade, (n_structures, *rep.shape), n_steps)
    return _decode(rep, x)


def sample(run: RunDir, n: int, out: Path, seed: int = 0, member: int = 0, checkpoint: str = "latest",
           batch_size: int | None = None, **options) -> Path:
    """Write the valid ones of ``n`` generated structures to ``out`` (see the module docstring)."""
    from dismax.checkpoint import Checkpointer
    from dismax.config import load_config
    from dismax.io import write_extxyz

    config = load_config(run.config_path, config_class=Config)
    if member != 0:
        raise DismaxInputError(f"--member {member}: run '{run.path}' has a single {config.model.name} model")
    train_set, val_set = load_data(config.data)
    if not 0 <= config.sample.reference_index < len(val_set):
        raise DismaxConfigError(f"config key 'sample.reference_index' is {config.sample.reference_index}; the "
                                f"validation set has {len(val_set)} structures")
    rep, cascade, _, like = build(config, train_set, abstract=True)
    checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
    restored = checkpointer.restore_best(like) if checkpoint == "best" else checkpointer.restore(like)
    checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"run directory '{run.path}' has no {checkpoint} checkpoint")
    state = restored[1]
    params = state.ema_params if config.sample.use_ema else state.params
    reference = val_set[config.sample.reference_index]
    chunk = batch_size or config.sample.batch_size
    key = jax.random.PRNGKey(seed)
    kept, n_failed = [], 0
    for i in progress(range(0, n, chunk), desc=f"sampling {config.model.name}"):
        frac, species, valid = generate(params, rep, cascade, jax.random.fold_in(key, i), chunk, config.sample.n_steps)
        valid = np.asarray(valid)[: n - i]
        n_failed += int(np.sum(~valid))
        kept.append((np.asarray(frac)[: n - i][valid], np.asarray(species)[: n - i][valid]))
    frac = np.concatenate([k[0] for k in kept])
    species = np.concatenate([k[1] for k in kept])
    out = Path(out)
    if len(frac):
        write_extxyz(Crystals(frac, np.repeat(reference.lattice, len(frac), 0), species), out)
    summary = {"n_requested": n, "n_failed": n_failed, "percent_failed": 100.0 * n_failed / n,
               "failure": "decoded composition differs from the training data"}
    atomic_write_text(out.with_name(out.name + ".summary.json"), json.dumps(summary, indent=1))
    log.info("%s: %d of %d structures failed (wrong composition); %d written to %s", config.model.name, n_failed, n,
             len(frac), out)
    return out
