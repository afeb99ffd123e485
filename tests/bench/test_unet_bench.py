"""Slow: a U-Net baseline through ``python -m dismax.bench run`` end to end (the shipped alloy bench config with
a tiny UniMat trained for one epoch on four synthetic alloy cells): every stage finishes and the report's
% failed is the share of generated structures that failed to decode or were rejected."""

import csv
import json
from pathlib import Path

import pytest

from dismax.bench.__main__ import main
from dismax.io import write_extxyz
from tests.diffusion.test_unet_sample import TINY
from tests.diffusion.unet_cells import alloy_cells

CONFIG = Path(__file__).parents[2] / "configs" / "bench" / "unet_alloy_small.yaml"


@pytest.mark.slow
def test_tiny_unimat_bench_run_reports_its_decode_failures(tmp_path):
    write_extxyz(alloy_cells(4), tmp_path / "cells.extxyz")
    overrides = ", ".join(f'"{o}"' for o in [*TINY, "train.epochs=1", "sample.n_steps=3"])
    model = f"models=[{{name: unimat, config: ../unimat_alloy_small.yaml, overrides: [{overrides}]}}]"
    out = tmp_path / "bench"
    assert main(["run", "--config", str(CONFIG), "--out", str(out), model, "n_generated=3", "metrics.n_replicates=10",
                 f"dataset.train_file={tmp_path / 'cells.extxyz'}", f"dataset.val_file={tmp_path / 'cells.extxyz'}"
                 ]) == 0
    seed_dir = out / "unimat" / "0"
    assert all((seed_dir / stage / "done.json").is_file() for stage in ("train", "sample", "postprocess", "score"))
    summary = json.loads((seed_dir / "sample" / "gen.extxyz.summary.json").read_text())
    with (seed_dir / "score" / "status.csv").open() as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert len(statuses) == 3 and statuses.count("failed_decode") == summary["n_failed"]
    assert json.loads((seed_dir / "sample" / "done.json").read_text())["n_failed_decode"] == summary["n_failed"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["failures"] == []
    pct_failed = report["models"]["unimat"]["metrics"]["pct_failed"]["mean"]
    assert pct_failed == pytest.approx(100.0 * sum(s != "ok" for s in statuses) / 3)
    assert "| unimat | 1 |" in (out / "report.md").read_text()
