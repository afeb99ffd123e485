"""The CLI spine: --help works, a dismax error is one line on stderr with exit code 2, no traceback."""

import os
import subprocess
import sys

import pytest
import yaml

from dismax.runs import RunDir


def run_module(*args, cwd=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DISMAX_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("module", ["dismax.train", "dismax.sample", "dismax.bench", "dismax.data"])
def test_help(module):
    proc = run_module(module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m " + module in proc.stdout


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_errors_are_one_line(tmp_path):
    missing = run_module("dismax.train", "--config", str(tmp_path / "nope.yaml"))
    assert_one_line_error(missing, "does not exist")
    bad_model = tmp_path / "bad.yaml"
    bad_model.write_text("model:\n  name: transformer\n")
    assert_one_line_error(run_module("dismax.train", "--config", str(bad_model)), "valid model names are")
    assert not (tmp_path / "runs").exists()


def test_sample_needs_a_run_dir(tmp_path):
    proc = run_module("dismax.sample", "--run-dir", str(tmp_path), "--n", "3", "--out", str(tmp_path / "x.extxyz"))
    assert_one_line_error(proc, "not a dismax run directory")
    assert not (tmp_path / "x.extxyz").exists()


def test_unknown_dataset(tmp_path):
    proc = run_module("dismax.data", "build", "no_such_set", "--out", str(tmp_path / "d"))
    assert_one_line_error(proc, "unknown dataset 'no_such_set'")
    assert not (tmp_path / "d").exists()


def test_run_dir_refuses_a_different_config(tmp_path):
    from dataclasses import dataclass, field

    from dismax.errors import DismaxError
    from dismax.train import prepare_run

    @dataclass(frozen=True)
    class Model:
        name: str = "toy"

    @dataclass(frozen=True)
    class Config:
        model: Model = field(default_factory=Model)
        lr: float = 0.1

    run = prepare_run(Config(), tmp_path / "run")
    assert isinstance(run, RunDir) and run.checkpoints.is_dir() and run.plots.is_dir() and run.samples.is_dir()
    assert yaml.safe_load(run.config_path.read_text()) == {"model": {"name": "toy"}, "lr": 0.1}
    prepare_run(Config(), tmp_path / "run")  # same config: resume is fine
    with pytest.raises(DismaxError, match="first difference at 'lr'"):
        prepare_run(Config(lr=0.2), tmp_path / "run")


def test_metrics_csv_append_and_truncate(tmp_path):
    run = RunDir(tmp_path / "r").create()
    for epoch in range(4):
        run.append_metrics({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    assert [row["epoch"] for row in run.read_metrics()] == [0, 1, 2, 3]
    run.truncate_metrics(lambda row: row["epoch"] < 2)
    run.append_metrics({"epoch": 2, "loss": 0.3})
    assert [row["epoch"] for row in run.read_metrics()] == [0, 1, 2]
    with pytest.raises(ValueError):
        run.append_metrics({"epoch": 3})


# ---------------------------------------------------------------------- bad inputs through a CLI
from tests.test_io import BAD_INPUTS, write_bad_input  # noqa: E402  (the bad-file table of the io tests)


@pytest.mark.parametrize("name, filename, content, kwargs, index, words", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_convert_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, name, filename, content, kwargs, index,
                                                     words):
    from dismax.cli import main_wrapper
    from dismax.data.__main__ import main

    source, target = write_bad_input(tmp_path, filename, content)
    argv = ["convert", str(source), str(target)]
    if kwargs.get("fixed_composition") is False:
        argv.append("--mixed-composition")
    code = main_wrapper(main, argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], captured.err
    assert captured.out == ""
    assert not target.exists() and not (tmp_path / "out").exists()


def test_convert_cli_subprocess_exit_code_and_success(tmp_path):
    bad = tmp_path / "trunc.extxyz"
    bad.write_text("3\nLattice=\"3 0 0 0 3 0 0 0 3\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\nSi 0 0 0\n")
    out = tmp_path / "o.extxyz"
    assert_one_line_error(run_module("dismax.data", "convert", str(bad), str(out)), "truncated")
    assert not out.exists()
    good = tmp_path / "good.extxyz"
    good.write_text(bad.read_text() + "Si 1 1 1\nSi 2 2 2\n")
    proc = run_module("dismax.data", "convert", str(good), str(tmp_path / "cifs"))
    assert proc.returncode == 0, proc.stderr
    check = run_module("dismax.data", "check", str(tmp_path / "cifs"))
    assert check.returncode == 0 and "1 structures of 3 atoms" in check.stdout


def test_truncated_metrics_keep_integer_columns(tmp_path):
    run = RunDir(tmp_path / "r").create()
    for epoch in range(3):
        run.append_metrics({"epoch": epoch, "loss": 0.5})
    run.truncate_metrics(lambda row: row["epoch"] < 2)
    assert run.metrics_csv.read_text().splitlines() == ["epoch,loss", "0,0.5", "1,0.5"]
