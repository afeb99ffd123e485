"""Run directories: one place per training run for its config, checkpoints, metrics, plots and samples.

Layout::

    RUN/
      config.yaml        the resolved config (written once at the start; a resumed run must match it)
      checkpoints/       orbax checkpoints (see dismax.checkpoint)
      metrics.csv        one row per logged step/epoch, appended as training goes
      plots/             PNG figures (loss curves, ...)
      samples/           generated structures (extxyz)
      train.log          the log of every session that trained in this directory

Concurrency and crashes: a process that writes a run directory, a sample file, a relaxation output or a
dataset first takes an :func:`exclusive_lock` on it (``.NAME.lock`` next to it); a second process gets a
clear error naming the holder. In a multi-process run (:mod:`dismax.devices`) process 0 takes the locks and
alone writes metrics, logs and progress bars for the group.
Temporary files and staging folders carry their writer's host and PID in their name
(``.NAME~HOST~PID~XXXX.tmp``), so whoever next takes the lock removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from dismax.devices import barrier, is_primary, process_share
from dismax.errors import DismaxError

log = logging.getLogger("dismax")


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it onto ``path``.

    The file gets ordinary permissions (0666 minus the umask) and is fsynced before the rename, so a
    reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_in_parts(out: Path, n_parts: int, write_part: Callable[[int, Path], None], desc: str) -> Path:
    """Write the file ``out`` as ``n_parts`` parts concatenated in order, resumably and across processes.

    ``write_part(i, path)`` writes part i (a pure function of i, e.g. structures generated from a key folded
    with i) atomically to ``path`` (``.STEM.partIIIII-of-NNNNN.SUFFIX`` next to ``out``); parts already on
    disk are kept, so an interrupted run continues. Each process of a multi-process run writes its
    contiguous share of the parts (:func:`dismax.devices.process_share`); process 0 then concatenates them
    into ``out`` atomically and removes them, so the file is the same on any number of processes.
    """
    out = Path(out)
    parts = [out.parent / f".{out.stem}.part{i:05d}-of-{n_parts:05d}{out.suffix}" for i in range(n_parts)]
    for i in progress(process_share(n_parts), desc=desc):
        if not parts[i].exists():
            write_part(i, parts[i])
    barrier(f"parts of {out}")
    if is_primary():
        def concatenate(handle):
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, handle)

        atomic_write(out, concatenate, binary=True)
        for part in parts:
            part.unlink()
    barrier(f"merged {out}")
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(Path(path), lambda handle: handle.write(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(Path(path), lambda handle: handle.write(data), binary=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(path: Path) -> str:
    """Name prefix of a hidden temporary file or staging folder for ``path``: ``.NAME~HOST~PID~``.

    The writer's host and PID in the name let :func:`remove_leftovers` tell a killed writer's
    leftovers from a live writer's work in progress."""
    return f".{Path(path).name}~{_HOST}~{os.getpid()}~"


def make_staging_dir(path: Path) -> Path:
    """A hidden staging folder next to ``path`` (renamed onto ``path`` when complete), with ordinary
    permissions (0777 minus the umask; mkdtemp alone gives 0700)."""
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=Path(path).parent))
    staging.chmod(0o777 & ~_umask())
    return staging


_HOST = socket.gethostname().replace("~", "-")
_TAGGED = re.compile(r"^\.(?P<name>.+)~(?P<host>[^~]+)~(?P<pid>\d+)~[^~]*$")


