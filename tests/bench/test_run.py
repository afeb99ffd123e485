"""``python -m dismax.bench run|score|status``: scores against references, report = ``bench metrics``, errors."""

import json

import numpy as np
import pytest
import yaml

from dismax.bench.__main__ import main
from dismax.cli import main_wrapper
from dismax.io import write_extxyz
from dismax.structures import Crystals
from tests.bench.test_alloy import random_alloy
from tests.bench.test_motifs import diamond

A_SI_OPTIONS = ["--replicates", "20", "--workers", "1", "--angle-cutoff", "2.6"]


def _batch(structures):
    return Crystals(*(np.stack(a) for a in zip(*structures)))


@pytest.fixture
def si_files(tmp_path):
    train = _batch([diamond(noise=0.03, seed=s) for s in range(3)])
    rng = np.random.default_rng(5)
    uniform = Crystals(rng.random((3, 8, 3)), train.lattice, train.species)
    write_extxyz(train, tmp_path / "train.extxyz")
    write_extxyz(uniform, tmp_path / "uniform.extxyz")
    return tmp_path / "train.extxyz", tmp_path / "uniform.extxyz"


@pytest.fixture
def alloy_files(tmp_path):
    rng = np.random.default_rng(0)
    lattice = np.eye(3) * 14.4
    train = _batch([((c / 14.4) % 1, lattice, n) for c, n in (random_alloy(rng) for _ in range(3))])
    uniform = Crystals(rng.random((2, 256, 3)), train.lattice[:2], train.species[:2])
    write_extxyz(train, tmp_path / "alloy_train.extxyz")
    write_extxyz(uniform, tmp_path / "alloy_uniform.extxyz")
    return tmp_path / "alloy_train.extxyz", tmp_path / "alloy_uniform.extxyz"


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_a_si_score_is_zero_on_the_training_set_and_large_on_uniform_positions(tmp_path, si_files):
    train, uniform = si_files
    assert main(["score", "--family", "a_si", "--train", str(train), "--gen", str(train), "--out",
                 str(tmp_path / "self"), *A_SI_OPTIONS]) == 0
    assert main(["score", "--family", "a_si", "--train", str(train), "--gen", str(uniform), "--n-generated", "4",
                 "--out", str(tmp_path / "uniform"), *A_SI_OPTIONS]) == 0
    same = _metrics(tmp_path / "self")["models"]["generated"]["metrics"]
    far = _metrics(tmp_path / "uniform")["models"]["generated"]["metrics"]
    for name in ("d_motif", "d_rdf", "d_angle", "d_angle_cutoff"):
        assert same[name]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert far["d_rdf"]["mean"] > 5 and far["d_motif"]["mean"] > 0.2 and far["d_angle"]["mean"] > 0.05
    assert far["pct_failed"]["mean"] >= 25.0                 # 4 generated, at most 3 scored
    report = (tmp_path / "uniform" / "report.md").read_text()
    assert "| generated | 1 |" in report and "CDVAE (published data)" in report
    html = (tmp_path / "uniform" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html


def test_alloy_score_report_equals_bench_metrics_by_hand(tmp_path, alloy_files):
    train, uniform = alloy_files
    out = tmp_path / "self"
    assert main(["score", "--family", "alloy", "--train", str(train), "--gen", str(train), "--replicates", "30",
                 "--out", str(out)]) == 0
    summary = _metrics(out)["models"]["generated"]["metrics"]
    assert summary["d_cluster"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert summary["pct_failed"]["mean"] == 0.0 and summary["pct_vacancy"]["mean"] == 0.0
    score_dir = out / "generated" / "0" / "score"
    assert main(["metrics", "--family", "alloy", "--train", str(train), "--gen", str(score_dir / "gen.extxyz"),
                 "--status", str(score_dir / "status.csv"), "--n-generated", "3", "--replicates", "30",
                 "--out", str(tmp_path / "by_hand")]) == 0
    by_hand = _metrics(tmp_path / "by_hand")["metrics"]
    assert _metrics(out)["per_seed"]["generated"]["0"] == by_hand
    assert summary["d_cluster"]["ci_high"] == by_hand["d_cluster"]["ci_high"]

    far = tmp_path / "uniform"
    assert main(["score", "--family", "alloy", "--train", str(train), "--gen", str(uniform), "--replicates", "30",
                 "--out", str(far)]) == 0
    assert _metrics(far)["models"]["generated"]["metrics"]["pct_failed"]["mean"] == 100.0
    assert "rejected_too_many_removed" in (far / "generated" / "0" / "score" / "status.csv").read_text()


def test_decode_failures_of_the_sampler_count_as_failed(tmp_path, alloy_files):
    """A sampler that left out structures it could not decode (sample summary beside its file): they are
    failed_decode rows with their generation IDs, and % failed counts them, also when all of them failed."""
    from dismax.io import read_extxyz
    from dismax.validation import write_sample_summary

    train, _ = alloy_files
    cells = read_extxyz(train)
    gen = tmp_path / "partial.extxyz"
    write_extxyz(cells[np.array([0, 2])], gen)
    write_sample_summary(gen, 4, [1, 3], "decoded composition differs from the training data",
                         {"species_accuracy": 0.96875})
    out = tmp_path / "partial"
    assert main(["score", "--family", "alloy", "--train", str(train), "--gen", str(gen), "--replicates", "30",
                 "--out", str(out)]) == 0
    metrics = _metrics(out)["models"]["generated"]["metrics"]
    assert metrics["pct_failed"]["mean"] == 50.0 and metrics["d_cluster"]["mean"] >= 0.0
    assert _metrics(out)["n_generated"] == 4
    statuses = (out / "generated" / "0" / "score" / "status.csv").read_text().splitlines()[1:]
    assert [line.split(",")[:2] for line in statuses] == [["0", "ok"], ["1", "failed_decode"], ["2", "ok"],
                                                          ["3", "failed_decode"]]
    sample_record = json.loads((out / "generated" / "0" / "sample" / "done.json").read_text())
    assert (sample_record["n"], sample_record["n_failed_decode"]) == (2, 2)
    assert _metrics(out)["models"]["generated"]["failure_causes"] == {"failed_decode": 2}
    assert "- generated: failed_decode 2" in (out / "report.md").read_text()
    assert _metrics(out)["models"]["generated"]["species_accuracy"] == {"0": 0.96875}
    assert "- generated: seed 0 0.969" in (out / "report.md").read_text()

    empty = tmp_path / "none.extxyz"
    empty.write_text("")
    write_sample_summary(empty, 3, [0, 1, 2], "decoded composition differs from the training data")
    out = tmp_path / "none"
    assert main(["score", "--family", "alloy", "--train", str(train), "--gen", str(empty), "--replicates", "30",
                 "--out", str(out)]) == 0
    metrics = _metrics(out)["models"]["generated"]["metrics"]
    assert metrics["pct_failed"]["mean"] == 100.0 and metrics["d_cluster"] is None
    assert _metrics(out)["models"]["generated"]["failure_causes"] == {"failed_decode": 3}
    assert _metrics(out)["models"]["generated"]["species_accuracy"] == {}
    assert "Species accuracy" not in (out / "report.md").read_text()
    assert "## Failures" not in (out / "report.md").read_text()
    assert not list(out.glob("generated/0/*/failed.json")) and (out / "generated/0/score/done.json").is_file()


def _bench_config(tmp_path, train, name="bench", **changes):
    config = {"family": "alloy", "dataset": {"train_file": str(train), "val_file": str(train)},
              "models": [{"name": "given", "generated": str(train)}], "n_generated": 3,
              "metrics": {"n_replicates": 10}}
    config.update(changes)
    path = tmp_path / f"bench_{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _error(capsys, argv):
    code = main_wrapper(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("error:")], err


def test_bad_input_is_one_error_line_and_keeps_finished_stages(tmp_path, alloy_files, si_files, capsys):
    train, _ = alloy_files
    out = tmp_path / "run"
    config = _bench_config(tmp_path, train)
    assert main_wrapper(main, ["run", "--config", str(config), "--out", str(out)]) == 0
    finished = {p: p.read_bytes() for p in out.rglob("done.json")}
    assert len(finished) == 7
    capsys.readouterr()
    model_config = tmp_path / "model.yaml"
    model_config.write_text("model:\n  name: no_such_model\n")
    cases = [
        (["run", "--config", str(config), "--out", str(out), "relax.fmx=0.1"], "relax.fmx"),
        (["run", "--config", str(_bench_config(tmp_path, train, "model", models=[{"name": "m", "config": str(model_config)}])),
          "--out", str(out)], "no_such_model"),
        (["run", "--config", str(_bench_config(tmp_path, train, "dataset", dataset={"name": "no_such_dataset"})),
          "--out", str(out)], "no_such_dataset"),
        (["run", "--config", str(_bench_config(tmp_path, train, "file", dataset={"train_file": str(tmp_path / "missing")})),
          "--out", str(out)], "does not exist"),
        (["score", "--family", "a_si", "--train", str(si_files[0]), "--gen", str(train), "--out", str(out)],
         "another family"),
    ]
    for argv, words in cases:
        code, errors, err = _error(capsys, argv)
        assert code == 2 and len(errors) == 1 and words in errors[0], err
        assert not [line for line in err if "Traceback" in line]
    assert {p: p.read_bytes() for p in out.rglob("done.json")} == finished

    main_wrapper(main, ["status", str(out)])
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["model", "seed", "train", "sample", "postprocess", "relax", "score"]
    assert "given" in table and table.count("done") == 7


TINY_MODEL = """
model:
  name: diffusion
  denoiser: {name: cspnet, hidden: 8, n_layers: 1, n_freq: 2, time_dim: 8}
  n_steps: 20
train: {epochs: 2, batch_size: 2, val_every: 1, checkpoint_every: 1, ema_decay: 0.9}
sample: {n_steps: 3, batch_size: 2}
"""


def _kill_during(argv, stage_dir, rng, env, timeout=900):
    """Start the command, SIGKILL it at a random moment once ``stage_dir`` exists; False if it finished first."""
    import subprocess
    import time

    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not stage_dir.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    finished = process.poll() is not None
    process.kill()
    process.wait()
    return not finished


@pytest.mark.slow
def test_sigkill_in_every_stage_then_rerun_gives_identical_results(tmp_path, alloy_files):
    import os
    import subprocess
    import sys

    train, _ = alloy_files
    rng = np.random.default_rng(3)
    noisy = _batch([((c / 14.4) % 1, np.eye(3) * 14.4, n) for c, n in (random_alloy(rng, 0.1) for _ in range(2))])
    write_extxyz(noisy, tmp_path / "given.extxyz")
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL)
    config = _bench_config(tmp_path, train, "kill", seeds=[0], n_generated=2,
                           models=[{"name": "tiny", "config": "tiny.yaml"},
                                   {"name": "given", "generated": str(tmp_path / "given.extxyz")}],
                           report={"n_pictures": 1}, eval={"every": 1, "n_samples": 2})
    env = dict(os.environ, DISMAX_NO_PROGRESS="1")
    command = [sys.executable, "-m", "dismax.bench", "run", "--config", str(config), "--out"]
    subprocess.run(command + [str(tmp_path / "reference")], env=env, check=True, capture_output=True)

    out = tmp_path / "killed"
    stages = [out / "data"] + [out / model / "0" / stage for model in ("tiny", "given")
                               for stage in ("train", "sample", "postprocess", "relax", "score")] + [out / "report"]
    kills = 0
    for stage_dir in stages:
        finished = {p: p.read_bytes() for p in out.rglob("done.json") if p.parent.name != "report"}
        if (stage_dir / "done.json").exists():
            continue
        kills += _kill_during(command + [str(out)], stage_dir, rng, env)
        assert {p: p.read_bytes() for p in finished} == finished      # nothing finished was redone
    assert kills >= 5
    finished = {p: p.read_bytes() for p in out.rglob("done.json") if p.parent.name != "report"}
    subprocess.run(command + [str(out)], env=env, check=True, capture_output=True)
    assert {p: p.read_bytes() for p in finished} == finished
    for name in ("metrics.json", "report.md"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    assert json.loads((out / "metrics.json").read_text())["models"]["given"]["metrics"]["d_cluster"]["mean"] > 0
    header = (out / "tiny" / "0" / "train" / "metrics.csv").read_text().splitlines()[0]
    assert "bench_d_cluster" in header.split(",")
    timings = json.loads((out / "timings.json").read_text())
    assert {"data", "tiny/0/train", "given/0/score", "report", "total"} <= set(timings)


@pytest.mark.parametrize("name", ["a_si_small", "alloy_small", "alloy", "a_si", "interface", "interface_small",
                                  "unet_a_si_small", "unet_alloy_small", "unet_interface_small"])
def test_shipped_bench_configs_load_with_their_model_configs(name, tmp_path):
    from pathlib import Path

    from dismax.bench.run import load_bench_config, model_config

    config, base = load_bench_config(Path(__file__).parents[2] / "configs" / "bench" / f"{name}.yaml")
    assert name.removeprefix("unet_").startswith(config.family.split("_")[0])
    for entry in config.models:
        assert model_config(entry, base, config.seeds[-1], tmp_path).seed == config.seeds[-1]
    assert (config.n_generated, len(config.seeds)) == ((1000, 3) if "small" not in name else (config.n_generated, 1))


def test_relax_potential_may_be_a_shipped_or_fitted_potential(tmp_path):
    from pathlib import Path

    from dismax.bench.run import load_bench_config, validate
    from dismax.errors import DismaxConfigError

    path = Path(__file__).parents[2] / "configs" / "bench" / "interface_small.yaml"
    for potential in ("interface_chgnet", "sw", "run:some/run"):
        config, base = load_bench_config(path, [f"relax.potential={potential}"])
        validate(config, base, tmp_path)
    config, base = load_bench_config(path, ["relax.potential=interface_mace"])
    with pytest.raises(DismaxConfigError, match="interface_chgnet"):
        validate(config, base, tmp_path)


def test_in_training_benchmark_evaluation_scores_each_member(alloy_files):
    from types import SimpleNamespace

    from dismax.bench.evaluation import benchmark_evaluation
    from dismax.io import read_extxyz

    train_file, uniform_file = alloy_files
    train, uniform = read_extxyz(train_file), read_extxyz(uniform_file)
    samples = {0: train, 1: uniform}                     # member 0 reproduces the data, member 1 is noise
    task = SimpleNamespace(members=[{"member": 0}, {"member": 1}],
                           sample=lambda state, member, n, key: samples[member][:n])
    evaluation = benchmark_evaluation("alloy", train, every=2, n_samples=3)
    assert evaluation.columns == ("bench_d_cluster",) and evaluation.every == 2
    values = evaluation.evaluate(task, None, 3)["bench_d_cluster"]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and np.isnan(values[1])
