"""``bench run`` with several seeds: one vmapped ensemble run serves every seed where the model supports it,
per-seed runs otherwise (same structures either way), and ``eval.best_by`` picks the sampled checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest

from dismax.bench.__main__ import main
from dismax.bench.run import load_bench_config, plan_ensembles, stage_table
from dismax.checkpoint import Checkpointer
from dismax.io import read_extxyz
from dismax.runs import RunDir
from tests.bench.test_run import TINY_MODEL, _bench_config, si_files  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, train, name, **changes):
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL)
    settings = dict(family="a_si", seeds=[0, 1], n_generated=2, models=[{"name": "tiny", "config": "tiny.yaml"}],
                    relax={"potential": "none"}, report={"n_pictures": 1},
                    metrics={"n_replicates": 10, "workers": 1, "angle_cutoff": 2.6})
    return _bench_config(tmp_path, train, name, **{**settings, **changes})


def _done(out):
    return {p: p.read_bytes() for p in out.rglob("done.json") if p.parent.name != "report"}


@pytest.mark.slow
def test_one_ensemble_run_serves_every_seed_resumes_and_samples_best_by_the_benchmark_metric(tmp_path, si_files):
    train, _ = si_files
    out = tmp_path / "run"
    config = _config(tmp_path, train, "ensemble", eval={"every": 1, "n_samples": 2, "best_by": "d_rdf"})
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    assert not (out / "tiny" / "0" / "train").exists() and not (out / "tiny" / "1" / "train").exists()
    run = RunDir(out / "tiny" / "ensemble" / "train")
    rows = run.read_metrics()
    assert sorted({(r["member"], r["seed"]) for r in rows}) == [(0, 0), (1, 1)]
    # best/ is the epoch with the lowest mean over the members of the in-training d_rdf
    means = {}
    for r in rows:
        means.setdefault(r["epoch"], []).append(r["bench_d_rdf"])
    checkpointer = Checkpointer(run.checkpoints)
    try:
        assert checkpointer.best_metric() == pytest.approx(min(np.mean(v) for v in means.values()))
    finally:
        checkpointer.close()
    generated = [read_extxyz(out / "tiny" / str(s) / "sample" / "gen.extxyz") for s in (0, 1)]
    assert not np.allclose(generated[0].frac, generated[1].frac)
    timings = json.loads((out / "timings.json").read_text())
    assert "tiny/ensemble/train" in timings and "tiny/1/score" in timings and "tiny/0/train" not in timings
    table = stage_table(out)
    assert [line.split()[:3] for line in table.splitlines()[2:4]] == [["tiny", "0", "done"], ["tiny", "1", "done"]]
    assert set(json.loads((out / "metrics.json").read_text())["per_seed"]["tiny"]) == {"0", "1"}

    finished = _done(out)
    (out / "tiny" / "1" / "score" / "done.json").unlink()      # a rerun resumes at the one unfinished stage
    del finished[out / "tiny" / "1" / "score" / "done.json"]
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    assert {p: _done(out)[p] for p in finished} == finished


@pytest.mark.slow
def test_model_without_ensemble_support_trains_per_seed_with_the_same_results(tmp_path, si_files, monkeypatch):
    import dismax.diffusion.trainer

    train, _ = si_files
    config = _config(tmp_path, train, "plain")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "ensemble")]) == 0
    monkeypatch.delattr(dismax.diffusion.trainer, "seed_ensemble")     # as a model that trains one seed per run
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "per_seed")]) == 0
    assert (tmp_path / "ensemble" / "tiny" / "ensemble" / "train").is_dir()
    for seed in (0, 1):
        assert (tmp_path / "per_seed" / "tiny" / str(seed) / "train" / "done.json").is_file()
        pair = [read_extxyz(tmp_path / d / "tiny" / str(seed) / "sample" / "gen.extxyz")
                for d in ("ensemble", "per_seed")]
        np.testing.assert_allclose(pair[0].frac, pair[1].frac, atol=1e-4)   # member k = the run with seed k


def test_ensemble_plan_of_the_shipped_models(tmp_path):
    config, base = load_bench_config(ROOT / "configs" / "bench" / "interface.yaml")
    plan = plan_ensembles(config, base, tmp_path)
    assert plan["diffusion"] == ["seed=0", "train.n_seeds=3"]
    assert plan["cryingan"] == ["seed=0", "ensemble.seeds=[0, 1, 2]", "ensemble.independent_data=true"]
    gapped, _ = load_bench_config(ROOT / "configs" / "bench" / "interface.yaml", ["seeds=[0, 2]"])
    assert list(plan_ensembles(gapped, base, tmp_path)) == ["cryingan"]      # diffusion members are consecutive
    single, _ = load_bench_config(ROOT / "configs" / "bench" / "interface.yaml", ["ensemble=false"])
    assert plan_ensembles(single, base, tmp_path) == {}


def test_overall_eta_from_the_finished_stages_of_the_same_kind(tmp_path):
    from dismax.bench.run import remaining_time, run_stage

    plan = [("m", stage, tmp_path / str(seed) / stage) for seed in (0, 1, 2) for stage in ("train", "sample")]
    assert remaining_time(plan) == "no ETA yet: m train, m sample not yet timed"
    run_stage(tmp_path / "0" / "train", "train", lambda d: {})
    record = tmp_path / "0" / "train" / "done.json"
    record.write_text(json.dumps({"stage": "train", "seconds": 120.0}))
    assert remaining_time(plan) == "ETA > 4.0 min: m sample not yet timed"      # two more trainings
    for seed, seconds in ((0, 30.0), (1, 90.0)):
        (tmp_path / str(seed) / "sample").mkdir(parents=True)
        (tmp_path / str(seed) / "sample" / "done.json").write_text(json.dumps({"seconds": seconds}))
    assert remaining_time(plan) == "ETA 5.0 min"             # 2 x 120 s + 1 x mean(30, 90) s
    for directory in {d for _, _, d in plan}:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "done.json").write_text(json.dumps({"seconds": 1.0}))
    assert remaining_time(plan) == "nothing left"


def test_in_training_evaluation_of_a_model_without_one_is_a_config_error(tmp_path):
    from dismax.bench.run import validate
    from dismax.errors import DismaxConfigError

    path = ROOT / "configs" / "bench" / "alloy_small.yaml"
    models = "models=[{name: unet, config: ../unimat_alloy_small.yaml}]"
    config, base = load_bench_config(path, [models, "eval.every=1"])
    with pytest.raises(DismaxConfigError, match="no in-training evaluation"):
        validate(config, base, tmp_path)
    validate(load_bench_config(path, [models])[0], base, tmp_path)
    with pytest.raises(DismaxConfigError, match="eval.best_by"):
        validate(load_bench_config(path, ["eval.every=1", "eval.best_by=d_rdf"])[0], base, tmp_path)
