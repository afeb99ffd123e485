"""Multi-process runs (jax.distributed): two local CPU processes on a loopback coordinator with JAX's gloo
collectives. Fast: the runtime, global batches from per-process parts and a killed peer. Slow: training,
checkpoints across process counts, sampling and relaxation against one process."""

import json
import signal
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dismax.config import save_config
from tests import multiprocess
from tests.tiny_models import tiny_config

RUNTIME_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from dismax.data.loader import BatchLoader
    from dismax.devices import (barrier, data_mesh, gather_rows, global_batch, initialize_distributed,
                                process_count, process_index, process_share, to_host)

    port, pid, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    initialize_distributed(f"127.0.0.1:{port}", 2, pid, init_timeout=60, heartbeat_timeout=3)
    assert (process_index(), process_count()) == (pid, 2)
    mesh = data_mesh()
    assert mesh.devices.size == 4 and len(mesh.local_devices) == 2
    data = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "y": np.arange(8, dtype=np.int32)}
    loader = BatchLoader(data, batch_size=4, seed=3)
    batch = global_batch(loader.batch(5, pid, 2), mesh)
    expected = loader.batch(5)
    weights = jnp.arange(1.0, 5.0)
    total = jax.jit(lambda b: (b["x"].sum(axis=1) * weights).sum() + b["y"].sum())(batch)
    assert float(to_host(total)) == float((expected["x"].sum(axis=1) * np.arange(1.0, 5.0)).sum()
                                          + expected["y"].sum()), (total, expected)
    np.testing.assert_array_equal(to_host(batch["y"]), expected["y"])
    assert list(process_share(7)) == ([0, 1, 2] if pid == 0 else [3, 4, 5, 6])
    share = process_share(7)
    rows = gather_rows(np.arange(14, dtype=np.float64).reshape(7, 2)[share.start:share.stop] / 3, 7)
    assert rows.dtype == np.float64 and np.array_equal(rows, np.arange(14).reshape(7, 2) / 3), rows
    from dismax.bench.motifs import per_structure
    structures = [(np.full((i + 1, 3), 0.1 * i), np.eye(3), np.ones(i + 1, int)) for i in range(5)]
    results = per_structure(lambda frac, lattice, numbers: frac.sum(axis=1) * numbers, "test", structures,
                            workers=1)
    assert len(results) == 5 and all(np.array_equal(r, s[0].sum(axis=1)) for r, s in zip(results, structures))
    barrier("checked")
    print("OK", pid, flush=True)
    if mode == "die" and pid == 1:
        import os
        os._exit(9)
    if mode == "freeze" and pid == 1:  # alive but silent, its connections open: only heartbeats tell
        import os, signal
        os.kill(os.getpid(), signal.SIGSTOP)
    if mode in ("die", "freeze"):
        import time
        from dismax.cli import main_wrapper

        def keep_working(argv):
            step = jax.jit(lambda b: b["x"].sum())
            for _ in range(600):  # collectives with a dead peer: they fail, or the watchdog ends this process
                step(batch).block_until_ready()
                time.sleep(0.1)
            print("still running", flush=True)

        main_wrapper(keep_working)
