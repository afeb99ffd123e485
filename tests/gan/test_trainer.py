"""CryinGAN trainer: data preparation, logging, checkpoint/resume, sampling CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from dismax.config import from_dict, to_dict
from dismax.errors import DismaxInputError
from dismax.gan import trainer
from dismax.gan.trainer import Config, load_training_data
from dismax.io import read_extxyz, write_extxyz
from dismax.runs import RunDir
from dismax.structures import Crystals
from tests.gan.helpers import write_fcc_dataset


def tiny_config(train_file, **train):
    options = dict(batch_size=4, epochs=3, gen_int=1, checkpoint_every=1, val_every=2, n_save=3)
    options.update(train)
    return from_dict(Config, {
        "data": {"train_file": str(train_file), "augmentation": "online", "translation_grid": 2},
        "model": {"gen_channels": 8},
        "train": options,
    })


def test_training_data_is_sorted_into_blocks_and_translations_keep_distances(tmp_path):
    path = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=6)
    crystals = read_extxyz(path)
    order = np.array([5, 0, 6, 1, 7, 2, 3, 4])  # interleave Ni among Fe
    write_extxyz(Crystals(crystals.frac[:, order], crystals.lattice, crystals.species[:, order]), path)
    config = tiny_config(path)
    data = load_training_data(config)
    assert data.elements == (28, 26) and data.counts == (3, 5)  # first-appearance order of structure 0
    loader = trainer.make_loader(data, config, seed=0)
    assert len(loader.translations) == 8 and loader.steps_per_epoch == 1  # 6 structures, batch 4, drop last
    crystals, dists = loader.batch(0)
    assert crystals.frac.shape == (4, 8, 3) and crystals.frac.dtype == np.float32
    assert crystals.frac.min() >= 0 and crystals.frac.max() < 1
    recomputed = np.asarray(trainer.bond_distances_fn(data.lattice, config.model.n_neighbors)(crystals.frac))
    np.testing.assert_allclose(recomputed, dists, rtol=1e-5, atol=1e-5)  # translations keep the distances
    np.testing.assert_array_equal(loader.batch(3)[0].frac, trainer.make_loader(data, config, 0).batch(3)[0].frac)


def test_translation_check_accepts_the_site_lattice_and_counts_interstitial_shifts(tmp_path):
    """2×2×2 FCC cell: the 8 shifts by the cube edge (grid 2) map sites onto sites; of the 64 quarter-cell
    shifts (grid 4, steps of a/2) the 32 with an odd sum of steps are not FCC vectors and move atoms onto
    octahedral holes (the 32 with an even sum are the cell's FCC translations)."""
    path = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=4, repeats=(2, 2, 2), counts=(20, 12),
                             noise=0.0)
    data = load_training_data(tiny_config(path))
    assert trainer.translations_off_positions(data, 2) == 0
    assert trainer.translations_off_positions(data, 4) == 32


@pytest.mark.slow  # builds and compiles the networks
def test_training_task_warns_about_translations_off_the_site_lattice(tmp_path, caplog):
    path = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=4, repeats=(2, 2, 2), counts=(20, 12),
                             noise=0.0)
    config = from_dict(Config, {**to_dict(tiny_config(path)), "data": {"train_file": str(path),
                                                                        "augmentation": "online",
                                                                        "translation_grid": 4}})
    with caplog.at_level("WARNING", logger="dismax"):
        trainer.make_task(config, RunDir(tmp_path / "run").create())
    assert "32 of its 63 translations move atoms" in caplog.text


def final_state(run_dir, config):
    _, _, state = trainer.restore_state(RunDir(run_dir), config)
    return state


@pytest.mark.slow
def test_resume_continues_with_identical_results_and_sampling_cli(tmp_path):
    from dismax import sample as sample_cli
    from dismax.train import prepare_run

    path = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=16)
    config = tiny_config(path)
    straight = prepare_run(config, tmp_path / "straight")
    trainer.train(config, straight)

    interrupted = RunDir(tmp_path / "interrupted")
    trainer.train(tiny_config(path, max_minutes=0.0), interrupted)  # stops after epoch 0
    assert [row["epoch"] for row in interrupted.read_metrics()] == [0]
    trainer.train(config, interrupted)

    for a, b in zip(jax.tree.leaves(final_state(straight.path, config)),
                    jax.tree.leaves(final_state(interrupted.path, config))):
        np.testing.assert_array_equal(a, b)
    rows_a, rows_b = straight.read_metrics(), interrupted.read_metrics()
    assert [r["epoch"] for r in rows_b] == [0, 1, 2]
    for ra, rb in zip(rows_a, rows_b):
        for key in trainer.METRIC_COLUMNS:
            assert ra[key] == rb[key] or (np.isnan(ra[key]) and np.isnan(rb[key]))
    assert np.isnan(rows_a[0]["close_pairs"]) and np.isfinite(rows_a[1]["close_pairs"])
    assert (straight.plots / "losses.png").stat().st_size > 0
    assert sorted(p.name for p in straight.samples.iterdir()) == ["epoch000001_member0.extxyz",
                                                                   "epoch000002_member0.extxyz"]

    out = tmp_path / "gen.extxyz"
    assert sample_cli.main(["--run-dir", str(straight.path), "--n", "5", "--out", str(out),
                            "--batch-size", "2"]) == 0
    generated = read_extxyz(out)
    training = read_extxyz(path)
    assert generated.batch_size == 5
    np.testing.assert_allclose(generated.lattice, np.broadcast_to(training.lattice[0], (5, 3, 3)))
    np.testing.assert_array_equal(generated.species, np.broadcast_to(training.species[0], (5, 8)))
    with pytest.raises(DismaxInputError, match="member"):
        sample_cli.main(["--run-dir", str(straight.path), "--n", "2", "--out", str(out), "--member", "3"])


@pytest.mark.slow
def test_sigkill_then_restart_gives_identical_results(tmp_path):
    path = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=16)
    config = tiny_config(path, epochs=6)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    command = [sys.executable, "-m", "dismax.train", "--config", str(config_file)]
    env = dict(os.environ, DISMAX_NO_PROGRESS="1")
    subprocess.run(command + ["--run-dir", str(tmp_path / "straight")], check=True, env=env,
                   cwd=Path(__file__).parents[2])

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--run-dir", str(killed)], env=env, cwd=Path(__file__).parents[2])
    checkpoints = killed / "checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if checkpoints.is_dir() and any(p.name.isdigit() and int(p.name) >= 2 for p in checkpoints.iterdir()):
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(RunDir(killed).read_metrics()) < 6
    subprocess.run(command + ["--run-dir", str(killed)], check=True, env=env, cwd=Path(__file__).parents[2])

    for a, b in zip(jax.tree.leaves(final_state(tmp_path / "straight", config)),
                    jax.tree.leaves(final_state(killed, config))):
        np.testing.assert_array_equal(a, b)
    assert [r["epoch"] for r in RunDir(killed).read_metrics()] == list(range(6))
