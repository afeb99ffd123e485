"""One place where structures are checked before a command uses them.

Two uses:

* :func:`require_valid` for inputs a user provides (``data check/convert``, training files, reference sets,
  structures to score): the first problem raises :class:`~dismax.errors.DismaxInputError` naming the
  source, the structure index and what is wrong (for overlaps, the offending atom pair and its distance).
* :func:`screen` for generated structures: every structure keeps its index and gets a status
  (``ok``, ``rejected_nan``, ``rejected_cell``, ``rejected_atom_count``, ``rejected_composition``,
  ``rejected_overlap``) so a command can count it in "% failed" instead of silently dropping it or
  passing it through.

A sampler that cannot turn every sample into a structure (the U-Net baselines decode a wrong composition)
writes the others and a sample summary (:func:`write_sample_summary`) beside its file; the bench pipeline
gives each missing structure the status ``failed_decode`` (:func:`with_sample_failures`).

Checks: finite coordinates and cell, a periodic cell of non-zero volume, optionally a required atom count
and composition, and a minimum interatomic (minimum-image) distance. The distance thresholds per family
(:data:`MIN_DISTANCE`) flag atoms that overlap (no physical structure of the family has them), far below
the post-processing distance (1.5 Å, which generated structures are moved apart to).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dismax.errors import DismaxInputError
from dismax.geometry import pairwise_minimum_image_distances
from dismax.io import DEGENERATE_CELL_TOLERANCE
from dismax.runs import atomic_write_text
from dismax.structures import Crystals, StructureSet, as_structure_set

# Minimum interatomic distance in Å below which two atoms overlap. Nearest-neighbour distances are
# ~2.5 Å in the Fe-Ni-Cr alloys, ~2.35 Å in a-Si and >= 1.9 Å (Li/Co-O, Sc-Cl) at the interface.
MIN_DISTANCE = {"alloy": 1.0, "a_si": 1.0, "interface": 1.0}
DEFAULT_MIN_DISTANCE = 0.5
_CHUNK = 32  # structures per pair-distance evaluation (B * N * N floats in memory)


def min_distance_for(family: str | None) -> float:
    """The overlap threshold in Å of ``family`` (the default for other or no family)."""
    return MIN_DISTANCE.get(family, DEFAULT_MIN_DISTANCE) if family else DEFAULT_MIN_DISTANCE


@dataclass(frozen=True)
class Verdict:
    """The status of one structure and, unless ``ok``, one sentence saying why."""

    status: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


OK = Verdict("ok")


def screen(structures: Crystals | StructureSet, min_distance: float | None = DEFAULT_MIN_DISTANCE,
           n_atoms: int | None = None, composition: dict[int, int] | None = None) -> list[Verdict]:
    """One :class:`Verdict` per structure, in input order.

    ``min_distance`` (Å; None skips the check), ``n_atoms`` and ``composition`` ({atomic number: count})
    are what the command needs; structures with NaN/inf are not measured further.
    """
    structures = as_structure_set(structures)
    verdicts: list[Verdict | None] = [None] * len(structures)
    for group, positions in zip(structures.groups, structures.positions):
        indices = [int(i) for i in positions]
        group = group.to_numpy()
        frac, lattice, species = (np.asarray(group.frac, float), np.asarray(group.lattice, float),
                                  np.asarray(group.species))
        measurable = []
        for b, index in enumerate(indices):
            verdict = _basic_verdict(frac[b], lattice[b], species[b], n_atoms, composition)
            verdicts[index] = verdict
            if verdict is None:
                measurable.append(b)
        if min_distance is not None and measurable and frac.shape[1] > 1:
            for b, pair in zip(measurable, _closest_pairs(frac[measurable], lattice[measurable])):
                i, j, distance = pair
                if distance < min_distance:
                    verdicts[indices[b]] = Verdict("rejected_overlap", f"atoms {i} and {j} are {distance:.3f} Å "
                                                   f"apart (minimum {min_distance:g} Å)")
    return [v or OK for v in verdicts]


def require_valid(structures: Crystals | StructureSet, source: str, min_distance: float | None = DEFAULT_MIN_DISTANCE,
                  n_atoms: int | None = None, composition: dict[int, int] | None = None,
                  first_index: int = 0) -> None:
    """Raise :class:`DismaxInputError` for the first structure of ``source`` that fails :func:`screen`
    (``first_index``: the index in ``source`` of ``structures[0]``, for files checked chunk by chunk)."""
    for index, verdict in enumerate(screen(structures, min_distance, n_atoms, composition), start=first_index):
        if not verdict.ok:
            raise DismaxInputError(f"{source}, structure {index}: {verdict.reason}")


def partition(structures: StructureSet, min_distance: float | None = None, n_atoms: int | None = None
              ) -> tuple[StructureSet | None, list[int], list[dict]]:
    """Split generated structures into the usable ones (None if none), their input indices, and one
    status row ``{"id", "status", "reason"}`` per rejected structure (input index kept)."""
    verdicts = screen(structures, min_distance, n_atoms)
    usable = [i for i, v in enumerate(verdicts) if v.ok]
    rejected = [{"id": i, "status": v.status, "reason": v.reason} for i, v in enumerate(verdicts) if not v.ok]
    return (structures.select(usable) if usable else None), usable, rejected


def merge_status_rows(rows: list[dict], ids: list[int], rejected: list[dict]) -> list[dict]:
    """Status rows of the usable structures (``rows[k]["id"]`` = k, renumbered to ``ids[k]``) and of the
    rejected ones, in input order."""
    renumbered = [{**row, "id": ids[int(row["id"])]} for row in rows]
    return sorted(renumbered + rejected, key=lambda row: row["id"])


def count_failed(verdicts: list[Verdict]) -> dict[str, int]:
    """Number of structures per non-ok status (for "% failed" summaries)."""
    return dict(Counter(v.status for v in verdicts if not v.ok))


SAMPLE_FAILURE = "failed_decode"


@dataclass(frozen=True)
class SampleSummary:
    """What a sampler that writes only the structures it could decode (the U-Net baselines) generated:
    ``n_requested`` structures with IDs 0..n_requested − 1, of which ``failed_ids`` produced no structure
    (``reason``); the file holds the others, in increasing ID order. ``diagnostics``: what else the sampler
    recorded (e.g. the U-Net samplers' ``species_accuracy``)."""

    n_requested: int
    failed_ids: tuple[int, ...]
    reason: str
    diagnostics: dict = field(default_factory=dict)

    @property
    def written_ids(self) -> list[int]:
        failed = set(self.failed_ids)
        return [i for i in range(self.n_requested) if i not in failed]


SUMMARY_KEYS = ("n_requested", "n_written", "n_failed", "percent_failed", "failure", "failed_ids")


def sample_summary_path(path) -> Path:
    """``<path>.summary.json``: the sample summary beside a generated structure file."""
    path = Path(path)
    return path.with_name(path.name + ".summary.json")


def write_sample_summary(path, n_requested: int, failed_ids, reason: str, diagnostics: dict | None = None) -> Path:
    """Write the :class:`SampleSummary` of the generated file ``path`` (also the counts and % failed, for
    people, and the sampler's JSON-able ``diagnostics``) to :func:`sample_summary_path`, atomically."""
    failed = sorted(int(i) for i in failed_ids)
    summary = {"n_requested": n_requested, "n_written": n_requested - len(failed), "n_failed": len(failed),
               "percent_failed": 100.0 * len(failed) / n_requested, "failure": reason, "failed_ids": failed,
               **(diagnostics or {})}
    target = sample_summary_path(path)
    atomic_write_text(target, json.dumps(summary, indent=1))
    return target


def read_sample_summary(path) -> SampleSummary | None:
    """The :class:`SampleSummary` beside the generated file ``path``, or None when there is none."""
    target = sample_summary_path(path)
    if not target.is_file():
        return None
    try:
        entry = json.loads(target.read_text())
        summary = SampleSummary(int(entry["n_requested"]), tuple(int(i) for i in entry["failed_ids"]),
                                str(entry.get("failure", "")),
                                {k: v for k, v in entry.items() if k not in SUMMARY_KEYS})
    except (ValueError, KeyError, TypeError) as error:
        raise DismaxInputError(f"{target}: not a sample summary (needs n_requested and failed_ids): {error}")
    if summary.n_requested < 1 or len(set(summary.failed_ids)) != len(summary.failed_ids) or \
            not all(0 <= i < summary.n_requested for i in summary.failed_ids):
        raise DismaxInputError(f"{target}: failed_ids must be distinct IDs in 0..{summary.n_requested - 1}")
    return summary


def with_sample_failures(rows: list[dict], summary: SampleSummary, source: str) -> list[dict]:
    """Status rows of the frames of the sampled file ``source`` (``rows[k]["id"]`` = frame k) renumbered to
    their generation IDs, plus one ``failed_decode`` row per structure the sampler could not decode, in ID
    order."""
    written = summary.written_ids
    if len(rows) != len(written):
        raise DismaxInputError(f"{source}: its sample summary lists {len(written)} written structures but the "
                               f"file has {len(rows)}")
    renumbered = [{**row, "id": written[int(row["id"])]} for row in rows]
    failed = [{"id": i, "status": SAMPLE_FAILURE, "reason": summary.reason} for i in summary.failed_ids]
    return sorted(renumbered + failed, key=lambda row: row["id"])


def _basic_verdict(frac, lattice, species, n_atoms, composition) -> Verdict | None:
    if not np.all(np.isfinite(lattice)):
        return Verdict("rejected_nan", "the cell contains NaN or inf")
    bad = np.flatnonzero(~np.all(np.isfinite(frac), axis=1))
    if bad.size:
        return Verdict("rejected_nan", f"atom {int(bad[0])} has NaN or inf coordinates ({bad.size} atom(s))")
    volume = abs(float(np.linalg.det(lattice)))
    if volume <= DEGENERATE_CELL_TOLERANCE * float(np.prod(np.linalg.norm(lattice, axis=1))):
        return Verdict("rejected_cell", f"the cell has zero volume ({volume:.3g} Å³)")
    if n_atoms is not None and len(species) != n_atoms:
        return Verdict("rejected_atom_count", f"has {len(species)} atoms, expected {n_atoms}")
    if composition is not None and Counter(species.tolist()) != Counter(composition):
        return Verdict("rejected_composition", f"composition {dict(Counter(species.tolist()))} differs from the "
                                               f"required {dict(composition)}")
    return None


def _closest_pairs(frac: np.ndarray, lattice: np.ndarray) -> list[tuple[int, int, float]]:
    """(i, j, distance in Å) of the closest minimum-image pair of each structure (B, N, 3)."""
    pairs = []
    n = frac.shape[1]
    for start in range(0, len(frac), _CHUNK):
        distances = np.array(pairwise_minimum_image_distances(frac[start:start + _CHUNK],
                                                              lattice[start:start + _CHUNK]))
        distances[:, np.arange(n), np.arange(n)] = np.inf
        for d in distances:
            i, j = np.unravel_index(int(np.argmin(d)), d.shape)
            pairs.append((int(min(i, j)), int(max(i, j)), float(d[i, j])))
    return pairs
