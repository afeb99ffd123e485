"""Trainer of the NequIP-class potential (``model.name: potential``) on energies and forces.

Data: extxyz frames with ``energy`` and per-atom ``forces`` (ASE conventions), from ``data.train_file``
(and ``data.val_file``; without it a ``data.val_fraction`` of the training frames is held out, chosen by
the seed) or a registered dataset whose frames carry them. Frames may differ in atom count: each goes to the
smallest size bucket that holds it (``data.buckets``, or chosen from the counts by
:func:`dismax.data.loader.choose_buckets`) and is padded to the bucket's atom count
(:meth:`StructureSet.padded`; padding atoms have species 0, no energy and are nobody's neighbour). A batch
holds frames of one bucket, so the step compiles once per bucket and never again. Before training: the
species present, the per-species reference energies by least squares on the composition, the force RMS as
the energy scale, and each frame's neighbour table (padded to one capacity K per bucket; frames are fixed,
so the tables are exact) are computed and ``potential.json`` is written (:mod:`dismax.potentials.fitted`).

Loss per batch: ``w_E · mean_frames((ΔE / N)²) + w_F · mean_atoms(|ΔF|²)`` (eV², eV²/Å²) with N each frame's
real atom count and the force mean over real atoms only, forces F = −∂E/∂r through the fractional route; Adam with a cosine learning-rate decay and gradient clipping; parameter
EMA. The shared loop (:mod:`dismax.training`) runs epochs, checkpoints, resume and ``metrics.csv``: every
``val_every`` epochs the validation loss and MAEs of energy (meV/atom) and force components (meV/Å) with
the EMA parameters; ``best/`` keeps the lowest validation loss; ``plots/losses.png`` shows them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.data.loader import BucketedLoader, assign_buckets, choose_buckets
from dismax.data.registry import dataset_files
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import read_labelled_set
from dismax.potentials import get_potential
from dismax.potentials.fitted import (TrainState, initial_state, load_exported, make_optimizer,
                                     write_potential_file)
from dismax.potentials.nequip import (LearnedPotential, NetworkConfig, energy_and_forces_one, initial_params,
                                      neighbour_tables, real_atoms, table_vectors)
from dismax.runs import RunDir, exclusive_lock, log
from dismax.structures import Crystals, StructureSet
from dismax.training import LoopConfig, Panel, TrainingTask, check_data_source, check_loop_config, train_loop

TABLE_CHUNK = 64  # frames per neighbour-table build


@dataclass(frozen=True)
class ModelConfig:
    """``initial_potential``: fine-tune a fitted potential (a shipped name such as ``interface_chgnet``,
    ``run:DIR`` or a file written by ``export_potential``, ``*.msgpack``) instead of starting from random
    weights. Its parameters, species, reference energies and scale are kept, so the fit continues the same
    function; ``network`` must equal its hyperparameters (``avg_neighbors`` may be left unset) and the
    training elements must be among its species."""

    name: str = "potential"
    network: NetworkConfig = NetworkConfig()
    initial_potential: Optional[str] = None


@dataclass(frozen=True)
class DataConfig:
    """Labelled extxyz files, or a registered dataset (``dataset``, ``size``, ``dataset_seed``); ``buckets``
    the padded atom counts of the size buckets (default: at most ``max_buckets``, chosen from the counts)."""

    dataset: str = "a_si"
    size: str = "small"
    dataset_seed: int = 0
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    val_fraction: float = 0.2
    max_train: Optional[int] = None
    buckets: Optional[tuple[int, ...]] = None
    max_buckets: int = 4


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
    if config.data.max_buckets < 1 or any(n < 1 for n in config.data.buckets or ()):
        raise DismaxConfigError("config keys 'data.buckets' (atom counts) and 'data.max_buckets' must be >= 1")
    if not 0 < config.data.val_fraction < 1:
        raise DismaxConfigError(f"config key 'data.val_fraction' is {config.data.val_fraction}; it must be in (0, 1)")
    d = config.data
    check_data_source(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    if d.train_file:  # explicit files: every data error before the run directory is written
        train_frames, val_frames = load_frames(config)
        initial_potential(config, check_frames(config, train_frames, val_frames))


def check_frames(config: Config, train_frames: "Frames", val_frames: "Frames") -> tuple[int, ...]:
    """The species of the training frames; errors for validation elements unseen in training, for a batch
    larger than the training set and for frames larger than every bucket."""
    crystals, mask = train_frames.structures.padded()
    species = tuple(int(z) for z in np.unique(np.asarray(crystals.species)[mask]))
    val_crystals, val_mask = val_frames.structures.padded()
    LearnedPotential(config.model.network, species, None, np.zeros(len(species)), 1.0, name="the training set") \
        .check_species(val_crystals.species, what="validation frame", atom_mask=val_mask)
    if config.train.batch_size > len(train_frames.energies):
        raise DismaxConfigError(f"config key 'train.batch_size' is {config.train.batch_size} but there are only "
                                f"{len(train_frames.energies)} training frames")
    bucket_sizes(config, train_frames, val_frames)
    return species


def initial_potential(config: Config, species: tuple[int, ...]) -> LearnedPotential | None:
    """The potential ``model.initial_potential`` names (None without the key), checked against
    ``model.network`` and the training ``species``."""
    name = config.model.initial_potential
    if name is None:
        return None
    start = load_exported(name) if name.endswith(".msgpack") else get_potential(name)
    if not isinstance(start, LearnedPotential):
        raise DismaxConfigError(f"config key 'model.initial_potential' is {name!r}, which is not a fitted potential "
                                "(use a shipped fitted potential, run:DIR or an exported .msgpack file)")
    if dataclasses.replace(config.model.network, avg_neighbors=start.config.avg_neighbors) != start.config:
        raise DismaxConfigError(f"config key 'model.network' is {dataclasses.asdict(config.model.network)} but the "
                                f"initial potential {name!r} has {dataclasses.asdict(start.config)}; fine-tuning "
                                "keeps its network")
    unknown = sorted(set(species) - set(start.species))
    if unknown:
        raise DismaxConfigError(f"the training frames contain Z={unknown}, which the initial potential {name!r} was "
                                f"not fitted on (it knows Z in {list(start.species)})")
    return start


# ---------------------------------------------------------------------------------------------- data
class Frames(NamedTuple):
    """Labelled frames of any atom counts: structures, energies (M,) in eV, forces [(N_m, 3)] in eV/Å."""

    structures: StructureSet
    energies: np.ndarray
    forces: list

    def select(self, index) -> "Frames":
        return Frames(self.structures.select(index), self.energies[index], [self.forces[int(i)] for i in index])


def load_frames(config: Config) -> tuple[Frames, Frames]:
    """(train, val) labelled frames."""
    d = config.data
    train_path, val_path = dataset_files(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    train = Frames(*read_labelled_set(train_path))
    if d.train_file and not d.val_file:
        order = np.random.default_rng(config.seed).permutation(len(train.energies))
        n_val = max(1, int(round(d.val_fraction * len(order))))
        if n_val >= len(order):
            raise DismaxInputError(f"'{train_path}' has {len(order)} frames: too few to hold out a validation set")
        val = train.select(np.sort(order[:n_val]))
        train = train.select(np.sort(order[n_val:]))
    else:
        val = Frames(*read_labelled_set(val_path))
    if d.max_train:
        train = train.select(np.arange(min(d.max_train, len(train.energies))))
    return train, val


def bucket_sizes(config: Config, train: Frames, val: Frames) -> tuple[int, ...]:
    """The padded atom counts of the size buckets: ``data.buckets`` (checked to hold every frame) or
    chosen from the training and validation atom counts."""
    counts = np.concatenate([train.structures.atom_counts, val.structures.atom_counts])
    if config.data.buckets is None:
        return choose_buckets(counts, config.data.max_buckets)
    buckets = tuple(sorted(set(config.data.buckets)))
    if counts.max() > buckets[-1]:
        raise DismaxConfigError(f"config key 'data.buckets' is {list(config.data.buckets)} but a frame has "
                                f"{counts.max()} atoms; the largest bucket must hold the largest frame")
    return buckets


def reference_energies(crystals: Crystals, energies: np.ndarray, species: tuple[int, ...]) -> np.ndarray:
    """Per-species reference energies (S,) in eV: least squares of the frame energies on the composition
    (padding atoms, species 0, count for no species)."""
    counts = np.stack([(np.asarray(crystals.species) == z).sum(axis=1) for z in species], axis=1).astype(float)
    return np.linalg.lstsq(counts, np.asarray(energies, float), rcond=None)[0]


def frame_arrays(frames: Frames, cutoff: float, n_atoms: int | None = None) -> dict:
    """The loader's data for frames padded to ``n_atoms`` (default: the largest count): frac, lattice,
    species (0 for padding), energy, forces (0 for padding) and neighbour tables (indices, images) of every
    frame, float32/int32, tables padded to one capacity K."""
    crystals, mask = frames.structures.padded(n_atoms)
    n_atoms = crystals.n_atoms
    tables = [neighbour_tables(crystals[i:i + TABLE_CHUNK], cutoff, atom_mask=mask[i:i + TABLE_CHUNK])
              for i in range(0, len(crystals), TABLE_CHUNK)]
    forces = np.zeros((len(frames.forces), n_atoms, 3), np.float32)
    for m, frame_forces in enumerate(frames.forces):
        forces[m, :len(frame_forces)] = frame_forces
    arrays = {"frac": np.asarray(crystals.frac, np.float32), "lattice": np.asarray(crystals.lattice, np.float32),
              "species": np.asarray(crystals.species, np.int32), "energy": np.asarray(frames.energies, np.float32),
              "forces": forces}
    k = max(t.indices.shape[-1] for t in tables)
    widened = [padded_tables(t._asdict(), k) for t in tables]
    return arrays | {key: np.concatenate([w[key] for w in widened]) for key in ("indices", "images")}


def padded_tables(arrays: dict, capacity: int) -> dict:
    """``arrays`` with its neighbour tables (indices (M, N, K), images (M, N, K, 3)) widened to ``capacity``
    slots by padding slots (index N, image 0)."""
    indices, images = arrays["indices"], arrays["images"]
    extra = capacity - indices.shape[-1]
    return arrays | {"indices": np.pad(indices, ((0, 0), (0, 0), (0, extra)), constant_values=indices.shape[1])
                     .astype(np.int32), "images": np.pad(images, ((0, 0), (0, 0), (0, extra), (0, 0))).astype(np.int32)}


def bucketed_arrays(splits: Sequence[Frames], buckets: Sequence[int], cutoff: float) -> list[list[dict]]:
    """For every split (train, val, …) the :func:`frame_arrays` of its non-empty buckets, in bucket order;
    a bucket's tables have the same capacity K in every split (one compiled shape per bucket)."""
    per_split = []
    for frames in splits:
        which = assign_buckets(frames.structures.atom_counts, buckets)
        per_split.append([frame_arrays(frames.select(np.flatnonzero(which == b)), cutoff, n) if np.any(which == b)
                          else None for b, n in enumerate(buckets)])
    for b in range(len(buckets)):
        k = max(split[b]["indices"].shape[-1] for split in per_split if split[b] is not None)
        for split in per_split:
            split[b] = None if split[b] is None else padded_tables(split[b], k)
    return [[arrays for arrays in split if arrays is not None] for split in per_split]


