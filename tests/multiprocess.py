"""Helpers for the multi-process tests: start a dismax CLI as N local CPU processes on a loopback coordinator
(JAX's gloo CPU collectives), each with a small fixed number of simulated devices, and always reap them."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_env(devices_per_process: int) -> dict:
    """Environment of a child: this checkout first on the path, CPU only, ``devices_per_process`` devices."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "DISMAX_NO_PROGRESS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}


def start(module: str, args: list[str], n_processes: int, devices_per_process: int = 1, port: int | None = None,
          extra: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """Start ``python -m module args`` as ``n_processes`` processes of one run (one plain process when
    ``n_processes`` is 1 and no port is given)."""
    env = cli_env(devices_per_process)
    if n_processes == 1 and port is None:
        return [subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)]
    port = free_port() if port is None else port
    return [subprocess.Popen([sys.executable, "-m", module, *args, "--coordinator", f"127.0.0.1:{port}",
                              "--num-processes", str(n_processes), "--process-id", str(i), *extra],
                             env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
            for i in range(n_processes)]


def finish(processes: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of every process; kills them all (and their children) on the way out."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out, err))
    finally:
        kill(processes)
    return results


def kill(processes: list[subprocess.Popen]) -> None:
    """SIGKILL every process group still running (each child runs in its own session) and reap it."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            process.communicate(timeout=30)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def run(module: str, args: list[str], n_processes: int, devices_per_process: int = 1,
        timeout: float = 240) -> list[tuple[int, str, str]]:
    """Run the CLI on ``n_processes`` processes to the end; assert every process succeeded."""
    results = finish(start(module, args, n_processes, devices_per_process), timeout)
    for i, (code, _, err) in enumerate(results):
        assert code == 0, f"process {i} of {n_processes} exited with {code}: {err[-3000:]}"
    return results
