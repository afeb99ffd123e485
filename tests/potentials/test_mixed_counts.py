"""Fitting the potential on frames of different atom counts: padding to size buckets changes no number,
and the step compiles once per bucket."""

import csv
from functools import partial

import jax
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from dismax import train as train_cli
from dismax.io import read_labelled_set, write_labelled_frames
from dismax.potentials import trainer
from dismax.potentials.nequip import NetworkConfig
from dismax.potentials.trainer import Frames
from dismax.structures import Crystals, StructureSet
from tests.potentials.test_nequip import random_potential

TINY_NETWORK = {"cutoff": 3.0, "n_layers": 2, "hidden_irreps": "8x0e+4x1o+2x2e", "n_radial": 4,
                "radial_hidden": 8}


def rattled_copper(repeats, n_frames: int, seed: int = 0) -> list:
    """EMT-labelled FCC Cu cells (a = 3.61 Å) of the given repeats of the 4-atom cubic cell, each rattled by
    0.08 Å and strained by up to 2 %: ASE ``Atoms`` with a single-point calculator holding the labels."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeats[i % len(repeats)]
        atoms.set_cell(atoms.cell.array * (1.0 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.wrap()
        frames.append(atoms)
    return frames


def write_emt_frames(path, repeats, n_frames: int, seed: int = 0):
    """Label ``rattled_copper`` frames with ASE's EMT and write them as labelled extxyz."""
    with open(path, "w") as handle:
        for atoms in rattled_copper(repeats, n_frames, seed):
            atoms.calc = EMT()
            crystals = Crystals.from_ase([atoms])
            write_labelled_frames(handle, crystals, [atoms.get_potential_energy()], [atoms.get_forces()])
    return path


def mixed_frames() -> Frames:
    """A 16-atom and a 24-atom Li/O/Co frame (random labels) for the exactness checks."""
    rng = np.random.default_rng(0)
    structures = []
    for repeat in ((2, 1, 1), (3, 1, 1)):
        atoms = bulk("LiO", "rocksalt", a=4.2, cubic=True) * repeat
        atoms.numbers[rng.choice(len(atoms), 3, replace=False)] = 27
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        structures.append(Crystals.from_ase([atoms]))
    forces = [rng.normal(0.0, 0.5, (c.n_atoms, 3)) for c in structures]
    return Frames(StructureSet.from_structures(structures), np.array([-40.0, -61.0]), forces)


@pytest.fixture(scope="module")
def potential():
    """One small random potential (two layers, so a leak through padding atoms would reach the energies)
    for the module, so its jitted programs compile once per shape."""
    return random_potential(config=NetworkConfig(cutoff=3.5, n_layers=2, hidden_irreps="4x0e+2x1o+2x2e", n_radial=4,
                                                 radial_hidden=8, avg_neighbors=8.0))


@pytest.mark.slow  # ~55 s of CPU: the network's init and three energy+forces compiles
def test_padded_frames_give_the_unpadded_energies_and_forces(potential):
    frames = mixed_frames()
    batch = trainer.frame_arrays(frames, potential.cutoff, n_atoms=32)  # both frames padded, 8 and 16 extra
    energies, forces = (np.asarray(x, np.float64) for x in trainer._predict(potential.params, batch,
                                                                             potential=potential))
    for m, crystals in enumerate(frames.structures):
        e, f = potential.energies_and_forces(crystals)
        n = crystals.n_atoms
        assert abs(energies[m] - e[0]) <= 1e-6 * abs(e[0])
        np.testing.assert_allclose(forces[m, :n], f[0], rtol=0, atol=1e-6)
        assert np.all(forces[m, n:] == 0.0)
        assert np.abs(f).max() > 1e-2


def per_frame_reference(potential, frames: Frames, energy_weight: float, force_weight: float):
    """Loss and MAEs computed frame by frame on the unpadded structures (NumPy, float64)."""
    de, df = [], []
    for m, crystals in enumerate(frames.structures):
        e, f = potential.energies_and_forces(crystals)
        de.append((e[0] - frames.energies[m]) / crystals.n_atoms)
        df.append(f[0] - frames.forces[m])
    de, df = np.array(de), np.concatenate(df)
    loss = energy_weight * np.mean(de**2) + force_weight * np.mean(np.sum(df**2, axis=-1))
    return loss, np.mean(np.abs(de)), np.mean(np.abs(df))


