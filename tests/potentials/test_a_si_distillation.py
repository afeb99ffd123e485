"""The a-Si distillation check end to end: melt-quench frames, SW labels, a small fitted potential, and
relaxations with it against relaxations with SW (the README's commands; ~40 min on a busy 2-core CPU)."""

import csv

import numpy as np
import pytest

from benchmarks import a_si_distillation
from dismax import train as train_cli
from dismax.data import __main__ as data_cli


@pytest.mark.slow
def test_distilled_potential_relaxes_a_si_like_sw(tmp_path):
    frames, labelled, run = tmp_path / "frames.extxyz", tmp_path / "labelled.extxyz", tmp_path / "run"
    assert a_si_distillation.main(["frames", "--out", str(frames)]) == 0
    assert data_cli.main(["label", "--calculator", "sw_a_si", "--in", str(frames), "--out", str(labelled)]) == 0
    assert train_cli.main(["--config", "configs/potential_a_si_small.yaml", "--run-dir", str(run),
                           f"data.train_file={labelled}"]) == 0
    with open(run / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["val_loss"] not in ("", "nan")]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert float(best["val_energy_mae_meV_per_atom"]) <= 10.0
    assert float(best["val_force_mae_meV_per_A"]) <= 150.0
    result = a_si_distillation.relaxation_check(f"run:{run}", n_cells=8)
    assert result["energy_difference_meV_per_atom"] <= 20.0
    assert result["coordination_difference"] <= 0.1
