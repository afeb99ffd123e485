"""``python -m dismax.bench relax``: resumable batched relaxation of an extxyz file.

Example: ``python -m dismax.bench relax --potential sw --in gen.extxyz --out DIR --fmax 0.05``.
Rerunning the same command after an interruption relaxes only the structures not yet in
``DIR/results.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dismax.errors import DismaxInputError
from dismax.potentials import POTENTIALS, get_potential
from dismax.potentials.fire import DEFAULT_FMAX, DEFAULT_MAX_STEPS

READ_CHUNK = 256  # structures read (and written back) at a time when --chunk-size is not given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", default="sw", metavar="{" + ",".join(sorted(POTENTIALS)) + ",run:DIR}",
                        help="sw: Stillinger-Weber Si; sw_a_si: three-body term x1.5; run:DIR: a fitted potential "
                             "(python -m dismax.train with model.name: potential) (default: sw)")
    parser.add_argument("--in", dest="input", required=True, type=Path, help="input extxyz file")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory (relaxed.extxyz, results.csv); reused to resume")
    parser.add_argument("--fmax", type=float, default=DEFAULT_FMAX,
                        help=f"force criterion in eV/Å (default {DEFAULT_FMAX})")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                        help=f"FIRE step limit (default {DEFAULT_MAX_STEPS})")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="structures relaxed per compiled batch (default: chosen from the input and device)")


def run(args: argparse.Namespace) -> int:
    from dismax.runs import exclusive_lock

    if args.fmax <= 0 or args.max_steps < 0 or (args.chunk_size is not None and args.chunk_size < 1):
        raise DismaxInputError("--fmax must be > 0, --max-steps >= 0 and --chunk-size >= 1")
    potential = get_potential(args.potential)
    with exclusive_lock(args.out, "relaxation output folder"):
        return _relax(args, potential)


def _relax(args: argparse.Namespace, potential) -> int:
    """Relax the structures of ``args.input`` not yet in ``args.out`` (the caller holds its lock)."""
    from dismax.io import iter_extxyz_chunks
    from dismax.potentials.fire import relax_chunks
    from dismax.relax.output import RelaxOutput
    from dismax.runs import progress
    from dismax.validation import require_valid

    read_chunk = args.chunk_size or READ_CHUNK
    total = 0
    for chunk in iter_extxyz_chunks(args.input, read_chunk, fixed_composition=False):
        require_valid(chunk, str(args.input), first_index=total)  # overlapping atoms: an error before any work
        total += len(chunk)
    output = RelaxOutput(args.out, {
        "input": str(args.input.resolve()), "n_structures": total, "potential": args.potential,
        "fmax": args.fmax, "max_steps": args.max_steps,
    })
    pending = total - len(output.done)
    if output.done:
        print(f"resuming: {len(output.done)} of {total} structures already relaxed", file=sys.stderr)
    bar = progress(total=pending, desc="relax")
    start = 0
    for chunk in iter_extxyz_chunks(args.input, read_chunk, fixed_composition=False):
        ids = np.arange(start, start + len(chunk))
        start += len(chunk)
        todo = np.array([i not in output.done for i in ids])
        if not todo.any():
            continue
        for done_ids, result in relax_chunks(chunk[np.flatnonzero(todo)], potential, args.fmax, args.max_steps,
                                             args.chunk_size, ids=ids[todo]):
            output.append(done_ids, result)
            bar.update(len(done_ids))
    bar.close()
    print(f"relaxed {total} structures into {args.out}", file=sys.stderr)
    return 0
