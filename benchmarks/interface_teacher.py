"""Teacher frames for the interface potential: CHGNet relaxations of random Li3ScCl6 | LiCoO2 interfaces.

Steps (the README gives the exact commands):

1. ``relax --dir DIR --seed S --count N``: random interfaces ``0..N-1`` of seed ``S``
   (:mod:`dismax.data.interface`) are relaxed one at a time with the teacher (``--calculator``, default
   ``chgnet`` = CHGNet 0.3.0, through ASE FIRE with its defaults, positions only, cell fixed, fmax 0.05 eV/Å,
   at most ``--max-steps``). Every ionic step's energy and forces are written to
   ``DIR/seedS-XXXX.extxyz`` when the relaxation ends (atomic), so a rerun skips finished structures.
2. ``explore --dir DIR --student NAME --seed S --count N``: random interfaces are relaxed with the student
   (a fitted dismax potential, through ASE FIRE) for at most ``--max-steps``; the frames at ``--steps`` (and
   the last one) are labelled with the teacher (single points) into ``DIR/explore-seedS-XXXX.extxyz``. These
   are the configurations the student visits on its own, where a potential fitted on teacher trajectories
   alone goes wrong; a few rounds of explore and refit make it relax random interfaces. Resumable.
3. ``frames --dir DIR --out FILE --test-out FILE``: the frames, as the paper sampled its DFT relaxations:
   every ``--every``-th step from step ``--first`` on, plus both end points of every relaxation, and every
   explored frame whose largest force is at most ``--max-force``; a random 10 % go to the held-out test file
   (``--test-structures 2000-14 ...`` instead holds out every frame of those structures, so the test measures
   structures the fit never saw). ``python -m dismax.train --config configs/potential_interface_small.yaml``
   fits the potential (its own 1/9 validation split of the rest: 80/10/10 overall).
4. ``evaluate --potential run:DIR --frames TEST``: held-out MAEs against the teacher;
   ``export --run DIR --out dismax/potentials/weights/interface_chgnet.msgpack`` writes the shipped file.

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
from dismax.potentials import Calculator, get_potential, load_potential
from dismax.potentials.fitted import export_potential
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


def limit_torch_threads(calculator: str, threads: int) -> None:
    """One torch thread (by default) for a torch teacher, to share the CPU."""
    if calculator in ("chgnet", "sevennet"):
        import torch  # a torch teacher; imported only then

        torch.set_num_threads(threads)


def unfinished_interfaces(args, prefix: str):
    """(output path, structure, info) of every random interface ``start..count-1`` without an output file."""
    args.dir.mkdir(parents=True, exist_ok=True)
    for index in range(args.start, args.count):
        out = args.dir / f"{prefix}seed{args.seed}-{index:04d}.extxyz"
        if not out.exists():
            crystals, (info,) = random_interfaces(args.seed, [index])
            yield out, crystals, info


def write_frames(out: Path, frames: Crystals, energies, forces, infos) -> None:
    """Labelled frames (energies eV, forces eV/Å) with their info dicts, written atomically to ``out``."""
    text = io.StringIO()
    write_labelled_frames(text, frames, energies, forces, infos)
    atomic_write_text(out, text.getvalue())


def relax_command(args) -> None:
    limit_torch_threads(args.calculator, args.threads)
    calculator = labeller(args.calculator).calculator
    for out, crystals, info in unfinished_interfaces(args, ""):
        started = time.perf_counter()
        frames, energies, forces, converged = relax_one(crystals, calculator, args.fmax, args.max_steps)
        seconds = time.perf_counter() - started
        n_steps = len(energies) - 1
        write_frames(out, frames, energies, forces, [dict(info, step=s, n_steps=n_steps, converged=converged,
                                                          teacher=args.calculator) for s in range(len(energies))])
        print(json.dumps({"index": info["index"], "steps": n_steps, "converged": converged,
                          "seconds": round(seconds, 1), "e_initial": float(energies[0] / crystals.n_atoms),
                          "e_final": float(energies[-1] / crystals.n_atoms)}), flush=True)


def explore_command(args) -> None:
    limit_torch_threads(args.calculator, args.threads)
    teacher = labeller(args.calculator)
    student = Calculator(potential=get_potential(args.student))
    for out, crystals, info in unfinished_interfaces(args, "explore-"):
        started = time.perf_counter()
        frames, student_energies, _, converged = relax_one(crystals, student, args.fmax, args.max_steps)
        last = len(frames) - 1
        steps = sorted({s for s in args.steps if s < last} | {last})
        labels = [teacher(frames[s:s + 1]) for s in steps]
        energies = np.concatenate([energy for energy, _ in labels])
        forces = np.concatenate([force for _, force in labels])
        write_frames(out, frames[np.asarray(steps)], energies, forces,
                     [dict(info, step=s, n_steps=last, converged=converged, teacher=args.calculator,
                           student=args.student, student_energy=float(student_energies[s])) for s in steps])
        print(json.dumps({"index": info["index"], "student_steps": last, "converged": converged,
                          "seconds": round(time.perf_counter() - started, 1),
                          "error_meV_per_atom": [round(1e3 * float(student_energies[s] - e) / crystals.n_atoms, 1)
                                                 for s, e in zip(steps, energies)],
                          "teacher_fmax": [round(float(np.linalg.norm(f, axis=-1).max()), 2) for f in forces]}),
              flush=True)


def frames_command(args) -> None:
    """Collect the selected frames of every finished relaxation and exploration into a training file and a
    held-out test file (the frames of ``--test-structures``, else ``--test-fraction`` chosen by ``--seed``)."""
    import ase.io

    selected, held_out = [], []
    for path in sorted(args.dir.glob("seed*-*.extxyz")) + sorted(args.dir.glob("explore-seed*-*.extxyz")):
        trajectory = ase.io.read(path, index=":")
        last = len(trajectory) - 1
        chosen = [a for s, a in enumerate(trajectory)
                  if (path.name.startswith("explore-") or s in (0, last)
                      or (s >= args.first and (s - args.first) % args.every == 0))
                  and np.linalg.norm(a.get_forces(), axis=-1).max() <= args.max_force]
        seed, index = path.stem.split("seed")[1].split("-")
        (held_out if f"{int(seed)}-{int(index)}" in args.test_structures else selected).extend(chosen)
    if args.test_structures:
        test_members = held_out
    else:
        order = np.random.default_rng(args.seed).permutation(len(selected))
        n_test = int(round(args.test_fraction * len(selected)))
        test_members = [selected[i] for i in np.sort(order[:n_test])]
        selected = [selected[i] for i in np.sort(order[n_test:])]
    for path, frames in ((args.out, selected), (args.test_out, test_members)):
        ase.io.write(path, frames, format="extxyz")
        read_labelled_extxyz(path)  # validates what was written
        print(f"{len(frames)} frames in {path}")


def evaluate_command(args) -> None:
    """Mean absolute errors of a fitted potential against the teacher labels of held-out frames."""
    crystals, energies, forces = read_labelled_extxyz(args.frames)
    predicted_e, predicted_f = get_potential(args.potential).energies_and_forces(crystals)
    print(json.dumps({"frames": len(energies),
                      "energy_mae_meV_per_atom":
                          1e3 * float(np.mean(np.abs(predicted_e - energies))) / crystals.n_atoms,
                      "force_mae_meV_per_A": 1e3 * float(np.mean(np.abs(predicted_f - forces)))}))


def export_command(args) -> None:
    path = export_potential(load_potential(args.run), args.out, description=args.description)
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")


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
    explore = commands.add_parser("explore", help="relax with the student, label its frames with the teacher")
    explore.add_argument("--dir", required=True, type=Path)
    explore.add_argument("--student", default="interface_chgnet", help="run:DIR or a shipped potential name")
    explore.add_argument("--seed", type=int, default=2000)
    explore.add_argument("--start", type=int, default=0)
    explore.add_argument("--count", type=int, default=16)
    explore.add_argument("--calculator", default="chgnet",
                         help="the teacher: chgnet | sevennet | any dismax.data label name")
    explore.add_argument("--fmax", type=float, default=0.05)
    explore.add_argument("--max-steps", type=int, default=400)
    explore.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100, 200],
                         help="student FIRE steps whose frames the teacher labels (the last is always added)")
    explore.add_argument("--threads", type=int, default=1)
    frames = commands.add_parser("frames", help="select training frames from the saved relaxations")
    frames.add_argument("--dir", required=True, type=Path)
    frames.add_argument("--out", required=True, type=Path)
    frames.add_argument("--every", type=int, default=10)
    frames.add_argument("--first", type=int, default=5)
    frames.add_argument("--test-out", required=True, type=Path, help="held-out test frames")
    frames.add_argument("--test-fraction", type=float, default=0.1)
    frames.add_argument("--seed", type=int, default=0)
    frames.add_argument("--max-force", type=float, default=50.0,
                        help="drop frames whose largest teacher force exceeds this (eV/Å): collapsed atoms")
    frames.add_argument("--test-structures", nargs="*", default=[], metavar="SEED-INDEX",
                        help="hold out every frame of these structures (e.g. 2000-14) instead of a random fraction")
    evaluate = commands.add_parser("evaluate", help="MAEs of a fitted potential on held-out labelled frames")
    evaluate.add_argument("--potential", required=True, help="run:DIR or a shipped potential name")
    evaluate.add_argument("--frames", required=True, type=Path)
    export = commands.add_parser("export", help="write a fitted run's potential as one shippable file")
    export.add_argument("--run", required=True, type=Path)
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--description", default="")
    args = parser.parse_args(argv)
    {"relax": relax_command, "explore": explore_command, "frames": frames_command, "evaluate": evaluate_command,
     "export": export_command}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
