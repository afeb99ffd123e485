"""End-to-end: train a tiny model on a small synthetic dataset, resume, sample to extxyz."""

import numpy as np
import pytest

from dismax.config import from_dict
from dismax.diffusion.trainer import Config, sample, train
from dismax.io import read_extxyz, write_extxyz
from dismax.runs import RunDir
from dismax.structures import Crystals


def _dataset(tmp_path, n=8):
    """Jittered 2x2x2 simple-cubic cells (8 atoms, 5 Å) with two species."""
    rng = np.random.default_rng(0)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], float) / 2 + 0.25
    frac = np.mod(grid[None] + 0.01 * rng.standard_normal((n, 8, 3)), 1.0)
    lattice = np.repeat(np.eye(3)[None] * 5.0, n, 0)
    species = np.repeat(np.array([[13] * 4 + [28] * 4]), n, 0)
    crystals = Crystals(frac, lattice, species)
    write_extxyz(crystals[:6], tmp_path / "train.extxyz")
    write_extxyz(crystals[6:], tmp_path / "val.extxyz")
    return tmp_path / "train.extxyz", tmp_path / "val.extxyz"


def _config(train_file, val_file, epochs):
    return from_dict(Config, {
        "model": {"denoiser": {"name": "cspnet", "hidden": 16, "n_layers": 1, "n_freq": 4, "time_dim": 16},
                  "n_steps": 50},
        "data": {"train_file": str(train_file), "val_file": str(val_file)},
        "train": {"epochs": epochs, "batch_size": 2, "val_every": 1, "checkpoint_every": 1, "ema_decay": 0.9},
        "sample": {"n_steps": 4, "batch_size": 2},
        "seed": 1,
    })


@pytest.mark.slow
def test_train_resume_and_sample(tmp_path):
    train_file, val_file = _dataset(tmp_path)
    run = RunDir(tmp_path / "run").create()
    train(_config(train_file, val_file, epochs=1), run)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [0] and rows[0]["step"] == 3
    assert np.isfinite(rows[0]["train_loss"]) and np.isfinite(rows[0]["val_loss_ema"])
    # a longer run in the same directory resumes after epoch 0
    train(_config(train_file, val_file, epochs=2), run)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["step"] == 6
    assert (run.plots / "losses.png").is_file()

    from dismax.config import save_config
    save_config(_config(train_file, val_file, epochs=2), run.config_path)  # as python -m dismax.train does
    out = sample(run, 3, tmp_path / "samples.extxyz", seed=0)
    generated = read_extxyz(out)
    assert len(generated) == 3
    reference = read_extxyz(val_file)[0]
    np.testing.assert_allclose(generated.lattice, np.repeat(reference.lattice, 3, 0), atol=1e-6)
    np.testing.assert_array_equal(generated.species, np.repeat(reference.species, 3, 0))
    assert not list(tmp_path.glob(".samples.part*"))
