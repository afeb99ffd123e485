"""Every CLI on every bad input: exit code 2, one ``error:`` line on stderr, no traceback, nothing left behind.

Each case runs a CLI in-process through its ``main`` (as ``python -m ...`` does, via ``main_wrapper``) in a
fresh folder holding tiny inputs, then checks the exit code, the single error line (and a fragment of it),
and that the folder holds exactly what it held before: no output file, no temporary file, no lock file.
"""

import errno
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dismax import sample as sample_cli
from dismax import train as train_cli
from dismax.bench import __main__ as bench_cli
from dismax.cli import main_wrapper
from dismax.config import from_dict, to_dict
from dismax.data import __main__ as data_cli
from dismax.gan import trainer as gan_trainer
from dismax.io import write_extxyz
from dismax.runs import exclusive_lock
from dismax.structures import Crystals
from tests.gan.helpers import write_fcc_dataset

# the lock holder is forked from this (JAX-importing) process; it runs only Python code and sleeps
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

MAINS = {"data": data_cli.main, "train": train_cli.main, "sample": sample_cli.main, "bench": bench_cli.main}
DIAMOND = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                    [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])


def _silicon(frac_list) -> Crystals:
    frac = np.asarray(frac_list, float)
    return Crystals(frac, np.broadcast_to(np.eye(3) * 5.43, (len(frac), 3, 3)).copy(),
                    np.full(frac.shape[:2], 14))


def _write_inputs(folder: Path) -> None:
    """good.extxyz (two diamond Si cells), overlap.extxyz (two atoms at distance 0), collapsed.extxyz (all
    atoms at one point), nan.extxyz (a NaN coordinate), mixed.extxyz (8 and 7 atoms), not_a_dir (a file)."""
    write_extxyz(_silicon([DIAMOND, DIAMOND + 0.01]), folder / "good.extxyz")
    overlap = DIAMOND.copy()
    overlap[5] = overlap[2]
    write_extxyz(_silicon([DIAMOND, overlap]), folder / "overlap.extxyz")
    write_extxyz(_silicon([np.full((8, 3), 0.3)]), folder / "collapsed.extxyz")
    text = (folder / "good.extxyz").read_text().splitlines()
    text[3] = "Si nan 0.0 0.0"
    (folder / "nan.extxyz").write_text("\n".join(text) + "\n")
    mixed = (folder / "good.extxyz").read_text().splitlines()
    mixed = mixed[:10] + ["7"] + mixed[11:12] + mixed[12:19]
    (folder / "mixed.extxyz").write_text("\n".join(mixed) + "\n")
    (folder / "not_a_dir").write_text("a regular file\n")
    (folder / "empty_run").mkdir()
    (folder / "empty_run" / "config.yaml").write_text("model:\n  name: cryingan\n")
    # a run directory as sample sees it before loading a checkpoint (options are checked first)
    (folder / "run" / "checkpoints" / "1").mkdir(parents=True)
    (folder / "run" / "config.yaml").write_text(f"model:\n  name: cryingan\ndata:\n  train_file: "
                                                f"{folder / 'good.extxyz'}\n")
    labelled = ('Lattice="5.43 0.0 0.0 0.0 5.43 0.0 0.0 0.0 5.43" Properties=species:S:1:pos:R:3:forces:R:{n} '
                'energy=-3.0 pbc="T T T"\nSi 0.0 0.0 0.0 0.1 0.2{extra}\nSi 1.3 1.4 1.3 0.1 0.2{extra}\n')
    (folder / "forces2.extxyz").write_text("2\n" + labelled.format(n=2, extra=""))
    (folder / "labelled_si.extxyz").write_text("2\n" + labelled.format(n=3, extra=" 0.3"))
    (folder / "labelled_ge.extxyz").write_text("2\n" + labelled.format(n=3, extra=" 0.3").replace("Si ", "Ge ", 1))
    (folder / "germanium.extxyz").write_text((folder / "good.extxyz").read_text().replace("Si ", "Ge ", 1))
    for name, data in (("potential_noenergy", "good.extxyz"), ("potential_forces2", "forces2.extxyz")):
        (folder / f"{name}.yaml").write_text(f"model:\n  name: potential\ndata:\n  train_file: {data}\n"
                                             "train:\n  batch_size: 1\n")
    (folder / "potential_unseen.yaml").write_text("model:\n  name: potential\ndata:\n  train_file: labelled_si.extxyz\n"
                                                  "  val_file: labelled_ge.extxyz\ntrain:\n  batch_size: 1\n")
    (folder / "potential_buckets.yaml").write_text("model:\n  name: potential\ndata:\n  train_file: labelled_si.extxyz\n"
                                                   "  val_file: labelled_si.extxyz\n  buckets: [1]\n"
                                                   "train:\n  batch_size: 1\n")
    (folder / "cfg.yaml").write_text("model:\n  name: cryingan\n  gen_channels: 8\n"
                                     "data:\n  train_file: overlap.extxyz\ntrain:\n  batch_size: 2\n")


