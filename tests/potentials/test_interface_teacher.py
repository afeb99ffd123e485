"""The interface teacher workflow (benchmarks/interface_teacher.py): frames selected from teacher relaxations and
student explorations, held-out structures, the collapsed-frame filter, teacher relaxations of given structures with
their comparison and cross-check (cheap stand-in calculators), and one exploration (slow)."""

import io
import json

import numpy as np
import pytest

from benchmarks import interface_teacher
from dismax.io import read_extxyz, read_labelled_extxyz, write_extxyz, write_labelled_frames
from dismax.structures import Crystals


def write_trajectory(path, n_frames: int, largest_force: float = 1.0) -> None:
    """A labelled 2-atom trajectory whose frame s has energy s and, in its last frame, ``largest_force``."""
    frac = np.tile([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], (n_frames, 1, 1)).astype(np.float32)
    crystals = Crystals(frac, np.tile(np.eye(3, dtype=np.float32) * 4.0, (n_frames, 1, 1)),
                        np.full((n_frames, 2), 14, np.int32))
    forces = np.full((n_frames, 2, 3), 0.1)
    forces[-1, 0] = [largest_force, 0.0, 0.0]
    text = io.StringIO()
    write_labelled_frames(text, crystals, np.arange(n_frames, dtype=float), forces,
                          [{"step": s} for s in range(n_frames)])
    path.write_text(text.getvalue())


def test_frames_take_every_kth_teacher_step_all_explored_frames_and_hold_out_whole_structures(tmp_path):
    write_trajectory(tmp_path / "seed1000-0000.extxyz", 12)       # steps 0, 5, 10, 11 selected
    write_trajectory(tmp_path / "from-seed0-0001.extxyz", 7)       # a relax --in output: steps 0, 5, 6
    write_trajectory(tmp_path / "explore-seed2000-0000.extxyz", 3)  # all three
    write_trajectory(tmp_path / "explore-seed2000-0001.extxyz", 4, largest_force=80.0)  # held out; last dropped
    out, test = tmp_path / "frames.extxyz", tmp_path / "test.extxyz"
    interface_teacher.main(["frames", "--dir", str(tmp_path), "--out", str(out), "--test-out", str(test),
                            "--every", "5", "--first", "0", "--test-structures", "2000-1"])
    _, energies, _ = read_labelled_extxyz(out)
    assert energies.tolist() == [0, 5, 10, 11, 0, 5, 6, 0, 1, 2]
    _, energies, _ = read_labelled_extxyz(test)
    assert energies.tolist() == [0, 1, 2]


def test_frames_with_no_held_out_fraction_write_only_the_training_file(tmp_path):
    write_trajectory(tmp_path / "seed1000-0000.extxyz", 12)
    out, test = tmp_path / "frames.extxyz", tmp_path / "test.extxyz"
    interface_teacher.main(["frames", "--dir", str(tmp_path), "--out", str(out), "--test-out", str(test),
                            "--every", "5", "--first", "0", "--test-fraction", "0"])
    _, energies, _ = read_labelled_extxyz(out)
    assert energies.tolist() == [0, 5, 10, 11] and not test.exists()


@pytest.mark.slow
def test_explore_labels_the_student_frames_and_resumes(tmp_path, capsys):
    """Student and teacher are the same shipped potential here, so every label equals the student's energy."""
    argv = ["explore", "--dir", str(tmp_path), "--student", "interface_chgnet", "--calculator", "interface_chgnet",
            "--count", "1", "--max-steps", "3", "--steps", "0", "2"]
    interface_teacher.main(argv)
    path = tmp_path / "explore-seed2000-0000.extxyz"
    import ase.io

    frames = ase.io.read(path, index=":")
    assert [a.info["step"] for a in frames] == [0, 2, 3]
    for atoms in frames:
        assert atoms.get_potential_energy() == pytest.approx(atoms.info["student_energy"], abs=1e-3)
        assert len(atoms) == 264
    capsys.readouterr()
    interface_teacher.main(argv)  # finished structures are skipped
    assert capsys.readouterr().out == ""


LENNARD_JONES = "ase.calculators.lj:LennardJones"  # a cheap ASE "teacher" (sigma 1 Å, epsilon 1 eV, cutoff 3 Å)


