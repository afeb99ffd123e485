"""Pre-training through ``python -m dismax.train``: the loss falls, the checkpoint restores, repaired samples
are written, bad inputs give one ``error:`` line and exit 2; the GAN stage trains from the pre-training run and
both generators are evaluated on the same corrupted inputs."""

import json

import jax
import numpy as np
import pytest
import yaml

from dismax import sample as sample_cli
from dismax import train as train_cli
from dismax.bench import __main__ as bench_cli
from dismax.bench.ssl_eval import evaluate_setting, sample_masks, visible_majority
from dismax.cli import main_wrapper
from dismax.config import load_config
from dismax.io import read_structure_set
from dismax.runs import RunDir
from dismax.ssl import gan
from dismax.ssl.backbone import Backbone
from dismax.ssl.corruption import CorruptionConfig
from dismax.ssl.data import PaddedSet
from dismax.ssl.pretrain import initial_params, restore_generator
from dismax.ssl.steps import Generator
from tests.ssl.helpers import TINY_BACKBONE, rock_salt_set, write_tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ssl")
    # 6- and 8-atom cells in two size buckets
    config = write_tiny_config(folder, n_train=16, data={"max_buckets": 2}, epochs=12, val_every=12,
                               checkpoint_every=12)
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
             (["model.corruption.sigma_ratio_max=0.01"], "sigma_ratio_max"),
             (["data.max_buckets=0"], "max_buckets"),
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
                    "masked_species_accuracy", "prior_accuracy"):
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
    species = np.array([[26, 26, 28, 0], [24, 28, 28, 26], [28, 26, 24, 24]])
    visible = np.array([[True, True, True, False], [False] * 4, [True, True, False, False]])
    assert visible_majority(species, visible).tolist() == [26, 0, 26]   # ties: the lowest Z
    code = main_wrapper(bench_cli.main, ["ssl", "--run-dir", str(tmp_path), "--data", "x.extxyz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a run directory" in err[0]


def random_params(network: Backbone, seed: int):
    """Random values (normal, sd 0.1) of the backbone's parameter shapes: the evaluation bookkeeping tested
    below holds for any parameters, and compiling the initialisation costs more than the evaluation."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: initial_params(network, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda leaf: jax.numpy.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype), shapes)


def test_two_generators_are_evaluated_on_the_same_corrupted_inputs():
    test = PaddedSet(*rock_salt_set(3).padded())
    network = Backbone(TINY_BACKBONE)
    rows = [evaluate_setting(Generator(network, random_params(network, seed), CorruptionConfig(), None), test,
                             "beta", 0.2, 2, 4, seed=5)[0] for seed in (0, 1)]
    assert rows[0]["position_rms_input"] == rows[1]["position_rms_input"] > 0     # same noise
    assert rows[0]["prior_accuracy"] == rows[1]["prior_accuracy"]                 # same masks
    assert np.isfinite(rows[0]["position_rms_after"]) and np.isfinite(rows[1]["position_rms_after"])
    assert rows[0]["position_rms_after"] != rows[1]["position_rms_after"]         # different repairs
    other_seed = evaluate_setting(Generator(network, random_params(network, 0), CorruptionConfig(), None), test,
                                  "beta", 0.2, 2, 4, seed=6)[0]
    assert other_seed["position_rms_input"] != rows[0]["position_rms_input"]


@pytest.mark.slow  # the critic step's second-order graph: minutes of compilation on a loaded CPU
def test_gan_stage_trains_from_the_pretraining_run_and_is_evaluated_on_the_same_inputs(trained, capsys):
    config = {"model": {"name": "ssl_gan", "generator_run": str(trained / "run"), "generator_checkpoint": "latest",
                        "discriminator_layers": 1, "critic_steps": 2, "position_weight": 10.0},
              "train": {"epochs": 1, "batch_size": 4}, "seed": 0}
    path = trained / "gan.yaml"
    path.write_text(yaml.safe_dump(config))
    compiled_before = gan.discriminator_step._cache_size(), gan.generator_step._cache_size()
    assert main_wrapper(train_cli.main, ["--config", str(path), "--run-dir", str(trained / "gan")]) == 0
    # each step compiled once (a first state mixing committed and uncommitted arrays compiled them twice)
    assert (gan.discriminator_step._cache_size(), gan.generator_step._cache_size()) == tuple(
        n + 1 for n in compiled_before)
    rows = RunDir(trained / "gan").read_metrics()
    assert len(rows) == 1 and np.isfinite(rows[0]["val_g_loss"]) and np.isfinite(rows[0]["val_critic"])
    setup, state, _ = gan.build(load_config(path, config_class=gan.Config), abstract=True)
    assert sorted(k for k in state.d_params["params"] if k.startswith("interaction")) == ["interaction_0"]
    assert setup.generator.config.n_layers == TINY_BACKBONE.n_layers
    reports = []
    for run in ("run", "gan"):
        args = ["ssl", "--run-dir", str(trained / run), "--data", str(trained / "val.extxyz"), "--mask", "beta",
                "--noise", "0.2", "--repeats", "2", "--batch-size", "4", "--out", str(trained / f"eval_{run}")]
        assert main_wrapper(bench_cli.main, args) == 0
        reports.append(json.loads((trained / f"eval_{run}" / "metrics.json").read_text())["settings"][0])
    assert reports[0]["position_rms_input"] == reports[1]["position_rms_input"]
    assert reports[0]["position_rms_after"] != reports[1]["position_rms_after"]
