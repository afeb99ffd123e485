"""``python -m dismax.data label``: JAX and ASE calculators, resuming after an interruption."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones

from dismax.data import __main__ as data_cli
from dismax.data.label import label_file
from dismax.io import read_labelled_extxyz, write_extxyz
from dismax.potentials import energies_and_forces, original_sw
from dismax.structures import Crystals


@pytest.fixture
def frames(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        frame = atoms.copy()
        frame.positions += rng.normal(0.0, 0.1, frame.positions.shape)
        frames.append(frame)
    path = tmp_path / "frames.extxyz"
    write_extxyz(Crystals.from_ase(frames), path, info=[{"id": i} for i in range(3)])
    return path


def test_label_with_sw_matches_the_potential(frames, tmp_path):
    out = tmp_path / "labelled.extxyz"
    assert data_cli.main(["label", "--calculator", "sw", "--in", str(frames), "--out", str(out)]) == 0
    crystals, energies, forces = read_labelled_extxyz(out)
    e, f = energies_and_forces(original_sw(), crystals)
    np.testing.assert_allclose(energies, e, rtol=1e-6)
    np.testing.assert_allclose(forces, f, atol=1e-5)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.progress.json"))


def test_label_with_an_ase_calculator_class(frames, tmp_path):
    out = label_file(frames, tmp_path / "lj.extxyz", "ase.calculators.lj:LennardJones", show_progress=False)
    crystals, energies, forces = read_labelled_extxyz(out)
    atoms = crystals.to_ase()[1]
    atoms.calc = LennardJones()
    assert energies[1] == pytest.approx(atoms.get_potential_energy(), rel=1e-9)
    np.testing.assert_allclose(forces[1], atoms.get_forces(), atol=1e-8)


def test_label_resumes_after_an_interruption(frames, tmp_path):
    straight = label_file(frames, tmp_path / "straight.extxyz", "sw", show_progress=False)
    out = tmp_path / "resumed.extxyz"
    text = straight.read_text()
    first_frame = "".join(text.splitlines(keepends=True)[:2 + 64])  # atom count, header, 64 atom lines
    # an interrupted run: one finished frame recorded, then half of the second frame written
    partial = tmp_path / "resumed.extxyz.partial"
    partial.write_text(first_frame + text[len(first_frame): len(first_frame) + 300])
    (tmp_path / "resumed.extxyz.progress.json").write_text(json.dumps(
        {"input": str(frames.resolve()), "calculator": "sw", "done": 1, "bytes": len(first_frame.encode())}))
    label_file(frames, out, "sw", show_progress=False)
    assert out.read_text() == text


@pytest.mark.slow  # CHGNet on 264 atoms: seconds of compute and ~4 GB of memory
def test_label_one_interface_sized_frame_with_chgnet(tmp_path):
    pytest.importorskip("chgnet", reason="CHGNet is not installed (optional extra: pip install -e .[teachers])")
    from benchmarks.potential_speed import random_cell

    frame = random_cell(0)
    write_extxyz(frame, tmp_path / "frame.extxyz")
    out = label_file(tmp_path / "frame.extxyz", tmp_path / "chgnet.extxyz", "chgnet", show_progress=False)
    _, energies, forces = read_labelled_extxyz(out)
    assert forces.shape == (1, 264, 3) and np.all(np.isfinite(forces)) and np.isfinite(energies[0])
    assert -10.0 < energies[0] / 264 < 0.0  # eV/atom of a random Li-Sc-Co-Cl-O cell
