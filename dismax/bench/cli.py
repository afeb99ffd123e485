"""``python -m dismax.bench postprocess|metrics``: argument parsers and entry points."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from dismax.errors import DismaxInputError

FAMILY_CHOICES = ("alloy", "a_si", "interface")


def _default_cache() -> Path:
    root = os.environ.get("DISMAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dismax")
    return Path(root) / "bench"


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, choices=FAMILY_CHOICES)
    parser.add_argument("--in", "--input", dest="input", required=True, help="generated structures (extxyz)")
    parser.add_argument("--out", required=True, help="output directory: gen_clean.extxyz and status.csv")
    parser.add_argument("--reference-compatible", action="store_true",
                        help="reproduce the published scripts (raw-displacement move-apart, published clean-up)")
    parser.add_argument("--alignment", default="translate", choices=("none", "translate", "rotate_translate"),
                        help="alloy site assignment alignment (dismax mode)")
    parser.add_argument("--variant", default="as_is", choices=("as_is", "translate", "rotate"),
                        help="published alloy clean-up variant (reference-compatible mode)")
    parser.add_argument("--min-dist", type=float, default=1.5, help="move-apart threshold in Å")
    parser.add_argument("--max-iter", type=int, default=100)


def _write_extxyz(path: Path, structures) -> None:
    from ase import Atoms
    from ase.io import write

    frames = [Atoms(numbers=numbers, scaled_positions=frac, cell=lattice, pbc=True)
              for frac, lattice, numbers in structures]
    write(path, frames, format="extxyz")


def _write_status(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run_postprocess(args: argparse.Namespace) -> int:
    from dismax.bench import alloy
    from dismax.bench.pipeline import read_structures

    structures = read_structures(args.input)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, kept = [], []
    if args.family == "alloy":
        for index, (frac, lattice, numbers) in enumerate(structures):
            if args.reference_compatible:
                result = alloy.reference_cleanup(frac, numbers, lattice, args.variant)
            else:
                result = alloy.assign_sites(frac, numbers, lattice, alignment=args.alignment)
            rows.append({"id": index, "status": result.status, "n_removed": result.n_removed,
                         "n_vacancies": result.n_vacancies, "n_discarded": result.n_discarded})
            if result.ok:
                kept.append((result.frac, result.lattice, result.numbers))
    else:
        from dismax.bench.postprocess import move_atoms_apart

        sizes = {len(numbers) for _, _, numbers in structures}
        if len(sizes) != 1:
            raise DismaxInputError(f"{args.input}: move-apart needs equal atom counts, found {sorted(sizes)}")
        frac = np.stack([s[0] for s in structures])
        lattice = np.stack([s[1] for s in structures])
        result = move_atoms_apart(frac, lattice, args.min_dist, args.max_iter, args.reference_compatible)
        for index, (_, lattice_one, numbers) in enumerate(structures):
            ok = bool(result.ok[index])
            rows.append({"id": index, "status": "ok" if ok else "rejected_too_close",
                         "iterations": int(result.iterations[index]), "first_count": int(result.first_count[index])})
            if ok:
                kept.append((result.frac[index], lattice_one, numbers))
    _write_extxyz(out / "gen_clean.extxyz", kept)
    _write_status(out / "status.csv", rows)
    print(f"{len(kept)}/{len(structures)} structures accepted -> {out / 'gen_clean.extxyz'}")
    return 0


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, choices=FAMILY_CHOICES)
    parser.add_argument("--train", required=True, help="training structures (extxyz)")
    parser.add_argument("--gen", required=True, help="generated structures (extxyz; post-processed / relaxed)")
    parser.add_argument("--out", default="metrics", help="report directory (default: ./metrics)")
    parser.add_argument("--status", help="status.csv of earlier steps (ID, status); its ok rows are --gen's frames")
    parser.add_argument("--n-generated", type=int, help="number originally generated (default: from the status "
                                                        "file, else the number of --gen frames)")
    parser.add_argument("--reference-compatible", action="store_true",
                        help="published behaviour (alloys: published clean-up variant and geometric counting)")
    parser.add_argument("--alignment", default="translate", choices=("none", "translate", "rotate_translate"))
    parser.add_argument("--variant", default="as_is", choices=("as_is", "translate", "rotate"))
    parser.add_argument("--seed", type=int, default=7, help="bootstrap seed")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--workers", type=int, default=None, help="CrystalNN processes (default: all cores)")
    parser.add_argument("--cache", default=None, help="per-structure cache directory (default: user cache)")
    parser.add_argument("--angle-cutoff", type=float, default=2.85, help="Å, fast cutoff bond-angle variant")


def run_metrics(args: argparse.Namespace) -> int:
    from dismax.bench.pipeline import Scorer, read_status, read_structures, write_report
    from dismax.runs import progress

    train = read_structures(args.train)
    generated = read_structures(args.gen)
    statuses = read_status(args.status) if args.status else None
    scorer = Scorer(args.family, reference_compatible=args.reference_compatible, alignment=args.alignment,
                    reference_variant=args.variant, seed=args.seed, n_replicates=args.replicates,
                    workers=args.workers, cache_dir=args.cache or _default_cache(), progress=progress,
                    angle_cutoff=args.angle_cutoff)
    metrics, records = scorer.score(train, generated, statuses, args.n_generated)
    path = write_report(args.out, args.family, metrics, records, scorer.curves)
    for name, entry in metrics.items():
        if isinstance(entry, dict) and not name.endswith("_cosine"):
            interval = "" if entry["ci_low"] is None else f"  [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}]"
            print(f"{name:>16s}  {entry['value']:.4g}{interval}")
    print(f"report: {path}")
    return 0
