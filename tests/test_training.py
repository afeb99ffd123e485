"""The shared training loop (dismax.training) with a toy two-member linear model, the train CLI's config
validation before anything is written, and, per model, sharding and SIGKILL resume of the real trainers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from dismax.config import load_config, to_dict
from dismax.data.loader import BatchLoader
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.runs import RunDir
from dismax.train import main as train_main
from dismax.train import prepare_run
from dismax.training import (Evaluation, LoopConfig, Panel, TrainingTask, check_loop_config, check_lr_schedule,
                             learning_rate_schedule, load_run_state, train_loop)
from tests.tiny_models import make_task, tiny_config

ROOT = Path(__file__).resolve().parents[1]
X = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)


@jax.jit
def _sgd(w, x, y):
    """One SGD step of every member: w (M, 3), x (M, B, 3), y (M, B) → (w, loss (M,))."""
    loss_fn = jax.vmap(lambda wm, xm, ym: jnp.mean((xm @ wm - ym) ** 2))
    grads = jax.grad(lambda w: loss_fn(w, x, y).sum())(w)
    return w - 0.05 * grads, loss_fn(w, x, y)


def toy_task(seeds=(0, 1)):
    def step(state, batch, epoch, index):
        w, loss = _sgd(state["w"], *batch)
        return {"w": w}, {"train_loss": loss, "nan_sometimes": jnp.where(index == 0, jnp.nan, 1.0)}

    def evaluate(state, epoch):
        return state, {"val_loss": np.mean((X @ np.asarray(state["w"]).T - Y[:, None]) ** 2, axis=0)}

    return TrainingTask(
        name="toy", state={"w": np.zeros((len(seeds), 3), np.float32)},
        loaders=[BatchLoader((X, Y), 4, seed=s, drop_last=False) for s in seeds], step=step,
        members=[{"member": m, "seed": s} for m, s in enumerate(seeds)], evaluate=evaluate,
        eval_columns=("val_loss",), monitor=lambda v: float(np.mean(v["val_loss"])), loss_column="train_loss",
        panels=(Panel("loss", ("train_loss", "val_loss"), log_scale=True),), member_batches=True)


def test_loop_rows_evaluation_checkpoints_resume_and_extension(tmp_path):
    config = LoopConfig(epochs=4, batch_size=4, val_every=2, checkpoint_every=1)
    evaluation = Evaluation(every=3, columns=("bench_score",),
                            evaluate=lambda task, state, epoch: {"bench_score": float(epoch)})
    straight = RunDir(tmp_path / "straight")
    final = train_loop(toy_task(), config, straight, evaluation)
    rows = straight.read_metrics()
    assert [(r["epoch"], r["member"], r["step"]) for r in rows] == [(e, m, 3 * (e + 1)) for e in range(4)
                                                                    for m in (0, 1)]
    assert [np.isfinite(r["val_loss"]) for r in rows[::2]] == [False, True, False, True]  # epochs 1 and 3
    assert [r["bench_score"] for r in rows[::2]][2:] == [2.0, 3.0] and np.isnan(rows[0]["bench_score"])
    assert all(r["nan_sometimes"] == 1.0 for r in rows)  # NaN step values are left out of the epoch mean
    assert rows[0]["train_loss"] != rows[1]["train_loss"]  # members see their own data order
    assert (straight.plots / "losses.png").stat().st_size > 0
    assert sorted(p.name for p in straight.checkpoints.iterdir()) == ["2", "3", "4", "best"]

    # stopped by the time budget after epoch 0, then resumed: identical parameters and rows
    interrupted = RunDir(tmp_path / "interrupted")
    train_loop(toy_task(), LoopConfig(epochs=4, batch_size=4, val_every=2, max_minutes=0.0), interrupted,
               evaluation)
    assert [r["epoch"] for r in interrupted.read_metrics()] == [0, 0]
    resumed = train_loop(toy_task(), config, interrupted, evaluation)
    np.testing.assert_array_equal(resumed["w"], final["w"])
    assert [r["train_loss"] for r in interrupted.read_metrics()] == [r["train_loss"] for r in rows]

    # a finished run extended by two epochs continues where it stopped
    longer = train_loop(toy_task(), LoopConfig(epochs=6, batch_size=4, val_every=2, checkpoint_every=1),
                        straight, evaluation)
    assert [r["epoch"] for r in straight.read_metrics()][-4:] == [4, 4, 5, 5]
    assert np.abs(longer["w"] - final["w"]).max() > 0


def test_best_checkpoint_follows_the_evaluation_monitor_when_given(tmp_path):
    from dismax.checkpoint import Checkpointer

    scores = {1: [3.0, 1.0], 3: [0.5, np.nan], 5: [2.0, 2.0]}       # epoch -> per-member score (lower wins)
    evaluation = Evaluation(every=2, columns=("bench_d",), monitor="bench_d",
                            evaluate=lambda task, state, epoch: {"bench_d": np.array(scores[epoch])})
    config = LoopConfig(epochs=6, batch_size=4, val_every=1, checkpoint_every=100, keep_checkpoints=10)
    run = RunDir(tmp_path / "run")
    train_loop(toy_task(), config, run, evaluation)
    checkpointer = Checkpointer(run.checkpoints)
    try:   # evaluated epochs 1, 3, 5 are checkpointed; best = epoch 3 (mean 0.5 of the finite members)
        assert sorted(checkpointer.all_steps()) == [2, 4, 6] and checkpointer.best_metric() == 0.5
        assert checkpointer.restore_best(toy_task().state)[0] == 4
    finally:
        checkpointer.close()
    # without a monitor the task's own metric (the validation loss, falling every epoch) picks the last
    plain = RunDir(tmp_path / "plain")
    train_loop(toy_task(), config, plain, Evaluation(every=2, columns=("bench_d",), evaluate=evaluation.evaluate))
    checkpointer = Checkpointer(plain.checkpoints)
    try:
        assert sorted(checkpointer.all_steps()) == [6] and checkpointer.restore_best(toy_task().state)[0] == 6
    finally:
        checkpointer.close()


def test_loop_stops_on_a_diverging_loss(tmp_path):
    task = toy_task()
    task.step = lambda state, batch, epoch, index: (state, {"train_loss": jnp.array([np.nan, 1.0])})
    with pytest.raises(DismaxInputError, match="training loss became"):
        train_loop(task, LoopConfig(epochs=2, batch_size=4), RunDir(tmp_path / "run"))


def test_shared_train_keys_are_checked():
    with pytest.raises(DismaxConfigError, match="'train.epochs' is -3"):
        check_loop_config(LoopConfig(epochs=-3))
    with pytest.raises(DismaxConfigError, match="'train.max_minutes'"):
        check_loop_config(LoopConfig(max_minutes=-1.0))


def test_rejected_starts_leave_nothing_and_only_the_budget_may_change(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    config = ROOT / "configs" / "diffusion_alloy_small.yaml"
    for override, words in (("train.epochs=-3", "'train.epochs' is -3"),
                            ("train.batch_size=0", "'train.batch_size' is 0"),
                            (f"data.train_file={tmp_path / 'missing.extxyz'}", "not a readable file")):
        with pytest.raises(DismaxConfigError, match=words):
            train_main(["--config", str(config), "--run-dir", str(run_dir), override])
        assert not (tmp_path / "runs").exists()

    started = load_config(config)
    prepare_run(started, run_dir)  # as a started run leaves it
    extended = load_config(config, ["train.epochs=99", "train.max_minutes=5"])
    prepare_run(extended, run_dir)  # the budget may change
    with pytest.raises(Exception, match="first difference at 'train.lr'"):
        prepare_run(load_config(config, ["train.epochs=99", "train.lr=0.5"]), run_dir)


MODELS = ("cryingan", "diffusion", "wyckoff_vae")


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_sharded_epoch_on_four_devices_equals_one_device(model, tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "DISMAX_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.tiny_models", "sharded", model, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"OK {model}")


def _final_leaves(run_dir: Path, model: str, config):
    task = make_task(model, config, RunDir(run_dir))
    return jax.tree.leaves(load_run_state(RunDir(run_dir), task.state)[0])


@pytest.mark.slow
@pytest.mark.parametrize("model", ("diffusion", "wyckoff_vae"))
def test_sigkill_then_restart_gives_identical_results(model, tmp_path):
    config = tiny_config(model, tmp_path / "data", epochs=5)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    command = [sys.executable, "-m", "dismax.train", "--config", str(config_file)]
    env = dict(os.environ, DISMAX_NO_PROGRESS="1")
    subprocess.run(command + ["--run-dir", str(tmp_path / "straight")], check=True, env=env, cwd=ROOT)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--run-dir", str(killed)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and process.poll() is None:
        checkpoints = killed / "checkpoints"
        if checkpoints.is_dir() and any(p.name.isdigit() and int(p.name) >= 2 for p in checkpoints.iterdir()):
            break
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len({r["epoch"] for r in RunDir(killed).read_metrics()}) < 5
    subprocess.run(command + ["--run-dir", str(killed)], check=True, env=env, cwd=ROOT)

    for a, b in zip(_final_leaves(tmp_path / "straight", model, config), _final_leaves(killed, model, config)):
        np.testing.assert_array_equal(a, b)
    assert sorted({r["epoch"] for r in RunDir(killed).read_metrics()}) == list(range(5))


def test_learning_rate_schedules():
    steps = jnp.arange(12)
    np.testing.assert_allclose(learning_rate_schedule(0.1)(steps), 0.1, rtol=1e-6)
    cosine = np.asarray(learning_rate_schedule(0.1, "cosine", total_steps=10)(steps))
    np.testing.assert_allclose(cosine[[0, 5, 10, 11]], [0.1, 0.05, 0.0, 0.0], atol=1e-7)
    assert np.all(np.diff(cosine[:11]) < 0)
    floored = np.asarray(learning_rate_schedule(0.1, "cosine", 10, final_fraction=0.2)(steps))
    np.testing.assert_allclose(floored[[0, 5, 10]], [0.1, 0.06, 0.02], rtol=1e-5)
    warm = np.asarray(learning_rate_schedule(0.1, "constant", 10, warmup_steps=4)(steps))
    np.testing.assert_allclose(warm[:6], [0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)
    both = np.asarray(learning_rate_schedule(0.1, "cosine", 10, warmup_steps=4)(steps))
    np.testing.assert_allclose(both, warm * cosine / 0.1, rtol=1e-5, atol=1e-9)
    with pytest.raises(DismaxConfigError, match="'linear'"):
        learning_rate_schedule(0.1, "linear")
    with pytest.raises(DismaxConfigError, match="'train.warmup_steps' is -2"):
        check_lr_schedule("cosine", -2)
