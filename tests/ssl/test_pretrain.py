"""Pre-training through ``python -m dismax.train``: the loss falls, the checkpoint restores, repaired samples
are written, bad inputs give one ``error:`` line and exit 2."""

import jax
import numpy as np
import pytest

from dismax import sample as sample_cli
from dismax import train as train_cli
from dismax.cli import main_wrapper
from dismax.io import read_structure_set
from dismax.runs import RunDir
from dismax.ssl.pretrain import restore_generator
from dismax.training import restore_checkpoint
from tests.ssl.helpers import write_tiny_config


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
    _, network, params = restore_generator(run)
    _, _, again = restore_generator(run, "best")
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
