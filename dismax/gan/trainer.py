"""CryinGAN trainer: ``python -m dismax.train --config configs/cryingan_*.yaml`` and sampling.

Trains an ensemble of S seeds × M distance weights (a single model when both lists have one entry) in
one jitted, vmapped step per batch, in the shared loop (:mod:`dismax.training`). Per epoch it logs the
reference's losses.csv columns for every member to ``metrics.csv``; every ``train.val_every`` epochs it
writes ``samples/epochNNNNNN_memberM.extxyz`` and logs the mean number of atom pairs closer than
``close_pair_cutoff`` Å per generated structure (``close_pairs``). Data order (the shared ``BatchLoader``) and
noise depend only on the seeds and the step, so a resumed run gives identical results.
``cryingan_template.json`` in the run directory records the training lattice, the species blocks and the
members, which sampling needs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dismax.config import load_config
from dismax.data.loader import BatchLoader, cubic_translations, read_training_structures
from dismax.data.registry import dataset_files
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.gan.config import Config, DataConfig, EnsembleConfig, ModelConfig, TrainConfig
from dismax.gan.features import bond_distances, check_search_radius
from dismax.gan.steps import (GanSetup, ensemble_sampler, ensemble_step_fn, generate, init_ensemble,
                              member_state)
from dismax.geometry import pairwise_minimum_image_distances
from dismax.io import write_extxyz
from dismax.runs import RunDir, atomic_write_text, exclusive_lock, log, write_in_parts
from dismax.structures import Crystals, sort_into_blocks, species_blocks
from dismax.training import (Panel, TrainingTask, check_data_source, check_loop_config, load_run_state,
                             train_loop)

__all__ = ["Config", "DataConfig", "EnsembleConfig", "ModelConfig", "TrainConfig", "check", "train", "sample",
           "seed_ensemble"]

TEMPLATE_FILE = "cryingan_template.json"
METRIC_COLUMNS = ("distance_dis", "cost_dis", "cost_gen", "D_real", "D_fake", "D_dist_real", "D_dist_fake")
PANELS = (Panel("Wasserstein estimate", ("distance_dis",)), Panel("generator cost", ("cost_gen",)),
          Panel("pairs < cutoff per structure", ("close_pairs",)))


def members(config: Config) -> list[tuple[int, float]]:
    """(seed, w_dist) of every ensemble member, seed-major."""
    seeds = config.ensemble.seeds or (config.seed,)
    w_dists = config.ensemble.w_dists or (config.model.w_dist,)
    return [(int(s), float(w)) for s, w in itertools.product(seeds, w_dists)]


def seed_ensemble(config: Config, seeds: list[int]) -> list[str] | None:
    """Config overrides that train ``seeds`` as one vmapped ensemble whose member k is the single run with
    seed ``seeds[k]`` (its own initialisation, noise and data order), or None when the config already
    lists ensemble seeds or several distance weights."""
    if config.ensemble.seeds or len(config.ensemble.w_dists) > 1:
        return None
    return [f"seed={seeds[0]}", f"ensemble.seeds=[{', '.join(str(s) for s in seeds)}]",
            "ensemble.independent_data=true"]


def make_setup(config: Config, counts, lattice) -> GanSetup:
    """The static CryinGAN description for a training cell (``lattice`` (3, 3) Å) with species ``counts``."""
    return GanSetup(counts=tuple(int(c) for c in counts),
                    lattice=tuple(tuple(float(v) for v in row) for row in np.asarray(lattice)),
                    model=config.model, train=config.train)


def check(config: Config) -> None:
    """Every config error, before anything is written."""
    check_loop_config(config.train)
    for key in ("gen_int", "lr_step_size", "n_save"):
        if getattr(config.train, key) < 1:
            raise DismaxConfigError(f"config key 'train.{key}' is {getattr(config.train, key)}; it must be at "
                                    "least 1")
    if config.data.translation_grid < 1:
        raise DismaxConfigError(f"config key 'data.translation_grid' is {config.data.translation_grid}; it must be "
                                "at least 1")
    if config.data.max_structures is not None and config.data.max_structures < 1:
        raise DismaxConfigError(f"config key 'data.max_structures' is {config.data.max_structures}; it must be at "
                                "least 1")
    check_data_source(config.data.dataset, config.data.size, config.data.dataset_seed, config.data.train_file)


# ---------------------------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class TrainingData:
    """Training structures in species-block order (float32) and their bond distances."""

    crystals: Crystals  # (S, N) structures on one lattice
    distances: np.ndarray  # (S, N, K) Å; invariant under the lattice translations of the augmentation
    elements: tuple[int, ...]
    counts: tuple[int, ...]
    source: str

    @property
    def lattice(self) -> np.ndarray:
        """The training lattice (3, 3), Å."""
        return np.asarray(self.crystals.lattice[0])


def load_training_data(config: Config, path: Path | None = None) -> TrainingData:
    """Read, validate (same lattice, same composition), sort into species blocks, compute distances."""
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
    block_crystals = Crystals(frac, np.broadcast_to(lattice0, (len(frac), 3, 3)),
                              np.asarray(sorted_crystals.species, np.int32))
    distance_fn = bond_distances_fn(lattice0, config.model.n_neighbors)
    distances = np.concatenate([np.asarray(distance_fn(frac[i:i + 256])) for i in range(0, len(frac), 256)])
    check_search_radius(distances, lattice0, str(path))
    return TrainingData(block_crystals, distances, blocks.elements, blocks.counts, str(path))


def bond_distances_fn(lattice: np.ndarray, n_neighbors: int):
    """Jitted (B, N, 3) fractional → (B, N, K) bond distances on the training ``lattice``."""
    return jax.jit(lambda frac: bond_distances(frac, lattice, n_neighbors))


def translations_off_positions(data: TrainingData, grid: int, tolerance: float = 0.3) -> int:
    """How many of the ``grid``³ augmentation shifts (i, j, k) / grid move some atom of the first training
    structure farther than ``tolerance`` Å from every atom position of that structure.

    Zero when the shifts are translations of the structure's site lattice, as in the alloy cells with
    ``grid`` = conventional cells per axis (4 for 4×4×4, 2 for 2×2×2); a larger grid moves atoms onto
    interstitial positions (e.g. a/2 along an axis), which is a different training distribution.
    """
    frac = np.asarray(data.crystals.frac[0], np.float32)
    lattice = jnp.asarray(data.lattice[None], jnp.float32)
    n = len(frac)
    off = 0
    for shift in cubic_translations((grid, grid, grid))[1:]:
        both = jnp.asarray(np.concatenate([(frac + shift) % 1.0, frac])[None], jnp.float32)
        distances = pairwise_minimum_image_distances(both, lattice)[0, :n, n:]
        off += int(jnp.max(jnp.min(distances, axis=1)) > tolerance)
    return off


def make_loader(data: TrainingData, config: Config, seed: int) -> BatchLoader:
    """Batches of (Crystals, bond distances) with the configured translation augmentation."""
    grid = config.data.translation_grid
    return BatchLoader((data.crystals, data.distances), config.train.batch_size, seed=seed,
                       augment=config.data.augmentation, translation_grid=(grid, grid, grid),
                       drop_last=config.train.drop_last)


# ------------------------------------------------------------------------------------------ training
def close_pair_counts(frac: jax.Array, lattice: np.ndarray, cutoff: float) -> np.ndarray:
    """Number of atom pairs (minimum image) closer than ``cutoff`` Å in every structure, (B,)."""
    lattice = jnp.broadcast_to(jnp.asarray(lattice, frac.dtype), frac.shape[:1] + (3, 3))
    distances = pairwise_minimum_image_distances(frac, lattice)
    n = frac.shape[1]
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)
    return np.asarray(jnp.sum((distances < cutoff) & upper, axis=(1, 2)))


def _template(data: TrainingData, config: Config) -> dict:
    return {"lattice": data.lattice.tolist(), "elements": list(data.elements), "counts": list(data.counts),
            "members": [list(m) for m in members(config)], "source": data.source}


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


def make_task(config: Config, run: RunDir) -> TrainingTask:
    """The CryinGAN ensemble as a task of the shared training loop (reads the data, writes the template)."""
    t = config.train
    data = load_training_data(config)
    if len(data.crystals) < t.batch_size and t.drop_last:
        raise DismaxInputError(f"{data.source}: {len(data.crystals)} structures are fewer than one batch of "
                               f"{t.batch_size}; lower train.batch_size or set train.drop_last=false")
    if config.data.augmentation != "none":
        off = translations_off_positions(data, config.data.translation_grid)
        if off:
            log.warning("data.translation_grid %d: %d of its %d translations move atoms of %s off the atom "
                        "positions (not a translation of the site lattice); for an FCC supercell of r conventional "
                        "cells per axis use translation_grid r", config.data.translation_grid, off,
                        config.data.translation_grid ** 3 - 1, data.source)
    template = _template(data, config)
    atomic_write_text(run.path / TEMPLATE_FILE, json.dumps(template, indent=1))
    setup = make_setup(config, data.counts, data.lattice)
    member_list = members(config)
    independent = config.ensemble.independent_data and len(member_list) > 1
    loaders = ([make_loader(data, config, s) for s, _ in member_list] if independent
               else [make_loader(data, config, config.seed)])
    steps_per_epoch = loaders[0].steps_per_epoch
    log.info("CryinGAN: %d structures of %d atoms %s, %d batches/epoch, %d member(s) (seed, λ) = %s",
             len(data.crystals), setup.n_atoms, dict(zip(data.elements, data.counts)), steps_per_epoch,
             len(member_list), member_list)
    steps = {flag: ensemble_step_fn(setup, flag, independent) for flag in (False, True)}
    sampler = ensemble_sampler(setup, t.n_save)
    no_generator_cost = jnp.full(len(member_list), jnp.nan)

    def lr_scale(epoch: int) -> float:
        return float(t.lr_gamma ** (epoch // t.lr_step_size))

    def step(state, batch, epoch, index):
        crystals, distances = batch
        counter = index if t.gen_cadence == "epoch" else epoch * steps_per_epoch + index
        state, metrics = steps[counter % t.gen_int == 0](state, crystals.frac, distances,
                                                         jnp.float32(lr_scale(epoch)))
        return state, {"cost_gen": no_generator_cost, **metrics}

    def evaluate(state, epoch):
        frac = np.asarray(sampler(state, jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)))
        close = np.zeros(len(member_list))
        for m in range(len(member_list)):
            close[m] = close_pair_counts(jnp.asarray(frac[m]), data.lattice, t.close_pair_cutoff).mean()
            write_extxyz(_crystals(frac[m], template), run.samples / f"epoch{epoch:06d}_member{m}.extxyz")
        return state, {"close_pairs": close}

    def sample(state, member, n, key):
        return _crystals(np.asarray(generate(setup, member_state(state, member), key, n)), template)

    return TrainingTask(
        name="CryinGAN", state=init_ensemble(setup, [s for s, _ in member_list], [w for _, w in member_list]),
        loaders=loaders, step=step, members=[{"member": m, "seed": s, "w_dist": w}
                                             for m, (s, w) in enumerate(member_list)],
        evaluate=evaluate, eval_columns=("close_pairs",), monitor=lambda v: float(np.mean(v["distance_dis"])),
        epoch_columns=lambda state, epoch: {"lr_gen": t.lr_gen * lr_scale(epoch)}, sample=sample, panels=PANELS,
        member_batches=independent)


def train(config: Config, run: RunDir, evaluation=None) -> None:
    """Train (or resume) the ensemble of ``config`` in ``run``; see the module docstring."""
    check(config)
    with exclusive_lock(run.path, "run directory"):
        run.create()
        train_loop(make_task(config, run), config.train, run, evaluation)


# ------------------------------------------------------------------------------------------ sampling
def restore_state(run: RunDir, config: Config, checkpoint: str = "latest"):
    """(setup, template, ensemble state) of a trained run."""
    template = _read_template(run)
    setup = make_setup(config, template["counts"], template["lattice"])
    member_list = [tuple(m) for m in template["members"]]
    like = jax.eval_shape(lambda: init_ensemble(setup, [s for s, _ in member_list], [w for _, w in member_list]))
    return setup, template, load_run_state(run, like, checkpoint)[0]


def sample(run: RunDir, n: int, out: Path, seed: int = 0, member: int = 0, checkpoint: str = "latest",
           batch_size: int = 1000) -> Path:
    """Write ``n`` generated structures of ensemble member ``member`` to the extxyz file ``out``.

    Structures have the training lattice and its species blocks (elements in order of first appearance
    in the training file, each element's atoms contiguous, as the generator was trained); they are
    generated and written in batches of ``batch_size`` so memory does not grow with ``n``.
    """
    config = load_config(run.config_path, config_class=Config)
    setup, template, state = restore_state(run, config, checkpoint)
    n_members = len(template["members"])
    if not 0 <= member < n_members:
        raise DismaxInputError(f"--member {member} is out of range; run '{run.path}' has {n_members} member(s)")
    one = member_state(state, member)
    generate_batch = jax.jit(lambda s, k: generate(setup, s, k, batch_size))

    def write_batch(index, path):
        frac = np.asarray(generate_batch(one, jax.random.fold_in(jax.random.PRNGKey(seed), index)))
        write_extxyz(_crystals(frac[:min(batch_size, n - index * batch_size)], template), path)

    return write_in_parts(Path(out), math.ceil(n / batch_size), write_batch, desc="generating")

