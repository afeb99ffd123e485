"""Fitting the potential through ``python -m dismax.train`` (model.name: potential) and loading the run."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from ase.build import bulk

from dismax import train as train_cli
from dismax.config import from_dict
from dismax.io import read_labelled_extxyz, write_labelled_frames
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.potentials import energies_and_forces, get_potential, load_potential, original_sw, trainer
from dismax.potentials.trainer import reference_energies
from dismax.runs import RunDir
from dismax.structures import Crystals

TINY_NETWORK = {"cutoff": 2.6, "n_layers": 2, "hidden_irreps": "8x0e+4x1o+2x2e", "n_radial": 4,
                "radial_hidden": 8}


def rattled_silicon(n_frames: int, seed: int = 0) -> Crystals:
    """64-atom diamond Si cells (wide enough for SW's minimum image) with 0.1 Å random displacements."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        frame = atoms.copy()
        frame.positions += rng.normal(0.0, 0.1, frame.positions.shape)
        frames.append(frame)
    return Crystals.from_ase(frames)


def write_sw_frames(path: Path, n_frames: int = 10, seed: int = 0) -> Path:
    crystals = rattled_silicon(n_frames, seed)
    energies, forces = energies_and_forces(original_sw(), crystals)
    with open(path, "w") as handle:
        write_labelled_frames(handle, crystals, np.asarray(energies), np.asarray(forces))
    return path


def test_labelled_frames_round_trip(tmp_path):
    crystals = rattled_silicon(3)
    energies, forces = np.array([-1.0, -2.0, -3.5]), np.random.default_rng(0).normal(size=(3, 64, 3))
    with open(tmp_path / "f.extxyz", "w") as handle:
        write_labelled_frames(handle, crystals, energies, forces)
    back, e, f = read_labelled_extxyz(tmp_path / "f.extxyz")
    np.testing.assert_allclose(e, energies)
    np.testing.assert_allclose(f, forces, atol=1e-8)
    np.testing.assert_allclose(back.frac, crystals.frac, atol=1e-8)


def test_reference_energies_by_least_squares():
    species = np.array([[3, 3, 8, 8], [3, 8, 8, 8], [3, 3, 3, 8]])
    crystals = Crystals(np.zeros((3, 4, 3)), np.tile(np.eye(3) * 5, (3, 1, 1)), species)
    energies = (species == 3).sum(1) * -1.5 + (species == 8).sum(1) * -4.0
    np.testing.assert_allclose(reference_energies(crystals, energies, (3, 8)), [-1.5, -4.0], atol=1e-10)


@pytest.mark.slow  # compiles the force-matching step (~1 min of CPU)
def test_fit_through_the_train_cli_and_load_the_run(tmp_path):
    data = write_sw_frames(tmp_path / "sw.extxyz")
    config = {"model": {"name": "potential", "network": TINY_NETWORK},
              "data": {"train_file": str(data), "val_fraction": 0.2},
              "train": {"epochs": 2, "batch_size": 4, "checkpoint_every": 1, "lr": 0.01}, "seed": 1}
    (tmp_path / "potential.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert train_cli.main(["--config", str(tmp_path / "potential.yaml"), "--run-dir", str(run)]) == 0

    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for column in ("train_loss", "val_loss", "val_energy_mae_meV_per_atom", "val_force_mae_meV_per_A"):
        assert np.isfinite(float(rows[-1][column]))
    assert (run / "plots" / "losses.png").is_file()
    assert (run / "checkpoints" / "best").is_dir()

    # checkpoint round trip: the loaded latest potential reproduces the last epoch's validation MAEs
    potential = load_potential(run, which="latest")
    _, (val, energies, forces) = trainer.load_frames(from_dict(trainer.Config, config))
    e, f = potential.energies_and_forces(val.as_crystals())
    energy_mae = 1e3 * np.mean(np.abs((e - energies) / val.atom_counts))
    force_mae = 1e3 * np.mean(np.abs(f - np.stack(forces)))
    assert energy_mae == pytest.approx(float(rows[-1]["val_energy_mae_meV_per_atom"]), rel=1e-4, abs=1e-3)
    assert force_mae == pytest.approx(float(rows[-1]["val_force_mae_meV_per_A"]), rel=1e-4, abs=1e-3)


def test_run_potential_needs_a_fitted_run(tmp_path):
    with pytest.raises(DismaxInputError, match="not a fitted potential run"):
        get_potential(f"run:{tmp_path}")


def test_unseen_element_in_validation_is_an_error(tmp_path):
    train = write_sw_frames(tmp_path / "train.extxyz", 4)
    crystals = rattled_silicon(2)
    species = np.asarray(crystals.species).copy()
    species[1, 3] = 32
    with open(tmp_path / "val.extxyz", "w") as handle:
        write_labelled_frames(handle, Crystals(crystals.frac, crystals.lattice, species), np.zeros(2),
                              np.zeros((2, 64, 3)))
    config = from_dict(trainer.Config, {"model": {"network": TINY_NETWORK},
                                        "data": {"train_file": str(train), "val_file": str(tmp_path / "val.extxyz")},
                                        "train": {"batch_size": 2}})
    with pytest.raises(DismaxInputError, match="validation frame 1 contains element Z=32"):
        trainer.check(config)


def tiny_shipped_potential(tmp_path, monkeypatch, species=(8, 14)):
    """A random-weight potential of TINY_NETWORK exported and shipped under the name 'tiny_start'."""
    from dismax.potentials import SHIPPED
    from dismax.potentials.fitted import export_potential
    from dismax.potentials.nequip import LearnedPotential, NetworkConfig, PotentialNetwork, initial_params

    config = NetworkConfig(**TINY_NETWORK, avg_neighbors=7.0)
    params = initial_params(PotentialNetwork(config, len(species)), jax.random.PRNGKey(7))
    start = LearnedPotential(config, species, params, [-4.5] * len(species), 0.8)
    monkeypatch.setitem(SHIPPED, "tiny_start", export_potential(start, tmp_path / "tiny_start.msgpack"))
    return get_potential("tiny_start")


@pytest.mark.slow  # ~45 s; test_fine_tuning_needs_the_same_network checks the setup by default
def test_fine_tuning_starts_from_the_initial_potential(tmp_path, monkeypatch):
    start = tiny_shipped_potential(tmp_path, monkeypatch)
    data = write_sw_frames(tmp_path / "sw.extxyz", 5)
    config = from_dict(trainer.Config, {"model": {"network": TINY_NETWORK, "initial_potential": "tiny_start"},
                                        "data": {"train_file": str(data), "val_fraction": 0.2},
                                        "train": {"batch_size": 2}})
    trainer.check(config)
    task = trainer.make_task(config, RunDir(tmp_path / "run").create())
    for params in (task.state.params, task.state.ema_params):
        for fitted, given in zip(jax.tree.leaves(params), jax.tree.leaves(start.params)):
            np.testing.assert_array_equal(np.asarray(fitted), np.asarray(given))
    # the run keeps the start's normalisation, species and energy references, not those of the new frames
    record = json.loads((tmp_path / "run" / "potential.json").read_text())
    assert record["species"] == [8, 14] and record["scale"] == pytest.approx(0.8)
    assert record["shift"] == pytest.approx([-4.5, -4.5]) and record["network"]["avg_neighbors"] == 7.0


def test_fine_tuning_needs_the_same_network(tmp_path, monkeypatch):
    tiny_shipped_potential(tmp_path, monkeypatch)
    data = write_sw_frames(tmp_path / "sw.extxyz", 5)
    for model, message in (({"network": dict(TINY_NETWORK, n_layers=3), "initial_potential": "tiny_start"},
                            "fine-tuning keeps its network"),
                           ({"network": dict(TINY_NETWORK, cutoff=3.0),
                             "initial_potential": str(tmp_path / "tiny_start.msgpack")}, "fine-tuning keeps its network"),
                           ({"network": TINY_NETWORK, "initial_potential": "sw"}, "not a fitted potential")):
        config = from_dict(trainer.Config, {"model": model, "data": {"train_file": str(data)},
                                            "train": {"batch_size": 2}})
        with pytest.raises(DismaxConfigError, match=message):
            trainer.check(config)


def test_equal_networks_share_one_compiled_initialisation():
    from dismax.potentials.nequip import NetworkConfig, PotentialNetwork, _initial_params, initial_params

    config = NetworkConfig(**TINY_NETWORK, avg_neighbors=7.0)
    first = initial_params(PotentialNetwork(config, 2), jax.random.PRNGKey(7))
    compiled = _initial_params._cache_size()
    second = initial_params(PotentialNetwork(config, 2), jax.random.PRNGKey(8))  # an equal, new module
    assert _initial_params._cache_size() == compiled
    assert not np.array_equal(jax.tree.leaves(first)[0], jax.tree.leaves(second)[0])