def _tiny_gan_config(train_file: Path):
    return from_dict(gan_trainer.Config, {
        "data": {"train_file": str(train_file), "augmentation": "none"},
        "model": {"gen_channels": 8},
        "train": {"batch_size": 4, "epochs": 1, "gen_int": 1, "checkpoint_every": 1, "val_every": 5,
                  "n_save": 1},
    })


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A CryinGAN run trained for one epoch on 8 tiny FCC structures (minutes on a busy CPU: slow cases only)."""
    folder = tmp_path_factory.mktemp("trained")
    data = write_fcc_dataset(folder / "fcc.extxyz", n_structures=8)
    config = _tiny_gan_config(data)
    run = train_cli.prepare_run(config, folder / "run")
    gan_trainer.train(config, run)
    return run.path


def _mismatched_run(trained: Path, folder: Path) -> Path:
    """A copy of ``trained`` whose config.yaml asks for a wider generator than its checkpoints hold."""
    import shutil

    copy = folder / "edited_run"
    shutil.copytree(trained, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["gen_channels"] = 16
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


def _hold_lock(target: str, ready):
    with exclusive_lock(Path(target), "run directory"):
        ready.set()
        time.sleep(120)


# (id, cli, argv with {tmp} and {run}, fragment of the error line)
CASES = [
    # data
    ("data-check-missing-file", "data", ["check", "{tmp}/nope.extxyz"], "file not found"),
    ("data-check-overlap", "data", ["check", "{tmp}/overlap.extxyz"], "atoms 2 and 5 are 0.000 Å apart"),
    ("data-check-collapsed", "data", ["check", "{tmp}/collapsed.extxyz"], "atoms 0 and 1 are 0.000 Å apart"),
    ("data-check-family-threshold", "data", ["check", "{tmp}/good.extxyz", "--min-distance", "2.5"],
     "minimum 2.5 Å"),
    ("data-check-nan", "data", ["check", "{tmp}/nan.extxyz"], "NaN"),
    ("data-check-mixed-atom-counts", "data", ["check", "{tmp}/mixed.extxyz"], "atoms but structure 0 has 8"),
    ("data-check-bad-float-option", "data", ["check", "{tmp}/good.extxyz", "--min-distance", "abc"],
     "invalid float value"),
    ("data-convert-overlap", "data", ["convert", "{tmp}/overlap.extxyz", "{tmp}/out.extxyz"], "0.000 Å apart"),
    ("data-convert-collapsed", "data", ["convert", "{tmp}/collapsed.extxyz", "{tmp}/out.cif"], "Å apart"),
    ("data-convert-out-under-a-file", "data", ["convert", "{tmp}/good.extxyz", "{tmp}/not_a_dir/out.extxyz"],
     "not a folder"),
    ("data-convert-permission-denied", "data", ["convert", "{tmp}/good.extxyz", "/sys/dismax-test/out.extxyz"],
     "not permitted"),
    ("data-convert-disk-full", "data", ["convert", "{tmp}/good.extxyz", "{tmp}/out.extxyz"],
     "no space left on device"),
    ("data-convert-missing-argument", "data", ["convert", "{tmp}/good.extxyz"], "required: OUT"),
    ("data-no-command", "data", [], "required: command"),
    ("data-build-unknown-dataset", "data", ["build", "no_such_set", "--out", "{tmp}/d"], "unknown dataset"),
    ("data-build-bad-size", "data", ["build", "a_si", "--size", "huge", "--out", "{tmp}/d"], "invalid choice"),
    ("data-register-missing-file", "data", ["register", "mine", "--train", "{tmp}/nope.extxyz"], "file not found"),
    # train
    ("train-missing-config", "train", ["--config", "{tmp}/nope.yaml", "--run-dir", "{tmp}/r"], "does not exist"),
    ("train-no-config-option", "train", ["--run-dir", "{tmp}/r"], "required: --config"),
    ("train-unknown-option", "train", ["--config", "{tmp}/cfg.yaml", "--bogus"], "unrecognized arguments"),
    ("train-unknown-override", "train", ["--config", "{tmp}/cfg.yaml", "--run-dir", "{tmp}/r", "train.nope=1"],
     "nope"),
    ("train-negative-epochs", "train", ["--config", "{tmp}/cfg.yaml", "--run-dir", "{tmp}/r", "train.epochs=-3",
                                        "data.train_file={tmp}/good.extxyz"], "'train.epochs' is -3"),
    ("train-locked-run-dir", "train", ["--config", "{tmp}/cfg.yaml", "--run-dir", "{tmp}/locked"],
     "is locked by PID"),
    # sample
    ("sample-zero-n", "sample", ["--run-dir", "{run}", "--n", "0", "--out", "{tmp}/s.extxyz"], "--n must be"),
    ("sample-zero-batch-size", "sample", ["--run-dir", "{run}", "--n", "4", "--batch-size", "0", "--out",
                                          "{tmp}/s.extxyz"], "--batch-size must be at least 1"),
    ("sample-n-not-a-number", "sample", ["--run-dir", "{run}", "--n", "many", "--out", "{tmp}/s.extxyz"],
     "invalid int value"),
    ("sample-bad-checkpoint-choice", "sample", ["--run-dir", "{run}", "--n", "2", "--checkpoint", "first",
                                                "--out", "{tmp}/s.extxyz"], "invalid choice"),
    ("sample-not-a-run-dir", "sample", ["--run-dir", "{tmp}", "--n", "2", "--out", "{tmp}/s.extxyz"],
     "not a dismax run directory"),
    ("sample-no-checkpoints", "sample", ["--run-dir", "{tmp}/empty_run", "--n", "2", "--out", "{tmp}/s.extxyz"],
     "no checkpoints yet"),
    pytest.param("sample-member-out-of-range", "sample", ["--run-dir", "{trained}", "--n", "2", "--member", "3",
                                                          "--out", "{tmp}/s.extxyz"], "out of range",
                 marks=pytest.mark.slow),
    ("sample-out-under-a-file", "sample", ["--run-dir", "{run}", "--n", "2", "--out", "{tmp}/not_a_dir/s.extxyz"],
     "not a folder"),
    ("sample-permission-denied", "sample", ["--run-dir", "{run}", "--n", "2", "--force", "--out",
                                            "/sys/dismax-test/s.extxyz"], "not permitted"),
    ("sample-disk-too-small", "sample", ["--run-dir", "{run}", "--n", "10000000000000", "--out", "{tmp}/s.extxyz"],
     "--force"),
    pytest.param("sample-config-no-longer-matches-checkpoint", "sample", ["--run-dir", "{tmp}/edited_run", "--n",
                                                                          "2", "--out", "{tmp}/s.extxyz"],
                 "does not match the model", marks=pytest.mark.slow),
    ("train-potential-no-energy", "train", ["--config", "{tmp}/potential_noenergy.yaml", "--run-dir", "{tmp}/r"],
     "good.extxyz, structure 0: no energy"),
    ("train-potential-forces-wrong-shape", "train", ["--config", "{tmp}/potential_forces2.yaml", "--run-dir",
                                                     "{tmp}/r"], "forces have shape (2, 2), expected (2, 3)"),
    ("train-potential-element-unseen-in-training", "train", ["--config", "{tmp}/potential_unseen.yaml",
                                                             "--run-dir", "{tmp}/r"],
     "validation frame 0 contains element Z=32"),
    ("train-potential-frame-larger-than-every-bucket", "train", ["--config", "{tmp}/potential_buckets.yaml",
                                                                 "--run-dir", "{tmp}/r"],
     "the largest bucket must hold the largest frame"),
    ("data-label-unseen-element", "data", ["label", "--calculator", "sw", "--in", "{tmp}/germanium.extxyz", "--out",
                                           "{tmp}/labelled.extxyz"], "germanium.extxyz, frame 0: contains element Z=32"),
    ("data-label-unknown-module", "data", ["label", "--calculator", "no_such_module:Calc", "--in",
                                           "{tmp}/good.extxyz", "--out", "{tmp}/labelled.extxyz"],
     "'no_such_module' cannot be imported"),
    ("data-label-not-a-run", "data", ["label", "--calculator", "run:{tmp}", "--in", "{tmp}/good.extxyz", "--out",
                                      "{tmp}/labelled.extxyz"], "not a fitted potential run"),
    ("bench-relax-not-a-run", "bench", ["relax", "--potential", "run:{tmp}/nope", "--in", "{tmp}/good.extxyz",
                                        "--out", "{tmp}/rx"], "not a fitted potential run"),
    # bench
    ("bench-no-command", "bench", [], "required: command"),
    ("bench-postprocess-missing-input", "bench", ["postprocess", "--family", "a_si", "--in", "{tmp}/nope.extxyz",
                                                  "--out", "{tmp}/pp"], "file not found"),
    ("bench-postprocess-bad-family", "bench", ["postprocess", "--family", "glass", "--in", "{tmp}/good.extxyz",
                                               "--out", "{tmp}/pp"], "invalid choice"),
    ("bench-metrics-nan", "bench", ["metrics", "--family", "a_si", "--train", "{tmp}/good.extxyz", "--gen",
                                    "{tmp}/nan.extxyz", "--out", "{tmp}/m"], "NaN"),
    ("bench-metrics-mixed-atom-counts", "bench", ["metrics", "--family", "a_si", "--train", "{tmp}/good.extxyz",
                                                  "--gen", "{tmp}/mixed.extxyz", "--out", "{tmp}/m"],
     "has 7 atoms, expected 8"),
    ("bench-metrics-overlap", "bench", ["metrics", "--family", "a_si", "--train", "{tmp}/good.extxyz", "--gen",
                                        "{tmp}/overlap.extxyz", "--out", "{tmp}/m"], "atoms 2 and 5"),
    ("bench-relax-out-under-a-file", "bench", ["relax", "--in", "{tmp}/good.extxyz", "--out",
                                               "{tmp}/not_a_dir/relaxed"], "not a folder"),
    ("bench-relax-permission-denied", "bench", ["relax", "--in", "{tmp}/good.extxyz", "--out",
                                                "/sys/dismax-test/relaxed"], "not permitted"),
    ("bench-relax-overlap", "bench", ["relax", "--in", "{tmp}/overlap.extxyz", "--out", "{tmp}/rx",
                                      "--chunk-size", "1"], "overlap.extxyz, structure 1: atoms 2 and 5"),
    ("bench-relax-zero-fmax", "bench", ["relax", "--in", "{tmp}/good.extxyz", "--out", "{tmp}/rx", "--fmax", "0"],
     "--fmax must be > 0"),
    ("bench-relax-missing-input", "bench", ["relax", "--in", "{tmp}/nope.extxyz", "--out", "{tmp}/rx"],
     "file not found"),
    # multi-process options (checked before JAX's runtime starts, which would abort or wait instead)
    ("train-coordinator-without-port", "train", ["--config", "{tmp}/cfg.yaml", "--run-dir", "{tmp}/r",
                                                 "--coordinator", "127.0.0.1", "--num-processes", "2",
                                                 "--process-id", "0"], "is not HOST:PORT"),
    ("train-process-id-without-coordinator", "train", ["--config", "{tmp}/cfg.yaml", "--run-dir", "{tmp}/r",
                                                       "--process-id", "1"], "need --coordinator"),
    ("sample-process-id-out-of-range", "sample", ["--run-dir", "{run}", "--n", "2", "--out", "{tmp}/s.extxyz",
                                                  "--coordinator", "127.0.0.1:9", "--num-processes", "2",
                                                  "--process-id", "2"], "--process-id 2 is out of range"),
    ("sample-unresolvable-coordinator", "sample", ["--run-dir", "{run}", "--n", "2", "--out", "{tmp}/s.extxyz",
                                                   "--coordinator", "no-such-host.invalid:1234", "--num-processes",
                                                   "2", "--process-id", "1"], "cannot be resolved"),
    ("data-build-zero-processes", "data", ["build", "alloy_300K_narrow", "--out", "{tmp}/d", "--coordinator",
                                           "127.0.0.1:9", "--num-processes", "0", "--process-id", "0"],
     "--num-processes must be at least 1"),
    ("bench-relax-coordinator-not-answering", "bench", ["relax", "--in", "{tmp}/good.extxyz", "--out", "{tmp}/rx",
                                                        "--coordinator", "127.0.0.1:9", "--num-processes", "2",
                                                        "--process-id", "1", "--init-timeout", "1"],
     "no coordinator answers at 127.0.0.1:9"),
    ("bench-relax-coordinator-not-on-this-host", "bench", ["relax", "--in", "{tmp}/good.extxyz", "--out",
                                                           "{tmp}/rx", "--coordinator", "192.0.2.1:1234",
                                                           "--num-processes", "2", "--process-id", "0"],
     "process 0 cannot serve the coordinator"),
]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _case_values(case) -> tuple:
    return case.values if hasattr(case, "values") else case


@pytest.mark.parametrize("case_id, cli, argv, fragment", CASES, ids=[_case_values(c)[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_leaves_nothing(case_id, cli, argv, fragment, tmp_path, capsys,
                                                          monkeypatch, request):
    _write_inputs(tmp_path)
    trained = tmp_path / "no_run"
    if "{trained}" in " ".join(argv):
        trained = request.getfixturevalue("trained_run")
    if case_id == "sample-config-no-longer-matches-checkpoint":
        _mismatched_run(request.getfixturevalue("trained_run"), tmp_path)
    monkeypatch.chdir(tmp_path)
    if case_id == "data-convert-disk-full":
        def disk_full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", disk_full)
    holder = None
    if case_id == "train-locked-run-dir":
        context = multiprocessing.get_context("fork")
        ready = context.Event()
        holder = context.Process(target=_hold_lock, args=(str(tmp_path / "locked"), ready), daemon=True)
        holder.start()
        assert ready.wait(30)
    before = _listing(tmp_path)
    argv = [a.format(tmp=tmp_path, run=tmp_path / "run", trained=trained) for a in argv]
    try:
        code = main_wrapper(MAINS[cli], argv)
    finally:
        if holder is not None:
            holder.kill()
            holder.join()
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr
    assert len(errors) == 1 and fragment in errors[0], stderr
    assert "Traceback" not in stderr and "usage:" not in stderr
    if holder is not None:
        assert f"PID {holder.pid}" in errors[0]
    assert _listing(tmp_path) == before


def test_at_least_thirty_cases_cover_every_cli():
    assert len(CASES) >= 30
    assert {_case_values(case)[1] for case in CASES} == set(MAINS)
