"""The exclusive lock and leftover clean-up of dismax.runs: a second holder is refused with the first
holder's PID and host, a killed holder's lock and temporary files are taken over and removed."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dismax.runs import LockedError, atomic_write_text, exclusive_lock, make_staging_dir, remove_leftovers, temp_prefix


# the holder is forked from this (JAX-importing) process; it runs only Python code and sleeps
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def _hold(target, ready):
    with exclusive_lock(target, "run directory"):
        ready.set()
        time.sleep(60)


def _holder(target):
    """A forked process (no fresh interpreter start-up) that holds the lock on ``target`` until killed."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(target=_hold, args=(target, ready), daemon=True)
    process.start()
    assert ready.wait(30)
    return process


def test_second_holder_is_refused_with_pid_and_host(tmp_path):
    run = tmp_path / "run"
    process = _holder(run)
    try:
        with pytest.raises(LockedError) as caught:
            with exclusive_lock(run, "run directory"):
                pass
        message = str(caught.value)
        assert f"PID {process.pid}" in message and socket.gethostname() in message and str(run) in message
    finally:
        process.kill()
        process.join()


def test_killed_holder_is_taken_over_and_its_leftovers_removed(tmp_path):
    out = tmp_path / "samples.extxyz"
    process = _holder(out)
    # what a killed writer leaves: a tagged temporary file and a staging folder with its PID
    tmp_file = tmp_path / f".samples.extxyz~{socket.gethostname()}~{process.pid}~abc.tmp"
    tmp_file.write_text("partial")
    staging = tmp_path / f".samples.extxyz~{socket.gethostname()}~{process.pid}~xyz"
    staging.mkdir()
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    lock_file = tmp_path / ".samples.extxyz.lock"
    assert lock_file.exists()  # a killed holder cannot remove its lock file
    with exclusive_lock(out, "output file"):
        assert not tmp_file.exists() and not staging.exists()
        assert str(os.getpid()) in lock_file.read_text()
    assert not lock_file.exists()


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / ".data.lock"
    lock_file.write_text(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "since": "x"}}')
    with exclusive_lock(tmp_path / "data", "dataset"):
        assert f'"pid": {os.getpid()}' in lock_file.read_text()


def test_lock_file_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / ".run.lock").write_text('{"pid": 1, "host": "elsewhere", "since": "x"}')
    with pytest.raises(LockedError, match="PID 1 on host elsewhere.*delete"):
        with exclusive_lock(tmp_path / "run", "run directory"):
            pass


def test_lock_is_reentrant_and_waits_when_asked(tmp_path):
    target = tmp_path / "dataset"
    with exclusive_lock(target, "dataset"):
        with exclusive_lock(target, "dataset"):
            pass
        assert (tmp_path / ".dataset.lock").exists()
    process = _holder(target)
    start = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {process.pid}"])
    with exclusive_lock(target, "dataset", wait=True):
        assert time.monotonic() - start > 0.5
    process.join()


def test_live_writers_and_other_files_are_kept(tmp_path):
    live = tmp_path / f"{temp_prefix(tmp_path / 'a.extxyz')}abc.tmp"  # this process: alive
    live.write_text("in progress")
    other = tmp_path / ".b.extxyz.x1.tmp"  # untagged, another target
    other.write_text("x")
    keep = tmp_path / "a.extxyz"
    keep.write_text("done")
    assert remove_leftovers(tmp_path, "a.extxyz") == []
    assert live.exists() and other.exists() and keep.exists()
    untagged = tmp_path / ".a.extxyz.x2.tmp"  # an older version's temporary file of this target
    untagged.write_text("x")
    assert remove_leftovers(tmp_path, "a.extxyz") == [untagged]


def test_written_files_and_staging_folders_get_ordinary_modes(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
        staging = make_staging_dir(tmp_path / "dataset")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
    assert staging.stat().st_mode & 0o777 == 0o755