def mean_neighbours(buckets: Sequence[dict], cutoff: float) -> float:
    """Mean number of neighbours within ``cutoff`` per real atom over the frames of every bucket (the
    convolution normaliser)."""
    neighbours, atoms = 0, 0
    for arrays in buckets:
        for frac, lattice, indices, images in zip(arrays["frac"], arrays["lattice"], arrays["indices"],
                                                  arrays["images"]):
            distances = np.linalg.norm(np.asarray(table_vectors(frac, lattice, indices, images)), axis=-1)
            neighbours += int(((distances < cutoff) & (indices < len(frac))).sum())
        atoms += int(real_atoms(arrays["species"]).sum())
    return neighbours / atoms


# ------------------------------------------------------------------------------------ loss and step
def predictions(potential: LearnedPotential, params, batch):
    """Energies (B,) eV and forces (B, N, 3) eV/Å of a batch of frame arrays."""
    return jax.vmap(partial(energy_and_forces_one, potential, params))(
        batch["frac"], batch["lattice"], batch["species"], batch["indices"], batch["images"])


def frame_errors(energies, forces, batch):
    """Errors of predicted energies (B,) and forces (B, N, 3) against a batch's labels: energy error per
    real atom (B,) in eV/atom, force errors (B, N, 3) in eV/Å (0 on padding atoms), real-atom mask (B, N)."""
    real = real_atoms(batch["species"])
    de = (energies - batch["energy"]) / real.sum(axis=1)
    return de, (forces - batch["forces"]) * real[..., None], real


