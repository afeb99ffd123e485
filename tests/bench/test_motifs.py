import os
import time

import numpy as np
import pytest

from dismax.bench import motifs as M
from tests.bench.published import published_crystalnn_angles, published_interface_fingerprint


def diamond(noise=0.0, seed=0, repeats=1):
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    frac = np.concatenate([base, base + 0.25]) / repeats
    frac = np.concatenate([frac + np.array(s) / repeats for s in np.ndindex(repeats, repeats, repeats)])
    lattice = np.eye(3) * repeats * 5.431
    frac = frac + np.random.default_rng(seed).normal(0, noise, frac.shape) / (repeats * 5.431)
    return frac % 1.0, lattice, np.full(len(frac), 14)


def test_labels_and_lengths():
    assert len(M.motif_labels()) == 61
    assert len(M.motif_labels(M.INTERFACE_ANIONS)) == 109


def test_a_si_fingerprint_equals_matminer():
    fingerprint = pytest.importorskip("matminer.featurizers.site.fingerprint")
    frac, lattice, numbers = diamond(noise=0.15)
    structure = M._to_structure(frac, lattice, numbers)
    op_types = {cn: ["wt"] + [label for label, _, _ in M.MOTIFS.get(cn, [])] for cn in range(1, 25)}
    reference = fingerprint.CrystalNNFingerprint(op_types=op_types, cation_anion=False)
    expected = np.array([reference.featurize(structure, i) for i in range(len(numbers))])
    ours = M.motif_fingerprints(frac, lattice, numbers)
    np.testing.assert_array_equal(ours, expected)
    assert reference.feature_labels() == M.motif_labels()


def test_interface_fingerprint_species_block():
    pytest.importorskip("matminer")
    rng = np.random.default_rng(3)
    lattice = np.array([[7.0, 0, 0], [0, 7.0, 0], [0, 0, 7.0]])
    # rock-salt-like LiCl / CoO mixture on a 4x4x4 simple-cubic grid of 1.75 Å
    grid = np.array(list(np.ndindex(4, 4, 4))) / 4.0
    parity = grid.sum(axis=1) * 4 % 2
    numbers = np.where(parity == 0, 3, 17)
    numbers[(parity == 0) & (rng.random(64) < 0.3)] = 27
    numbers[(parity == 1) & (rng.random(64) < 0.3)] = 8
    frac = (grid + rng.normal(0, 0.01, grid.shape)) % 1.0
    values = M.motif_fingerprints(frac, lattice, numbers, site_numbers=[3, 27], cation_anion=True,
                                  oxidation=M.INTERFACE_OXIDATION, species_fractions=M.INTERFACE_ANIONS)
    assert values.shape == ((numbers == 3).sum() + (numbers == 27).sum(), 109)
    species = values[:, 61:].reshape(-1, 24, 2)
    weights = values[:, [M.motif_labels().index(f"wt CN_{cn}") for cn in range(1, 25)]]
    np.testing.assert_allclose(species.sum(-1)[weights > 0], 1.0)   # cation-anion: only Cl and O neighbours
    assert np.all(species.sum(-1)[weights == 0] == 0)
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    op_types = {cn: ["wt"] + [label for label, _, _ in M.MOTIFS.get(cn, [])] for cn in range(1, 25)}
    reference = CrystalNNFingerprint(op_types=op_types, cation_anion=True)
    structure = M._to_structure(frac, lattice, numbers, M.INTERFACE_OXIDATION)
    cation_sites = np.flatnonzero(np.isin(numbers, [3, 27]))
    for row in (0, 5):
        np.testing.assert_array_equal(values[row, :61], reference.featurize(structure, int(cation_sites[row])))


