"""Trainer of the NequIP-class potential (``model.name: potential``) on energies and forces.

Data: extxyz frames with ``energy`` and per-atom ``forces`` (ASE conventions), from ``data.train_file``
(and ``data.val_file``; without it a ``data.val_fraction`` of the training frames is held out, chosen by
the seed) or a registered dataset whose frames carry them. All frames share one atom count, so every batch
has static shapes (one compiled step). Before training: the species present, the per-species reference
energies by least squares on the composition, the force RMS as the energy scale, and each frame's
neighbour table (padded to one capacity K; frames are fixed, so the tables are exact) are computed and
``potential.json`` is written (:mod:`dismax.potentials.fitted`).

Loss per batch: ``w_E · mean((ΔE / N)²) + w_F · mean_atoms(|ΔF|²)`` (eV², eV²/Å²), forces F = −∂E/∂r
through the fractional route; Adam with a cosine learning-rate decay and gradient clipping; parameter
EMA. The shared loop (:mod:`dismax.training`) runs epochs, checkpoints, resume and ``metrics.csv``: every
``val_every`` epochs the validation loss and MAEs of energy (meV/atom) and force components (meV/Å) with
the EMA parameters; ``best/`` keeps the lowest validation loss; ``plots/losses.png`` shows them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.data.loader import BatchLoader
from dismax.data.registry import dataset_files
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import read_labelled_extxyz
from dismax.potentials.fitted import TrainState, initial_state, make_optimizer, write_potential_file
from dismax.potentials.nequip import (LearnedPotential, NetworkConfig, energy_and_forces_one, neighbour_tables,
                                      table_vectors)
from dismax.runs import RunDir, exclusive_lock, log
from dismax.structures import Crystals
from dismax.training import LoopConfig, Panel, TrainingTask, check_data_source, check_loop_config, train_loop

TABLE_CHUNK = 64  # frames per neighbour-table build


@dataclass(frozen=True)
class ModelConfig:
    name: str = "potential"
    network: NetworkConfig = NetworkConfig()


@dataclass(frozen=True)
class DataConfig:
    """Labelled extxyz files, or a registered dataset (``dataset``, ``size``, ``dataset_seed``)."""

    dataset: str = "a_si"
    size: str = "small"
    dataset_seed: int = 0
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    val_fraction: float = 0.2
    max_train: Optional[int] = None


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Loop keys plus the loss weights (energy per atom, forces), Adam, the cosine decay and the EMA."""

    epochs: int = 100
    batch_size: int = 4
    val_every: int = 1
    checkpoint_every: int = 5
    lr: float = 5e-3
    final_lr_fraction: float = 0.02
    clip_norm: float = 10.0
    energy_weight: float = 1.0
    force_weight: float = 1.0
    ema_decay: float = 0.99


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0


