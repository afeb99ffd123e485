import numpy as np
import pytest

from dismax import cluster_expansion
from dismax.bench import alloy as A

FE, NI, CR = 26, 28, 24


def fcc_cart(n_cells: int) -> np.ndarray:
    grid = np.array([(i, j, k) for i in range(2 * n_cells) for j in range(2 * n_cells)
                     for k in range(2 * n_cells) if (i + j + k) % 2 == 0])
    return grid * (cluster_expansion.LATTICE_CONSTANT / 2)


def random_alloy(rng, noise=0.0):
    numbers = np.array([FE] * 154 + [NI] * 51 + [CR] * 51)
    rng.shuffle(numbers)
    return fcc_cart(4) + rng.normal(0, noise, (256, 3)), numbers


def test_offsets_have_published_orientation_counts():
    offsets, shells = cluster_expansion.cluster_offsets()
    assert np.bincount(shells).tolist() == [12, 6, 24, 12, 24, 8, 48]
    lengths = np.linalg.norm(offsets, axis=1)
    for shell, length in enumerate(cluster_expansion.SHELL_LENGTHS):
        np.testing.assert_allclose(lengths[shells == shell], length, atol=2e-3)
    assert len(A.cubic_point_operations()) == 48


def test_pure_metal_and_l10_analytic_counts():
    cart = fcc_cart(4)
    lattice = A.reference_lattice()
    counts, flag = A.count_clusters_one(cart, np.full(256, FE), lattice)
    probabilities = cluster_expansion.cluster_probabilities(counts[None])[0]
    columns = dict(zip(cluster_expansion.CLUSTER_LABELS, probabilities))
    assert not flag
    for shell in range(1, 8):
        assert columns[f"{shell}NN_Fe-Fe"] == pytest.approx(1.0)
    ecis = cluster_expansion.PUBLISHED_ECI
    expected = ecis[0] + ecis[2] + sum(ecis[7 + 6 * s] * z / 2 for s, z in enumerate(cluster_expansion.SHELL_Z))
    assert cluster_expansion.energy_per_atom(counts[None])[0] == pytest.approx(expected)
    # L1_0: alternating (001) planes of Fe and Ni
    layer = np.round(cart[:, 2] / 1.8).astype(int) % 2
    numbers = np.where(layer == 0, FE, NI)
    counts, _ = A.count_clusters_one(cart, numbers, lattice)
    columns = dict(zip(cluster_expansion.CLUSTER_LABELS, counts))
    assert columns["1NN_Fe-Ni"] == pytest.approx(4.0)
    assert columns["1NN_Fe-Fe"] == pytest.approx(1.0)
    assert columns["2NN_Fe-Fe"] == pytest.approx(1.5) and columns["2NN_Fe-Ni"] == pytest.approx(0.0)
    sro = dict(zip(cluster_expansion.SRO_LABELS, cluster_expansion.warren_cowley(counts[None])[0]))
    assert sro["1NN_Fe-Ni"] == pytest.approx(-1 / 3)
    assert sro["1NN_Fe-Fe"] == pytest.approx(1 - (4 / 12) / 0.5)
    assert sro["2NN_Fe-Fe"] == pytest.approx(-1.0)


def test_random_occupation_sro_and_energy_expectation():
    rng = np.random.default_rng(1)
    lattice = A.reference_lattice()
    rows = [A.count_clusters_one(*random_alloy(rng), lattice)[0] for _ in range(24)]
    counts = np.array(rows)
    sro = cluster_expansion.warren_cowley(counts)
    assert np.all(np.abs(sro.mean(axis=0)) < 0.05)
    assert cluster_expansion.energy_per_atom(counts).mean() == pytest.approx(-0.0600, abs=0.0012)
    probabilities = cluster_expansion.cluster_probabilities(counts)
    np.testing.assert_allclose(probabilities[:, 3:].reshape(-1, 7, 6).sum(-1), 1.0)


def _pymatgen_reference_counts(cart, numbers, lattice, basis):
    """Direct re-statement of the published counting with pymatgen neighbour lists."""
    from pymatgen.core import Lattice, PeriodicSite, Structure

    structure = Structure(Lattice(lattice), numbers.tolist(), cart, coords_are_cartesian=True)
    offsets, shells = cluster_expansion.cluster_offsets()
    offsets = A.rotate_offsets(offsets, basis)
    targets, owners = [], []
    for j in range(len(structure)):
        for k in range(len(offsets)):
            frac = np.around((structure.cart_coords[j] + offsets[k]) @ np.linalg.inv(lattice), 3) % 1
            targets.append(PeriodicSite("H", frac @ lattice + 1e-6, structure.lattice, coords_are_cartesian=True))
            owners.append((j, shells[k]))
    centre, neighbour, _, distance = structure.get_neighbor_list(A.SITE_MARGIN, targets)
    best = {}
    for c, n, d in zip(centre, neighbour, distance):
        if c not in best or d < best[c][1]:
            best[c] = (n, d)
    symbols = {CR: "Cr", FE: "Fe", NI: "Ni"}
    tally = {}
    for t, (j, shell) in enumerate(owners):
        if t in best:
            label = tuple(sorted([symbols[numbers[j]], symbols[numbers[best[t][0]]]]))
            tally[(shell, label)] = tally.get((shell, label), 0) + 1
    n = len(structure)
    values = list(np.bincount(A.species_codes(numbers), minlength=3) / n)
    for shell in range(7):
        for a, b in cluster_expansion.PAIRS:
            values.append(tally.get((shell, (cluster_expansion.SPECIES[a], cluster_expansion.SPECIES[b])), 0) / (2 * n))
    return np.round(values, 5)


