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


def _bench_config(tmp_path, train, name="bench", **changes):
    config = {"family": "alloy", "dataset": {"train_file": str(train)},
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
