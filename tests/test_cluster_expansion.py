"""The Fe–Ni–Cr cluster expansion tables and formulas against independent statements of the definitions."""

import jax
import numpy as np
import pytest

from dismax import cluster_expansion as CE
from dismax.bench.alloy import cubic_point_operations


def test_eci_table_order_matches_cluster_labels():
    assert CE.PUBLISHED_ECI.shape == (1 + len(CE.CLUSTER_LABELS),) == (46,)
    assert CE.PUBLISHED_ECI[0] == -0.00932958469464057
    assert dict(zip(CE.CLUSTER_LABELS, CE.PUBLISHED_ECI[1:]))["2NN_Cr-Cr"] == -0.03477817417403486
    assert CE.SRO_LABELS[:6] == ("1NN_Fe-Ni", "1NN_Cr-Fe", "1NN_Cr-Ni", "1NN_Fe-Fe", "1NN_Cr-Cr", "1NN_Ni-Ni")


def test_cluster_offsets_are_the_cubic_orbits_of_the_published_shell_vectors():
    """The published construction: each shell vector at its nominal length under the 48 O_h operations,
    rounded to 3 decimals, duplicates removed, sorted."""
    published = ((0.5, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 0.5, 0.5), (1.0, 1.0, 0.0), (1.5, 0.5, 0.0),
                 (1.0, 1.0, 1.0), (1.5, 1.0, 0.5))
    operations = cubic_point_operations()
    assert len(operations) == 48 and len({op.tobytes() for op in operations}) == 48
    expected = []
    for vector, length in zip(published, CE.SHELL_LENGTHS):
        vector = np.asarray(vector) * (length / np.linalg.norm(vector))
        expected += sorted({tuple(np.round(op @ vector, 3) + 0.0) for op in operations})
    offsets, shells = CE.cluster_offsets()
    np.testing.assert_array_equal(offsets, np.array(expected))
    assert np.bincount(shells).tolist() == list(CE.SHELL_Z)


def test_offset_lookup_table_inverts_the_offsets():
    offsets, _ = CE.cluster_offsets()
    integers = np.round(offsets / (CE.LATTICE_CONSTANT / 2)).astype(int) + 3
    table = CE.offset_lookup_table()
    np.testing.assert_array_equal(table[integers[:, 0], integers[:, 1], integers[:, 2]], np.arange(len(offsets)))
    assert (table >= 0).sum() == len(offsets)


def test_warren_cowley_equals_conditional_probability_definition():
    """Without vacancies α_s^{AB} = 1 − C[s,A,B] / (z_s n_A) / x_B (Dismai-Bench eq. 1) from ordered counts."""
    rng = np.random.default_rng(3)
    lattice = CE.fcc_lattice()
    occupations = np.stack([rng.permutation(np.repeat(np.arange(3), CE.COMPOSITION)) for _ in range(6)])
    counts = np.asarray(jax.vmap(lambda o: CE.pair_counts(o, lattice))(occupations)).astype(float)
    sro = CE.warren_cowley(CE.cluster_vectors(counts, CE.COMPOSITION))
    n_species = np.asarray(CE.COMPOSITION, float)
    x = n_species / n_species.sum()
    expected = np.stack([1 - counts[:, s, a, b] / (CE.SHELL_Z[s] * n_species[a]) / x[b]
                         for s in range(2) for a, b in CE.SRO_PAIRS], axis=1)
    np.testing.assert_allclose(sro, expected, rtol=0, atol=1e-12)


def test_cluster_vector_symmetrises_unequal_ordered_counts():
    """With vacancies the ordered counts need not be symmetric; unlike pairs take the mean of both orders."""
    counts = np.zeros((7, 3, 3))
    counts[0, 1, 2], counts[0, 2, 1], counts[0, 1, 1] = 5.0, 3.0, 4.0
    vector = CE.cluster_vectors(counts, (0, 2, 2))
    columns = dict(zip(CE.CLUSTER_LABELS, vector))
    assert columns["0NN_Fe"] == 0.5 and columns["1NN_Fe-Ni"] == (5 + 3) / 8 and columns["1NN_Fe-Fe"] == 4 / 8


@pytest.mark.parametrize("repeats", [2, 4])
def test_cluster_vector_energy_equals_total_energy(repeats):
    rng = np.random.default_rng(repeats)
    lattice = CE.fcc_lattice(repeats)
    expansion = CE.ClusterExpansion.from_eci()  # float32 unless x64 is enabled
    occupation = rng.integers(0, 3, lattice.n_sites)
    counts = np.asarray(CE.pair_counts(occupation, lattice))
    host = CE.energy_per_atom(CE.cluster_vectors(counts, np.bincount(occupation, minlength=3)))
    assert host * lattice.n_sites == pytest.approx(float(CE.total_energy(occupation, lattice, expansion)),
                                                   rel=1e-6)