def test_reference_counting_matches_pymatgen_search_on_noisy_small_cell():
    rng = np.random.default_rng(2)
    cart = fcc_cart(3) + rng.normal(0, 0.12, (108, 3))
    numbers = rng.choice([FE, NI, CR], 108)
    keep = np.ones(108, bool)
    keep[[3, 50]] = False
    cart, numbers = cart[keep], numbers[keep]
    lattice = np.eye(3) * 3 * cluster_expansion.LATTICE_CONSTANT
    basis, _ = A.find_fcc_basis(cart, lattice, normalise_c=False)
    ours, flag = A.count_clusters_one(cart, numbers, lattice, basis, reference_compatible=True)
    np.testing.assert_array_equal(ours, _pymatgen_reference_counts(cart, numbers, lattice, basis))
    assert flag


@pytest.mark.slow
def test_pairwise_kernel_equals_scan_kernel():
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    cart, numbers = random_alloy(rng, noise=0.15)
    cart, numbers = cart[5:], numbers[5:]
    lattice = A.reference_lattice()
    basis, _ = A.find_fcc_basis(cart, lattice, normalise_c=False)
    unrotated, shells = cluster_expansion.cluster_offsets()
    offsets = A.rotate_offsets(unrotated, basis)
    assert A._pairwise_is_exact(offsets, lattice, A.SITE_MARGIN)
    with A.jax.enable_x64(True):
        arguments = (jnp.asarray(cart), jnp.asarray(A.species_codes(numbers)), jnp.asarray(lattice),
                     jnp.asarray(offsets), jnp.asarray(shells), A.SITE_MARGIN, True)
        table = jnp.asarray(cluster_expansion.offset_lookup_table())
        fast = A._pair_counts_pairwise(*arguments, jnp.asarray(basis), table)
        slow = A._pair_counts_scan(*arguments)
        np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(slow[0]))
        assert bool(fast[1]) == bool(slow[1])


def test_assignment_translated_noisy_structure_with_vacancy_and_duplicate():
    rng = np.random.default_rng(4)
    cart, numbers = random_alloy(rng, noise=0.1)
    cart = cart + np.array([0.7, -0.5, 0.3])
    cart = np.concatenate([cart[1:], cart[10:11] + 0.3])          # site 0 empty, site 10 doubly occupied
    numbers = np.concatenate([numbers[1:], numbers[10:11]])
    lattice = A.reference_lattice()
    frac = (cart @ np.linalg.inv(lattice)) % 1.0
    result = A.assign_sites(frac, numbers, lattice, alignment="translate")
    assert result.ok and result.n_vacancies == 1 and result.n_discarded == 1 and result.n_off_lattice == 0
    assert len(result.numbers) == 255
    assert sorted(result.numbers.tolist()) == sorted(numbers[:-1].tolist())
    reference = A.reference_cleanup(frac, numbers, lattice, "translate")
    assert reference.n_vacancies == 1 and len(reference.numbers) == 255
    as_is = A.reference_cleanup(frac, numbers, lattice, "as_is")
    assert as_is.n_vacancies > 1                                  # the unshifted lattice misses atoms


def test_as_is_clean_up_separates_surplus_from_off_lattice_atoms():
    rng = np.random.default_rng(8)
    cart, numbers = random_alloy(rng, noise=0.05)
    surplus = cart[5] + np.array([0.3, 0.0, 0.0])                 # within 0.8 Å of a site that is filled
    off_lattice = cart[0] + np.array([0.9, 0.9, 0.0])             # 1.27 Å from every site
    cart = np.concatenate([cart[1:], [surplus, off_lattice]])     # site 0 empty
    numbers = np.concatenate([numbers[1:], [FE, NI]])
    lattice = A.reference_lattice()
    result = A.reference_cleanup((cart @ np.linalg.inv(lattice)) % 1.0, numbers, lattice, "as_is")
    assert result.n_vacancies == 1 and len(result.numbers) == 255
    assert result.n_discarded == 1 and result.n_off_lattice == 1 and result.n_removed == 2


def test_rotated_translated_structure_is_assigned_by_rotation_variants():
    rng = np.random.default_rng(5)
    angle = np.deg2rad(90.0)
    rotation = np.array([[np.cos(angle), np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    sites = A._rotated_sites(rotation)
    assert len(sites) == 256
    exact = (sites + np.array([0.06, 0.07, -0.05])) % 1.0
    lattice = A.reference_lattice()
    frac = (exact + rng.normal(0, 0.004, exact.shape)) % 1.0
    numbers = rng.choice([FE, NI, CR], len(frac))
    ours = A.assign_sites(frac, numbers, lattice, alignment="rotate_translate")
    assert ours.ok and ours.n_off_lattice == 0 and ours.n_discarded == 0
    assert len(ours.numbers) == len(frac)
    reference = A.reference_cleanup(exact, numbers, lattice, "rotate")
    assert reference.ok and len(reference.numbers) == len(frac)
    plain = A.assign_sites(frac, numbers, lattice, alignment="none")
    assert plain.status == "rejected_too_many_removed"


def test_reference_vacancy_estimate_counts_empty_sites():
    rng = np.random.default_rng(6)
    cart, numbers = random_alloy(rng, noise=0.05)
    lattice = A.reference_lattice()
    for removed in ([17], [17, 18, 200]):
        keep = np.setdiff1d(np.arange(256), removed)
        basis, _ = A.find_fcc_basis(cart[keep], lattice, normalise_c=False)
        assert A.reference_vacancy_estimate(cart[keep], lattice, basis) == len(removed)
    assert A.reference_vacancy_estimate(cart, lattice, np.eye(3)) == 0
