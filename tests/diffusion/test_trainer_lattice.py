"""End-to-end: a two-member ensemble with lattice diffusion and one teacher-forced epoch trains and samples."""

import numpy as np
import pytest

from dismax.config import from_dict, save_config
from dismax.diffusion.trainer import Config, check, sample, train
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import read_extxyz
from dismax.runs import RunDir
from tests.diffusion.test_trainer import _dataset


def _config(train_file, val_file, **train_options):
    return from_dict(Config, {
        "model": {"denoiser": {"name": "cspnet", "hidden": 8, "n_layers": 1, "n_freq": 2, "time_dim": 8},
                  "n_steps": 50, "lattice_diffusion": True, "cost_lattice": 1.0},
        "data": {"train_file": str(train_file), "val_file": str(val_file)},
        "train": {"epochs": 2, "batch_size": 2, "val_every": 1, "checkpoint_every": 2, "ema_decay": 0.9,
                  "n_seeds": 2, "teacher_forcing_epochs": 1, **train_options},
        "sample": {"n_steps": 4, "batch_size": 2},
        "seed": 1,
    })


@pytest.mark.slow
def test_lattice_diffusion_ensemble_with_teacher_forcing_trains_and_samples(tmp_path):
    train_file, val_file = _dataset(tmp_path)
    run = RunDir(tmp_path / "run").create()
    config = _config(train_file, val_file)
    save_config(config, run.config_path)
    train(config, run)
    rows = run.read_metrics()
    assert [(r["epoch"], r["member"], r["seed"], r["step"]) for r in rows] == [(0, 0, 1, 3), (0, 1, 2, 3),
                                                                               (1, 0, 1, 6), (1, 1, 2, 6)]
    for row in rows[:2]:  # teacher-forced epoch: clean lattice input, lattice loss left out
        assert row["teacher_forcing"] == 1 and row["train_lattice_loss"] == 0 and row["val_lattice_loss"] == 0
        assert row["train_loss"] == pytest.approx(row["train_coord_loss"], rel=1e-6)
    for row in rows[2:]:
        assert row["teacher_forcing"] == 0 and row["train_lattice_loss"] > 0 and row["val_lattice_loss"] > 0
        assert row["train_loss"] == pytest.approx(row["train_coord_loss"] + row["train_lattice_loss"], rel=1e-5)
    assert rows[2]["train_loss"] != rows[3]["train_loss"]  # the members are different models

    reference = read_extxyz(val_file)[0]
    lattices = []
    for member in (1, 0):
        generated = read_extxyz(sample(run, 3, tmp_path / f"member{member}.extxyz", seed=0, member=member))
        assert len(generated) == 3 and np.all(np.isfinite(generated.frac))
        assert np.all(np.isfinite(generated.lattice)) and np.all(np.linalg.det(generated.lattice) > 0)
        np.testing.assert_array_equal(generated.species, np.repeat(reference.species, 3, 0))
        assert np.abs(generated.lattice - reference.lattice).max() > 1e-3  # sampled, not copied
        lattices.append(generated.lattice)
    assert np.abs(lattices[0] - lattices[1]).max() > 1e-6
    with pytest.raises(DismaxInputError, match="member"):
        sample(run, 1, tmp_path / "x.extxyz", member=2)
    # a longer run resumes both members (their learning-rate plateaus and states) after epoch 1
    train(_config(train_file, val_file, epochs=3), run)
    rows = run.read_metrics()
    assert [(r["epoch"], r["member"], r["step"]) for r in rows[4:]] == [(2, 0, 9), (2, 1, 9)]


def test_lattice_diffusion_config_errors(tmp_path):
    config = _config(*_dataset(tmp_path))
    check(config, n_train=6)
    with pytest.raises(DismaxConfigError, match="langevin"):
        check(from_dict(Config, {"model": {"lattice_diffusion": True}, "sample": {"sampler": "langevin"}}))
    with pytest.raises(DismaxConfigError, match="teacher_forcing_epochs"):
        check(from_dict(Config, {"train": {"teacher_forcing_epochs": 5}}))
    with pytest.raises(DismaxConfigError, match="cost_lattice"):
        check(from_dict(Config, {"model": {"lattice_diffusion": True, "cost_lattice": 0.0}}))
    with pytest.raises(DismaxConfigError, match="n_seeds"):
        check(from_dict(Config, {"train": {"n_seeds": 0}}))
