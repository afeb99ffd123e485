"""Trainer for the periodic coordinate diffusion model (``model.name: diffusion``).

``train(config, run)``: epochs over shuffled mini-batches of the training set, a jitted train step
(Adam, clipping by value, parameter EMA), validation every ``train.val_every`` epochs with
reduce-on-plateau of the learning rate (DiffCSP: factor 0.6, patience 30, min 1e-4), checkpoints with the
epoch in their meta (a killed run resumes from the newest checkpoint and its metrics.csv is truncated to
match), ``metrics.csv`` rows per epoch and ``plots/losses.png``.

``train.n_seeds`` > 1 trains an ensemble: member k has seed ``seed + k`` (its own initialisation, PRNG
stream, data order, EMA, optimiser state and plateau schedule) and all members take one jit(vmap) step
together, so member k equals a single run with seed ``seed + k``; checkpoints hold every member and
``metrics.csv`` has one row per member and epoch. Each batch is placed on the data mesh
(``dismax.devices``): its batch axis is sharded over the devices when the batch size divides evenly,
parameters and optimiser state are replicated.

``model.lattice_diffusion`` (off by default, as in Dismai-Bench) also diffuses the lattice (DDPM cosine
schedule, DiffCSP) with the loss weight ``model.cost_lattice``; during the first
``train.teacher_forcing_epochs`` epochs the clean lattice is the input and the lattice loss is left out
(Dismai-Bench's teacher forcing; its ``teacher_forcing_max_epoch: E`` compares Lightning's 0-based epoch,
so it teacher-forces E + 1 epochs, i.e. ``teacher_forcing_epochs: E + 1`` here). The plateau scheduler
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


# ---------------------------------------------------------------------------------------------- data
def load_data(config: DataConfig) -> tuple[Crystals, Crystals]:
    """Training and validation sets (numpy Crystals); both must have the same atom count."""
    from dismax.data.loader import read_training_structures
    from dismax.data.registry import dataset_files

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


def _batch(c: Crystals, index) -> tuple:
    return (jnp.asarray(c.frac[index]), jnp.asarray(c.lattice[index]), jnp.asarray(c.species[index]))


def schedule_of(config: Config) -> SigmaSchedule:
    return SigmaSchedule(config.model.sigma_begin, config.model.sigma_end, config.model.n_steps)


def lattice_diffusion_of(config: Config):
    """The static lattice-diffusion settings, or None when the lattice stays clean."""
    from dismax.diffusion.noise import BetaSchedule
    from dismax.diffusion.training import LatticeDiffusion

    if not config.model.lattice_diffusion:
        return None
    return LatticeDiffusion(BetaSchedule(config.model.n_steps), config.model.cost_lattice)


def member_seeds(config: Config) -> list[int]:
    """Seed of every ensemble member: seed, seed + 1, ..."""
    return [config.seed + k for k in range(config.train.n_seeds)]


def _check(config: Config, n_train: int | None = None) -> None:
    """Config errors before training (with ``n_train``, the training-set size) or sampling."""
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


# ------------------------------------------------------------------------------------------ training
def build(config: Config, example: Crystals, abstract: bool = False):
    """(network, optimizer, schedule, initial state) for ``config``; ``example`` supplies the shapes. The
    state has a leading member axis of length ``train.n_seeds``; ``abstract`` gives only its shapes and
    dtypes (a template for restoring a checkpoint)."""
    from dismax.diffusion.training import init_ensemble, make_optimizer

    network = build_denoiser(config.model.denoiser, lattice_head=config.model.lattice_diffusion)
    t = config.train
    optimizer = make_optimizer(t.lr, t.beta1, t.beta2, t.eps, t.clip_value)
    example = tuple(jnp.asarray(a[0]) for a in _batch(example, slice(0, 1)))
    state = init_ensemble(network, optimizer, example, member_seeds(config), abstract)
    return network, optimizer, schedule_of(config), state


def epoch_batches(train_set: Crystals, seeds, epoch: int, batch_size: int):
    """Batches of one epoch, each (frac, lattice, species) with a leading member axis (M, B, ...): member k
    takes the batches of its own permutation ``default_rng([seeds[k], epoch])``, as a single run would."""
    orders = np.stack([np.random.default_rng([seed, epoch]).permutation(len(train_set)) for seed in seeds])
    for b in range(len(train_set) // batch_size):
        yield _batch(train_set, orders[:, b * batch_size:(b + 1) * batch_size])


def batch_placement(batch_size: int, mesh=None):
    """(mesh, sharding) for member-stacked batches (M, B, ...): the batch axis split over the mesh's
    devices, or (mesh, None) with one device or when B does not divide evenly (then everything stays on
    the default device)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from dismax.devices import DATA_AXIS, data_mesh

    mesh = data_mesh() if mesh is None else mesh
    if mesh.devices.size == 1 or batch_size % mesh.devices.size:
        return mesh, None
    return mesh, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def place(state, batch, mesh, sharding):
    """Put ``batch`` on ``sharding`` and replicate ``state`` over ``mesh`` (both unchanged without sharding)."""
    from dismax.devices import replicate

    if sharding is None:
        return state, batch
    return replicate(state, mesh), jax.device_put(batch, sharding)


