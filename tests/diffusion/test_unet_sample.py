"""U-Net sampling writes its output and a sample summary also when structures fail to decode, and the bench
post-processing counts the failures (a tiny UniMat trained for one step)."""

import json

import numpy as np
import pytest

from dismax.bench.cli import postprocess_file
from dismax.diffusion import unet_trainer
from dismax.io import read_structure_set, write_extxyz
from dismax.runs import RunDir
from dismax.sample import main as sample_main
from dismax.train import main as train_main
from tests.diffusion.test_unet_overfit import eight_atom_cells

TINY = ["model.dim=8", "model.dim_mults=[1]", "model.num_resnet_blocks=1", "model.layer_attns=[false]",
        "model.sr_layer_attns=[false]", "model.heads=1", "model.head_dim=8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An all-but-untrained UniMat (one step) on four Li4O4 cells: its frames land on background pixels."""
    root = tmp_path_factory.mktemp("unimat")
    write_extxyz(eight_atom_cells(4), root / "cells.extxyz")
    (root / "config.yaml").write_text("model:\n  name: unimat\n")
    assert train_main(["--config", str(root / "config.yaml"), "--run-dir", str(root / "run"), *TINY,
                       f"data.train_file={root / 'cells.extxyz'}", f"data.val_file={root / 'cells.extxyz'}",
                       "train.epochs=1", "train.batch_size=4", "sample.n_steps=2"]) == 0
    return root / "run"


def test_all_failed_sampling_writes_an_empty_file_and_its_summary(tiny_run, tmp_path):
    out = tmp_path / "gen.extxyz"
    assert sample_main(["--run-dir", str(tiny_run), "--n", "3", "--batch-size", "2", "--out", str(out)]) == 0
    assert out.is_file() and out.read_text() == ""
    summary = json.loads((tmp_path / "gen.extxyz.summary.json").read_text())
    assert (summary["n_requested"], summary["n_failed"], summary["failed_ids"]) == (3, 3, [0, 1, 2])
    assert len(summary["species_accuracy_per_structure"]) == 3 and summary["species_accuracy"] < 1
    accepted, rows, n = postprocess_file("interface", out)
    assert accepted is None and n == 3 and [r["status"] for r in rows] == ["failed_decode"] * 3


def test_partly_failed_sampling_keeps_generation_ids(tiny_run, tmp_path, monkeypatch):
    """The sampler's bookkeeping with a stand-in generator whose samples 1 and 4 of 5 (chunks of 2) decode
    to a wrong composition (one Li read as O; every Li read as O) and whose others are training-like cells."""
    cells = eight_atom_cells(6, seed=1)
    species = np.array(cells.species)
    species[1, 0] = 8
    species[4, :4] = 8
    starts = []

    def generate_with_failures(params, rep, cascade, key, n_structures, n_steps):
        start = n_structures * len(starts)      # chunks are generated in order
        starts.append(start)
        ids = np.arange(start, start + n_structures)
        return cells.frac[ids], species[ids], ~np.isin(ids, [1, 4])

    monkeypatch.setattr(unet_trainer, "generate", generate_with_failures)
    out = tmp_path / "gen.extxyz"
    unet_trainer.sample(RunDir(tiny_run), 5, out, batch_size=2)
    structures, infos = read_structure_set(out, with_info=True)
    assert starts == [0, 2, 4] and [info["id"] for info in infos] == [0, 2, 3]
    np.testing.assert_allclose(structures.as_crystals().frac, cells.frac[[0, 2, 3]], atol=1e-6)
    summary = json.loads((tmp_path / "gen.extxyz.summary.json").read_text())
    assert (summary["n_written"], summary["failed_ids"], summary["percent_failed"]) == (3, [1, 4], 40.0)
    assert summary["species_accuracy_per_structure"] == [1.0, 0.875, 1.0, 1.0, 0.5]
    assert summary["species_accuracy"] == pytest.approx(0.875)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.extxyz", "gen.extxyz.summary.json"]
    _, rows, n = postprocess_file("interface", out, min_dist=0.5)
    assert n == 5 and [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["status"] == "failed_decode" for r in rows] == [False, True, False, False, True]


def test_species_accuracy_needs_one_training_order():
    order = unet_trainer.training_order(np.array([[14, 8, 8], [14, 8, 8]]))
    np.testing.assert_array_equal(order, [14, 8, 8])
    np.testing.assert_allclose(unet_trainer.species_accuracy(np.array([[14, 8, 8], [8, 8, 14]]), order), [1, 1 / 3])
    assert unet_trainer.training_order(np.array([[14, 8, 8], [8, 14, 8]])) is None
