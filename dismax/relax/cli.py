"""``python -m dismax.bench relax``: resumable batched relaxation of an extxyz file.

Example: ``python -m dismax.bench relax --potential sw --in gen.extxyz --out DIR --fmax 0.05``.
Rerunning the same command after an interruption relaxes only the structures not yet in
``DIR/results.csv``.

On several processes (``--coordinator ...``, see :mod:`dismax.devices`) the input's read chunks are split by
index: each process relaxes its contiguous share of chunks into ``DIR/.chunkNNNNN.npz`` files, and process 0
appends them to ``DIR`` in chunk order, so the output is the same as on one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dismax.devices import barrier, is_primary, process_count, process_share
from dismax.errors import DismaxInputError
from dismax.potentials import get_potential, potential_names
from dismax.potentials.fire import DEFAULT_FMAX, DEFAULT_MAX_STEPS

READ_CHUNK = 256  # structures read (and written back) at a time when --chunk-size is not given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", default="sw", metavar="{" + ",".join(potential_names()) + ",run:DIR}",
                        help="sw: Stillinger-Weber Si; sw_a_si: three-body term x1.5; interface_chgnet: the shipped "
                             "Li3ScCl6/LiCoO2 interface potential; run:DIR: a fitted potential "
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
    settings = {"input": str(args.input.resolve()), "n_structures": total, "potential": args.potential,
                "fmax": args.fmax, "max_steps": args.max_steps}
    if not is_primary():
        barrier("relaxation output recovered")  # process 0 recovers (and may repair) the folder first
    output = RelaxOutput(args.out, settings)
    if is_primary() and process_count() > 1:
        barrier("relaxation output recovered")
    if process_count() > 1:
        return _relax_across_processes(args, potential, output, read_chunk, total)
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


def _relax_across_processes(args: argparse.Namespace, potential, output, read_chunk: int, total: int) -> int:
    """This process's share of the read chunks into ``.chunkNNNNN.npz`` files (kept when an interrupted run
    is rerun), then process 0 commits them to ``output`` in chunk order."""
    from dismax.io import iter_extxyz_chunks
    from dismax.potentials.fire import relax_chunks
    from dismax.runs import atomic_write, progress

    n_chunks = -(-total // read_chunk)
    parts = [args.out / f".chunk{k:05d}.npz" for k in range(n_chunks)]
    mine = process_share(n_chunks)
    bar = progress(total=len(mine), desc="relax chunks")
    for k, chunk in enumerate(iter_extxyz_chunks(args.input, read_chunk, fixed_composition=False)):
        ids = np.arange(k * read_chunk, k * read_chunk + len(chunk))
        todo = np.array([i not in output.done for i in ids])
        if k not in mine or not todo.any() or parts[k].exists():
            bar.update(k in mine)
            continue
        results = list(relax_chunks(chunk[np.flatnonzero(todo)], potential, args.fmax, args.max_steps,
                                    args.chunk_size, ids=ids[todo]))
        arrays = _result_arrays(np.concatenate([i for i, _ in results]), [r for _, r in results])
        atomic_write(parts[k], lambda handle, arrays=arrays: np.savez(handle, **arrays), binary=True)
        bar.update(1)
    bar.close()
    barrier("relaxation chunks written")
    if is_primary():
        for part in parts:
            if part.exists():
                ids, result = _load_result(part)
                keep = np.array([i not in output.done for i in ids], bool)
                if keep.any():
                    output.append(ids[keep], _subset(result, keep))
                part.unlink()
        print(f"relaxed {total} structures into {args.out} on {process_count()} processes", file=sys.stderr)
    barrier("relaxation merged")
    return 0


def _result_arrays(ids: np.ndarray, results: list) -> dict:
    """The fields of consecutive ``RelaxResult`` objects as one dict of arrays (for an .npz file)."""
    def joined(get):
        return np.concatenate([np.asarray(get(r)) for r in results])

    return {"ids": ids, "frac": joined(lambda r: r.crystals.frac), "lattice": joined(lambda r: r.crystals.lattice),
            "species": joined(lambda r: r.crystals.species), "status": joined(lambda r: r.status).astype(str),
            **{name: joined(lambda r, name=name: getattr(r, name)) for name in ("steps", "e_initial", "e_final",
                                                                               "fmax")}}


def _load_result(path: Path):
    """(ids, RelaxResult) of a chunk file written by :func:`_result_arrays`."""
    from dismax.potentials.fire import RelaxResult
    from dismax.structures import Crystals

    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    return arrays["ids"], RelaxResult(Crystals(arrays["frac"], arrays["lattice"], arrays["species"]),
                                      arrays["status"], arrays["steps"], arrays["e_initial"], arrays["e_final"],
                                      arrays["fmax"])


def _subset(result, keep: np.ndarray):
    """The structures of ``result`` selected by the boolean mask ``keep``."""
    from dismax.potentials.fire import RelaxResult

    return RelaxResult(result.crystals.to_numpy()[np.flatnonzero(keep)], result.status[keep], result.steps[keep],
                       result.e_initial[keep], result.e_final[keep], result.fmax[keep])
