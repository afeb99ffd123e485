"""``python -m dismax.bench postprocess|metrics``: argument parsers and entry points.

Every default comes from the library (``postprocess``, ``alloy``, ``pipeline.ScoreOptions``); the
per-structure fingerprint cache lives under dismax's one cache root (``data.registry.cache_root``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dismax import validation
from dismax.bench import alloy
from dismax.bench.pipeline import FAMILIES, ScoreOptions, read_status, records_csv, score, write_report
from dismax.bench.postprocess import MAX_ITER, MIN_DIST, move_atoms_apart
from dismax.data.registry import cache_root
from dismax.devices import is_primary
from dismax.errors import DismaxInputError
from dismax.io import read_extxyz, read_structure_set, write_extxyz
from dismax.runs import atomic_write_text, progress
from dismax.structures import Crystals, StructureSet

ALIGNMENTS = ("none", "translate", "rotate_translate")
REFERENCE_VARIANTS = ("as_is", "translate", "rotate")
DEFAULTS = ScoreOptions()


def default_cache() -> Path:
    """Where per-structure fingerprints are cached between runs."""
    return cache_root() / "bench"


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--in", "--input", dest="input", required=True, help="generated structures (extxyz)")
    parser.add_argument("--out", required=True, help="output directory: gen_clean.extxyz and status.csv")
    parser.add_argument("--reference-compatible", action="store_true",
                        help="reproduce the published scripts (raw-displacement move-apart, published clean-up)")
    parser.add_argument("--alignment", default=DEFAULTS.alignment, choices=ALIGNMENTS,
                        help="alloy site assignment alignment (dismax mode)")
    parser.add_argument("--variant", default=DEFAULTS.reference_variant, choices=REFERENCE_VARIANTS,
                        help="published alloy clean-up variant (reference-compatible mode)")
    parser.add_argument("--min-dist", type=float, default=MIN_DIST, help=f"move-apart threshold in Å ({MIN_DIST})")
    parser.add_argument("--max-iter", type=int, default=MAX_ITER)


def postprocess(family: str, structures: StructureSet, reference_compatible: bool = False,
                alignment: str = DEFAULTS.alignment, variant: str = DEFAULTS.reference_variant,
                min_dist: float = MIN_DIST, max_iter: int = MAX_ITER,
                source: str = "generated structures") -> tuple[StructureSet | None, list[dict]]:
    """Accepted structures (None if none) and one status row per input structure.

    Alloys: lattice-site assignment (or the published clean-up variant); interface / a-Si: move atoms apart.
    """
    rows, kept = [], []
    if family == "alloy":
        for index, structure in enumerate(structures):
            c = structure.to_numpy()
            frac, lattice, numbers = c.frac[0], c.lattice[0], c.species[0]
            if reference_compatible:
                result = alloy.reference_cleanup(frac, numbers, lattice, variant)
            else:
                result = alloy.assign_sites(frac, numbers, lattice, alignment=alignment)
            rows.append({"id": index, "status": result.status, "n_removed": result.n_removed,
                         "n_vacancies": result.n_vacancies, "n_discarded": result.n_discarded})
            if result.ok:
                kept.append(Crystals(result.frac[None], result.lattice[None], result.numbers[None]))
    else:
        if len(structures.groups) != 1:
            counts = sorted(c.n_atoms for c in structures.groups)
            raise DismaxInputError(f"{source}: move-apart needs equal atom counts, found {counts}")
        batch = structures.as_crystals()
        result = move_atoms_apart(batch.frac, batch.lattice, min_dist, max_iter, reference_compatible)
        for index in range(len(batch)):
            ok = bool(result.ok[index])
            rows.append({"id": index, "status": "ok" if ok else "rejected_too_close",
                         "iterations": int(result.iterations[index]), "first_count": int(result.first_count[index])})
            if ok:
                kept.append(Crystals(result.frac[index][None], batch.lattice[index][None],
                                     batch.species[index][None]))
    return (StructureSet.from_structures(kept) if kept else None), rows


def write_postprocessed(out: Path, accepted: StructureSet | None, rows: list[dict]) -> None:
    """gen_clean.extxyz (empty when nothing was accepted) and status.csv into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if accepted is None:
        atomic_write_text(out / "gen_clean.extxyz", "")
    else:
        write_extxyz(accepted, out / "gen_clean.extxyz")
    atomic_write_text(out / "status.csv", records_csv(rows))


