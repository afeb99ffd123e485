"""Processes killed with SIGKILL leave nothing behind after the next run, and two processes never write one
run directory at the same time (slow: each test starts dismax processes)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dismax.config import from_dict, to_dict
from dismax.data import BUILDERS
from dismax.data.registry import build_dataset, is_complete
from dismax.gan import trainer as gan_trainer
from dismax.io import read_extxyz, write_extxyz
from dismax.sample import estimated_output_bytes
from dismax.train import prepare_run
from tests.gan.helpers import write_fcc_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[1]
ENV = {**os.environ, "DISMAX_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}


def _wait_for(condition, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _gan_config(train_file: Path, epochs: int = 1):
    return from_dict(gan_trainer.Config, {
        "data": {"train_file": str(train_file), "augmentation": "none"},
        "model": {"gen_channels": 8},
        "train": {"batch_size": 4, "epochs": epochs, "gen_int": 1, "checkpoint_every": 1, "val_every": 50,
                  "n_save": 1},
    })


def test_killed_sample_leaves_nothing_after_the_next_run(tmp_path):
    data = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=8)
    config = _gan_config(data)
    run = prepare_run(config, tmp_path / "run")
    gan_trainer.train(config, run)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "gen.extxyz"
    command = [sys.executable, "-m", "dismax.sample", "--run-dir", str(run.path), "--out", str(out)]
    process = subprocess.Popen(command + ["--n", "2000000", "--batch-size", "64"], env=ENV, cwd=REPO)
    temporary = _wait_for(lambda: [p for p in out_dir.glob(".gen.extxyz~*.tmp") if p.stat().st_size > 0],
                          "the sample's temporary file")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert temporary[0].exists() and not out.exists()  # what a killed sample leaves
    assert subprocess.run(command + ["--n", "3"], env=ENV, cwd=REPO).returncode == 0
    assert read_extxyz(out).batch_size == 3
    assert _hidden(out_dir) == []
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # readable by the group, as the umask allows
    size = out.stat().st_size
    assert size <= estimated_output_bytes(run, 3) <= 2 * size  # the disk check's estimate is an upper bound


def slow_builder(size: str, seed: int, out_dir: Path) -> None:
    """A dataset builder that writes its training file, then works for a long time (unless told not to)."""
    crystals = read_extxyz(os.environ["DISMAX_TEST_SOURCE"])
    write_extxyz(crystals, Path(out_dir) / "train.extxyz")
    if os.environ.get("DISMAX_TEST_SLOW_BUILD"):
        time.sleep(600)
    write_extxyz(crystals, Path(out_dir) / "val.extxyz")
    (Path(out_dir) / "params.json").write_text("{}")


def test_killed_dataset_build_leaves_nothing_after_the_next_build(tmp_path, monkeypatch):
    source = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=4)
    target = tmp_path / "datasets" / "demo"
    child = (f"from dismax.data.registry import build_dataset, register_dataset\n"
             f"register_dataset('slow_demo', 'tests.test_crash_leftovers:slow_builder')\n"
             f"build_dataset('slow_demo', 'small', 0, {str(target)!r})\n")
    process = subprocess.Popen([sys.executable, "-c", child], cwd=REPO,
                               env={**ENV, "DISMAX_TEST_SOURCE": str(source), "DISMAX_TEST_SLOW_BUILD": "1"})
    staging = _wait_for(lambda: [p for p in target.parent.glob(".demo~*") if (p / "train.extxyz").exists()],
                        "the build's staging folder")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert staging[0].is_dir() and not target.exists()  # what a killed build leaves
    monkeypatch.setenv("DISMAX_TEST_SOURCE", str(source))
    monkeypatch.setitem(BUILDERS, "slow_demo", "tests.test_crash_leftovers:slow_builder")
    build_dataset("slow_demo", "small", 0, target)
    assert is_complete(target)
    assert _hidden(target.parent) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_second_train_on_one_run_dir_exits_2_naming_the_first(tmp_path):
    data = write_fcc_dataset(tmp_path / "fcc.extxyz", n_structures=8)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(_gan_config(data, epochs=200))))
    command = [sys.executable, "-m", "dismax.train", "--config", str(config_file), "--run-dir",
               str(tmp_path / "run")]
    first = subprocess.Popen(command, env=ENV, cwd=REPO)
    try:
        _wait_for(lambda: (tmp_path / "run" / "metrics.csv").exists(), "the first run's first epoch")
        second = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr
    assert f"is locked by PID {first.pid}" in errors[0] and "Traceback" not in second.stderr
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        epochs = [row["epoch"] for row in csv.DictReader(handle)]
    assert len(epochs) == len(set(epochs))  # no epoch logged twice
