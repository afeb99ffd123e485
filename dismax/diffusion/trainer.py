"""Trainer for the periodic coordinate diffusion model (``model.name: diffusion``).

``train(config, run)``: epochs over shuffled mini-batches of the training set, a jitted train step
(Adam, clipping by value, parameter EMA), validation every ``train.val_every`` epochs with
reduce-on-plateau of the learning rate (DiffCSP: factor 0.6, patience 30, min 1e-4), checkpoints with the
epoch in their meta (a killed run resumes from the newest checkpoint and its metrics.csv is truncated to
match), ``metrics.csv`` rows per epoch and ``plots/losses.png``.

``sample(run, n, out, seed)``: generates n structures with the lattice and species of a reference
structure of the dataset (``sample.reference_index`` in the validation set), in chunks of
``sample.batch_size``; each chunk is written to its own part file as soon as it is done (a rerun skips
finished chunks) and the parts are joined into ``out`` at the end.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
from dismax.diffusion.noise import SigmaSchedule
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.runs import RunDir, log, progress
from dismax.structures import Crystals


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "diffusion"
    denoiser: DenoiserConfig = DenoiserConfig()
    sigma_begin: float = 0.005
    sigma_end: float = 0.1
    n_steps: int = 1000


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
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 4
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_value: float = 0.5
    plateau_factor: float = 0.6
    plateau_patience: int = 30
    min_lr: float = 1e-4
    ema_decay: float = 0.999
    val_every: int = 5
    checkpoint_every: int = 5
    keep_checkpoints: int = 3


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


# ---------------------------------------------------------------------------------------------- data
def load_data(config: DataConfig) -> tuple[Crystals, Crystals]:
    """Training and validation sets (numpy Crystals); both must have the same atom count."""
    from dismax.io import read_extxyz

    from dismax.data.registry import dataset_files

    train_path, val_path = dataset_files(config.dataset, config.size, config.dataset_seed, config.train_file,
                                         config.val_file)
    train, val = read_extxyz(train_path), read_extxyz(val_path)
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


def _batch(c: Crystals, index) -> tuple:
    return (jnp.asarray(c.frac[index]), jnp.asarray(c.lattice[index]), jnp.asarray(c.species[index]))


def schedule_of(config: Config) -> SigmaSchedule:
    return SigmaSchedule(config.model.sigma_begin, config.model.sigma_end, config.model.n_steps)


def _check(config: Config, n_train: int) -> None:
    if config.train.batch_size > n_train:
        raise DismaxConfigError(f"config key 'train.batch_size' is {config.train.batch_size} but the training "
                                f"set has only {n_train} structures")
    if config.sample.sampler not in ("pc", "langevin"):
        raise DismaxConfigError(f"config key 'sample.sampler' is {config.sample.sampler!r}; valid: pc, langevin")


# ------------------------------------------------------------------------------------------ training
def build(config: Config, example: Crystals):
    """(network, optimizer, schedule, initial state) for ``config``; ``example`` supplies the shapes."""
    from dismax.diffusion.training import init_state, make_optimizer

    network = build_denoiser(config.model.denoiser)
    t = config.train
    optimizer = make_optimizer(t.lr, t.beta1, t.beta2, t.eps, t.clip_value)
    state = init_state(network, optimizer, tuple(jnp.asarray(a[0]) for a in _batch(example, slice(0, 1))),
                       jax.random.PRNGKey(config.seed))
    return network, optimizer, schedule_of(config), state


def validation_loss(params, val: Crystals, config: Config, network, schedule) -> float:
    from dismax.diffusion.training import eval_loss

    size = config.train.batch_size
    n_batches = max(1, len(val) // size)
    losses = [float(eval_loss(params, _batch(val, slice(i * size, (i + 1) * size)),
                              jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), i),
                              network=network, schedule=schedule)) for i in range(n_batches)]
    return float(np.mean(losses))


def train(config: Config, run: RunDir) -> None:
    from dismax.checkpoint import Checkpointer
    from dismax.diffusion.training import get_learning_rate, set_learning_rate, train_step

    train_set, val_set = load_data(config.data)
    _check(config, len(train_set))
    network, optimizer, schedule, state = build(config, train_set)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("diffusion: %s denoiser, %d parameters, %d training / %d validation structures of %d atoms",
             config.model.denoiser.name, n_params, len(train_set), len(val_set), train_set.n_atoms)
    t = config.train
    checkpointer = Checkpointer(run.checkpoints, keep=t.keep_checkpoints)
    plateau = {"best": math.inf, "bad_epochs": 0}
    start_epoch = 0
    restored = checkpointer.restore(state)
    if restored is not None:
        _, state, meta = restored
        start_epoch, plateau = int(meta["epoch"]), dict(meta["plateau"])
        run.truncate_metrics(lambda row: row.get("epoch", 0) <= start_epoch)
        log.info("resumed from epoch %d (step %d)", start_epoch, int(state.step))
    n_batches = len(train_set) // t.batch_size
    for epoch in range(start_epoch + 1, t.epochs + 1):
        started = time.perf_counter()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_set))
        losses = []
        for b in progress(range(n_batches), desc=f"epoch {epoch}/{t.epochs}", leave=False):
            state, loss = train_step(state, _batch(train_set, order[b * t.batch_size:(b + 1) * t.batch_size]),
                                     network=network, optimizer=optimizer, schedule=schedule,
                                     ema_decay=t.ema_decay)
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        if not np.isfinite(train_loss):
            raise DismaxInputError(f"training loss became {train_loss} at epoch {epoch}; lower train.lr")
        val_loss = val_loss_ema = float("nan")
        validate = epoch % t.val_every == 0 or epoch == t.epochs
        if validate:
            val_loss = validation_loss(state.params, val_set, config, network, schedule)
            val_loss_ema = validation_loss(state.ema_params, val_set, config, network, schedule)
            state = dataclasses.replace(state, opt_state=_plateau_step(state.opt_state, plateau, val_loss, t,
                                                                       get_learning_rate, set_learning_rate))
        lr = get_learning_rate(state.opt_state)
        run.append_metrics({"epoch": epoch, "step": int(state.step), "train_loss": train_loss, "val_loss": val_loss,
                            "val_loss_ema": val_loss_ema, "lr": lr, "seconds": time.perf_counter() - started})
        log.info("epoch %d: train %.4f, val %.4f (EMA %.4f), lr %.2e", epoch, train_loss, val_loss, val_loss_ema, lr)
        if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
            checkpointer.save(int(state.step), state, meta={"epoch": epoch, "plateau": plateau},
                              metric=val_loss_ema if validate else None)
            _plot_losses(run)
    checkpointer.close()


def _plateau_step(opt_state, plateau: dict, val_loss: float, t: TrainConfig, get_lr, set_lr):
    """Reduce-on-plateau over validation epochs (patience counted in epochs, as in DiffCSP)."""
    if val_loss < plateau["best"]:
        plateau["best"], plateau["bad_epochs"] = val_loss, 0
        return opt_state
    plateau["bad_epochs"] += t.val_every
    if plateau["bad_epochs"] > t.plateau_patience:
        plateau["bad_epochs"] = 0
        return set_lr(opt_state, max(t.min_lr, get_lr(opt_state) * t.plateau_factor))
    return opt_state


def _plot_losses(run: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.read_metrics()
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], label="train", lw=1)
    for key, label in (("val_loss", "validation"), ("val_loss_ema", "validation (EMA)")):
        points = [(r["epoch"], r[key]) for r in rows if isinstance(r[key], float) and np.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=label, lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    run.plots.mkdir(parents=True, exist_ok=True)
    fig.savefig(run.plots / "losses.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ sampling
def generate(params, network, schedule, lattice, species, key, config: SampleConfig, n_structures: int):
    """One chunk of fractional coordinates (n_structures, N, 3) with the configured sampler."""
    from dismax.diffusion.sampling import annealed_langevin, predictor_corrector

    if config.sampler == "pc":
        return predictor_corrector(params, lattice, species, key, network=network, schedule=schedule,
                                   n_steps=config.n_steps, step_lr=config.step_lr, n_structures=n_structures,
                                   reference_compatible=config.reference_compatible)
    return annealed_langevin(params, lattice, species, key, network=network, schedule=schedule,
                             n_levels=config.langevin_levels, steps_per_level=config.langevin_steps_per_level,
                             step_lr=config.langevin_step_lr, n_structures=n_structures)


def sample(run: RunDir, n: int, out: Path, seed: int = 0, member: int = 0, checkpoint: str = "latest",
           batch_size: int | None = None, **options) -> Path:
    """Write ``n`` generated structures to the extxyz file ``out`` (see module docstring)."""
    from dismax.checkpoint import Checkpointer
    from dismax.config import load_config
    from dismax.io import write_extxyz
    from dismax.runs import atomic_write_text

    if member != 0:
        raise DismaxConfigError("the diffusion model trains a single member; use --member 0")
    config = load_config(run.config_path, config_class=Config)
    overrides = {k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(SampleConfig)}}
    sample_config = dataclasses.replace(config.sample, **overrides)
    _, val_set = load_data(config.data)
    if not 0 <= sample_config.reference_index < len(val_set):
        raise DismaxConfigError(f"config key 'sample.reference_index' is {sample_config.reference_index}; the "
                                f"validation set has {len(val_set)} structures")
    reference = val_set[sample_config.reference_index]
    network, _, schedule, state = build(config, reference)
    checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
    restored = checkpointer.restore_best(state) if checkpoint == "best" else checkpointer.restore(state)
    checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"run directory '{run.path}' has no {checkpoint} checkpoint")
    state = restored[1]
    params = state.ema_params if sample_config.use_ema else state.params
    lattice, species = jnp.asarray(reference.lattice[0]), jnp.asarray(reference.species[0])
    chunk = batch_size or sample_config.batch_size
    out = Path(out)
    n_chunks = math.ceil(n / chunk)
    parts = [out.parent / f".{out.stem}.part{i:05d}-of-{n_chunks:05d}.extxyz" for i in range(n_chunks)]
    key = jax.random.PRNGKey(seed)
    for i in progress(range(n_chunks), desc="sampling chunks"):
        if parts[i].exists():
            continue
        keep = min(chunk, n - i * chunk)
        frac = np.asarray(generate(params, network, schedule, lattice, species, jax.random.fold_in(key, i),
                                   sample_config, chunk))[:keep]
        write_extxyz(Crystals(frac, np.repeat(reference.lattice, keep, 0), np.repeat(reference.species, keep, 0)),
                     parts[i])
    atomic_write_text(out, "".join(p.read_text() for p in parts))
    for p in parts:
        p.unlink()
    return out
