"""a-Si melt-quench builder: structure statistics on known lattices, a tiny build, the quality checks (slow)."""

import json
import warnings

import numpy as np
import pytest
from ase.build import bulk

from dismax.data.a_si import SIZES, build, generate, structure_statistics, tiny_protocol
from dismax.io import read_extxyz
from dismax.structures import Crystals


def test_statistics_of_diamond():
    stats = structure_statistics(Crystals.from_ase(bulk("Si", "diamond", a=5.431, cubic=True) * (3, 3, 3)))
    assert stats["mean_coordination"] == 4.0
    assert stats["structures"][0]["cn_fractions"]["4"] == 1.0
    assert stats["mean_angle"] == pytest.approx(109.4712, abs=1e-3)
    assert stats["angle_sd"] < 1e-3
    assert stats["rdf_first_peak"] == pytest.approx(5.431 * np.sqrt(3) / 4, abs=0.01)


@pytest.mark.slow
def test_tiny_build_writes_a_dataset(tmp_path):
    protocol = tiny_protocol(n_structures=2, melt_ps=0.2, quench_ps=0.3, final_max_steps=1500)
    build("small", 0, tmp_path, protocol=protocol)
    train, val = read_extxyz(tmp_path / "train.extxyz"), read_extxyz(tmp_path / "val.extxyz")
    assert (len(train), len(val)) == (1, 1)
    assert train.n_atoms == 64 and np.all(np.asarray(train.species) == 14)
    np.testing.assert_allclose(np.asarray(train.lattice[0]), np.eye(3) * protocol.box_length, atol=1e-6)
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["protocol"]["quench_rate_K_per_s"] == pytest.approx(2700 / 0.3e-12)
    assert sorted(s["split"] for s in params["structures"]) == ["train", "val"]
    for record in params["structures"]:
        assert -4.4 < record["energy_per_atom"] < -3.5
        assert 3.0 < record["mean_coordination"] < 5.0
        assert record["relax_status"] in ("converged", "max_steps")


@pytest.mark.slow  # ~60 s
def test_melt_quench_traces_without_warnings():
    """jax-md's thermostat asks for a float64 sum; the MD is traced without that warning reaching the user
    (40 atoms: a cell size no other test compiles, so the MD is traced here)."""
    protocol = tiny_protocol(n_structures=1, n_atoms=40, melt_ps=0.01, quench_ps=0.01, final_max_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crystals, _ = generate(protocol, 0, progress=False)
    assert crystals.frac.shape == (1, 40, 3)


def test_density_of_the_protocol():
    protocol = SIZES["small"]
    mass_g = 256 * 28.0855 / 6.02214076e23
    assert mass_g / (protocol.box_length * 1e-8) ** 3 == pytest.approx(2.28)
    assert protocol.box_length == pytest.approx(17.365, abs=1e-3)


@pytest.mark.slow
def test_short_64_atom_quench_is_tetrahedral(tmp_path):
    build("small", 1, tmp_path, protocol=tiny_protocol(n_structures=2, melt_ps=1.0, quench_ps=4.0))
    stats = structure_statistics(Crystals.concatenate([read_extxyz(tmp_path / f) for f in
                                                       ("train.extxyz", "val.extxyz")]))
    assert 3.8 <= stats["mean_coordination"] <= 4.3
    assert 2.30 <= stats["rdf_first_peak"] <= 2.45


@pytest.mark.slow
def test_small_dataset_quality(tmp_path):
    """The acceptance check of the small a-Si build (a few minutes on a 2-core CPU)."""
    build("small", 0, tmp_path)
    stats = structure_statistics(Crystals.concatenate([read_extxyz(tmp_path / f) for f in
                                                       ("train.extxyz", "val.extxyz")]))
    assert 3.8 <= stats["mean_coordination"] <= 4.3
    assert abs(stats["mean_angle"] - 109.0) <= 2.0
    assert 2.30 <= stats["rdf_first_peak"] <= 2.40
