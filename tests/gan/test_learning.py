"""The CryinGAN learning-curve benchmark (benchmarks/cryingan_learning.py) on a tiny 2×2×2 FCC set, and the
reduced-cell config trained for a short budget (slow)."""

from pathlib import Path

import numpy as np
import pytest

from benchmarks import cryingan_learning
from dismax.config import from_dict, load_config
from dismax.diffusion.quality import aligned_site_fraction
from dismax.gan import trainer
from dismax.gan.trainer import Config
from dismax.runs import RunDir
from tests.gan.helpers import write_fcc_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_learning_rows_torch_comparison_and_outputs(tmp_path):
    pytest.importorskip("torch")
    path = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=16, repeats=(2, 2, 2), counts=(20, 12))
    config = from_dict(Config, {
        "data": {"train_file": str(path), "augmentation": "online", "translation_grid": 2},
        "model": {"gen_channels": 8, "w_dist": 1.0},
        "train": {"batch_size": 8, "epochs": 2, "gen_int": 1, "val_every": 1, "checkpoint_every": 1, "n_save": 2,
                  "lr_gen": 1e-4, "lr_coord": 1e-4, "lr_dist": 1e-4},
    })
    run = RunDir(tmp_path / "run")
    trainer.train(config, run, cryingan_learning.site_evaluation(every=1, n=4, lattice_constant=3.6))
    rows = cryingan_learning.learning_rows(run.read_metrics())
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert 0 <= r["distinct_sites"] <= r["site_fraction"] <= 1 and r["close_pairs"] >= 0
        assert np.isfinite(r["distance_dis"]) and r["cpu_minutes"] > 0
    data = trainer.load_training_data(config)
    reference = cryingan_learning.torch_rows(config, data, 4, {2, 4}, n=4, lattice_constant=3.6)
    assert [r["step"] for r in reference] == [2, 4]
    assert all(0 <= r["distinct_sites"] <= r["site_fraction"] <= 1 for r in reference)
    assert all(r["close_pairs"] >= 0 and np.isfinite(r["distance_dis"]) for r in reference)
    cryingan_learning.write_outputs(rows, (0.3, 0.25), run.path, reference)
    table = (run.path / "learning_comparison.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table[1:]] == ["dismax"] * 2 + ["pytorch"] * 2
    assert (run.path / "learning.png").stat().st_size > 0
    assert (run.path / "learning.csv").read_text().splitlines()[0].split(",") == list(cryingan_learning.COLUMNS)


@pytest.mark.slow
def test_reduced_cell_config_leaves_the_collapsed_start(tmp_path):
    """configs/cryingan_alloy_2x2x2_small.yaml for 4 epochs (100 steps). It does not order at CPU budgets
    (see the config's header), so this checks what it does reach: from every atom near one point (496
    pairs < 1.5 Å per structure) to spread-out cells with about the close-pair count and site fractions of
    uniform random positions in the same cell."""
    config = load_config(ROOT / "configs" / "cryingan_alloy_2x2x2_small.yaml", ["train.epochs=4", "train.val_every=4"])
    run = RunDir(tmp_path / "run")
    trainer.train(config, run, cryingan_learning.site_evaluation(every=4, n=64, lattice_constant=3.6))
    (row,) = cryingan_learning.learning_rows(run.read_metrics())
    uniform = aligned_site_fraction(np.random.default_rng(0).random((64, 32, 3)), np.eye(3) * 7.2, 2)
    assert row["step"] == 100
    assert row["close_pairs"] < 40  # collapsed start: 496; uniform random positions: ~19
    assert row["site_fraction"] > uniform[0] - 0.05 and row["distinct_sites"] > uniform[1] - 0.05