def student_relaxed_silicon(path, n_structures: int = 2) -> Crystals:
    """Rattled 64-atom diamond Si cells standing in for a built set: seed and index in their info, and the
    student energy (eV/atom) the builder records."""
    from ase.build import bulk

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n_structures):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.wrap()
        frames.append(Crystals.from_ase([atoms]))
    crystals = Crystals.concatenate(frames)
    write_extxyz(crystals, path, info=[{"seed": 7, "index": 3 + i, "energy_per_atom": -4.3 - i}
                                       for i in range(n_structures)])
    return crystals


def test_relax_given_structures_then_compare_and_crosscheck(tmp_path, capsys):
    given = student_relaxed_silicon(tmp_path / "built.extxyz")
    relax = ["relax", "--in", str(tmp_path / "built.extxyz"), "--count", "2", "--dir", str(tmp_path / "teacher"),
             "--calculator", LENNARD_JONES, "--fmax", "1e-6", "--max-steps", "3"]
    interface_teacher.main(relax)
    paths = sorted((tmp_path / "teacher").glob("*.extxyz"))
    assert [p.name for p in paths] == ["from-seed7-0003.extxyz", "from-seed7-0004.extxyz"]
    crystals, energies, forces = read_labelled_extxyz(paths[0])
    _, infos = read_extxyz(paths[0], with_info=True)
    assert len(energies) == 4 and [i["step"] for i in infos] == [0, 1, 2, 3] and not infos[-1]["converged"]
    np.testing.assert_allclose(np.asarray(crystals.frac[0]), np.asarray(given.frac[0]), atol=1e-6)
    assert energies[-1] < energies[0]  # FIRE went downhill
    capsys.readouterr()
    interface_teacher.main(relax)  # finished relaxations are skipped
    assert capsys.readouterr().out == ""

    interface_teacher.main(["compare", "--dir", str(tmp_path / "teacher")])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:4]]
    gaps = []
    for row, path, student_energy in zip(rows, paths, (-4.3, -5.3)):
        _, energies, forces = read_labelled_extxyz(path)
        gap = 1e3 * (energies[0] - energies[-1]) / 64
        gaps.append(gap)
        assert row[0] == f"7-{3 + paths.index(path)}" and float(row[1]) == student_energy
        assert float(row[2]) == pytest.approx(energies[0] / 64, abs=1e-4)
        assert float(row[3]) == pytest.approx(np.linalg.norm(forces[0], axis=-1).max(), abs=0.01)
        assert row[4:6] == ["3", "no"] and float(row[8]) == pytest.approx(gap, abs=0.05)
        assert float(row[6]) == pytest.approx(np.linalg.norm(forces[-1], axis=-1).max(), abs=0.01)
        assert row[9] == "0/0 / 0/0"  # no Co in silicon
    summary = json.loads(lines[-1])
    assert summary["mean_gap_meV_per_atom"] == pytest.approx(np.mean(gaps))
    assert (summary["min_gap_meV_per_atom"], summary["max_gap_meV_per_atom"]) == pytest.approx((min(gaps), max(gaps)))
    interface_teacher.main(["compare", "--dir", str(tmp_path / "teacher"), "--at-step", "1"])  # a smaller budget
    lines = capsys.readouterr().out.strip().splitlines()
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    _, energies, forces = read_labelled_extxyz(paths[0])
    assert row[4:6] == ["1", "no"] and float(row[7]) == pytest.approx(energies[1] / 64, abs=1e-4)
    assert float(row[6]) == pytest.approx(np.linalg.norm(forces[1], axis=-1).max(), abs=0.01)

    # cross-check: Stillinger-Weber labels the end points and is also the student, so that pair agrees exactly
    interface_teacher.main(["crosscheck", "--dir", str(tmp_path / "teacher"), "--calculator", "sw", "--student", "sw"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("2 structures, 4 frames")
    cross_files = sorted((tmp_path / "teacher").glob("crosscheck-sw-*.extxyz"))
    assert [p.name for p in cross_files] == [f"crosscheck-sw-from-seed7-000{i}.extxyz" for i in (3, 4)]
    teacher_forces = np.concatenate([read_labelled_extxyz(p)[2][[0, -1]] for p in paths])
    cross_forces = np.concatenate([read_labelled_extxyz(p)[2] for p in cross_files])
    sw_vs_teacher, student_vs_teacher, student_vs_sw = (
        [cell.strip() for cell in line.strip("|").split("|")] for line in lines[3:6])
    assert sw_vs_teacher[0] == "sw - teacher" and student_vs_sw[0] == "student - sw"
    assert float(sw_vs_teacher[1]) == pytest.approx(1e3 * np.mean(np.abs(cross_forces - teacher_forces)), abs=0.5)
    assert student_vs_teacher[1:] == sw_vs_teacher[1:]
    assert [float(x) for x in student_vs_sw[1:]] == [0.0, 0.0, 0.0, 0.0]
    interface_teacher.main(["crosscheck", "--dir", str(tmp_path / "teacher"), "--calculator", "sw", "--student", "sw"])
    assert capsys.readouterr().out.strip().splitlines()[3:6] == lines[3:6]  # the saved labels are reused


def test_relax_saves_the_trajectory_so_far_and_removes_it_when_done(tmp_path):
    """A stopped teacher relaxation keeps its frames: every save is a prefix of the finished trajectory, and the
    command deletes its ``.partial`` file once the relaxation is written."""
    from ase.calculators.lj import LennardJones

    given = student_relaxed_silicon(tmp_path / "built.extxyz", n_structures=1)
    saved = []
    frames, energies, forces, _ = interface_teacher.relax_one(
        given, LennardJones(), fmax=1e-6, max_steps=5, save_every=2,
        save=lambda f, e, F: saved.append((np.asarray(f.frac), e.copy(), F.copy())))
    assert [len(e) for _, e, _ in saved] == [2, 4, 6] and len(energies) == 6
    for frac, e, F in saved:
        np.testing.assert_array_equal(frac, np.asarray(frames.frac)[:len(e)])
        np.testing.assert_array_equal(e, energies[:len(e)])
        np.testing.assert_array_equal(F, forces[:len(e)])

    interface_teacher.main(["relax", "--in", str(tmp_path / "built.extxyz"), "--count", "1", "--dir",
                            str(tmp_path / "teacher"), "--calculator", LENNARD_JONES, "--fmax", "1e-6",
                            "--max-steps", "5", "--save-every", "2"])
    assert [p.name for p in (tmp_path / "teacher").iterdir()] == ["from-seed7-0003.extxyz"]
    np.testing.assert_allclose(read_labelled_extxyz(tmp_path / "teacher" / "from-seed7-0003.extxyz")[1], energies)


def test_displace_moves_oxygen_of_each_relaxations_last_frame(tmp_path, capsys):
    from dismax.data.interface import random_interface

    paths = []
    for index in (1, 3):  # two random interfaces of seed 0 as two-frame "relaxations"; the last frame is used
        s = random_interface(0, index)
        frames = Crystals(np.stack([np.zeros_like(s.frac), s.frac]), np.stack([s.lattice] * 2), np.stack([s.species] * 2))
        paths.append(write_extxyz(frames, tmp_path / f"relaxed-{index}.extxyz"))
    out = tmp_path / "displaced.extxyz"
    interface_teacher.main(["displace", "--in", *map(str, paths), "--out", str(out), "--copies", "2", "--oxygen", "3",
                            "--min", "0.5", "--max", "0.6", "--seed", "1"])
    assert json.loads(capsys.readouterr().out) == {"structures": 2, "frames": 4, "out": str(out)}
    displaced, infos = read_extxyz(out, with_info=True)
    assert [info["source"] for info in infos] == ["relaxed-1.extxyz"] * 2 + ["relaxed-3.extxyz"] * 2
    for k, info in enumerate(infos):
        start = read_extxyz(paths[k // 2])[-1]
        changed = np.flatnonzero(np.any(np.abs(np.asarray(displaced.frac[k]) - np.asarray(start.frac[0])) > 1e-5, axis=-1))
        assert sorted(changed) == sorted(np.asarray(info["moved"]).tolist()) and len(changed) == 3
        assert np.all((np.asarray(info["moved_by"]) >= 0.5) & (np.asarray(info["moved_by"]) <= 0.6))