def check(config: Config) -> None:
    """Every config error, before anything is written."""
    check_loop_config(config.train)
    n = config.model.network
    if not n.cutoff > 0 or n.n_layers < 1 or not 0 <= n.l_max <= 3 or n.n_radial < 1 or n.radial_hidden < 1:
        raise DismaxConfigError("config keys 'model.network.*' need cutoff > 0, n_layers >= 1, 0 <= l_max <= 3, "
                                "n_radial >= 1 and radial_hidden >= 1")
    t = config.train
    if t.lr <= 0 or t.energy_weight < 0 or t.force_weight < 0 or t.energy_weight + t.force_weight == 0:
        raise DismaxConfigError("config keys 'train.lr' must be > 0 and 'train.energy_weight'/'train.force_weight' "
                                ">= 0, not both 0")
    if not 0 < config.data.val_fraction < 1:
        raise DismaxConfigError(f"config key 'data.val_fraction' is {config.data.val_fraction}; it must be in (0, 1)")
    d = config.data
    check_data_source(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    if d.train_file:  # explicit files: every data error before the run directory is written
        train_frames, val_frames = load_frames(config)
        check_frames(config, train_frames, val_frames)


def check_frames(config: Config, train_frames, val_frames) -> tuple[int, ...]:
    """The species of the training frames; errors for validation elements unseen in training and for a
    batch larger than the training set."""
    species = tuple(int(z) for z in np.unique(np.asarray(train_frames[0].species)))
    LearnedPotential(config.model.network, species, None, np.zeros(len(species)), 1.0, name="the training set") \
        .check_species(val_frames[0].species, what="validation frame")
    if config.train.batch_size > len(train_frames[1]):
        raise DismaxConfigError(f"config key 'train.batch_size' is {config.train.batch_size} but there are only "
                                f"{len(train_frames[1])} training frames")
    return species


# ---------------------------------------------------------------------------------------------- data
def load_frames(config: Config):
    """(train, val) labelled frames, each (Crystals, energies (M,), forces (M, N, 3))."""
    d = config.data
    train_path, val_path = dataset_files(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    train = read_labelled_extxyz(train_path)
    if d.train_file and not d.val_file:
        order = np.random.default_rng(config.seed).permutation(len(train[1]))
        n_val = max(1, int(round(d.val_fraction * len(order))))
        if n_val >= len(order):
            raise DismaxInputError(f"'{train_path}' has {len(order)} frames: too few to hold out a validation set")
        val = _select(train, np.sort(order[:n_val]))
        train = _select(train, np.sort(order[n_val:]))
    else:
        val = read_labelled_extxyz(val_path)
        if val[0].n_atoms != train[0].n_atoms:
            raise DismaxInputError(f"'{val_path}' has {val[0].n_atoms} atoms per frame but '{train_path}' has "
                                   f"{train[0].n_atoms}; the potential trainer needs one atom count")
    if d.max_train:
        train = _select(train, np.arange(min(d.max_train, len(train[1]))))
    return train, val


def _select(frames, index):
    crystals, energies, forces = frames
    return crystals[index], energies[index], forces[index]


def reference_energies(crystals: Crystals, energies: np.ndarray, species: tuple[int, ...]) -> np.ndarray:
    """Per-species reference energies (S,) in eV: least squares of the frame energies on the composition."""
    counts = np.stack([(np.asarray(crystals.species) == z).sum(axis=1) for z in species], axis=1).astype(float)
    return np.linalg.lstsq(counts, np.asarray(energies, float), rcond=None)[0]


def frame_arrays(frames, cutoff: float, capacity: int | None = None) -> dict:
    """The loader's data: frac, lattice, species, energy, forces and neighbour tables (indices, images) of
    every frame, float32/int32, tables padded to one capacity K (at least ``capacity``)."""
    crystals, energies, forces = frames
    c = crystals.to_numpy()
    tables = [neighbour_tables(c[i:i + TABLE_CHUNK], cutoff) for i in range(0, len(c), TABLE_CHUNK)]
    k = max([t.indices.shape[-1] for t in tables] + [capacity or 0])

    def padded(t):
        extra = k - t.indices.shape[-1]
        return (np.pad(t.indices, ((0, 0), (0, 0), (0, extra)), constant_values=c.n_atoms),
                np.pad(t.images, ((0, 0), (0, 0), (0, extra), (0, 0))))

    indices, images = (np.concatenate(parts) for parts in zip(*(padded(t) for t in tables)))
    return {"frac": np.asarray(c.frac, np.float32), "lattice": np.asarray(c.lattice, np.float32),
            "species": np.asarray(c.species, np.int32), "energy": np.asarray(energies, np.float32),
            "forces": np.asarray(forces, np.float32), "indices": indices.astype(np.int32),
            "images": images.astype(np.int32)}


def mean_neighbours(arrays: dict, cutoff: float) -> float:
    """Mean number of neighbours within ``cutoff`` per atom over the frames (the convolution normaliser)."""
    counts = []
    for frac, lattice, indices, images in zip(arrays["frac"], arrays["lattice"], arrays["indices"], arrays["images"]):
        distances = np.linalg.norm(np.asarray(table_vectors(frac, lattice, indices, images)), axis=-1)
        inside = (distances < cutoff) & (indices < len(frac))
        counts.append(inside.sum(axis=1).mean())
    return float(np.mean(counts))


# ------------------------------------------------------------------------------------ loss and step
def predictions(potential: LearnedPotential, params, batch):
    """Energies (B,) eV and forces (B, N, 3) eV/Å of a batch of frame arrays."""
    return jax.vmap(partial(energy_and_forces_one, potential, params))(
        batch["frac"], batch["lattice"], batch["species"], batch["indices"], batch["images"])


def loss_terms(potential, params, batch, energy_weight: float, force_weight: float):
    """(loss, {"energy_mae" eV/atom, "force_mae" eV/Å per component}) of one batch."""
    energies, forces = predictions(potential, params, batch)
    de = (energies - batch["energy"]) / batch["species"].shape[1]
    df = forces - batch["forces"]
    loss = energy_weight * jnp.mean(de**2) + force_weight * jnp.mean(jnp.sum(df**2, axis=-1))
    return loss, {"energy_mae": jnp.mean(jnp.abs(de)), "force_mae": jnp.mean(jnp.abs(df))}


@partial(jax.jit, static_argnames=("potential", "optimizer", "energy_weight", "force_weight", "ema_decay"),
         donate_argnums=(0,))
def train_step(state: TrainState, batch, *, potential, optimizer, energy_weight, force_weight, ema_decay):
    """One Adam step; returns (state, {"loss", "energy_mae", "force_mae"})."""
    (loss, parts), grads = jax.value_and_grad(
        lambda p: loss_terms(potential, p, batch, energy_weight, force_weight), has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    return TrainState(params, ema, opt_state, state.step + 1), {"loss": loss, **parts}


@partial(jax.jit, static_argnames=("potential",))
def _predict(params, batch, *, potential):
    return predictions(potential, params, batch)


def validation_metrics(potential, params, arrays: dict, batch_size: int, t: TrainConfig) -> dict:
    """Loss and MAEs (energy meV/atom, force components meV/Å) over every validation frame; the last
    batch is completed with the first frames (one compiled shape) and the extra rows dropped."""
    m = len(arrays["energy"])
    order = np.resize(np.arange(m), -(-m // batch_size) * batch_size)
    de, df = [], []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        keep = np.arange(start, start + batch_size) < m
        batch = {k: v[rows] for k, v in arrays.items()}
        e, f = (np.asarray(x, np.float64) for x in _predict(params, batch, potential=potential))
        de.append(((e - batch["energy"]) / batch["species"].shape[1])[keep])
        df.append((f - batch["forces"])[keep])
    de, df = np.concatenate(de), np.concatenate(df)
    loss = t.energy_weight * np.mean(de**2) + t.force_weight * np.mean(np.sum(df**2, axis=-1))
    return {"val_loss": loss, "val_energy_mae_meV_per_atom": 1e3 * np.mean(np.abs(de)),
            "val_force_mae_meV_per_A": 1e3 * np.mean(np.abs(df))}


PANELS = (Panel("loss", ("train_loss", "val_loss"), log_scale=True),
          Panel("energy MAE (meV/atom)", ("train_energy_mae_meV_per_atom", "val_energy_mae_meV_per_atom"),
                log_scale=True),
          Panel("force MAE (meV/Å)", ("train_force_mae_meV_per_A", "val_force_mae_meV_per_A"), log_scale=True))


def make_task(config: Config, run: RunDir) -> TrainingTask:
    """The potential fit as a task of the shared training loop (reads the data, writes potential.json)."""
    train_frames, val_frames = load_frames(config)
    species = check_frames(config, train_frames, val_frames)
    t = config.train
    cutoff = config.model.network.cutoff
    train_arrays = frame_arrays(train_frames, cutoff)
    val_arrays = frame_arrays(val_frames, cutoff, train_arrays["indices"].shape[-1])
    network_config = config.model.network
    if network_config.avg_neighbors is None:
        network_config = dataclasses.replace(network_config, avg_neighbors=mean_neighbours(train_arrays, cutoff))
    shift = reference_energies(train_frames[0], train_frames[1], species)
    scale = float(np.sqrt(np.mean(train_frames[2] ** 2))) or 1.0
    write_potential_file(run.path, network_config, species, shift, scale)
    potential = LearnedPotential(network_config, species, None, shift, scale)
    loader = BatchLoader(train_arrays, t.batch_size, seed=config.seed)
    optimizer = make_optimizer(t.lr, t.epochs * loader.steps_per_epoch, t.final_lr_fraction, t.clip_norm)
    state = initial_state(potential.network, optimizer, jax.random.PRNGKey(config.seed))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("potential: %d parameters, species %s, %d training / %d validation frames of %d atoms, table K=%d, "
             "%.1f neighbours per atom within %.2f Å", n_params, list(species), len(train_frames[1]),
             len(val_frames[1]), train_frames[0].n_atoms, train_arrays["indices"].shape[-1],
             network_config.avg_neighbors, cutoff)
    options = dict(potential=potential, optimizer=optimizer, energy_weight=t.energy_weight,
                   force_weight=t.force_weight, ema_decay=t.ema_decay)

    def step(state, batch, epoch, index):
        state, metrics = train_step(state, batch, **options)
        return state, {"train_loss": metrics["loss"],
                       "train_energy_mae_meV_per_atom": 1e3 * metrics["energy_mae"],
                       "train_force_mae_meV_per_A": 1e3 * metrics["force_mae"]}

    def evaluate(state, epoch):
        return state, validation_metrics(potential, state.ema_params, val_arrays, t.batch_size, t)

    return TrainingTask(
        name="potential", state=state, loaders=[loader], step=step, members=[{"member": 0, "seed": config.seed}],
        evaluate=evaluate, eval_columns=("val_loss", "val_energy_mae_meV_per_atom", "val_force_mae_meV_per_A"),
        monitor=lambda v: float(v["val_loss"][0]) if np.isfinite(v["val_loss"][0]) else None,
        loss_column="train_loss", panels=PANELS)


def train(config: Config, run: RunDir, evaluation=None) -> None:
    """Fit (or resume fitting) the potential of ``config`` in ``run``; see the module docstring."""
    check(config)
    with exclusive_lock(run.path, "run directory"):
        train_loop(make_task(config, run), config.train, run, evaluation)


def sample(run: RunDir, n: int, out, seed: int = 0, **options):
    """A potential does not generate structures."""
    raise DismaxInputError(f"'{run.path}' is a fitted potential, which does not generate structures; use it with "
                           f"python -m dismax.bench relax --potential run:{run.path}")