def test_interface_fingerprint_equals_the_published_computation():
    """A random 264-atom Li3ScCl6 | LiCoO2 interface (unrelaxed, so the interface region has odd
    coordinations): the 109 values of the first Li, Sc and Co atoms of the interface region and of the slabs
    equal the published custom fingerprint, labels included."""
    pytest.importorskip("matminer")
    from dismax.data.interface import random_interface

    interface = random_interface(seed=0, index=0)
    frac, lattice, numbers = interface.frac, interface.lattice, interface.species
    structure = M._to_structure(frac, lattice, numbers, M.INTERFACE_OXIDATION)
    fingerprinter = M.MotifFingerprinter(cation_anion=True, species_fractions=M.INTERFACE_ANIONS)
    mixed = 0
    for z in (3, 21, 27):
        block = np.flatnonzero(numbers == z)
        for site in block[[0, 1, len(block) // 2, -1]]:   # interface-region atoms come first in each block
            ours = fingerprinter.site(structure, int(site))
            values, labels = published_interface_fingerprint(structure, int(site))
            np.testing.assert_allclose(ours, values, rtol=0, atol=1e-12, err_msg=f"atom {site}")
            fractions = np.reshape(ours[61:], (24, 2))
            mixed += np.any((fractions > 0).all(axis=1))
    assert mixed > 0   # some site has both Cl and O neighbours
    assert M.motif_labels(M.INTERFACE_ANIONS) == labels


def test_bond_angles_equal_published_computation_and_diamond():
    import pandas as pd

    frac, lattice, numbers = diamond(noise=0.2, seed=1)
    expected = published_crystalnn_angles(M._to_structure(frac, lattice, numbers))
    ours = M.crystalnn_bond_angles(frac, lattice, numbers)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    edges = np.arange(0, 180 + 0.5, 0.5)
    published = pd.cut(pd.Series(expected), edges, include_lowest=True).value_counts(normalize=True, sort=False)
    np.testing.assert_array_equal(M.angle_distribution(ours), published.to_numpy())
    frac, lattice, numbers = diamond()
    angles = M.crystalnn_bond_angles(frac, lattice, numbers)
    assert len(angles) == 8 * 6
    np.testing.assert_allclose(angles, np.degrees(np.arccos(-1 / 3)), atol=1e-9)
    frac, lattice, numbers = diamond(repeats=2)
    angles = M.crystalnn_bond_angles(frac, lattice, numbers)
    fast = M.cutoff_angle_distributions(frac[None], lattice[None], cutoff=2.85)[0]
    np.testing.assert_array_equal(fast, M.angle_distribution(angles))



def test_cutoff_angles_of_crowded_atoms_equal_all_pairs():
    """Random positions put up to ~20 atoms within 2.85 Å of one atom, beyond the first 12-wide neighbour
    table: the histogram still equals the angles of every pair of neighbours (NumPy, all pairs)."""
    rng = np.random.default_rng(3)
    lattice = np.eye(3) * 8.0
    frac = rng.uniform(size=(96, 3))
    vectors = frac[None] - frac[:, None]
    vectors = (vectors - np.round(vectors)) @ lattice
    distance = np.linalg.norm(vectors, axis=-1) + np.diag(np.full(96, np.inf))
    assert (distance < 2.85).sum(1).max() > 12
    angles = []
    for i in range(96):
        near = vectors[i][distance[i] < 2.85]
        unit = near / np.linalg.norm(near, axis=1, keepdims=True)
        j, k = np.triu_indices(len(near), 1)
        angles.extend(np.degrees(np.arccos(np.clip((unit[j] * unit[k]).sum(1), -1, 1))))
    fast = M.cutoff_angle_distributions(frac[None], lattice[None], cutoff=2.85)[0]
    np.testing.assert_allclose(fast, M.angle_distribution(np.array(angles)), atol=1e-12)

def test_per_structure_cache(tmp_path):
    structures = [diamond(noise=0.1, seed=s) for s in range(2)]
    first = M.per_structure(M.crystalnn_bond_angles, "angles", structures, cache_dir=tmp_path, workers=1)
    files = sorted((tmp_path / "angles").glob("*.npy"))
    assert len(files) == 2
    np.save(files[0], np.array([1.0]))            # a cached result is reused, not recomputed
    again = M.per_structure(M.crystalnn_bond_angles, "angles", structures, cache_dir=tmp_path, workers=1)
    assert sum(a.shape == (1,) for a in again) == 1
    assert any(np.array_equal(a, b) for a, b in zip(first, again))


@pytest.mark.slow
def test_process_pool_matches_in_process(tmp_path):
    structures = [diamond(noise=0.1, seed=s) for s in range(3)]
    pooled = M.per_structure(M.crystalnn_bond_angles, "angles", structures, workers=2)
    serial = M.per_structure(M.crystalnn_bond_angles, "angles", structures, workers=1)
    for a, b in zip(pooled, serial):
        np.testing.assert_array_equal(a, b)


def _worker_pid(frac, lattice, numbers):
    time.sleep(0.3)                 # long enough that both workers take tasks
    return np.array([os.getpid()])


def test_per_structure_keeps_its_worker_processes_between_calls():
    structures = [diamond(seed=s) for s in range(4)]
    pids = set()
    for _ in range(2):
        pids |= {int(p[0]) for p in M.per_structure(_worker_pid, "pid", structures, workers=2)}
    assert len(pids) == 2 and os.getpid() not in pids