def loss_and_maes(de, df, n_atoms, energy_weight: float, force_weight: float):
    """(loss, {"energy_mae" eV/atom, "force_mae" eV/Å per component}) from the per-frame energy errors per
    atom ``de`` (M,) and the force errors ``df`` (…, 3) of ``n_atoms`` real atoms (padding rows zero)."""
    loss = energy_weight * (de**2).mean() + force_weight * (df**2).sum() / n_atoms
    return loss, {"energy_mae": abs(de).mean(), "force_mae": abs(df).sum() / (3 * n_atoms)}


def loss_terms(potential, params, batch, energy_weight: float, force_weight: float):
    """(loss, {"energy_mae" eV/atom, "force_mae" eV/Å per component}) of one batch."""
    de, df, real = frame_errors(*predictions(potential, params, batch), batch)
    return loss_and_maes(de, df, real.sum(), energy_weight, force_weight)


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


def validation_metrics(potential, params, buckets: Sequence[dict], batch_size: int, t: TrainConfig) -> dict:
    """Loss and MAEs (energy meV/atom, force components meV/Å) over every validation frame of every
    bucket, each frame and atom counted once; a bucket's last batch is completed with its first frames
    (one compiled shape per bucket) and the extra rows dropped."""
    de, df = [], []
    for arrays in buckets:
        m = len(arrays["energy"])
        order = np.resize(np.arange(m), -(-m // batch_size) * batch_size)
        for start in range(0, len(order), batch_size):
            keep = np.arange(start, start + batch_size) < m
            batch = {k: v[order[start:start + batch_size]] for k, v in arrays.items()}
            e, f = (np.asarray(x, np.float64) for x in _predict(params, batch, potential=potential))
            frame_de, frame_df, real = frame_errors(e, f, batch)
            de.append(frame_de[keep])
            df.append(frame_df[keep][real[keep]])
    de, df = np.concatenate(de), np.concatenate(df)
    loss, maes = loss_and_maes(de, df, len(df), t.energy_weight, t.force_weight)
    return {"val_loss": loss, "val_energy_mae_meV_per_atom": 1e3 * maes["energy_mae"],
            "val_force_mae_meV_per_A": 1e3 * maes["force_mae"]}


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
    buckets = bucket_sizes(config, train_frames, val_frames)
    train_buckets, val_buckets = bucketed_arrays((train_frames, val_frames), buckets, cutoff)
    start = initial_potential(config, species)
    if start is not None:  # fine-tuning: the same function, so its normalisations and energy references
        network_config, species, shift, scale = start.config, start.species, np.asarray(start.shift), start.scale
    else:
        network_config = config.model.network
        if network_config.avg_neighbors is None:
            network_config = dataclasses.replace(network_config,
                                                 avg_neighbors=mean_neighbours(train_buckets, cutoff))
        shift = reference_energies(train_frames.structures.padded()[0], train_frames.energies, species)
        scale = float(np.sqrt(np.mean(np.concatenate(train_frames.forces) ** 2))) or 1.0
    write_potential_file(run.path, network_config, species, shift, scale)
    potential = LearnedPotential(network_config, species, None, shift, scale)
    loader = BucketedLoader(train_buckets, t.batch_size, seed=config.seed)
    optimizer = make_optimizer(t.lr, t.epochs * loader.steps_per_epoch, t.final_lr_fraction, t.clip_norm)
    key = jax.random.PRNGKey(config.seed)
    if start is not None:  # the start's parameters in the layout and float types of a fresh network's
        fresh = jax.eval_shape(lambda: initial_params(potential.network, key))
        params = jax.tree.map(lambda fresh, given: jnp.asarray(given, fresh.dtype), fresh, start.params)
        state = initial_state(potential.network, optimizer, key, params)
        log.info("potential: fine-tuning %s", start.name)
    else:
        state = initial_state(potential.network, optimizer, key)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("potential: %d parameters, species %s, %d training / %d validation frames; buckets (atoms: training "
             "frames, table K) %s; %.1f neighbours per atom within %.2f Å", n_params, list(species),
             len(train_frames.energies), len(val_frames.energies),
             ", ".join(f"{a['species'].shape[1]}: {len(a['energy'])}, K={a['indices'].shape[-1]}" for a in train_buckets),
             network_config.avg_neighbors, cutoff)
    options = dict(potential=potential, optimizer=optimizer, energy_weight=t.energy_weight,
                   force_weight=t.force_weight, ema_decay=t.ema_decay)

    def step(state, batch, epoch, index):
        state, metrics = train_step(state, batch, **options)
        return state, {"train_loss": metrics["loss"],
                       "train_energy_mae_meV_per_atom": 1e3 * metrics["energy_mae"],
                       "train_force_mae_meV_per_A": 1e3 * metrics["force_mae"]}

    def evaluate(state, epoch):
        return state, validation_metrics(potential, state.ema_params, val_buckets, t.batch_size, t)

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
