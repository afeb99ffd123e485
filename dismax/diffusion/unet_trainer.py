"""Trainer of the U-Net baselines (``model.name: crystens`` or ``unimat``; Dismai-Bench §2.2, §4.2.3–4.2.4).

``crystens``: structures become CrysTens images (N + 12)² × 4, every quantity min-max scaled into
[−1, 1] over the training data as Dismai-Bench's scaler (:mod:`dismax.diffusion.crystens`); an Imagen
cascade of a base U-Net at ``model.low_size``² and a super-resolution U-Net to the full size. ``unimat``:
structures become videos of N 4 × 4 × 3 frames, coordinates min-max scaled into [0, 1] and −1 elsewhere
(:mod:`dismax.diffusion.unimat`), for one video U-Net. Both use continuous-time DDPM
(:mod:`dismax.diffusion.unet_diffusion`), Adam (lr 1e-4, betas (0.9, 0.99)), batch 8, a parameter EMA,
and ``sample.n_steps`` = 100 sampling steps. ``train.lr_schedule`` (imagen-pytorch's trainer options):
``constant`` (the paper's) or ``cosine`` (decay to 0 over the run's ``train.epochs``; a run extended to more
epochs follows the cosine of the new length from its current step), either multiplied by a linear warmup over
``train.warmup_steps`` steps (:func:`dismax.training.learning_rate_schedule`); ``metrics.csv`` records the
rate of each epoch's last step (``lr``).

Augmentation (``augment.permute``): ``interface`` adds ``augment.copies`` (49) copies of every training
structure in which the interface-region atoms — the first ``region_counts[k]`` atoms of element
``region_species[k]`` (Li 9, Sc 3, Cl 18: the interface block convention of the interface dataset) — are
randomly permuted among atoms of the same element; ``all`` permutes all atoms within their elements (the
paper's failing control); ``none`` trains on the data as they are. Copies are drawn once from the seed.

Training runs the shared loop (:func:`dismax.training.train_loop`) for ``train.epochs`` epochs of the
(augmented) training set, batch 8: the paper's 150,000 steps are 1,000 epochs of 1,200 structures, or 20
epochs of the 60,000 augmented interface structures. The validation loss of the EMA parameters (fixed noise)
selects the best checkpoint. ``val_x0_rms`` (Å) tells whether the coordinates are learned, which the loss,
dominated by the many background pixels, does not: the validation structures are noised to t = 0.05 (the
last sampling steps), denoised in one step by the EMA parameters (``unet_diffusion.denoised_estimate``),
decoded, and compared atom by atom (minimum image) with their true positions.

``sample(run, n, out)`` decodes generated images/videos with the ground-truth lattice of validation
structure ``sample.reference_index``; structures whose composition differs from the dataset's are failed.
The valid ones are written to ``out`` (extxyz, each frame's ``id`` its index among the generated; an empty
file when all failed) and ``<out>.summary.json`` (:func:`dismax.validation.write_sample_summary`) records
which failed, so the bench pipeline counts them as ``failed_decode``. Where every training structure has the same
atom order (a-Si, the interface), the summary also has ``species_accuracy``: the fraction of generated atoms (all
structures, failed ones included) decoded to the species of their index in that order, and its value per structure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache, partial
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from dismax.config import load_config
from dismax.data.interface_layout import REGION_COUNTS
from dismax.data.loader import BatchLoader
from dismax.diffusion.crystens import (crystens_ranges, from_crystens, from_model_space, merge_ranges, space_groups,
                                       to_crystens, to_model_space)
from dismax.diffusion.trainer import DataConfig, load_data
from dismax.diffusion.unet import UNet
from dismax.diffusion.unet_diffusion import (DENOISING_PROBE_TIME, Cascade, denoised_estimate, eval_losses, init_state,
                                             make_optimizer, sample_cascade, train_step)
from dismax.diffusion.unimat import (check_species_order, composition_matches, coordinate_ranges, from_unimat,
                                     to_unimat)
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.geometry import coordinate_rms
from dismax.io import read_structure_set, write_extxyz
from dismax.devices import barrier, is_primary
from dismax.runs import RunDir, atomic_write_text, log, write_in_parts
from dismax.structures import Crystals, leading_atoms
from dismax.validation import write_sample_summary
from dismax.training import (LoopConfig, Panel, TrainingTask, check_data_source, check_loop_config,
                             check_lr_schedule, learning_rate_schedule, load_run_state, train_loop)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """U-Net settings (imagen-pytorch names; the defaults are imagen-pytorch 1.26.2's, the version of the
    published scripts, e.g. 8 attention heads of 64). CrysTens: a base U-Net at ``low_size``² and a
    super-resolution U-Net (``sr_layer_attns``) to the full size; UniMat: one video U-Net (``layer_attns``).
    ``objective``: what the U-Nets regress, ``noise`` (the paper's) or ``v``; ``min_snr_gamma``: imagen's
    min-SNR loss weighting (5, on by default there) or null for the plain MSE
    (:mod:`dismax.diffusion.unet_diffusion`)."""

    name: Literal["crystens", "unimat"] = "unimat"
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4)
    num_resnet_blocks: int = 3
    layer_attns: tuple[bool, ...] = (False, True, True)
    heads: int = 8
    head_dim: int = 64
    low_size: int = 64
    sr_layer_attns: tuple[bool, ...] = (False, False, False)
    objective: Literal["noise", "v"] = "noise"
    min_snr_gamma: float | None = 5.0


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    permute: Literal["none", "interface", "all"] = "none"
    copies: int = 49
    region_species: tuple[int, ...] = tuple(REGION_COUNTS)
    region_counts: tuple[int, ...] = tuple(REGION_COUNTS.values())


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The shared loop keys (epochs of the augmented data) and Imagen's optimiser settings."""

    epochs: int = 1000
    batch_size: int = 8
    val_every: int = 10
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    ema_decay: float = 0.9999
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    n_steps: int = 100
    batch_size: int = 8
    use_ema: bool = True
    dynamic_threshold: float | None = 0.95
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
    ranges: tuple[tuple[float, float], ...]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(F, H, W, C) of one structure."""
        if self.kind == "crystens":
            size = self.n_atoms + 12
            return (1, size, size, 4)
        return (self.n_atoms, 4, 4, 3)

    def encode(self, frac, lattice, species, space_group):
        if self.kind == "crystens":
            return to_model_space(to_crystens(frac, lattice, species, space_group), self.ranges)[:, None]
        return to_unimat(frac, species, self.species_order, self.ranges)

    def decode(self, x):
        """(frac (B, N, 3), species (B, N), valid (B,)) of generated data."""
        if self.kind == "crystens":
            frac, species = from_crystens(from_model_space(x[:, 0], self.ranges), self.species_order)
            return frac, species, composition_matches(species, self.species_order, self.composition)
        return from_unimat(x, self.species_order, self.composition, self.ranges)


def representation(config: Config, data: Crystals, space_group: np.ndarray, chunk: int = 32) -> Representation:
    """The representation of ``data`` (one composition in a fixed order of first appearance) with the min-max
    ranges of its values (CrysTens: every header quantity and body channel, from the images of ``data``
    with space groups ``space_group`` (B,), built ``chunk`` structures at a time; UniMat: the coordinates)."""
    species = np.asarray(data.species)
    order = check_species_order(dict.fromkeys(species[0].tolist()))
    composition = tuple(int(np.sum(species[0] == z)) for z in order)
    if training_order(species) is None and config.augment.permute == "none":
        log.warning("%s: the atom order of the species differs between structures; the U-Net baselines rely on "
                    "a fixed order", config.model.name)
    if config.model.name == "unimat":
        ranges = coordinate_ranges(data.frac)
    else:
        ranges = None
        for start in range(0, len(data), chunk):
            part = data[start:start + chunk]
            images = _crystens_images(part.frac, part.lattice, part.species, space_group[start:start + chunk])
            ranges = crystens_ranges(images) if ranges is None else merge_ranges(ranges, crystens_ranges(images))
    return Representation(config.model.name, data.n_atoms, order, composition, ranges)


_crystens_images = jax.jit(to_crystens)


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
        return Cascade(UNet(channels, layer_attns=model.layer_attns, temporal=True, **common),
                       objective=model.objective, min_snr_gamma=model.min_snr_gamma)
    return Cascade(UNet(channels, layer_attns=model.layer_attns, **common),
                   UNet(channels, layer_attns=model.sr_layer_attns, **common), model.low_size, model.objective,
                   model.min_snr_gamma)


# -------------------------------------------------------------------------------------- augmentation
def permutable_atoms(species: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """(N,) bool: the atoms the augmentation may permute (within their element) for one species row."""
    if config.permute == "all":
        return np.ones(len(species), bool)
    return leading_atoms(species, dict(zip(config.region_species, config.region_counts)))


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
def check(config: Config) -> None:
    """Every config error, before anything is written."""
    t, m = config.train, config.model
    check_loop_config(t)
    check_lr_schedule(t.lr_schedule, t.warmup_steps)
    if len(m.layer_attns) != len(m.dim_mults) or len(m.sr_layer_attns) != len(m.dim_mults):
        raise DismaxConfigError(f"config keys 'model.layer_attns' and 'model.sr_layer_attns' need one entry per "
                                f"level of 'model.dim_mults' ({len(m.dim_mults)})")
    if m.dim % 8 or m.dim < 8:
        raise DismaxConfigError(f"config key 'model.dim' is {m.dim}; it must be a positive multiple of 8 "
                                f"(GroupNorm with 8 groups)")
    if m.name == "crystens" and m.low_size % 2 ** (len(m.dim_mults) - 1):
        raise DismaxConfigError(f"config key 'model.low_size' is {m.low_size}; it must be divisible by "
                                f"{2 ** (len(m.dim_mults) - 1)} for {len(m.dim_mults)} U-Net levels")
    for key, value in (("sample.n_steps", config.sample.n_steps), ("sample.batch_size", config.sample.batch_size)):
        if value < 1:
            raise DismaxConfigError(f"config key '{key}' is {value}; it must be at least 1")
    threshold = config.sample.dynamic_threshold
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise DismaxConfigError(f"config key 'sample.dynamic_threshold' is {threshold}; it must be a percentile "
                                f"in (0, 1] (imagen's 0.95) or null for a plain clip to [-1, 1]")
    if m.min_snr_gamma is not None and m.min_snr_gamma <= 0:
        raise DismaxConfigError(f"config key 'model.min_snr_gamma' is {m.min_snr_gamma}; it must be positive "
                                f"(imagen's 5) or null for the unweighted MSE")
    if len(config.augment.region_species) != len(config.augment.region_counts):
        raise DismaxConfigError("config keys 'augment.region_species' and 'augment.region_counts' must have the "
                                "same length")
    d = config.data
    check_data_source(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)


def dataset_space_groups(config: Config, data: Crystals) -> np.ndarray:
    """(B,) space-group numbers of ``data`` for the CrysTens header (spglib); UniMat has no header: ones."""
    if config.model.name == "unimat":
        return np.ones(len(data), np.int32)
    return space_groups(data.frac, data.lattice, data.species)


def build(config: Config, data: Crystals, groups: np.ndarray, abstract: bool = False, total_steps: int = 1):
    """(representation, cascade, optimizer, initial state or its shapes) for ``config`` on ``data`` with
    space groups ``groups`` (:func:`dataset_space_groups`); ``total_steps``: the run's optimiser steps (the
    length of a cosine learning-rate decay)."""
    rep = representation(config, data, groups)
    cascade = build_cascade(config.model, rep)
    t = config.train
    optimizer = scheduled_optimizer(t.lr, t.lr_schedule, total_steps, t.warmup_steps, t.beta1, t.beta2)
    init = partial(init_state, jnp.zeros((1, *rep.shape), jnp.float32), jax.random.PRNGKey(config.seed),
                   cascade=cascade, optimizer=optimizer)
    return rep, cascade, optimizer, (jax.eval_shape(init) if abstract else init())


@lru_cache(maxsize=None)
def scheduled_optimizer(lr: float, schedule: str, total_steps: int, warmup_steps: int, beta1: float, beta2: float):
    """Imagen's Adam on the ``train.lr_schedule`` rate. Cached: equal settings give the same (static) object, so
    the compiled initialisation and train step are reused by the next run with those settings in this process."""
    return make_optimizer(learning_rate_schedule(lr, schedule, total_steps, warmup_steps), beta1, beta2)


def _arrays(data: Crystals, groups: np.ndarray) -> dict:
    return {"frac": data.frac, "lattice": data.lattice, "species": data.species, "space_group": groups}


def train(config: Config, run: RunDir) -> None:
    check(config)
    t = config.train
    train_set, val_set = load_data(config.data)
    train_groups = dataset_space_groups(config, train_set)
    augmented, source = permutation_copies(train_set, config.augment, config.seed)
    loader = BatchLoader(_arrays(augmented, train_groups[source]), t.batch_size, seed=config.seed)
    rep, cascade, optimizer, state = build(config, train_set, train_groups,
                                           total_steps=t.epochs * loader.steps_per_epoch)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("%s: %d parameters, data %s per structure, %d training structures (%d with augmentation '%s', "
             "%d steps per epoch), %d validation", config.model.name, n_params, "×".join(map(str, rep.shape)),
             len(train_set), len(augmented), config.augment.permute, loader.steps_per_epoch, len(val_set))
    val = val_set[: min(len(val_set), t.batch_size)]
    val_x0 = _encode(rep, **_arrays(val, dataset_space_groups(config, val)))

    def step(state, batch, epoch, index):
        return train_step(state, _encode(rep, **batch), cascade, optimizer, t.ema_decay)

    def evaluate(state, epoch):
        key = jax.random.PRNGKey(config.seed + 1)
        losses = eval_losses(state.ema_params, val_x0, key, cascade)
        frac, _, _ = _decode(rep, denoised_estimate(state.ema_params, val_x0, key, cascade))
        return state, {"val_loss": losses["loss"], "val_x0_rms": coordinate_rms(frac, val.frac, val.lattice).mean()}

    def sample_task(state, member, n, key):
        frac, species, valid = generate(state.ema_params, rep, cascade, key, n, config.sample)
        return Crystals(frac, jnp.broadcast_to(jnp.asarray(val.lattice[:1]), (n, 3, 3)), species)

    columns = ("loss", *(("base", "sr") if cascade.sr is not None else ("base",)))
    task = TrainingTask(name=config.model.name, state=state, loaders=[loader], step=step, members=[{}],
                        evaluate=evaluate, eval_columns=("val_loss", "val_x0_rms"),
                        monitor=lambda values: float(np.mean(values["val_loss"])), sample=sample_task,
                        epoch_columns=lambda state, epoch: {"lr": state.opt_state.hyperparams["learning_rate"]},
                        loss_column="loss",
                        panels=(Panel("noise-regression loss", (*columns, "val_loss"), True),
                                Panel(f"validation x̂_0 at t = {DENOISING_PROBE_TIME}: coordinate RMS (Å)",
                                      ("val_x0_rms",), True)))
    train_loop(task, t, run)


# ------------------------------------------------------------------------------------------ sampling
def generate(params, rep: Representation, cascade: Cascade, key, n_structures: int, sampling: SampleConfig):
    """(frac (n, N, 3), species (n, N), valid (n,)) of ``n_structures`` samples."""
    x = sample_cascade(params, key, cascade, (n_structures, *rep.shape), sampling.n_steps,
                       sampling.dynamic_threshold)
    return _decode(rep, x)


def sample(run: RunDir, n: int, out: Path, seed: int = 0, member: int = 0, checkpoint: str = "latest",
           batch_size: int | None = None, **options) -> Path:
    """Write the valid ones of ``n`` generated structures to ``out`` (see the module docstring); ``out`` is
    empty when every structure failed. Each frame's ``id`` is its index among the ``n`` generated."""
    config = load_config(run.config_path, config_class=Config)
    if member != 0:
        raise DismaxInputError(f"--member {member}: run '{run.path}' has a single {config.model.name} model")
    train_set, val_set = load_data(config.data)
    if not 0 <= config.sample.reference_index < len(val_set):
        raise DismaxConfigError(f"config key 'sample.reference_index' is {config.sample.reference_index}; the "
                                f"validation set has {len(val_set)} structures")
    rep, cascade, _, like = build(config, train_set, dataset_space_groups(config, train_set), abstract=True)
    state, _ = load_run_state(run, like, checkpoint)
    params = state.ema_params if config.sample.use_ema else state.params
    reference = val_set[config.sample.reference_index]
    chunk = batch_size or config.sample.batch_size
    key = jax.random.PRNGKey(seed)
    order = training_order(train_set.species)
    out = Path(out)
    n_chunks = math.ceil(n / chunk)

    def write_chunk(i, path):
        keep = min(chunk, n - i * chunk)
        frac, species, valid = generate(params, rep, cascade, jax.random.fold_in(key, i * chunk), chunk,
                                        config.sample)
        valid = np.asarray(valid)[:keep]
        frac, species = np.asarray(frac)[:keep], np.asarray(species)[:keep]
        accuracy = [] if order is None else species_accuracy(species, order).round(6).tolist()
        atomic_write_text(_accuracy_path(out, i, n_chunks), json.dumps(accuracy))
        frac, species = frac[valid], species[valid]
        ids = i * chunk + np.flatnonzero(valid)
        if len(frac):
            write_extxyz(Crystals(frac, np.repeat(reference.lattice, len(frac), 0), species), path,
                         info=[{"id": int(k)} for k in ids])
        else:
            atomic_write_text(path, "")  # every structure of this chunk failed

    write_in_parts(out, n_chunks, write_chunk, desc=f"sampling {config.model.name}")
    written = written_ids(out)
    failed = sorted(set(range(n)) - set(written))
    accuracy_paths = [_accuracy_path(out, i, n_chunks) for i in range(n_chunks)]
    # parts written before the diagnostic existed have no accuracy file: then the summary has none
    accuracy = [a for path in accuracy_paths for a in json.loads(path.read_text())] \
        if all(path.is_file() for path in accuracy_paths) else []
    diagnostics = {"species_accuracy": float(np.mean(accuracy)) if accuracy else None,
                   "species_accuracy_per_structure": accuracy if accuracy else None}
    if is_primary():
        write_sample_summary(out, n, failed, "decoded composition differs from the training data", diagnostics)
    barrier(f"summary of {out}")
    if is_primary():
        for path in accuracy_paths:
            path.unlink(missing_ok=True)
    log.info("%s: %d of %d structures failed (wrong composition); %d written to %s; species accuracy %s (fraction "
             "of atoms decoded to the species of the training order)", config.model.name, len(failed), n,
             len(written), out, diagnostics["species_accuracy"])
    return out


