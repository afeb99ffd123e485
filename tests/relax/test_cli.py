"""The relax CLI: resumable output that survives SIGKILL with every structure relaxed exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest

from dismax.errors import DismaxInputError
from dismax.potentials.fire import relax
from dismax.relax.output import RelaxOutput
from dismax.potentials import original_sw
from dismax.structures import Crystals

from tests.potentials.test_fire import perturbed_diamond

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"input": "gen.extxyz", "n_structures": 4, "potential": "sw", "fmax": 0.05, "max_steps": 1000}


def read_results(directory):
    lines = (Path(directory) / "results.csv").read_text().splitlines()
    assert lines[0] == "id,status,steps,e_initial,e_final,fmax"
    return [line.split(",") for line in lines[1:]]


def frame_ids(directory):
    return [a.info["id"] for a in ase.io.read(Path(directory) / "relaxed.extxyz", index=":")]


def test_output_recovers_from_torn_writes(tmp_path):
    crystals = Crystals.from_ase(perturbed_diamond(4, seed=8))
    result = relax(crystals, original_sw(), chunk_size=4)
    output = RelaxOutput(tmp_path, SETTINGS)
    first = slice(0, 2)
    output.append(np.arange(2), type(result)(result.crystals[first], *(getattr(result, f)[first] for f in
                                             ("status", "steps", "e_initial", "e_final", "fmax"))))
    # Interrupted while writing the next chunk: two whole frames and half a frame, half a CSV row.
    frames = (tmp_path / "relaxed.extxyz").read_text()
    with open(tmp_path / "relaxed.extxyz", "a") as handle:
        handle.write(frames.replace("id=0", "id=2").replace("id=1", "id=3") + frames[: len(frames) // 3])
    with open(tmp_path / "results.csv", "a") as handle:
        handle.write("2,conv")
    reopened = RelaxOutput(tmp_path, SETTINGS)
    assert reopened.done == {0, 1}
    assert frame_ids(tmp_path) == [0, 1]
    assert [row[0] for row in read_results(tmp_path)] == ["0", "1"]
    with pytest.raises(DismaxInputError, match="different settings"):
        RelaxOutput(tmp_path, dict(SETTINGS, fmax=0.01))


@pytest.mark.slow  # two fresh interpreters importing jax-md and compiling: ~30 s of CPU
def test_sigkill_then_rerun_relaxes_every_structure_once(tmp_path):
    n = 24
    ase.io.write(tmp_path / "gen.extxyz", perturbed_diamond(n, noise=0.15, seed=9))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dismax.bench", "relax", "--potential", "sw", "--in",
               str(tmp_path / "gen.extxyz"), "--out", str(out), "--chunk-size", "2", "--fmax", "0.001"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", DISMAX_NO_PROGRESS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    csv = out / "results.csv"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 3:  # header + at least one finished chunk
            break
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = len(read_results(out))
    assert 0 < killed_rows < n

    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    rows = read_results(out)
    assert sorted(int(r[0]) for r in rows) == list(range(n))
    assert sorted(frame_ids(out)) == list(range(n))
    assert all(r[1] == "converged" for r in rows)
    np.testing.assert_allclose([float(r[4]) for r in rows], -4.33652, atol=1e-4)
