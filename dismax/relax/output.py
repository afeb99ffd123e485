"""Incremental, crash-safe relaxation output: ``relaxed.extxyz`` + ``results.csv`` in one directory.

``results.csv`` (``id,status,steps,e_initial,e_final,fmax``; energies in eV/atom, fmax in eV/Å) is the
commit log: a chunk's frames are appended to ``relaxed.extxyz`` and fsynced first, then its rows are
appended to the CSV and fsynced. On reopening, a partial last CSV line is dropped and every extxyz frame
that has no CSV row (written just before an interruption) or is incomplete is cut off, so each structure
ends up exactly once in both files. Failed structures get a CSV row but no frame.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np

from dismax.errors import DismaxInputError
from dismax.io import write_extxyz_frames
from dismax.potentials.fire import RelaxResult
from dismax.runs import atomic_write_text

CSV_HEADER = "id,status,steps,e_initial,e_final,fmax\n"
_FRAME_ID = re.compile(r"(?:^|\s)id=(\d+)(?:\s|$)")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


class RelaxOutput:
    """Output directory of one relaxation run; ``done`` holds the ids already finished."""

    def __init__(self, directory, settings: dict):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.extxyz = self.directory / "relaxed.extxyz"
        self.csv = self.directory / "results.csv"
        self._check_settings(settings)
        self.done: set[int] = set()
        self._recover()

    def _check_settings(self, settings: dict) -> None:
        path = self.directory / "relax.json"
        if path.exists():
            previous = json.loads(path.read_text())
            changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
            if changed:
                listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
                raise DismaxInputError(
                    f"{self.directory} holds a relaxation with different settings ({listing}); "
                    "use another --out directory or the original settings"
                )
        else:
            atomic_write_text(path, json.dumps(settings, indent=2) + "\n")

    def _recover(self) -> None:
        if not self.csv.exists() or self.csv.stat().st_size == 0:
            self.csv.write_text(CSV_HEADER)
        data = self.csv.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            _truncate(self.csv, len(complete))
        lines = complete.decode().splitlines()
        if not lines or lines[0] + "\n" != CSV_HEADER:
            raise DismaxInputError(f"{self.csv} is not a dismax results file (header {lines[:1]})")
        for number, line in enumerate(lines[1:], start=2):
            try:
                self.done.add(int(line.split(",", 1)[0]))
            except ValueError:
                raise DismaxInputError(f"{self.csv} line {number} has no integer id: {line!r}") from None
        self._cut_extxyz()

    def _cut_extxyz(self) -> None:
        """Drop trailing frames without a CSV row and any incomplete last frame."""
        if not self.extxyz.exists():
            return
        data = self.extxyz.read_bytes()
        keep, position = 0, 0
        while position < len(data):
            first_end = data.find(b"\n", position)
            if first_end < 0:
                break
            try:
                n_atoms = int(data[position:first_end])
            except ValueError:
                break
            end = first_end
            for _ in range(n_atoms + 1):
                end = data.find(b"\n", end + 1)
                if end < 0:
                    break
            if end < 0:
                break
            comment = data[first_end + 1: data.find(b"\n", first_end + 1)].decode()
            match = _FRAME_ID.search(comment)
            if match is None or int(match.group(1)) not in self.done:
                break
            position = keep = end + 1
        if keep != len(data):
            _truncate(self.extxyz, keep)

    def append(self, ids: np.ndarray, result: RelaxResult) -> None:
        """Record one relaxed chunk (frames first, then the CSV rows that commit them)."""
        keep = [k for k, status in enumerate(result.status) if status != "failed"]
        if keep:
            info = [dict(id=int(ids[k]), status=str(result.status[k]), steps=int(result.steps[k]),
                         e_final=float(result.e_final[k]), fmax=float(result.fmax[k])) for k in keep]
            buffer = io.StringIO()
            write_extxyz_frames(buffer, result.crystals.to_numpy()[np.asarray(keep)], info, self.extxyz)
            _append(self.extxyz, buffer.getvalue())
        rows = "".join(
            f"{int(i)},{s},{int(n)},{e0:.8f},{e1:.8f},{f:.6f}\n"
            for i, s, n, e0, e1, f in zip(ids, result.status, result.steps, result.e_initial, result.e_final,
                                          result.fmax)
        )
        _append(self.csv, rows)
        self.done.update(int(i) for i in ids)
