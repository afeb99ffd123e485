"""CryinGAN trainer: ``python -m dismax.train --config configs/cryingan_*.yaml`` and sampling.

Trains an ensemble of S seeds × M distance weights (a single model when both lists have one entry) in
one jitted, vmapped step per batch. Per epoch it logs the reference's losses.csv columns for every
member to ``metrics.csv`` and redraws ``plots/losses.png``; every ``sample_every`` epochs it writes
``samples/epochNNNNNN_memberM.extxyz`` and logs the mean number of atom pairs closer than
``close_pair_cutoff`` Å per generated structure; it checkpoints every ``checkpoint_every`` epochs and
resumes from the latest checkpoint with identical results (data order and noise depend only on the
seeds and the epoch/step).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dismax.data.registry import dataset_files
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.gan.steps import (GanSetup, ensemble_sampler, ensemble_step_fn, generate, init_ensemble,
                              member_state)
from dismax.runs import RunDir, atomic_write, atomic_write_text, log, progress
from dismax.structures import Crystals, sort_into_blocks, species_blocks

TEMPLATE_FILE = "cryingan_template.json"
METRIC_COLUMNS = ("distance_dis", "cost_dis", "cost_gen", "D_real", "D_fake", "D_dist_real", "D_dist_fake")


# -------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and losses (spec cryingan.md §2–4, §7, §11)."""

    name: str = "cryingan"
    latent_dim: int = 64
    gen_channels: int = 128
    bn_eps: float = 0.8  # the reference's BatchNorm eps; 1e-5 is the usual value
    n_neighbors: int = 6
    w_dist: float = 0.1  # λ: weight of the bond-distance critic
    critics: Literal["separate", "combined"] = "separate"  # combined = CryinGAN-comb
    use_distance: bool = True  # False = CryinGAN λ = 0 (coordinate critic only)
    coord_pooling: Literal["mean", "max", "mix"] = "mean"
    dist_pooling: Literal["mean", "max", "mix"] = "mean"
    gp_weight: float = 10.0
    gp_on: Literal["sum", "mean"] = "sum"  # sum of the 10 critic outputs, as the reference


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training structures: a registered dataset, or an extxyz file when ``train_file`` is set."""

    dataset: str = "alloy_300K_narrow"
    size: str = "small"
    dataset_seed: int = 0
    train_file: Optional[str] = None
    augmentation: Literal["none", "online", "offline"] = "none"
    translation_grid: int = 4  # alloy: translations (i, j, k) / 4 map FCC sites onto FCC sites
    max_structures: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    epochs: int = 1500
    gen_int: int = 5
    gen_cadence: Literal["epoch", "global"] = "epoch"  # epoch: batch index restarts every epoch
    drop_last: bool = True  # False keeps the last partial batch (one more compiled shape)
    lr_gen: float = 5e-5
    lr_coord: float = 5e-5
    lr_dist: float = 5e-5
    beta1: float = 0.5
    beta2: float = 0.999
    lr_step_size: int = 100_000  # epochs between learning-rate decays
    lr_gamma: float = 0.95
    checkpoint_every: int = 10  # epochs
    keep_checkpoints: int = 3
    sample_every: int = 10  # epochs
    n_save: int = 100
    close_pair_cutoff: float = 1.5  # Å
    max_minutes: Optional[float] = None  # stop (with a checkpoint) at the first epoch end past this


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Members are all (seed, w_dist) pairs; empty lists mean (seed,) and (model.w_dist,)."""

    seeds: tuple[int, ...] = ()
    w_dists: tuple[float, ...] = ()
    independent_data: bool = False  # each member its own data order (from its seed)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    seed: int = 0


def members(config: Config) -> list[tuple[int, float]]:
    """(seed, w_dist) of every ensemble member, seed-major."""
    seeds = config.ensemble.seeds or (config.seed,)
    w_dists = config.ensemble.w_dists or (config.model.w_dist,)
    return [(int(s), float(w)) for s, w in itertools.product(seeds, w_dists)]


