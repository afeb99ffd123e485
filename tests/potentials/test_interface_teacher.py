"""The interface teacher workflow (benchmarks/interface_teacher.py): frames selected from teacher relaxations and
student explorations, held-out structures, the collapsed-frame filter, and one exploration (slow)."""

import io

import numpy as np
import pytest

from benchmarks import interface_teacher
from dismax.io import read_labelled_extxyz, write_labelled_frames
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
    write_trajectory(tmp_path / "explore-seed2000-0000.extxyz", 3)  # all three
    write_trajectory(tmp_path / "explore-seed2000-0001.extxyz", 4, largest_force=80.0)  # held out; last dropped
    out, test = tmp_path / "frames.extxyz", tmp_path / "test.extxyz"
    interface_teacher.main(["frames", "--dir", str(tmp_path), "--out", str(out), "--test-out", str(test),
                            "--every", "5", "--first", "0", "--test-structures", "2000-1"])
    _, energies, _ = read_labelled_extxyz(out)
    assert energies.tolist() == [0, 5, 10, 11, 0, 1, 2]
    _, energies, _ = read_labelled_extxyz(test)
    assert energies.tolist() == [0, 1, 2]


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
