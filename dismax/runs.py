"""Run directories: one place per training run for its config, checkpoints, metrics, plots and samples.

Layout::

    RUN/
      config.yaml        the resolved config (written once at the start; a resumed run must match it)
      checkpoints/       orbax checkpoints (see dismax.checkpoint)
      metrics.csv        one row per logged step/epoch, appended as training goes
      plots/             PNG figures (loss curves, ...)
      samples/           generated structures (extxyz)
      train.log          the log of every session that trained in this directory
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

log = logging.getLogger("dismax")


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it onto ``path``.

    The file gets ordinary permissions (0666 minus the umask) and is fsynced before the rename, so a
    reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        """Append one row to metrics.csv (header from the first row; later rows must use the same keys)."""
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
        restored checkpoint, so a resumed run logs every step exactly once)."""
        rows = self.read_metrics()
        if not rows:
            return
        kept = [r for r in rows if keep_while(r)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.metrics_csv, buffer.getvalue())

    def attach_log_file(self) -> None:
        """Send dismax log records to RUN/train.log as well as stderr."""
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler for the 'dismax' logger (idempotent)."""
    if not any(getattr(h, "_dismax", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[dismax] %(message)s"))
        handler._dismax = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kwargs):
    """A tqdm progress bar on stderr (quiet when DISMAX_NO_PROGRESS is set)."""
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True,
                disable=bool(os.environ.get("DISMAX_NO_PROGRESS")), **kwargs)


def _maybe_float(value: str):
    """'3' → 3, '0.5' → 0.5, anything else unchanged (so rewritten CSVs keep integer columns as integers)."""
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value
