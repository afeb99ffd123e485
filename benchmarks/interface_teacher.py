"""Teacher frames for the interface potential: CHGNet relaxations of random Li3ScCl6 | LiCoO2 interfaces.

Steps (the README gives the exact commands):

1. ``relax --dir DIR --seed S --count N``: random interfaces ``0..N-1`` of seed ``S``
   (:mod:`dismax.data.interface`) are relaxed one at a time with the teacher (``--calculator``, default
   ``chgnet`` = CHGNet 0.3.0, through ASE FIRE with its defaults, positions only, cell fixed, fmax 0.05 eV/Å,
   at most ``--max-steps``). Every ionic step's energy and forces are written to
   ``DIR/seedS-XXXX.extxyz`` when the relaxation ends (atomic), so a rerun skips finished structures.
2. ``frames --dir DIR --out FILE``: the training frames, as the paper sampled its DFT relaxations:
   every ``--every``-th step from step ``--first`` on, plus both end points of every relaxation.

Torch runs with one thread (``--threads``) to share the CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from dismax.cli import main_wrapper
from dismax.data.interface import random_interfaces
from dismax.data.label import labeller
from dismax.io import read_labelled_extxyz, write_labelled_frames
from dismax.runs import atomic_write_text
from dismax.structures import Crystals


def relax_one(crystals: Crystals, calculator, fmax: float, max_steps: int):
    """ASE FIRE relaxation of one structure; (frames Crystals, energies (S,), forces (S, N, 3), converged)."""
    from ase.optimize import FIRE

    atoms = crystals.to_ase()[0]
    atoms.calc = calculator
    positions, energies, forces = [], [], []

    def record():
        positions.append(atoms.get_scaled_positions(wrap=True))
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())

    optimizer = FIRE(atoms, logfile=None)
    optimizer.attach(record, interval=1)
    converged = bool(optimizer.run(fmax=fmax, steps=max_steps))
    n = len(positions)
    frames = Crystals(np.stack(positions), np.repeat(np.asarray(crystals.lattice), n, axis=0),
                      np.repeat(np.asarray(crystals.species), n, axis=0))
    return frames, np.asarray(energies), np.stack(forces), converged


def relax_command(args) -> None:
    import torch  # the teacher is torch; it is imported only here

    torch.set_num_threads(args.threads)
    calculator = labeller(args.calculator).calculator
    args.dir.mkdir(parents=True, exist_ok=True)
    for index in range(args.start, args.count):
        out = args.dir / f"seed{args.seed}-{index:04d}.extxyz"
        if out.exists():
            continue
        crystals, (info,) = random_interfaces(args.seed, [index])
        started = time.perf_counter()
        frames, energies, forces, converged = relax_one(crystals, calculator, args.fmax, args.max_steps)
        seconds = time.perf_counter() - started
        n_steps = len(energies) - 1
        infos = [dict(info, step=s, n_steps=n_steps, converged=converged, teacher=args.calculator)
                 for s in range(len(energies))]
        text = io.StringIO()
        write_labelled_frames(text, frames, energies, forces, infos)
        atomic_write_text(out, text.getvalue())
        print(json.dumps({"index": index, "steps": n_steps, "converged": converged, "seconds": round(seconds, 1),
                          "e_initial": float(energies[0] / crystals.n_atoms),
                          "e_final": float(energies[-1] / crystals.n_atoms)}), flush=True)


def frames_command(args) -> None:
    """Collect the selected frames of every finished relaxation into one labelled extxyz file."""
    import ase.io

    selected = []
    for path in sorted(args.dir.glob("seed*-*.extxyz")):
        trajectory = ase.io.read(path, index=":")
        last = len(trajectory) - 1
        selected += [a for s, a in enumerate(trajectory)
                     if s in (0, last) or (s >= args.first and (s - args.first) % args.every == 0)]
    ase.io.write(args.out, selected, format="extxyz")
    read_labelled_extxyz(args.out)  # validates what was written
    print(f"{len(selected)} frames from {len(list(args.dir.glob('seed*-*.extxyz')))} relaxations in {args.out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/interface_teacher.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    relax = commands.add_parser("relax", help="relax random interfaces with the teacher, saving every step")
    relax.add_argument("--dir", required=True, type=Path)
    relax.add_argument("--seed", type=int, default=1000)
    relax.add_argument("--start", type=int, default=0)
    relax.add_argument("--count", type=int, default=12)
    relax.add_argument("--calculator", default="chgnet", help="chgnet | sevennet (see dismax.data label)")
    relax.add_argument("--fmax", type=float, default=0.05)
    relax.add_argument("--max-steps", type=int, default=1000)
    relax.add_argument("--threads", type=int, default=1)
    frames = commands.add_parser("frames", help="select training frames from the saved relaxations")
    frames.add_argument("--dir", required=True, type=Path)
    frames.add_argument("--out", required=True, type=Path)
    frames.add_argument("--every", type=int, default=10)
    frames.add_argument("--first", type=int, default=5)
    args = parser.parse_args(argv)
    relax_command(args) if args.command == "relax" else frames_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
