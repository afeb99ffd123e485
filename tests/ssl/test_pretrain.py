"""Pre-training through ``python -m dismax.train``: the loss falls, the checkpoint restores, repaired samples
are written, bad inputs give one ``error:`` line and exit 2."""

import json

import jax
import numpy as np
import pytest

from dismax import sample as sample_cli
from dismax import train as train_cli
from dismax.bench import __main__ as bench_cli
from dismax.bench.ssl_eval import sample_masks
from dismax.cli import main_wrapper
from dismax.io import read_structure_set
from dismax.runs import RunDir
from dismax.ssl.data import PaddedSet
from dismax.ssl.pretrain import restore_generator
from tests.ssl.helpers import rock_salt_set, write_tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ssl")
    config = write_tiny_config(folder, n_train=16, epochs=12, val_every=12, checkpoint_every=12)
    assert main_wrapper(train_cli.main, ["--config", config, "--run-dir", str(folder / "run")]) == 0
    return folder


@pytest.mark.slow
def test_short_pretraining_lowers_the_loss(trained):
    rows = RunDir(trained / "run").read_metrics()
    assert len(rows) == 12
    first, last = rows[0], rows[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"]
    assert last["train_species_loss"] < first["train_species_loss"]
    assert np.isfinite(last["val_accuracy"]) and np.isfinite(last["val_majority_accuracy"])


@pytest.mark.slow
def test_checkpoint_round_trip_and_samples(trained, capsys):
    run = RunDir(trained / "run")
    params = restore_generator(run).params
    again = restore_generator(run, "best").params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = trained / "repaired.extxyz"
    assert main_wrapper(sample_cli.main, ["--run", str(run.path), "--n", "5", "--out", str(out)]) == 0
    repaired = read_structure_set(out)
    assert len(repaired) == 5 and set(repaired.atom_counts.tolist()) <= {6, 8}
    assert all(set(np.asarray(c.species).ravel().tolist()) <= set(range(1, 119)) for c in repaired)


def test_bad_inputs_exit_2_with_one_error_line(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    cases = [(["model.backbone.hidden_irreps=8x0e"], "vector (1o)"),
             (["model.corruption.mask_ratio=0"], "mask_ratio"),
             (["data.train_file=" + str(tmp_path / "missing.extxyz")], "not a readable file"),
             (["data.path=" + str(tmp_path / "nowhere")], "does not exist")]
    for overrides, fragment in cases:
        code = main_wrapper(train_cli.main, ["--config", config, "--run-dir", str(tmp_path / "run"), *overrides])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bench_ssl_evaluation_writes_every_setting(trained, capsys):
    out = trained / "eval"
    args = ["ssl", "--run-dir", str(trained / "run"), "--data", str(trained / "val.extxyz"), "--mask", "alpha",
            "gamma", "--noise", "0.1", "0.2", "--repeats", "2", "--out", str(out), "--batch-size", "4"]
    assert main_wrapper(bench_cli.main, args) == 0
    report = json.loads((out / "metrics.json").read_text())
    rows = report["settings"]
    assert [(r["mask"], r["noise"]) for r in rows] == [("alpha", 0.1), ("alpha", 0.2), ("gamma", 0.1), ("gamma", 0.2)]
    assert rows[0]["n_samples"] == 4 * 2 and rows[2]["n_samples"] == 4 * 2   # 2 species; 2 repeats
    for row in rows:
        for key in ("structural_validity", "compositional_validity", "compositional_similarity", "novelty",
                    "masked_species_accuracy"):
            assert 0.0 <= row[key] <= 1.0
        assert row["position_rms_input"] > 0
    assert rows[1]["position_rms_input"] > rows[0]["position_rms_input"]
    assert (out / "plots" / "ssl_eval.png").stat().st_size > 0


def test_evaluation_masks_follow_the_protocol(tmp_path, capsys):
    test = PaddedSet(*rock_salt_set(3).padded())
    indices, masks = sample_masks(test, "alpha", 5, np.random.default_rng(0))
    assert indices.tolist() == [0, 0, 1, 1, 2, 2] and (masks.sum(axis=1) == [4, 4, 4, 2, 4, 4]).all()
    indices, masks = sample_masks(test, "gamma", 5, np.random.default_rng(0))
    assert len(indices) == 15 and (masks.sum(axis=1) == np.repeat([3, 2, 3], 5)).all()
    assert not (masks & ~test.atom_mask[indices]).any()
    code = main_wrapper(bench_cli.main, ["ssl", "--run-dir", str(tmp_path), "--data", "x.extxyz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a run directory" in err[0]