class LockedError(DismaxError):
    """Another process holds the lock (the message names its PID and host)."""


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_leftovers(directory: Path, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove temporary files and staging folders that killed processes left in ``directory``.

    Tagged leftovers (see :func:`temp_prefix`) are removed when their writer ran on this host and is
    dead. With ``name``, untagged hidden leftovers of that target (``.NAME.*.tmp`` files and ``.NAME.*``
    folders, as written by older versions) are removed too: call it so only while holding the target's
    lock. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    entries = directory.rglob(".*") if recursive else directory.glob(".*")
    removed = []
    for entry in list(entries):
        tagged = _TAGGED.match(entry.name)
        if tagged:
            stale = tagged["host"] == _HOST and not pid_alive(int(tagged["pid"]))
        else:
            stale = (name is not None and entry.name.startswith(f".{name}.") and entry.parent == directory
                     and not entry.name.endswith(".lock")
                     and (entry.is_dir() or entry.name.endswith(".tmp")))
        if not stale:
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d leftover(s) of interrupted runs in %s", len(removed), directory)
    return removed


_HELD: set[Path] = set()  # lock files this process holds (a nested lock of the same target is a no-op)


@contextlib.contextmanager
def exclusive_lock(target: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a run directory, an output file or folder, a dataset folder).

    The lock file is ``.NAME.lock`` next to ``target`` (so it works before ``target`` exists); it holds
    the holder's PID and host, and is removed on release. The lock is an OS file lock, so a killed holder
    releases it; a lock file left by a dead PID on this host is taken over. A lock held elsewhere raises
    :class:`LockedError` naming the holder, or with ``wait`` is waited for. On taking the lock, leftovers
    of killed writers of ``target`` are removed. Re-entrant within a process. In a multi-process run only
    process 0 takes it, on behalf of all.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent.resolve() / f".{target.name}.lock"
    if lock_path in _HELD or not is_primary():
        yield
        return
    fd = _acquire(lock_path, what, target, wait)
    _HELD.add(lock_path)
    try:
        remove_leftovers(target.parent, target.name)
        if target.is_dir():
            remove_leftovers(target, recursive=True)
        yield
    finally:
        _HELD.discard(lock_path)
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
        os.close(fd)


def _acquire(lock_path: Path, what: str, target: Path, wait: bool) -> int:
    announced = False
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        holder = _read_holder(fd)
        if _try_flock(fd, holder):
            try:
                same_file = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the previous holder removed it between our open and our lock
                os.close(fd)
                continue
            holder = _read_holder(fd)
            if not holder or holder.get("host") == _HOST or not holder.get("host"):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": _HOST, "since": time.strftime(
                    "%Y-%m-%d %H:%M:%S")}).encode(), 0)
                os.fsync(fd)
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)  # written on another host: its PID cannot be checked from here
        if not holder:  # the holder has created the file but not yet written its name
            time.sleep(0.05)
            holder = _read_holder(fd)
        os.close(fd)
        message = (f"{what} '{target}' is locked by PID {holder.get('pid', '?')} on host "
                   f"{holder.get('host', '?')} (since {holder.get('since', '?')}): another dismax process is "
                   f"using it; wait for it to finish or stop it")
        if holder.get("host") not in (None, _HOST):
            message += f" (if it no longer runs, delete {lock_path})"
        if not wait:
            raise LockedError(message)
        if not announced:
            log.info("waiting: %s", message)
            announced = True
        time.sleep(1.0)


def _try_flock(fd: int, holder: dict) -> bool:
    """Take the OS lock without blocking; where the file system has no locks, judge by the holder's PID."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        return not (holder.get("host") == _HOST and pid_alive(int(holder.get("pid", 0))))


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


class RunDir:
    """A run directory (created on first use); see the module docstring for its layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_csv = self.path / "metrics.csv"
        self.plots = self.path / "plots"
        self.samples = self.path / "samples"
        self.log_path = self.path / "train.log"

    def create(self) -> "RunDir":
        for directory in (self.path, self.checkpoints, self.plots, self.samples):
            directory.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(p.name.isdigit() for p in self.checkpoints.iterdir())

    def append_metrics(self, row: dict) -> None:
        """Append one row to metrics.csv (header from the first row; later rows must use the same keys); only
        process 0 of a multi-process run writes."""
        if not is_primary():
            return
        exists = self.metrics_csv.exists() and self.metrics_csv.stat().st_size > 0
        if exists:
            with open(self.metrics_csv, newline="") as handle:
                header = next(csv.reader(handle))
            if set(header) != set(row):
                raise ValueError(f"metrics row keys {sorted(row)} differ from metrics.csv header {header}")
        else:
            header = list(row)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header)
        if not exists:
            writer.writeheader()
        writer.writerow(row)
        with open(self.metrics_csv, "a", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict]:
        """metrics.csv as a list of dicts with int or float values where they parse."""
        if not self.metrics_csv.exists():
            return []
        with open(self.metrics_csv, newline="") as handle:
            return [{k: _maybe_float(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def truncate_metrics(self, keep_while) -> None:
        """Drop rows for which ``keep_while(row)`` is False (used on resume to forget steps after the
        restored checkpoint, so a resumed run logs every step exactly once); only process 0 writes."""
        rows = self.read_metrics() if is_primary() else []
        if not rows:
            return
        kept = [r for r in rows if keep_while(r)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.metrics_csv, buffer.getvalue())

    def attach_log_file(self) -> None:
        """Send dismax log records to RUN/train.log as well as stderr (process 0 only)."""
        if not is_primary():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is now (tests and notebooks replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler for the 'dismax' logger (idempotent)."""
    if not any(getattr(h, "_dismax", False) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[dismax] %(message)s"))
        handler._dismax = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kwargs):
    """A tqdm progress bar on stderr (quiet when DISMAX_NO_PROGRESS is set, and on processes other than 0)."""
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True,
                disable=bool(os.environ.get("DISMAX_NO_PROGRESS")) or not is_primary(), **kwargs)


def _maybe_float(value: str):
    """'3' → 3, '0.5' → 0.5, anything else unchanged (so rewritten CSVs keep integer columns as integers)."""
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value