def make_setup(config: Config, counts, lattice) -> GanSetup:
    m, t = config.model, config.train
    return GanSetup(
        counts=tuple(int(c) for c in counts), lattice=tuple(tuple(float(v) for v in row) for row in lattice),
        latent_dim=m.latent_dim, gen_channels=m.gen_channels, bn_eps=m.bn_eps, n_neighbors=m.n_neighbors,
        critics=m.critics, use_distance=m.use_distance, coord_pooling=m.coord_pooling,
        dist_pooling=m.dist_pooling, gp_weight=m.gp_weight, gp_on=m.gp_on, lr_gen=t.lr_gen,
        lr_coord=t.lr_coord, lr_dist=t.lr_dist, beta1=t.beta1, beta2=t.beta2,
    )


# ---------------------------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class TrainingData:
    """Base structures in species-block order, their bond distances and the translation set."""

    frac: np.ndarray  # (S, N, 3) in [0, 1)
    distances: np.ndarray  # (S, N, K) Å; invariant under the translations
    lattice: np.ndarray  # (3, 3)
    elements: tuple[int, ...]
    counts: tuple[int, ...]
    translations: np.ndarray  # (T, 3) fractional shifts, the zero shift first
    source: str


def load_training_data(config: Config, path: Path | None = None) -> TrainingData:
    """Read, validate (same lattice, same composition), sort into species blocks, compute distances."""
    from dismax.data.loader import cubic_translations, read_training_structures
    from dismax.gan.features import check_search_radius

    path = Path(path) if path is not None else dataset_files(
        config.data.dataset, config.data.size, config.data.dataset_seed, config.data.train_file)[0]
    crystals = read_training_structures(path)
    if config.data.max_structures is not None:
        crystals = crystals[: config.data.max_structures]
    lattice = np.asarray(crystals.lattice, np.float64)
    differs = np.abs(lattice - lattice[0]).max(axis=(1, 2)) > 1e-6
    if differs.any():
        raise DismaxInputError(f"{path}: structure {int(np.argmax(differs))} has a different lattice than structure 0;"
                               " CryinGAN needs one fixed lattice")
    blocks = species_blocks(crystals)
    sorted_crystals, _ = sort_into_blocks(crystals, blocks)
    frac = np.asarray(sorted_crystals.frac, np.float32)
    lattice0 = np.asarray(lattice[0], np.float32)
    translations = (cubic_translations((config.data.translation_grid,) * 3).astype(np.float32)
                    if config.data.augmentation != "none" else np.zeros((1, 3), np.float32))
    data = TrainingData(frac, np.zeros(frac.shape[:2] + (0,), np.float32), lattice0, blocks.elements,
                        blocks.counts, translations, str(path))
    distance_fn = bond_distances_fn(data, config)
    distances = np.concatenate([np.asarray(distance_fn(frac[i:i + 256])) for i in range(0, len(frac), 256)])
    check_search_radius(distances, lattice0, str(path))
    return dataclasses.replace(data, distances=distances)


def bond_distances_fn(data: TrainingData, config: Config):
    """Jitted (B, N, 3) fractional → (B, N, K) bond distances on the training lattice."""
    from dismax.gan.features import bond_distances

    return jax.jit(lambda frac: bond_distances(frac, data.lattice, config.model.n_neighbors))