def validation_losses(params, val: Crystals, config: Config, network, schedule, teacher_forcing: bool) -> dict:
    """Mean validation losses of every member, {"loss", "coord_loss", "lattice_loss"} each (M,). Member k
    uses the fixed keys of seed ``seed + k`` (as a single run with that seed)."""
    from dismax.diffusion.training import ensemble_eval_losses

    size = config.train.batch_size
    seeds = member_seeds(config)
    totals = []
    for i in range(max(1, len(val) // size)):
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s + 1), i) for s in seeds])
        loss, parts = ensemble_eval_losses(params, _batch(val, slice(i * size, (i + 1) * size)), keys,
                                           teacher_forcing, network=network, schedule=schedule,
                                           lattice_diffusion=lattice_diffusion_of(config))
        totals.append({"loss": loss, **parts})
    return {k: np.mean([np.asarray(x[k], np.float64) for x in totals], axis=0) for k in totals[0]}


def _to_checkpoint(state, n_seeds: int):
    """A single run keeps its checkpoints without the member axis (readable by earlier versions)."""
    from dismax.diffusion.training import member_state

    return member_state(state, 0) if n_seeds == 1 else state


def _from_checkpoint(state, n_seeds: int):
    return jax.tree.map(lambda x: np.asarray(x)[None], state) if n_seeds == 1 else state


