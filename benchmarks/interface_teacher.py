"""Teacher frames for the interface potential: CHGNet relaxations of random Li3ScCl6 | LiCoO2 interfaces.

Steps (the README gives the exact commands):

1. ``relax --dir DIR --seed S --count N``: random interfaces ``0..N-1`` of seed ``S``
   (:mod:`dismax.data.interface`) are relaxed one at a time with the teacher (``--calculator``, default
   ``chgnet`` = CHGNet 0.3.0, through ASE FIRE with its defaults, positions only, cell fixed, fmax 0.05 eV/Å,
   at most ``--max-steps``). Every ionic step's energy and forces are written to
   ``DIR/seedS-XXXX.extxyz`` when the relaxation ends (atomic), so a rerun skips finished structures;
   ``--save-every N`` also keeps the trajectory so far in ``DIR/seedS-XXXX.extxyz.partial`` (a stopped
   relaxation's frames are those of a rerun with ``--max-steps`` = its last step).
   ``relax --in FILE --count N`` relaxes the first N frames of an extxyz file instead (e.g. a built interface
   set, relaxed by the student) into ``DIR/from-seedS-XXXX.extxyz``; then ``compare --dir DIR`` prints the teacher
   energy and largest force of each student-relaxed structure, the teacher's largest force at the end, the
   teacher-relaxed energy, the gap and the interior Co six-fold coordinated by O in both, and ``crosscheck --dir DIR`` labels both end points with
   SevenNet-0 and prints how teacher, cross-check and student agree (forces; energies up to an offset).
2. ``explore --dir DIR --student NAME --seed S --count N``: random interfaces are relaxed with the student
   (a fitted dismax potential, through ASE FIRE) for at most ``--max-steps``; the frames at ``--steps`` (and
   the last one) are labelled with the teacher (single points) into ``DIR/explore-seedS-XXXX.extxyz``. These
   are the configurations the student visits on its own, where a potential fitted on teacher trajectories
   alone goes wrong; a few rounds of explore and refit make it relax random interfaces. Resumable.
   ``displace --in RELAXATIONS... --out FILE`` moves first-shell O of interior Co of each relaxation's last frame
   out of their octahedra (unlabelled frames; ``python -m dismax.data label --calculator chgnet`` labels them):
   the restoring force a student fitted on relaxations alone barely sees.
3. ``frames --dir DIR --out FILE --test-out FILE``: the frames, as the paper sampled its DFT relaxations:
   every ``--every``-th step from step ``--first`` on, plus both end points of every relaxation (``relax`` and
   ``relax --in``), and every explored frame, all with a largest force of at most ``--max-force``; a random
   10 % go to the held-out test file
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
from dismax.data.interface import displaced_shell_oxygen, interior_co_oxygen_counts, random_interfaces
from dismax.data.label import LABEL_KEYS, labeller
from dismax.errors import DismaxInputError
from dismax.io import read_extxyz, read_labelled_extxyz, write_extxyz, write_labelled_frames
from dismax.potentials import Calculator, energies_and_forces, get_potential, load_potential
from dismax.potentials.fitted import export_potential
from dismax.runs import atomic_write_text
from dismax.structures import Crystals


def relax_one(crystals: Crystals, calculator, fmax: float, max_steps: int, save=None, save_every: int = 0):
    """ASE FIRE relaxation of one structure; (frames Crystals, energies (S,), forces (S, N, 3), converged).
    With ``save_every`` > 0, ``save(frames, energies, forces)`` receives the trajectory so far every ``save_every``
    frames, so a slow teacher relaxation that is stopped keeps what it computed."""
    from ase.optimize import FIRE

    atoms = crystals.to_ase()[0]
    atoms.calc = calculator
    positions, energies, forces = [], [], []

    def trajectory():
        n = len(positions)
        return (Crystals(np.stack(positions), np.repeat(np.asarray(crystals.lattice), n, axis=0),
                         np.repeat(np.asarray(crystals.species), n, axis=0)), np.asarray(energies), np.stack(forces))

    started = time.perf_counter()

    def record():
        positions.append(atoms.get_scaled_positions(wrap=True))
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        if len(energies) % 10 == 1:  # progress on stderr: the teacher takes seconds per step
            print(f"step {len(energies) - 1}: E {energies[-1] / len(atoms):.5f} eV/atom, "
                  f"F_max {np.linalg.norm(forces[-1], axis=-1).max():.3f} eV/Å, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if save_every > 0 and len(energies) % save_every == 0:
            save(*trajectory())

    optimizer = FIRE(atoms, logfile=None)
    optimizer.attach(record, interval=1)
    converged = bool(optimizer.run(fmax=fmax, steps=max_steps))
    return (*trajectory(), converged)


def limit_torch_threads(calculator: str, threads: int) -> None:
    """One torch thread (by default) for a torch teacher, to share the CPU."""
    if calculator in ("chgnet", "sevennet"):
        import torch  # a torch teacher; imported only then

        torch.set_num_threads(threads)


def unfinished_interfaces(args, prefix: str):
    """(output path, structure, info) of every start structure ``start..count-1`` without an output file: the
    random interfaces of ``--seed``, or with ``--in FILE`` the frames of that extxyz file (e.g. structures relaxed
    by the student), written as ``DIR/from-seedS-XXXX.extxyz`` after the seed and index in their info."""
    args.dir.mkdir(parents=True, exist_ok=True)
    given = getattr(args, "input", None)
    if given is not None:
        structures, infos = read_extxyz(given, with_info=True)
        for position in range(args.start, min(args.count, len(structures))):
            info = dict(infos[position], seed=int(infos[position]["seed"]), index=int(infos[position]["index"]),
                        source=str(given), source_frame=position)
            out = args.dir / f"from-seed{info['seed']}-{info['index']:04d}.extxyz"
            if not out.exists():
                yield out, structures[position:position + 1], info
        return
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
        partial = out.with_name(out.name + ".partial")  # not an .extxyz name: `frames` never reads it

        def save(path, frames, energies, forces, converged=False):
            write_frames(path, frames, energies, forces,
                         [dict(info, step=s, n_steps=len(energies) - 1, converged=converged, teacher=args.calculator)
                          for s in range(len(energies))])

        frames, energies, forces, converged = relax_one(crystals, calculator, args.fmax, args.max_steps,
                                                        lambda *so_far: save(partial, *so_far), args.save_every)
        seconds = time.perf_counter() - started
        n_steps = len(energies) - 1
        save(out, frames, energies, forces, converged)
        print(json.dumps({"index": info["index"], "steps": n_steps, "converged": converged,
                          "seconds": round(seconds, 1), "e_initial": float(energies[0] / crystals.n_atoms),
                          "e_final": float(energies[-1] / crystals.n_atoms)}), flush=True)
        partial.unlink(missing_ok=True)


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


def displace_command(args) -> None:
    """Unlabelled frames with first-shell O of interior Co moved out (``displaced_shell_oxygen``) from the last
    frame of every input relaxation, for the teacher to label (``python -m dismax.data label``)."""
    ends = [read_extxyz(path)[-1:] for path in args.input]
    crystals = Crystals.concatenate(ends)
    frames, infos = displaced_shell_oxygen(crystals, args.copies, args.oxygen, (args.min, args.max), args.seed)
    for info in infos:
        info["source"] = args.input[info.pop("source_frame")].name
    write_extxyz(frames, args.out, infos)
    print(json.dumps({"structures": len(crystals), "frames": len(frames), "out": str(args.out)}))


def frames_command(args) -> None:
    """Collect the selected frames of every finished relaxation and exploration into a training file and a
    held-out test file (the frames of ``--test-structures``, else ``--test-fraction`` chosen by ``--seed``)."""
    import ase.io

    selected, held_out = [], []
    for path in (sorted(args.dir.glob("seed*-*.extxyz")) + teacher_relaxations(args.dir)
                 + sorted(args.dir.glob("explore-seed*-*.extxyz"))):
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
        if not frames and path == args.test_out:   # --test-fraction 0: everything is for training
            print(f"no held-out frames; {path} not written")
            continue
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


def teacher_relaxations(directory: Path, count: int | None = None) -> list[Path]:
    """The ``relax --in`` outputs of ``directory`` (``from-seedS-XXXX.extxyz``), sorted, at most ``count``."""
    return sorted(directory.glob("from-seed*-*.extxyz"))[:count]


def given_relaxations(directory: Path, count: int | None) -> list[Path]:
    """:func:`teacher_relaxations` for ``compare`` and ``crosscheck``, which need at least one."""
    paths = teacher_relaxations(directory, count)
    if not paths:
        raise DismaxInputError(f"no teacher relaxations from-seed*-*.extxyz in {directory}; run relax --in first")
    return paths


def end_points(path: Path, at_step: int | None = None):
    """(Crystals (2, N), teacher energies (2,) eV, teacher forces (2, N, 3) eV/Å, info of the first and the
    last frame) of one saved teacher relaxation: the start structure and the teacher-relaxed one (or the frame
    of step ``at_step``, if the relaxation got that far, to compare relaxations cut at one step budget)."""
    crystals, energies, forces = read_labelled_extxyz(path)
    _, infos = read_extxyz(path, with_info=True)
    last = len(energies) - 1 if at_step is None else min(at_step, len(energies) - 1)
    ends = np.array([0, last])
    infos = [{k: v for k, v in infos[i].items() if k not in LABEL_KEYS} for i in ends]
    if last < len(energies) - 1:
        infos[1].update(n_steps=last, converged=False)
    return crystals[ends], energies[ends], forces[ends], infos


def compare_command(args) -> None:
    """Per structure relaxed first by the student (the ``relax --in`` start) and then by the teacher: the teacher
    energy and largest force of the student-relaxed structure, the teacher's largest force at the end (how far
    from converged a capped relaxation stopped), the teacher-relaxed energy, their gap, and the interior Co that
    O coordinates six-fold (within 2.3 Å) in both; then the mean, smallest and largest gap. ``--at-step N``
    takes the teacher frame of step N as the end of longer relaxations."""
    paths = given_relaxations(args.dir, args.count)
    print("| structure | E_student (eV/atom) | E_teacher(student-relaxed) (eV/atom) | teacher F_max there (eV/Å) "
          "| teacher steps | converged | teacher F_max at the end (eV/Å) | E_teacher(teacher-relaxed) (eV/atom) "
          "| gap (meV/atom) | interior Co six-fold: student / teacher |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    gaps = []
    for path in paths:
        crystals, energies, forces, (first, last) = end_points(path, args.at_step)
        n_atoms = crystals.n_atoms
        e_student, e_start, e_end = first.get("energy_per_atom", np.nan), energies[0] / n_atoms, energies[1] / n_atoms
        fmax_start, fmax_end = (float(np.linalg.norm(f, axis=-1).max()) for f in forces)
        gap = 1e3 * (e_start - e_end)
        gaps.append(gap)
        six_fold = [f"{int(np.sum(c == 6))}/{len(c)}" for c in interior_co_oxygen_counts(crystals)]
        print(f"| {first['seed']}-{first['index']} | {e_student:.4f} | {e_start:.4f} | {fmax_start:.2f} "
              f"| {last['n_steps']} | {'yes' if last['converged'] else 'no'} | {fmax_end:.2f} | {e_end:.4f} | {gap:.1f} "
              f"| {six_fold[0]} / {six_fold[1]} |")
    print(json.dumps({"structures": len(gaps), "mean_gap_meV_per_atom": float(np.mean(gaps)),
                      "min_gap_meV_per_atom": float(np.min(gaps)), "max_gap_meV_per_atom": float(np.max(gaps))}))


def crosscheck_command(args) -> None:
    """The end points of the first ``--count`` teacher relaxations labelled by a second calculator (each saved
    as ``DIR/crosscheck-NAME-<relaxation>.extxyz``, so a rerun skips them), then the pairwise agreement of the
    teacher, the cross-check and the student on those frames: force MAE (meV/Å), energy MAE per atom after
    removing the mean offset (absolute energies of different potentials have different references) and the
    raw mean offset, and the MAE of the relaxation energy E(start) − E(teacher-relaxed) of each structure."""
    paths = given_relaxations(args.dir, args.count)
    limit_torch_threads(args.calculator, args.threads)
    cross = None
    student = get_potential(args.student)
    models = {"teacher": ([], []), args.calculator: ([], []), "student": ([], [])}
    for path in paths:
        crystals, energies, forces, infos = end_points(path)
        out = args.dir / f"crosscheck-{args.calculator}-{path.name}"
        if not out.exists():
            cross = cross or labeller(args.calculator)
            labels = [cross(crystals[i:i + 1]) for i in range(len(crystals))]
            write_frames(out, crystals, np.concatenate([e for e, _ in labels]),
                         np.concatenate([f for _, f in labels]), [dict(i, calculator=args.calculator) for i in infos])
        _, cross_energies, cross_forces = read_labelled_extxyz(out)
        student_energies, student_forces = energies_and_forces(student, crystals)
        for name, e, f in (("teacher", energies, forces), (args.calculator, cross_energies, cross_forces),
                           ("student", student_energies, student_forces)):
            models[name][0].append(np.asarray(e, float) / crystals.n_atoms)
            models[name][1].append(np.asarray(f, float))
    energy = {name: np.stack(e) for name, (e, _) in models.items()}  # (structures, 2) eV/atom
    force = {name: np.stack(f) for name, (_, f) in models.items()}
    print(f"{len(paths)} structures, {energy['teacher'].size} frames (start and teacher-relaxed end of each)")
    print("| pair | force MAE (meV/Å) | energy MAE, offset removed (meV/atom) | mean offset (meV/atom) "
          "| relaxation-energy MAE (meV/atom) |")
    print("|---|---|---|---|---|")
    names = list(models)
    for a, b in ((names[1], names[0]), (names[2], names[0]), (names[2], names[1])):
        difference = energy[a] - energy[b]
        relaxation = (energy[a][:, 0] - energy[a][:, 1]) - (energy[b][:, 0] - energy[b][:, 1])
        row = {"pair": f"{a} - {b}", "force_mae": 1e3 * float(np.mean(np.abs(force[a] - force[b]))),
               "energy_mae_offset_removed": 1e3 * float(np.mean(np.abs(difference - difference.mean()))),
               "mean_offset": 1e3 * float(difference.mean()),
               "relaxation_energy_mae": 1e3 * float(np.mean(np.abs(relaxation)))}
        print(f"| {row['pair']} | {row['force_mae']:.0f} | {row['energy_mae_offset_removed']:.1f} "
              f"| {row['mean_offset']:.1f} | {row['relaxation_energy_mae']:.1f} |")
    print("| relaxation energy E(start) - E(teacher-relaxed) per structure (meV/atom) | "
          + " | ".join(f"{name}: " + ", ".join(f"{1e3 * (e[0] - e[1]):.1f}" for e in energy[name]) for name in names)
          + " |")


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
    relax.add_argument("--in", dest="input", type=Path,
                       help="relax frames start..count-1 of this extxyz file (with seed and index in their info) "
                            "instead of random interfaces")
    relax.add_argument("--calculator", default="chgnet", help="chgnet | sevennet (see dismax.data label)")
    relax.add_argument("--fmax", type=float, default=0.05)
    relax.add_argument("--max-steps", type=int, default=1000)
    relax.add_argument("--threads", type=int, default=1)
    relax.add_argument("--save-every", type=int, default=0,
                       help="also write the trajectory so far to OUT.partial every N steps (0: never); a stopped "
                            "relaxation's frames equal those of a rerun with --max-steps = its last step")
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
    displace = commands.add_parser("displace", help="move first-shell O of interior Co out of relaxed "
                                   "interfaces (unlabelled frames for the teacher)")
    displace.add_argument("--in", dest="input", required=True, type=Path, nargs="+",
                          help="relaxations (extxyz); the last frame of each is used")
    displace.add_argument("--out", required=True, type=Path)
    displace.add_argument("--copies", type=int, default=6, help="frames per input structure")
    displace.add_argument("--oxygen", type=int, default=3, help="O moved per frame, each off a different Co")
    displace.add_argument("--min", type=float, default=0.3, help="smallest move (Å)")
    displace.add_argument("--max", type=float, default=1.5, help="largest move (Å)")
    displace.add_argument("--seed", type=int, default=0)
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
    compare = commands.add_parser("compare", help="teacher energies of student-relaxed structures against the "
                                                  "teacher-relaxed ones (after relax --in)")
    compare.add_argument("--dir", required=True, type=Path)
    compare.add_argument("--count", type=int, default=None, help="only the first COUNT relaxations")
    compare.add_argument("--at-step", type=int, default=None,
                         help="end longer teacher relaxations at this step (one budget for all)")
    crosscheck = commands.add_parser("crosscheck", help="label the relaxations' end points with a second "
                                                        "calculator; teacher, cross-check and student agreement")
    crosscheck.add_argument("--dir", required=True, type=Path)
    crosscheck.add_argument("--count", type=int, default=None, help="only the first COUNT relaxations")
    crosscheck.add_argument("--calculator", default="sevennet", help="sevennet | any dismax.data label name")
    crosscheck.add_argument("--student", default="interface_chgnet", help="run:DIR or a shipped potential name")
    crosscheck.add_argument("--threads", type=int, default=1)
    export = commands.add_parser("export", help="write a fitted run's potential as one shippable file")
    export.add_argument("--run", required=True, type=Path)
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--description", default="")
    args = parser.parse_args(argv)
    {"relax": relax_command, "explore": explore_command, "displace": displace_command, "frames": frames_command,
     "evaluate": evaluate_command, "compare": compare_command, "crosscheck": crosscheck_command,
     "export": export_command}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