def epoch_batches(data: TrainingData, config: Config, epoch: int, order_seed: int):
    """Index pairs (structure, translation) of every batch of ``epoch``: a list of (B,) array pairs.

    ``offline`` augmentation enumerates every (structure, translation) pair once per epoch (the ×64
    expanded data set); ``online`` draws one random translation per structure and epoch.
    """
    rng = np.random.default_rng([order_seed, epoch])
    n_struct, n_trans = len(data.frac), len(data.translations)
    if config.data.augmentation == "offline":
        items = rng.permutation(n_struct * n_trans)
        structure, translation = items // n_trans, items % n_trans
    else:
        structure = rng.permutation(n_struct)
        translation = (rng.integers(0, n_trans, n_struct) if config.data.augmentation == "online"
                       else np.zeros(n_struct, np.int64))
    size = config.train.batch_size
    n_batches = len(structure) // size if config.train.drop_last else math.ceil(len(structure) / size)
    return [(structure[i * size:(i + 1) * size], translation[i * size:(i + 1) * size]) for i in range(n_batches)]


def assemble(data: TrainingData, structure: np.ndarray, translation: np.ndarray):
    """Real coordinates (B, N, 3) wrapped into [0, 1) and bond distances (B, N, K)."""
    frac = (data.frac[structure] + data.translations[translation][:, None, :]) % 1.0
    frac = np.where(frac >= 1.0, 0.0, frac).astype(np.float32)
    return frac, data.distances[structure]


def batches_per_epoch(data: TrainingData, config: Config) -> int:
    return len(epoch_batches(data, config, 0, 0))


# ------------------------------------------------------------------------------------------ training
def close_pair_counts(frac: jax.Array, lattice: np.ndarray, cutoff: float) -> np.ndarray:
    """Number of atom pairs (minimum image) closer than ``cutoff`` Å in every structure, (B,)."""
    from dismax.geometry import pairwise_minimum_image_distances

    lattice = jnp.broadcast_to(jnp.asarray(lattice, frac.dtype), frac.shape[:1] + (3, 3))
    distances = pairwise_minimum_image_distances(frac, lattice)
    n = frac.shape[1]
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)
    return np.asarray(jnp.sum((distances < cutoff) & upper, axis=(1, 2)))


def _write_template(run: RunDir, data: TrainingData, config: Config) -> None:
    template = {"lattice": data.lattice.tolist(), "elements": list(data.elements), "counts": list(data.counts),
                "members": [list(m) for m in members(config)], "source": data.source}
    atomic_write_text(run.path / TEMPLATE_FILE, json.dumps(template, indent=1))


def _read_template(run: RunDir) -> dict:
    path = run.path / TEMPLATE_FILE
    if not path.is_file():
        raise DismaxInputError(f"{path} is missing; '{run.path}' is not a CryinGAN run directory")
    return json.loads(path.read_text())


def _crystals(frac: np.ndarray, template: dict) -> Crystals:
    n = len(frac)
    species = np.repeat(np.asarray(template["elements"], np.int32), template["counts"])
    return Crystals(np.asarray(frac, np.float64) % 1.0, np.broadcast_to(np.asarray(template["lattice"]), (n, 3, 3)),
                    np.broadcast_to(species, (n, len(species))))