def restore_state(checkpointer, like_state, n_seeds: int, which: str = "latest"):
    """(step, member-stacked state, meta) of the latest or best checkpoint, or None. The state is restored
    onto the default device whatever devices saved it (training places it again)."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        _to_checkpoint(jax.eval_shape(lambda s: s, like_state), n_seeds))
    restored = checkpointer.restore_best(like) if which == "best" else checkpointer.restore(like)
    if restored is None:
        return None
    step, state, meta = restored
    return step, _from_checkpoint(state, n_seeds), meta


def train(config: Config, run: RunDir) -> None:
    from dismax.checkpoint import Checkpointer
    from dismax.diffusion.training import ensemble_train_step, learning_rates, set_learning_rate

    train_set, val_set = load_data(config.data)
    _check(config, len(train_set))
    network, optimizer, schedule, state = build(config, train_set)
    lattice_diffusion = lattice_diffusion_of(config)
    t = config.train
    seeds = member_seeds(config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params)) // t.n_seeds
    log.info("diffusion: %s denoiser, %d parameters, %d member(s), %s, %d training / %d validation structures of "
             "%d atoms", config.model.denoiser.name, n_params, t.n_seeds,
             "lattice diffusion" if lattice_diffusion else "fixed lattice", len(train_set), len(val_set),
             train_set.n_atoms)
    checkpointer = Checkpointer(run.checkpoints, keep=t.keep_checkpoints)
    plateaus = [{"best": math.inf, "bad_epochs": 0} for _ in seeds]
    start_epoch = 0
    restored = restore_state(checkpointer, state, t.n_seeds)
    if restored is not None:
        _, state, meta = restored
        start_epoch = int(meta["epoch"])
        plateaus = [dict(p) for p in (meta["plateau"] if isinstance(meta["plateau"], list) else [meta["plateau"]])]
        run.truncate_metrics(lambda row: row.get("epoch", 0) <= start_epoch)
        log.info("resumed from epoch %d (step %d)", start_epoch, int(np.asarray(state.step)[0]))
    mesh, sharding = batch_placement(t.batch_size)
    if sharding is not None:
        log.info("batches sharded over %d devices", mesh.devices.size)
    elif mesh.devices.size > 1:
        log.warning("train.batch_size %d does not divide over %d devices; training on one device", t.batch_size,
                    mesh.devices.size)
    step_options = dict(network=network, optimizer=optimizer, schedule=schedule, ema_decay=t.ema_decay,
                        lattice_diffusion=lattice_diffusion)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        started = time.perf_counter()
        teacher_forcing = lattice_diffusion is not None and epoch <= t.teacher_forcing_epochs
        losses = []
        for batch in progress(epoch_batches(train_set, seeds, epoch, t.batch_size),
                              total=len(train_set) // t.batch_size, desc=f"epoch {epoch}/{t.epochs}", leave=False):
            state, batch = place(state, batch, mesh, sharding)
            state, step_losses = ensemble_train_step(state, batch, teacher_forcing, **step_options)
            losses.append(step_losses)
        train_losses = {k: np.mean([np.asarray(x[k]) for x in jax.device_get(losses)], axis=0) for k in losses[0]}
        if not np.all(np.isfinite(train_losses["loss"])):
            raise DismaxInputError(f"training loss became {train_losses['loss'].tolist()} at epoch {epoch}; "
                                   f"lower train.lr")
        nan = np.full(t.n_seeds, np.nan)
        val, val_ema = ({k: nan for k in train_losses}, {k: nan for k in train_losses})
        validate = epoch % t.val_every == 0 or epoch == t.epochs
        if validate:
            val = validation_losses(state.params, val_set, config, network, schedule, teacher_forcing)
            val_ema = validation_losses(state.ema_params, val_set, config, network, schedule, teacher_forcing)
            monitored = val["coord_loss"] if lattice_diffusion else val["loss"]
            lrs = [_plateau_lr(plateaus[m], float(monitored[m]), lr, t)
                   for m, lr in enumerate(learning_rates(state.opt_state))]
            state = dataclasses.replace(state, opt_state=set_learning_rate(state.opt_state, np.asarray(lrs)))
        lrs = learning_rates(state.opt_state)
        seconds = time.perf_counter() - started
        for m, seed in enumerate(seeds):
            row = {"epoch": epoch} | ({"member": m, "seed": seed} if t.n_seeds > 1 else {})
            row |= {"step": int(np.asarray(state.step)[m]), "train_loss": float(train_losses["loss"][m]),
                    "val_loss": float(val["loss"][m]), "val_loss_ema": float(val_ema["loss"][m])}
            if lattice_diffusion:
                row |= {"train_coord_loss": float(train_losses["coord_loss"][m]),
                        "train_lattice_loss": float(train_losses["lattice_loss"][m]),
                        "val_coord_loss": float(val["coord_loss"][m]),
                        "val_lattice_loss": float(val["lattice_loss"][m]), "teacher_forcing": int(teacher_forcing)}
            run.append_metrics(row | {"lr": float(lrs[m]), "seconds": seconds})
        log.info("epoch %d: train %s, val %s (EMA %s), lr %s", epoch, _fmt(train_losses["loss"]), _fmt(val["loss"]),
                 _fmt(val_ema["loss"]), _fmt(lrs, "%.2e"))
        if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
            checkpointer.save(int(np.asarray(state.step)[0]), _to_checkpoint(state, t.n_seeds),
                              meta={"epoch": epoch, "plateau": plateaus},
                              metric=float(np.mean(val_ema["loss"])) if validate else None)
            _plot_losses(run)
    checkpointer.close()


def _fmt(values, pattern: str = "%.4f") -> str:
    return ", ".join(pattern % v for v in np.atleast_1d(values))


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


def _plot_losses(run: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.read_metrics()
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for member in sorted({r.get("member", 0) for r in rows}):
        mine = [r for r in rows if r.get("member", 0) == member]
        suffix = f" (member {member})" if "member" in rows[0] else ""
        ax.plot([r["epoch"] for r in mine], [r["train_loss"] for r in mine], label="train" + suffix, lw=1)
        for key, label in (("val_loss", "validation"), ("val_loss_ema", "validation (EMA)")):
            points = [(r["epoch"], r[key]) for r in mine if isinstance(r[key], float) and np.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label + suffix, lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score-matching loss")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    run.plots.mkdir(parents=True, exist_ok=True)
    fig.savefig(run.plots / "losses.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ sampling
def generate(params, network, schedule, lattice, species, key, config: SampleConfig, n_structures: int,
             lattice_diffusion=None):
    """One chunk with the configured sampler: (frac (n_structures, N, 3), lattices (n_structures, 3, 3));
    the lattices are ``lattice`` repeated unless the model diffuses the lattice."""
    from dismax.diffusion.sampling import annealed_langevin, predictor_corrector, predictor_corrector_lattice

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
    from dismax.checkpoint import Checkpointer
    from dismax.config import load_config
    from dismax.diffusion.training import member_state
    from dismax.io import write_extxyz
    from dismax.runs import atomic_write_text

    config = load_config(run.config_path, config_class=Config)
    if not 0 <= member < config.train.n_seeds:
        raise DismaxInputError(f"--member {member} is out of range; run '{run.path}' has {config.train.n_seeds} "
                               f"member(s)")
    overrides = {k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(SampleConfig)}}
    sample_config = dataclasses.replace(config.sample, **overrides)
    _check(dataclasses.replace(config, sample=sample_config))
    _, val_set = load_data(config.data)
    if not 0 <= sample_config.reference_index < len(val_set):
        raise DismaxConfigError(f"config key 'sample.reference_index' is {sample_config.reference_index}; the "
                                f"validation set has {len(val_set)} structures")
    reference = val_set[sample_config.reference_index]
    network, _, schedule, state = build(config, reference, abstract=True)
    checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep_checkpoints)
    restored = restore_state(checkpointer, state, config.train.n_seeds, checkpoint)
    checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"run directory '{run.path}' has no {checkpoint} checkpoint")
    state = member_state(restored[1], member)
    params = state.ema_params if sample_config.use_ema else state.params
    lattice, species = jnp.asarray(reference.lattice[0]), jnp.asarray(reference.species[0])
    lattice_diffusion = lattice_diffusion_of(config)
    chunk = batch_size or sample_config.batch_size
    out = Path(out)
    n_chunks = math.ceil(n / chunk)
    parts = [out.parent / f".{out.stem}.part{i:05d}-of-{n_chunks:05d}.extxyz" for i in range(n_chunks)]
    key = jax.random.PRNGKey(seed)
    for i in progress(range(n_chunks), desc="sampling chunks"):
        if parts[i].exists():
            continue
        keep = min(chunk, n - i * chunk)
        frac, lattices = generate(params, network, schedule, lattice, species, jax.random.fold_in(key, i),
                                  sample_config, chunk, lattice_diffusion)
        write_extxyz(Crystals(np.asarray(frac)[:keep], np.asarray(lattices)[:keep],
                              np.repeat(reference.species, keep, 0)), parts[i])
    atomic_write_text(out, "".join(p.read_text() for p in parts))
    for p in parts:
        p.unlink()
    return out