def postprocess_file(family: str, path: str | Path, reference_compatible: bool = False,
                     alignment: str = DEFAULTS.alignment, variant: str = DEFAULTS.reference_variant,
                     min_dist: float = MIN_DIST, max_iter: int = MAX_ITER) -> tuple[StructureSet | None, list[dict], int]:
    """Post-process the structures of an extxyz file: (accepted or None, one status row per generated
    structure, number generated).

    Frames with NaN/inf coordinates keep their ID with status ``rejected_nan``. With a sample summary beside
    the file (:func:`dismax.validation.read_sample_summary`) IDs are generation indices and every structure
    the sampler could not decode is a ``failed_decode`` row (the file may then be empty)."""
    summary = validation.read_sample_summary(path)
    accepted, rows, n_frames = None, [], 0
    if summary is None or summary.written_ids:
        structures = read_structure_set(path, allow_nonfinite=True)
        usable, ids, rejected = validation.partition(structures)
        if usable is not None:
            accepted, rows = postprocess(family, usable, reference_compatible, alignment, variant, min_dist,
                                         max_iter, source=str(path))
        rows, n_frames = validation.merge_status_rows(rows, ids, rejected), len(structures)
    if summary is None:
        return accepted, rows, n_frames
    return accepted, validation.with_sample_failures(rows, summary, str(path)), summary.n_requested


def run_postprocess(args: argparse.Namespace) -> int:
    accepted, rows, n_structures = postprocess_file(args.family, args.input, args.reference_compatible,
                                                    args.alignment, args.variant, args.min_dist, args.max_iter)
    out = Path(args.out)
    write_postprocessed(out, accepted, rows)
    print(f"{0 if accepted is None else len(accepted)}/{n_structures} structures accepted -> "
          f"{out / 'gen_clean.extxyz'}")
    return 0


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--train", required=True, help="training structures (extxyz)")
    parser.add_argument("--gen", required=True, help="generated structures (extxyz; post-processed / relaxed)")
    parser.add_argument("--out", default="metrics", help="report directory (default: ./metrics)")
    parser.add_argument("--status", help="status.csv of earlier steps (ID, status); its ok rows are --gen's frames")
    parser.add_argument("--n-generated", type=int, help="number originally generated (default: from the status "
                                                        "file, else the number of --gen frames)")
    add_score_options(parser)


def add_score_options(parser: argparse.ArgumentParser) -> None:
    """The scoring options shared by ``metrics`` and ``score`` (defaults from ``ScoreOptions``)."""
    parser.add_argument("--reference-compatible", action="store_true",
                        help="published behaviour (alloys: published clean-up variant and geometric counting)")
    parser.add_argument("--alignment", default=DEFAULTS.alignment, choices=ALIGNMENTS)
    parser.add_argument("--variant", default=DEFAULTS.reference_variant, choices=REFERENCE_VARIANTS)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"bootstrap seed ({DEFAULTS.seed})")
    parser.add_argument("--replicates", type=int, default=DEFAULTS.n_replicates,
                        help=f"bootstrap replicates ({DEFAULTS.n_replicates})")
    parser.add_argument("--workers", type=int, default=None, help="CrystalNN processes (default: all cores)")
    parser.add_argument("--cache", default=None, help="per-structure cache directory (default: user cache)")
    parser.add_argument("--angle-cutoff", type=float, default=DEFAULTS.angle_cutoff,
                        help=f"Å, fast cutoff bond-angle variant ({DEFAULTS.angle_cutoff})")


def score_options(args: argparse.Namespace) -> ScoreOptions:
    """ScoreOptions from parsed ``add_score_options`` arguments."""
    return ScoreOptions(reference_compatible=args.reference_compatible, alignment=args.alignment,
                        reference_variant=args.variant, seed=args.seed, n_replicates=args.replicates,
                        workers=args.workers, cache_dir=args.cache or default_cache(), progress=progress,
                        angle_cutoff=args.angle_cutoff)


def check_scored_structures(family: str, train: Crystals, generated: StructureSet, source: str) -> None:
    """Structures to score must not overlap and, except alloys (whose accepted structures may have
    vacancies), have the training set's atom count."""
    validation.require_valid(generated, source, validation.min_distance_for(family),
                             n_atoms=None if family == "alloy" else train.n_atoms)


def print_metrics(metrics: dict) -> None:
    """One line per Euclidean metric: value and 95 % CI."""
    for name, entry in metrics.items():
        if isinstance(entry, dict) and not name.endswith("_cosine"):
            interval = "" if entry["ci_low"] is None else f"  [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}]"
            print(f"{name:>16s}  {entry['value']:.4g}{interval}")


def run_metrics(args: argparse.Namespace) -> int:
    train = read_extxyz(args.train)
    generated = read_structure_set(args.gen)
    check_scored_structures(args.family, train, generated, args.gen)
    statuses = read_status(args.status) if args.status else None
    result = score(args.family, train, generated, score_options(args), statuses, args.n_generated)
    if not is_primary():  # every process of a multi-process run scored its share and holds the same result
        return 0
    path = write_report(args.out, args.family, result.metrics, result.rows, result.curves)
    print_metrics(result.metrics)
    print(f"report: {path}")
    return 0