def training_order(species: np.ndarray) -> np.ndarray | None:
    """(N,) the species of each atom index shared by every training structure (species (B, N)), or None when
    the atom order differs between structures (e.g. the alloys), where no per-atom species is fixed."""
    species = np.asarray(species)
    return species[0] if np.all(species == species[:1]) else None


def species_accuracy(species: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(B,) fraction of the atoms of each decoded structure (species (B, N)) whose species equals that of the
    same atom in the training order ``reference`` (N,; :func:`training_order`). A wrong composition fails a
    structure, so % failed alone hides how close a model is to decoding."""
    return np.mean(np.asarray(species) == np.asarray(reference)[None], axis=1)


def _accuracy_path(out: Path, part: int, n_parts: int) -> Path:
    """Where chunk ``part`` of the sampled file ``out`` keeps its structures' species accuracy until the
    summary is written (beside the chunk's part file, so an interrupted sampling resumes with it)."""
    return out.parent / f".{out.name}.species-accuracy{part:05d}-of-{n_parts:05d}.json"


def written_ids(path: Path) -> list[int]:
    """The ``id`` of every frame of a sampled extxyz file (none for an empty file)."""
    if Path(path).stat().st_size == 0:
        return []
    return [int(info["id"]) for info in read_structure_set(path, with_info=True)[1]]