def _plot_losses(run: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.read_metrics()
    if not rows:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for m in sorted({int(r["member"]) for r in rows}):
        mine = [r for r in rows if int(r["member"]) == m]
        epochs = [r["epoch"] for r in mine]
        label = f"seed {int(mine[0]['seed'])}, λ={mine[0]['w_dist']:g}"
        for ax, key in zip(axes[:2], ("distance_dis", "cost_gen")):
            ax.plot(epochs, [r[key] for r in mine], label=label, lw=1)
        sampled = [(r["epoch"], r["close_pairs"]) for r in mine if np.isfinite(r["close_pairs"])]
        if sampled:
            axes[2].plot(*zip(*sampled), marker="o", ms=3, label=label, lw=1)
    for ax, title in zip(axes, ("Wasserstein estimate", "generator cost", "pairs < cutoff per structure")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(run.plots / "losses.png", lambda handle: fig.savefig(handle, format="png", dpi=90), binary=True)
    plt.close(fig)


def train(config: Config, run: RunDir) -> None:
    """Train (or resume) the ensemble of ``config`` in ``run``; see the module docstring."""
    from dismax.checkpoint import Checkpointer
    from dismax.io import write_extxyz

    run.create()
    t_cfg = config.train
    if t_cfg.batch_size < 1 or t_cfg.gen_int < 1:
        raise DismaxConfigError("train.batch_size and train.gen_int must be positive")
    data = load_training_data(config)
    if len(data.frac) < t_cfg.batch_size and t_cfg.drop_last:
        raise DismaxInputError(f"{data.source}: {len(data.frac)} structures are fewer than one batch of "
                               f"{t_cfg.batch_size}; lower train.batch_size or set train.drop_last=false")
    _write_template(run, data, config)
    setup = make_setup(config, data.counts, data.lattice)
    member_list = members(config)
    seeds = [s for s, _ in member_list]
    log.info("CryinGAN: %d structures of %d atoms %s, %d batches/epoch, %d member(s) (seed, λ) = %s",
             len(data.frac), setup.n_atoms, dict(zip(data.elements, data.counts)),
             batches_per_epoch(data, config), len(member_list), member_list)
    state = init_ensemble(setup, seeds, [w for _, w in member_list])
    checkpointer = Checkpointer(run.checkpoints, keep=t_cfg.keep_checkpoints)
    start_epoch = 0
    restored = checkpointer.restore(state)
    if restored is not None:
        _, state, meta = restored
        start_epoch = int(meta["epoch"])
        run.truncate_metrics(lambda row: row["epoch"] < start_epoch)
        log.info("resumed from the checkpoint after epoch %d", start_epoch - 1)
    independent = config.ensemble.independent_data and len(member_list) > 1
    steps = {flag: ensemble_step_fn(setup, flag, independent) for flag in (False, True)}
    sampler = ensemble_sampler(setup, t_cfg.n_save)
    n_batches = batches_per_epoch(data, config)
    started = time.monotonic()
    bar = progress(range(start_epoch, t_cfg.epochs), total=t_cfg.epochs, desc="CryinGAN epochs", initial=start_epoch)
    for epoch in bar:
        epoch_start = time.monotonic()
        lr_scale = float(t_cfg.lr_gamma ** (epoch // t_cfg.lr_step_size))
        orders = ([epoch_batches(data, config, epoch, s) for s in seeds] if independent
                  else [epoch_batches(data, config, epoch, config.seed)])
        records = []
        for i in range(len(orders[0])):
            parts = [assemble(data, *order[i]) for order in orders]
            coords = np.stack([p[0] for p in parts]) if independent else parts[0][0]
            dists = np.stack([p[1] for p in parts]) if independent else parts[0][1]
            counter = i if t_cfg.gen_cadence == "epoch" else epoch * n_batches + i
            update_generator = counter % t_cfg.gen_int == 0
            state, metrics = steps[update_generator](state, coords, dists, jnp.float32(lr_scale))
            records.append((metrics, len(parts[0][0])))
        row_values = _epoch_means(jax.device_get(records))
        close = np.full(len(member_list), np.nan)
        if t_cfg.sample_every > 0 and (epoch % t_cfg.sample_every == 0 or epoch == t_cfg.epochs - 1):
            frac = np.asarray(sampler(state, jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)))
            template = _read_template(run)
            for m in range(len(member_list)):
                close[m] = close_pair_counts(jnp.asarray(frac[m]), data.lattice, t_cfg.close_pair_cutoff).mean()
                write_extxyz(_crystals(frac[m], template), run.samples / f"epoch{epoch:06d}_member{m}.extxyz")
        seconds = time.monotonic() - epoch_start
        for m, (seed, w) in enumerate(member_list):
            row = {"epoch": epoch, "member": m, "seed": seed, "w_dist": w}
            row.update({key: float(row_values[key][m]) for key in METRIC_COLUMNS})
            row.update(lr_gen=t_cfg.lr_gen * lr_scale, close_pairs=float(close[m]), seconds=round(seconds, 3))
            run.append_metrics(row)
        bar.set_postfix(W=f"{float(np.mean(row_values['distance_dis'])):.4f}",
                        close=f"{float(np.nanmean(close)):.2f}" if np.isfinite(close).any() else "-")
        last = epoch == t_cfg.epochs - 1
        out_of_time = t_cfg.max_minutes is not None and time.monotonic() - started > 60 * t_cfg.max_minutes
        if last or out_of_time or (epoch + 1) % t_cfg.checkpoint_every == 0:
            checkpointer.save(epoch + 1, state, meta={"epoch": epoch + 1},
                              metric=float(np.mean(row_values["distance_dis"])))
            _plot_losses(run)
        if out_of_time and not last:
            log.info("time budget of %.1f min reached after epoch %d; rerun the command to continue",
                     t_cfg.max_minutes, epoch)
            break
    checkpointer.close()


def _epoch_means(records) -> dict:
    """Batch-size-weighted means per member; cost_gen over the batches that updated the generator."""
    sums, weights, gen_sum, gen_weight = {}, 0.0, 0.0, 0.0
    for metrics, size in records:
        for key in METRIC_COLUMNS:
            if key != "cost_gen":
                sums[key] = sums.get(key, 0.0) + size * np.asarray(metrics[key], np.float64)
        weights += size
        if "cost_gen" in metrics:
            gen_sum = gen_sum + size * np.asarray(metrics["cost_gen"], np.float64)
            gen_weight += size
    means = {key: value / weights for key, value in sums.items()}
    means["cost_gen"] = gen_sum / gen_weight if gen_weight else np.full_like(means["cost_dis"], np.nan)
    return means


# ------------------------------------------------------------------------------------------ sampling
def restore_state(run: RunDir, config: Config, checkpoint: str = "latest"):
    """(setup, template, ensemble state) of a trained run."""
    from dismax.checkpoint import Checkpointer

    template = _read_template(run)
    setup = make_setup(config, template["counts"], template["lattice"])
    member_list = [tuple(m) for m in template["members"]]
    like = jax.eval_shape(lambda: init_ensemble(setup, [s for s, _ in member_list], [w for _, w in member_list]))
    checkpointer = Checkpointer(run.checkpoints)
    restored = checkpointer.restore(like) if checkpoint == "latest" else checkpointer.restore_best(like)
    checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"run directory '{run.path}' has no {checkpoint} checkpoint")
    return setup, template, restored[1]


def sample(run: RunDir, n: int, out: Path, seed: int = 0, member: int = 0, checkpoint: str = "latest",
           batch_size: int = 1000) -> Path:
    """Write ``n`` generated structures of ensemble member ``member`` to the extxyz file ``out``.

    Structures have the training lattice and its species blocks (elements in order of first appearance
    in the training file, each element's atoms contiguous, as the generator was trained); they are
    generated and written in batches of ``batch_size`` so memory does not grow with ``n``.
    """
    from dismax.config import load_config
    from dismax.io import write_extxyz_frames

    config = load_config(run.config_path, config_class=Config)
    setup, template, state = restore_state(run, config, checkpoint)
    n_members = len(template["members"])
    if not 0 <= member < n_members:
        raise DismaxInputError(f"--member {member} is out of range; run '{run.path}' has {n_members} member(s)")
    one = member_state(state, member)
    generate_batch = jax.jit(lambda s, k: generate(setup, s, k, batch_size))
    out = Path(out)

    def write(handle):
        for index, start in enumerate(progress(range(0, n, batch_size), desc="generating")):
            frac = np.asarray(generate_batch(one, jax.random.fold_in(jax.random.PRNGKey(seed), index)))
            count = min(batch_size, n - start)
            write_extxyz_frames(handle, _crystals(frac[:count], template), target=out)

    atomic_write(out, write)
    return out