@pytest.mark.slow  # ~20-60 s of CPU: the per-frame compiles (shared with the test above) and two more
def test_loss_and_validation_maes_of_a_mixed_batch_equal_the_per_frame_computation(potential):
    frames = mixed_frames()
    weights = trainer.TrainConfig(energy_weight=3.0, force_weight=0.5)
    loss, energy_mae, force_mae = per_frame_reference(potential, frames, 3.0, 0.5)

    batch = trainer.frame_arrays(frames, potential.cutoff, n_atoms=32)
    got_loss, maes = jax.jit(partial(trainer.loss_terms, potential, energy_weight=3.0, force_weight=0.5))(
        potential.params, batch)
    assert float(got_loss) == pytest.approx(loss, rel=1e-5)
    assert float(maes["energy_mae"]) == pytest.approx(energy_mae, rel=1e-5)
    assert float(maes["force_mae"]) == pytest.approx(force_mae, rel=1e-5)

    # validation with a batch of 3 (the row repeated to fill it is dropped)
    (buckets,) = trainer.bucketed_arrays([frames], (32,), potential.cutoff)
    metrics = trainer.validation_metrics(potential, potential.params, buckets, 3, weights)
    assert metrics["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val_energy_mae_meV_per_atom"] == pytest.approx(1e3 * energy_mae, rel=1e-5)
    assert metrics["val_force_mae_meV_per_A"] == pytest.approx(1e3 * force_mae, rel=1e-5)


def test_mixed_counts_are_read_and_bucketed(tmp_path):
    path = write_emt_frames(tmp_path / "cu.extxyz", [(1, 1, 1), (2, 1, 1), (3, 1, 1)], 6)
    structures, energies, forces = read_labelled_set(path)
    assert list(structures.atom_counts) == [4, 8, 12, 4, 8, 12]
    assert [len(f) for f in forces] == [4, 8, 12, 4, 8, 12] and energies.shape == (6,)
    frames = Frames(structures, energies, forces)
    train, val = trainer.bucketed_arrays([frames.select([0, 1, 2, 3]), frames.select([4, 5])], (8, 12), 3.0)
    assert [a["species"].shape[:2] for a in train] == [(3, 8), (1, 12)]  # the 4-atom frames padded to 8
    assert [a["species"].shape[:2] for a in val] == [(1, 8), (1, 12)]
    for a, b in zip(train, val):  # one table capacity per bucket in both splits
        assert a["indices"].shape[-1] == b["indices"].shape[-1]
    padded = train[0]["species"][0]
    assert list(padded[:4]) == [29] * 4 and not padded[4:].any()
    indices = train[0]["indices"][0]
    assert np.all(indices[4:] == 8)  # padding atoms have no neighbours (index 8 = padding slot) ...
    assert np.all((indices[:4] < 4) | (indices[:4] == 8))  # ... and are nobody's neighbour


@pytest.mark.slow  # compiles the force-matching step for two buckets (~1 min on a loaded 2-core CPU)
def test_fit_on_mixed_counts_lowers_the_validation_loss_and_compiles_once_per_bucket(tmp_path, monkeypatch):
    data = write_emt_frames(tmp_path / "cu.extxyz", [(1, 1, 1), (3, 2, 1), (2, 1, 1)], 30)  # 4, 24, 8 atoms
    config = {"model": {"name": "potential", "network": TINY_NETWORK},
              "data": {"train_file": str(data), "val_fraction": 0.2, "buckets": [8, 24]},
              "train": {"epochs": 6, "batch_size": 4, "checkpoint_every": 3, "lr": 0.01, "ema_decay": 0.5},
              "seed": 0}
    (tmp_path / "potential.yaml").write_text(yaml.safe_dump(config))
    traces = {"train": 0, "all": 0}
    loss_terms, predictions = trainer.loss_terms, trainer.predictions

    def counting_loss_terms(*args):
        traces["train"] += 1
        return loss_terms(*args)

    def counting_predictions(*args):
        traces["all"] += 1
        return predictions(*args)

    monkeypatch.setattr(trainer, "loss_terms", counting_loss_terms)
    monkeypatch.setattr(trainer, "predictions", counting_predictions)
    run = tmp_path / "run"
    assert train_cli.main(["--config", str(tmp_path / "potential.yaml"), "--run-dir", str(run)]) == 0
    assert traces == {"train": 2, "all": 4}  # one training step and one validation program per bucket

    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert float(rows[-1]["val_loss"]) < 0.5 * float(rows[0]["val_loss"])
    assert float(rows[-1]["val_force_mae_meV_per_A"]) < float(rows[0]["val_force_mae_meV_per_A"])
