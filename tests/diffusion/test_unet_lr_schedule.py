"""The U-Net trainer's learning-rate schedule: the rate of every step follows ``train.lr_schedule`` and a run
stopped by its time budget continues the schedule when resumed, and equal settings share one optimiser and its
compiled programs (a tiny UniMat on four cells)."""

import csv
import dataclasses

import numpy as np
import pytest

from dismax.config import load_config
from dismax.diffusion.unet_diffusion import init_state
from dismax.diffusion.unet_trainer import Config, build, check, dataset_space_groups
from dismax.errors import DismaxConfigError
from dismax.io import write_extxyz
from dismax.train import main as train_main
from tests.diffusion.test_unet_overfit import eight_atom_cells
from tests.diffusion.test_unet_sample import TINY


def expected_rate(step, lr, total, warmup):
    """The cosine decay over ``total`` steps times the linear warmup, written out independently."""
    return lr * 0.5 * (1 + np.cos(np.pi * min(step, total) / total)) * min(1.0, (step + 1) / warmup)


def test_cosine_schedule_with_warmup_is_followed_and_continued_on_resume(tmp_path):
    write_extxyz(eight_atom_cells(4), tmp_path / "cells.extxyz")
    (tmp_path / "config.yaml").write_text("model:\n  name: unimat\n")
    run = tmp_path / "run"
    args = ["--config", str(tmp_path / "config.yaml"), "--run-dir", str(run), *TINY,
            f"data.train_file={tmp_path / 'cells.extxyz'}", f"data.val_file={tmp_path / 'cells.extxyz'}",
            "train.epochs=4", "train.batch_size=2", "train.lr=2e-3", "train.lr_schedule=cosine",
            "train.warmup_steps=3", "train.val_every=4", "sample.n_steps=2"]
    assert train_main([*args, "train.max_minutes=0"]) == 0        # stops after epoch 0 (steps 0 and 1)
    with open(run / "metrics.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0]
    assert train_main(args) == 0                                   # resumes at step 2
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    # each row: the rate of its epoch's last step (2 steps per epoch, 8 in all)
    expected = [expected_rate(2 * epoch + 1, 2e-3, 8, 3) for epoch in range(4)]
    np.testing.assert_allclose([float(row["lr"]) for row in rows], expected, rtol=1e-5)  # float32
    assert expected[0] < expected[1] and expected[1] > expected[2] > expected[3] > 0
    # the coordinate error of the one-step x̂_0 at t = 0.05 on the validation cells (Å; at most the 6 Å cube's
    # half diagonal) is evaluated with the validation loss
    assert rows[-1]["val_loss"] and 0.0 < float(rows[-1]["val_x0_rms"]) < 3 ** 0.5 * 3


def test_constant_schedule_is_the_default_and_bad_keys_are_rejected(tmp_path):
    config = load_config("configs/unimat_alloy.yaml")
    assert (config.train.lr_schedule, config.train.warmup_steps) == ("constant", 0)
    with pytest.raises(DismaxConfigError, match="warmup_steps"):
        check(load_config("configs/unimat_alloy.yaml", ["train.warmup_steps=-1"]))
    with pytest.raises(DismaxConfigError, match="lr_schedule"):
        check(load_config("configs/unimat_alloy.yaml", ["train.lr_schedule=linear"]))


def test_a_second_seed_with_the_same_settings_reuses_the_optimiser_and_the_compiled_initialisation(tmp_path):
    """A bench run trains its seeds in one process: equal model and schedule settings give the same optimiser
    object, so the jitted initialisation (and train step) are not compiled again; another schedule is another
    optimiser. The two seeds' parameters differ."""
    (tmp_path / "config.yaml").write_text("model:\n  name: unimat\n")
    # the settings of the resume test above, whose compiled programs this process may already hold
    config = load_config(tmp_path / "config.yaml", [*TINY, "train.lr=2e-3", "train.lr_schedule=cosine",
                                                    "train.warmup_steps=3"])
    cells = eight_atom_cells(4)
    groups = dataset_space_groups(config, cells)
    _, cascade, optimizer, first = build(config, cells, groups, total_steps=8)
    compiled = init_state._cache_size()
    _, cascade_again, optimizer_again, second = build(dataclasses.replace(config, seed=1), cells, groups, total_steps=8)
    assert cascade_again == cascade and optimizer_again is optimizer
    assert init_state._cache_size() == compiled
    assert not np.array_equal(first.params["base"]["params"]["Dense_0"]["kernel"],
                              second.params["base"]["params"]["Dense_0"]["kernel"])
    assert build(config, cells, groups, abstract=True, total_steps=9)[2] is not optimizer