""")


def _script(mode: str):
    port = multiprocess.free_port()
    env = multiprocess.cli_env(2)
    import subprocess
    import sys
    return [subprocess.Popen([sys.executable, "-c", RUNTIME_SCRIPT, str(port), str(i), mode], env=env,
                             cwd=multiprocess.ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True) for i in range(2)]


def test_two_processes_assemble_the_global_batch_from_their_parts():
    results = multiprocess.finish(_script("ok"), timeout=180)
    for i, (code, out, err) in enumerate(results):
        assert code == 0 and f"OK {i}" in out, err[-3000:]


@pytest.mark.parametrize("mode", ["die", "freeze"])
def test_a_lost_peer_stops_the_other_process_with_one_error_line(mode):
    """Process 1 exits (its sockets close: process 0's next collective fails) or is frozen by SIGSTOP (its
    sockets stay open: process 0's collective would wait forever, and the heartbeat watchdog ends it)."""
    processes = _script(mode)
    try:
        if mode == "die":
            assert multiprocess.finish(processes[1:], timeout=180)[0][0] == 9
        else:
            deadline = time.monotonic() + 180
            while not _stopped(processes[1].pid):
                assert time.monotonic() < deadline and processes[1].poll() is None
                time.sleep(0.2)
        lost = time.monotonic()
        code0, out0, err0 = multiprocess.finish(processes[:1], timeout=90)[0]
        waited = time.monotonic() - lost
    finally:
        multiprocess.kill(processes)
    assert "OK 0" in out0 and "still running" not in out0
    assert code0 == 1, err0[-3000:]
    assert "Traceback" not in err0 and "Check failure" not in err0
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0: ") and "resume" in errors[0], err0[-3000:]
    if mode == "freeze":
        assert "process 1 of 2 sent no heartbeat" in errors[0]
    assert waited < 60  # heartbeat timeout 3 s plus polling; a hang would run into the 90 s limit


def _stopped(pid: int) -> bool:
    """True when process ``pid`` is stopped (state T in /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


def test_coordinator_auto_outside_a_cluster_is_one_error_line():
    """Without a TPU pod or SLURM job around, ``--coordinator auto`` is a usage error (exit 2), not a hang."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in multiprocess.cli_env(1).items() if not k.startswith(("SLURM_", "TPU_", "OMPI_"))}
    proc = subprocess.run([sys.executable, "-m", "dismax.sample", "--run-dir", os.devnull, "--n", "1", "--out",
                           os.devnull, "--coordinator", "auto"], env=env, cwd=multiprocess.ROOT, text=True,
                          capture_output=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "no cluster environment" in errors[0], proc.stderr


# ------------------------------------------------------------------------------------------ training
def _checkpoint_state(run_dir, step):
    """The saved state pytree of checkpoint ``step``, restored whole onto this process's first device."""
    path = run_dir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return checkpointer.restore(path, like)


def assert_same_states(a, b, atol=0.0):
    """Same tree and every leaf within ``atol`` (0: bitwise)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=atol)


def _tiny_run_config(model, folder):
    """A YAML config of ``model`` whose one epoch is three steps (CryinGAN: 12 structures in batches of 4;
    diffusion: 6 in batches of 2, one seed)."""
    if model == "cryingan":
        from tests.gan.helpers import write_fcc_dataset

        config = tiny_config(model, folder / "data")
        write_fcc_dataset(folder / "data" / "fcc.extxyz", n_structures=12)
    else:
        config = tiny_config(model, folder / "data", batch_size=2, n_seeds=1, epochs=1)
    path = folder / f"{model}.yaml"
    save_config(config, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cryingan", "diffusion"])
def test_three_steps_on_two_processes_equal_one_process(model, tmp_path):
    """Two processes with one device each and one process with two devices see the same global batches on the
    same 2-device 'data' mesh; the cross-process all-reduce adds the same two partial sums, so parameters,
    optimizer state and metrics agree bitwise (tolerance 0)."""
    config = _tiny_run_config(model, tmp_path)
    multiprocess.run("dismax.train", ["--config", str(config), "--run-dir", str(tmp_path / "two")], 2, 1)
    multiprocess.run("dismax.train", ["--config", str(config), "--run-dir", str(tmp_path / "one")], 1, 2)
    rows = [(tmp_path / name / "metrics.csv").read_text().splitlines() for name in ("one", "two")]
    assert len(rows[0]) == 2 and [r.rsplit(",", 1)[0] for r in rows[0]] == [r.rsplit(",", 1)[0] for r in rows[1]]
    assert_same_states(_checkpoint_state(tmp_path / "one", 1), _checkpoint_state(tmp_path / "two", 1))
    assert not (tmp_path / "two" / "train.log").read_text().count("\n") > \
        (tmp_path / "one" / "train.log").read_text().count("\n")  # process 1 did not log into the run


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one_and_after_a_killed_peer(tmp_path):
    """A run on two processes whose process 1 is killed: process 0 stops with one error line (its next
    collective fails, or the heartbeat watchdog fires) within the heartbeat timeout; the same command on one process resumes from the last checkpoint written collectively
    by both, and continues exactly as an uninterrupted one-process run."""
    config = _tiny_run_config("cryingan", tmp_path)
    args = ["--config", str(config), "--run-dir", str(tmp_path / "two"), "train.epochs=40"]
    processes = multiprocess.start("dismax.train", args, 2, 1, extra=("--heartbeat-timeout", "5"))
    try:
        deadline = time.monotonic() + 400
        while not (tmp_path / "two" / "checkpoints" / "2").is_dir():
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.5)
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code0, _, err0 = multiprocess.finish(processes[:1], timeout=120)[0]
        waited = time.monotonic() - killed
    finally:
        multiprocess.kill(processes)
    assert code0 == 1 and waited < 90, err0[-3000:]
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0: ") and "Rerun" in errors[0], err0[-3000:]
    assert "Traceback" not in err0 and "Check failure" not in err0
    saved = max(int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit())
    final = saved + 1
    resume = ["--config", str(config), "--run-dir", str(tmp_path / "two"), f"train.epochs={final}"]
    _, _, err = multiprocess.run("dismax.train", resume, 1, 2)[0]
    assert f"resumed after epoch {saved - 1}" in err
    straight = ["--config", str(config), "--run-dir", str(tmp_path / "one"), f"train.epochs={final}"]
    multiprocess.run("dismax.train", straight, 1, 2)
    assert_same_states(_checkpoint_state(tmp_path / "one", final), _checkpoint_state(tmp_path / "two", final))
    meta = json.loads((tmp_path / "two" / "checkpoints" / str(final) / "meta" / "metadata").read_text())
    assert meta["epoch"] == final


# ------------------------------------------------------------------------------------------ outputs
def _jittered_silicon(path, n, seed, noise):
    """``n`` 2×2×2 diamond Si supercells (64 atoms, 10.86 Å) with Gaussian noise (fractional) as extxyz."""
    from dismax.io import write_extxyz
    from dismax.structures import Crystals
    from tests.test_bad_inputs import DIAMOND

    rng = np.random.default_rng(seed)
    shifts = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], float)
    sites = ((DIAMOND[None] + shifts[:, None]) / 2).reshape(-1, 3)
    frac = np.mod(sites[None] + noise * rng.standard_normal((n, 64, 3)), 1.0)
    write_extxyz(Crystals(frac, np.repeat(np.eye(3)[None] * 10.86, n, 0), np.full((n, 64), 14)), path)


@pytest.mark.slow
def test_relaxation_on_two_processes_writes_the_same_files_as_one(tmp_path):
    """Six jittered 2×2×2 diamond Si supercells (64 atoms) in read chunks of 2 (process 0 relaxes chunk 0,
    process 1 chunks 1-2): relaxed.extxyz and results.csv are byte-identical to a one-process relaxation."""
    _jittered_silicon(tmp_path / "in.extxyz", 6, 0, 0.01)
    for name, n_processes in (("one", 1), ("two", 2)):
        multiprocess.run("dismax.bench", ["relax", "--in", str(tmp_path / "in.extxyz"), "--out",
                                          str(tmp_path / name), "--chunk-size", "2", "--max-steps", "50"],
                         n_processes, 1)
    for file in ("relaxed.extxyz", "results.csv"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes(), file
    rows = (tmp_path / "two" / "results.csv").read_text().splitlines()
    assert len(rows) == 7 and "failed" not in "".join(rows)
    assert not list((tmp_path / "two").glob(".chunk*"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cryingan", "diffusion"])
def test_sampling_on_two_processes_writes_the_same_file_as_one(model, tmp_path):
    """Ten structures in generation batches of 3 (chunks 0-1 on process 0, 2-3 on process 1, each keyed by
    its chunk index): the merged extxyz is byte-identical to one process's."""
    config = _tiny_run_config(model, tmp_path)
    run_dir = tmp_path / "run"
    multiprocess.run("dismax.train", ["--config", str(config), "--run-dir", str(run_dir)], 1, 1)
    for name, n_processes in (("one", 1), ("two", 2)):
        multiprocess.run("dismax.sample", ["--run-dir", str(run_dir), "--n", "10", "--batch-size", "3", "--out",
                                           str(tmp_path / f"{name}.extxyz")], n_processes, 1)
    one, two = (tmp_path / "one.extxyz").read_text(), (tmp_path / "two.extxyz").read_text()
    assert one == two and one.count("Lattice=") == 10
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []



@pytest.mark.slow
def test_unet_and_vae_sampling_on_two_processes_write_the_same_files_as_one(tmp_path):
    """A one-step UniMat run samples 5 structures in chunks of 2 and a two-epoch Wyckoff VAE decodes 6 latents
    in chunks of 2 on one and on two processes: the extxyz, its failure summary, every CIF, rejected.csv and
    metrics.json are the same."""
    from tests.diffusion.test_unet_overfit import SMALL, eight_atom_cells
    from tests.vae.test_vae_trainer import TINY
    from tests.vae.vae_fixtures import write_training_cifs

    from dismax.io import write_extxyz

    write_extxyz(eight_atom_cells(4), tmp_path / "cells.extxyz")
    (tmp_path / "unimat.yaml").write_text("model:\n  name: unimat\n")
    multiprocess.run("dismax.train", ["--config", str(tmp_path / "unimat.yaml"), "--run-dir", str(tmp_path / "unet"),
                                      *SMALL["unimat"], f"data.train_file={tmp_path / 'cells.extxyz'}",
                                      f"data.val_file={tmp_path / 'cells.extxyz'}", "train.epochs=1",
                                      "train.batch_size=4", "sample.n_steps=3"], 1, 1, timeout=900)
    write_training_cifs(tmp_path / "cifs")
    multiprocess.run("dismax.train", ["--config", "configs/wyckoff_vae_small.yaml", "--run-dir",
                                      str(tmp_path / "vae"), f"data.source={tmp_path / 'cifs'}", *TINY,
                                      "train.epochs=2"], 1, 1)
    for name, n_processes in (("one", 1), ("two", 2)):
        multiprocess.run("dismax.sample", ["--run-dir", str(tmp_path / "unet"), "--n", "5", "--batch-size", "2",
                                           "--out", str(tmp_path / f"{name}.extxyz")], n_processes, 1, timeout=900)
        multiprocess.run("dismax.sample", ["--run-dir", str(tmp_path / "vae"), "--n", "6", "--batch-size", "2",
                                           "--sampler", "gaussian", "--out", str(tmp_path / f"{name}_vae")],
                         n_processes, 1)
    summaries = [json.loads((tmp_path / f"{name}.extxyz.summary.json").read_text()) for name in ("one", "two")]
    assert summaries[0] == summaries[1] and summaries[0]["n_requested"] == 5
    if summaries[0]["n_failed"] < 5:
        assert (tmp_path / "one.extxyz").read_bytes() == (tmp_path / "two.extxyz").read_bytes()
        assert (tmp_path / "one.extxyz").read_text().count("Lattice=") == 5 - summaries[0]["n_failed"]
    one, two = tmp_path / "one_vae", tmp_path / "two_vae"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert json.loads((one / "metrics.json").read_text())["samples"] == 6
    for file in one.iterdir():
        assert file.read_bytes() == (two / file.name).read_bytes(), file.name
    assert not [p for p in [*tmp_path.iterdir(), *one.iterdir(), *two.iterdir()] if p.name.startswith(".")]

ALLOY_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from dismax.data import alloy
    from dismax.devices import initialize_distributed

    port, pid, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    if n > 1:
        initialize_distributed(f"127.0.0.1:{port}", n, pid, init_timeout=60, heartbeat_timeout=30)
    tiny = alloy.AlloyProtocol(chains=3, passes=60, snapshot_every=1, n_structures=10, segments=2)
    alloy.write_alloy_dataset("alloy_1500K_narrow", 1500.0, "narrow", "small", 3, out / f"process{pid}", tiny)
""")


@pytest.mark.slow
def test_alloy_build_on_two_processes_writes_the_same_dataset_as_one(tmp_path):
    """Three Monte Carlo chains, one on process 0 and two on process 1, gathered before the narrow selection:
    train/val extxyz and params.json (with per-chain acceptance) are byte-identical to one process's."""
    import subprocess
    import sys

    port = multiprocess.free_port()
    env = multiprocess.cli_env(1)
    runs = {n: [subprocess.Popen([sys.executable, "-c", ALLOY_SCRIPT, str(port + n), str(i), str(n),
                                  str(tmp_path / f"n{n}")], env=env, cwd=multiprocess.ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
                for i in range(n)] for n in (1, 2)}
    for n, processes in runs.items():
        for i, (code, _, err) in enumerate(multiprocess.finish(processes, timeout=400)):
            assert code == 0, f"{n} processes, process {i}: {err[-3000:]}"
    for name in ("train.extxyz", "val.extxyz", "params.json"):
        one = (tmp_path / "n1" / "process0" / name).read_bytes()
        assert one == (tmp_path / "n2" / "process0" / name).read_bytes() == \
            (tmp_path / "n2" / "process1" / name).read_bytes(), name
    assert (tmp_path / "n2" / "process0" / "params.json").read_text().count('"acceptance_per_chain"') == 1


@pytest.mark.slow
def test_scoring_on_two_processes_writes_the_same_report_as_one(tmp_path):
    """a-Si metrics of 5 generated vs 4 training structures: the per-structure CrystalNN work is split across
    the processes and gathered; every report file (metrics, per-structure rows, plots) is byte-identical."""
    _jittered_silicon(tmp_path / "train.extxyz", 4, 0, 0.02)
    _jittered_silicon(tmp_path / "gen.extxyz", 5, 1, 0.02)
    for name, n_processes in (("one", 1), ("two", 2)):
        multiprocess.run("dismax.bench", ["metrics", "--family", "a_si", "--train", str(tmp_path / "train.extxyz"),
                                          "--gen", str(tmp_path / "gen.extxyz"), "--out", str(tmp_path / name),
                                          "--workers", "1", "--replicates", "20", "--cache",
                                          str(tmp_path / f"cache_{name}")], n_processes, 1)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "metrics.json" in files and files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
