"""Alloy cluster-expansion Monte Carlo: energies against an independent pymatgen pair count, local swap
energies, detailed balance against exact enumeration, SRO, dataset selection and reproducibility."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax import cluster_expansion
from dismax.data import alloy
from dismax.io import read_extxyz

SHELL_RADII = np.sqrt(cluster_expansion.SHELL_RADIUS_SQUARED) * cluster_expansion.LATTICE_CONSTANT / 2  # Å


def pymatgen_energy_per_atom(occupation: np.ndarray, repeats: int = 4) -> float:
    """CE energy from pymatgen's neighbour list: count unordered pairs per shell by distance, times ECIs."""
    from pymatgen.core import Lattice, Structure

    lattice = cluster_expansion.fcc_lattice(repeats)
    structure = Structure(Lattice(lattice.lattice), [cluster_expansion.SPECIES[s] for s in occupation], lattice.frac)
    centres, points, _, distances = structure.get_neighbor_list(r=SHELL_RADII[-1] + 0.1)
    shell = np.abs(distances[:, None] - SHELL_RADII[None, :]).argmin(axis=1)
    assert np.abs(distances - SHELL_RADII[shell]).max() < 1e-6
    n = len(occupation)
    pair_index = {frozenset(p) if p[0] != p[1] else frozenset([p[0]]): k for k, p in enumerate(cluster_expansion.PAIRS)}
    counts = np.zeros((cluster_expansion.N_SHELLS, 6))
    for s, a, b in zip(shell, occupation[centres], occupation[points]):
        counts[s, pair_index[frozenset([a, b])]] += 0.5  # each unordered pair is listed from both ends
    x = np.bincount(occupation, minlength=3) / n
    eci = cluster_expansion.PUBLISHED_ECI
    return float(eci[0] + x @ eci[1:4] + (counts / n).ravel() @ eci[4:])


def random_occupation(rng, composition=cluster_expansion.COMPOSITION):
    return rng.permutation(np.repeat(np.arange(3), composition)).astype(np.int32)


def ordered_occupations():
    """Hand-built ordered configurations on the 256-site cell (sites: 4 basis sites per cubic cell)."""
    lattice = cluster_expansion.fcc_lattice()
    basis = np.tile(np.arange(4), lattice.n_sites // 4)
    layer = np.round(lattice.frac[:, 2] * 8).astype(int)
    return {
        "pure Fe": np.ones(lattice.n_sites, np.int32),
        "L1_2 Ni3Cr-like (Cr on cube corners)": np.where(basis == 0, 0, 2).astype(np.int32),
        "L1_0 CrNi layers": np.where(layer % 2 == 0, 0, 2).astype(np.int32),
        "Cr/Fe/Ni (001) layers": (layer % 3).astype(np.int32),
    }


def test_lattice_shells_match_geometry():
    lattice = cluster_expansion.fcc_lattice()
    assert lattice.n_sites == 256 and lattice.neighbours.shape == (256, 134)
    assert np.bincount(lattice.shell_of_column).tolist() == list(cluster_expansion.SHELL_Z)
    cart = lattice.frac @ lattice.lattice
    delta = cart[lattice.neighbours] - cart[:, None, :]
    delta -= np.round(delta / 14.4) * 14.4
    distance = np.linalg.norm(delta, axis=-1)
    np.testing.assert_allclose(distance, np.broadcast_to(SHELL_RADII[lattice.shell_of_column], distance.shape),
                               atol=1e-9)
    # every neighbour appears once per shell (no aliasing in the 4×4×4 cell)
    for s in range(cluster_expansion.N_SHELLS):
        columns = lattice.neighbours[:, lattice.shell_of_column == s]
        assert all(len(set(row)) == len(row) for row in columns)


def test_energy_matches_pymatgen_pair_count():
    lattice = cluster_expansion.fcc_lattice()
    rng = np.random.default_rng(0)
    configurations = dict(ordered_occupations())
    for k in range(3):
        configurations[f"random {k}"] = random_occupation(rng)
    with jax.enable_x64(True):
        ce = cluster_expansion.ClusterExpansion.from_eci(dtype=jnp.float64)
        energy = jax.jit(lambda o: cluster_expansion.total_energy(o, lattice, ce))
        pair_counts = jax.jit(lambda o: cluster_expansion.pair_counts(o, lattice))
        for name, occupation in configurations.items():
            reference = pymatgen_energy_per_atom(occupation)
            jax_energy = float(energy(occupation)) / lattice.n_sites
            counts = np.asarray(pair_counts(occupation))
            composition = np.bincount(occupation, minlength=3)
            vector = cluster_expansion.cluster_vectors(counts, composition)
            host_energy = float(cluster_expansion.energy_per_atom(vector))
            assert abs(jax_energy - reference) < 1e-10, name
            assert abs(host_energy - reference) < 1e-10, name


def test_random_mixing_energy_and_sro():
    """Random configurations: E/N near the analytic −0.0600 eV/atom; Warren–Cowley α ≈ 0 on average."""
    lattice = cluster_expansion.fcc_lattice()
    rng = np.random.default_rng(1)
    occupations = jnp.asarray(np.stack([random_occupation(rng) for _ in range(200)]))
    counts = np.asarray(jax.jit(jax.vmap(lambda o: cluster_expansion.pair_counts(o, lattice)))(occupations))
    vectors = cluster_expansion.cluster_vectors(counts, cluster_expansion.COMPOSITION)
    energies = cluster_expansion.energy_per_atom(vectors)
    assert abs(energies.mean() + 0.0600) < 0.0005
    sro = cluster_expansion.warren_cowley(vectors)
    assert np.abs(sro.mean(axis=0)).max() < 0.05
    # shell sums of the cluster vector are z/2
    np.testing.assert_allclose(vectors[:, 3:].reshape(-1, 7, 6).sum(-1), np.broadcast_to(
        np.asarray(cluster_expansion.SHELL_Z) / 2, (200, 7)))


@pytest.mark.parametrize("repeats", [4, 2])
def test_local_swap_energy_equals_full_difference(repeats):
    lattice = cluster_expansion.fcc_lattice(repeats)
    rng = np.random.default_rng(2)
    composition = (lattice.n_sites // 5, lattice.n_sites - 2 * (lattice.n_sites // 5), lattice.n_sites // 5)
    with jax.enable_x64(True):
        ce = cluster_expansion.ClusterExpansion.from_eci(dtype=jnp.float64)
        energy = jax.jit(lambda o: cluster_expansion.total_energy(o, lattice, ce))
        delta = jax.jit(lambda o, i, j: cluster_expansion.swap_energy_change(o, i, j, lattice, ce))
        occupation = random_occupation(rng, composition)
        pairs = [tuple(rng.choice(lattice.n_sites, 2, replace=False)) for _ in range(40)]
        pairs += [(i, int(lattice.neighbours[i, c])) for i, c in zip(rng.integers(0, lattice.n_sites, 40),
                                                                    rng.integers(0, 134, 40))]
        checked = 0
        for i, j in pairs:
            if occupation[i] == occupation[j]:
                continue
            swapped = occupation.copy()
            swapped[[i, j]] = swapped[[j, i]]
            full = float(energy(jnp.asarray(swapped)) - energy(jnp.asarray(occupation)))
            local = float(delta(jnp.asarray(occupation), i, j))
            assert abs(full - local) < 1e-9, (i, j)
            occupation = swapped
            checked += 1
        assert checked > 30


@pytest.mark.parametrize("repeats", [4, 2])
def test_shell_multiplicity_and_environments_match_the_neighbour_table(repeats):
    lattice = cluster_expansion.fcc_lattice(repeats)
    multiplicity = cluster_expansion.shell_multiplicity(lattice)
    np.testing.assert_array_equal(multiplicity, multiplicity.transpose(1, 0, 2))
    np.testing.assert_array_equal(multiplicity.sum(axis=1), np.broadcast_to(cluster_expansion.SHELL_Z,
                                                                            (lattice.n_sites, 7)))
    occupation = np.random.default_rng(5).integers(0, 3, lattice.n_sites).astype(np.int32)
    expected = np.zeros((lattice.n_sites, 7, 3), np.int64)
    for i in range(lattice.n_sites):
        for column, j in enumerate(lattice.neighbours[i]):
            expected[i, lattice.shell_of_column[column], occupation[j]] += 1
    np.testing.assert_array_equal(np.asarray(cluster_expansion.environment_counts(occupation, lattice)), expected)


def test_scaled_composition_is_the_closest_with_equal_cr_and_ni():
    assert cluster_expansion.scaled_composition(256) == cluster_expansion.COMPOSITION
    assert cluster_expansion.scaled_composition(32) == (6, 20, 6)
    for n in (32, 108, 500):
        cr, fe, ni = cluster_expansion.scaled_composition(n)
        exact = np.asarray(cluster_expansion.COMPOSITION) * n / 256
        worst = np.abs(np.array([cr, fe, ni]) - exact).max()
        assert cr == ni and cr + fe + ni == n
        assert all(np.abs(np.array([c, n - 2 * c, c]) - exact).max() >= worst for c in range(n // 2 + 1))


def test_reduced_cell_energy_and_sro_are_those_of_the_repeated_crystal():
    """In the 2×2×2 cell shells 2–7 reach past half the cell (one site is reached by several shell vectors):
    energy and cluster vector equal pymatgen's periodic pair count on the 32-site cell and those of the
    same configuration repeated into the 4×4×4 cell, where no shell aliases."""
    small, large = cluster_expansion.fcc_lattice(2), cluster_expansion.fcc_lattice(4)
    assert np.abs(cluster_expansion.SHELL_LENGTHS[1:]).min() >= 7.2 / 2 - 1e-6
    site_of = {tuple(np.round(f * 4).astype(int)): k for k, f in enumerate(small.frac)}
    image = np.array([site_of[tuple(np.round(f * 8).astype(int) % 4)] for f in large.frac])
    rng = np.random.default_rng(8)
    with jax.enable_x64(True):
        ce = cluster_expansion.ClusterExpansion.from_eci(dtype=jnp.float64)
        for _ in range(3):
            occupation = random_occupation(rng, cluster_expansion.scaled_composition(32))
            tiled = occupation[image]
            energy = float(cluster_expansion.total_energy(occupation, small, ce)) / 32
            assert abs(energy - pymatgen_energy_per_atom(occupation, repeats=2)) < 1e-10
            assert abs(energy - pymatgen_energy_per_atom(tiled, repeats=4)) < 1e-10
            vectors = [cluster_expansion.cluster_vectors(np.asarray(cluster_expansion.pair_counts(o, lattice)),
                                                         np.bincount(o, minlength=3))
                       for o, lattice in ((occupation, small), (tiled, large))]
            np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-12)
            np.testing.assert_allclose(cluster_expansion.warren_cowley(vectors[0]),
                                       cluster_expansion.warren_cowley(vectors[1]), atol=1e-12)


def test_sweep_is_metropolis_on_full_energy_differences():
    """The sweep, which carries incrementally updated environments, makes exactly the accept/reject
    decisions of a plain Metropolis chain on full-energy differences fed the same random draws."""
    lattice = cluster_expansion.fcc_lattice(2)
    temperature, n_attempts = 800.0, 400
    with jax.enable_x64(True):
        ce = cluster_expansion.ClusterExpansion.from_eci(dtype=jnp.float64)
        sampler = alloy.KawasakiSampler(lattice, ce, (6, 20, 6))
        state = sampler.init(jax.random.PRNGKey(3))
        swept = jax.jit(sampler.sweep, static_argnums=2)(state, temperature, n_attempts)
        _, slot_u, slot_v, log_r = (np.asarray(x) for x in sampler.proposals(state.key, n_attempts))
        energy = jax.jit(lambda o: cluster_expansion.total_energy(o, lattice, ce))
        occupation, slots = np.asarray(state.occupation).copy(), np.asarray(state.slots).copy()
        accepted = 0
        for u, v, log_uniform in zip(slot_u, slot_v, log_r):
            i, j = slots[u], slots[v]
            swapped = occupation.copy()
            swapped[[i, j]] = occupation[[j, i]]
            delta = float(energy(swapped) - energy(occupation))
            if log_uniform < -delta / (alloy.K_BOLTZMANN * temperature):
                occupation, accepted = swapped, accepted + 1
                slots[u], slots[v] = j, i
    assert 0.1 * n_attempts < accepted < 0.9 * n_attempts
    assert int(swept.accepted) == accepted and int(swept.attempted) == n_attempts
    np.testing.assert_array_equal(np.asarray(swept.occupation), occupation)
    np.testing.assert_array_equal(np.asarray(swept.slots), slots)


def test_detailed_balance_against_exact_enumeration():
    """2×2×2 cell (32 sites) with one Cr, one Ni, 30 Fe: sampled energy-level frequencies equal the exact
    Boltzmann weights summed over all 992 states."""
    lattice = cluster_expansion.fcc_lattice(2)
    composition = (1, 30, 1)
    temperature = 500.0
    with jax.enable_x64(True):
        ce = cluster_expansion.ClusterExpansion.from_eci(dtype=jnp.float64)
        states = np.array([(c, n) for c, n in itertools.permutations(range(32), 2)])
        occupations = np.ones((len(states), 32), np.int32)
        occupations[np.arange(len(states)), states[:, 0]] = 0
        occupations[np.arange(len(states)), states[:, 1]] = 2
        total_energy = jax.vmap(lambda o: cluster_expansion.total_energy(o, lattice, ce))
        exact_energy = np.asarray(jax.jit(total_energy)(occupations))
    levels, level_of_state = np.unique(np.round(exact_energy, 8), return_inverse=True)
    weights = np.exp(-(exact_energy - exact_energy.min()) / (alloy.K_BOLTZMANN * temperature))
    exact = np.bincount(level_of_state, weights=weights) / weights.sum()
    assert len(levels) > 3 and exact.max() < 0.9  # a non-trivial distribution

    expansion = cluster_expansion.ClusterExpansion.from_eci(dtype=jnp.float32)
    sampler = alloy.KawasakiSampler(lattice, expansion, composition)
    chains = jax.vmap(sampler.init)(jax.random.split(jax.random.PRNGKey(0), 16))

    def record(state, _):
        state = sampler.sweep(state, temperature, 3)
        return state, state.occupation.astype(jnp.int8)

    sampled = jax.jit(jax.vmap(lambda state: jax.lax.scan(record, state, None, length=6000)[1]))(chains)
    sampled = np.asarray(sampled).reshape(-1, 32)
    state_index = {tuple(s): k for k, s in enumerate(states)}
    cr, ni = np.argmax(sampled == 0, axis=1), np.argmax(sampled == 2, axis=1)
    observed_levels = level_of_state[[state_index[(c, n)] for c, n in zip(cr, ni)]]
    observed = np.bincount(observed_levels, minlength=len(levels)) / len(observed_levels)
    # successive samples (3 attempts apart) are correlated; with this tolerance a sampler running 10 %
    # too hot or too cold already fails
    n_effective = len(observed_levels) / 3
    tolerance = 4 * np.sqrt(exact * (1 - exact) / n_effective)
    assert np.all(np.abs(observed - exact) < tolerance), (observed, exact)


TINY = alloy.AlloyProtocol(chains=2, passes=100, snapshot_every=1, n_structures=10, segments=2)


def test_narrow_mask_rule():
    sro = np.zeros((4, 12))
    sro[1, 3] = 0.4  # far from the mean
    sro[2, 0] = -0.05
    assert alloy.narrow_mask(sro, 0.1).tolist() == [True, False, True, True]  # pool mean (0.1 in column 3)
    shifted = np.zeros(12)
    shifted[0] = 0.08
    assert alloy.narrow_mask(sro, 0.1, shifted).tolist() == [True, False, False, True]


def test_narrow_and_wide_selection_at_1500K():
    wide = alloy.generate_alloy_dataset(1500.0, "wide", TINY, seed=3)
    narrow = alloy.generate_alloy_dataset(1500.0, "narrow", TINY, seed=3)
    assert narrow["sro_filter_mean"] is not None and wide["sro_filter_mean"] is None
    assert np.all(np.abs(narrow["sro"] - narrow["sro_filter_mean"]) <= 0.1)
    # the wide draw is unfiltered: at 1500 K most structures break the ±0.1 rule somewhere
    pool_mean = narrow["sro_filter_mean"]
    assert not np.all(alloy.narrow_mask(wide["sro"], 0.1, pool_mean))
    # narrow excludes the wide draw (same chains, same seed)
    wide_ids = set(zip(wide["chain"].tolist(), wide["mc_pass"].tolist()))
    assert not wide_ids & set(zip(narrow["chain"].tolist(), narrow["mc_pass"].tolist()))
    # energies and SRO recomputed from the written occupations agree with the stored ones
    lattice = cluster_expansion.fcc_lattice()
    counts = np.asarray(jax.jit(jax.vmap(lambda o: cluster_expansion.pair_counts(o, lattice)))(narrow["occupations"]))
    np.testing.assert_array_equal(counts, narrow["counts"])
    assert np.all(np.bincount(narrow["occupations"][0], minlength=3) == cluster_expansion.COMPOSITION)


def test_written_dataset_is_reproducible(tmp_path):
    for run in ("a", "b"):
        alloy.write_alloy_dataset("alloy_1500K_wide", 1500.0, "wide", "small", 5, tmp_path / run, protocol=TINY)
    for name in ("train.extxyz", "val.extxyz", "params.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, info = read_extxyz(tmp_path / "a" / "train.extxyz", with_info=True)
    val = read_extxyz(tmp_path / "a" / "val.extxyz")
    assert (len(train), len(val)) == (8, 2)
    np.testing.assert_allclose(np.asarray(train.lattice[0]), np.eye(3) * 14.4)
    # species blocks Cr, Fe, Ni; sites on the FCC lattice (multiples of 1.8 Å)
    assert np.asarray(train.species[0]).tolist() == [24] * 51 + [26] * 154 + [28] * 51
    cart = np.asarray(train.cart)
    np.testing.assert_allclose(cart / 1.8, np.round(cart / 1.8), atol=1e-6)
    params = json.loads((tmp_path / "a" / "params.json").read_text())
    assert params["n_train"] == 8 and len(params["structures"]) == 10
    # the stored formation energy equals the independent pymatgen count for a written structure
    species = np.asarray(train.species[0])
    sites = np.round(np.asarray(train.frac[0]) * 8).astype(int)
    lattice = cluster_expansion.fcc_lattice()
    site_of = {tuple(np.round(f * 8).astype(int)): k for k, f in enumerate(lattice.frac)}
    occupation = np.zeros(256, np.int32)
    for z, site in zip(species, sites):
        occupation[site_of[tuple(site % 8)]] = cluster_expansion.ATOMIC_NUMBERS.index(int(z))
    assert abs(pymatgen_energy_per_atom(occupation) - info[0]["formation_energy"]) < 1e-10


def test_reduced_cell_dataset_is_registered_and_written(tmp_path, monkeypatch):
    from dismax.data import registry

    monkeypatch.setitem(alloy.PROTOCOLS, "small", TINY)
    assert {"alloy_2x2x2_300K_wide", "alloy_2x2x2_1500K_wide"} <= set(registry.available())
    out = registry.build_dataset("alloy_2x2x2_1500K_wide", "small", seed=1, out_dir=tmp_path / "d")
    train, info = read_extxyz(out / "train.extxyz", with_info=True)
    assert len(train) == 8 and len(read_extxyz(out / "val.extxyz")) == 2
    np.testing.assert_allclose(np.asarray(train.lattice[0]), np.eye(3) * 7.2)
    assert np.asarray(train.species[0]).tolist() == [24] * 6 + [26] * 20 + [28] * 6
    cart = np.asarray(train.cart)
    np.testing.assert_allclose(cart / 1.8, np.round(cart / 1.8), atol=1e-6)
    params = json.loads((out / "params.json").read_text())
    assert params["repeats"] == 2 and params["composition"] == {"Cr": 6, "Fe": 20, "Ni": 6}
    assert params["attempts_per_pass"] == 32
    # every structure sits on 32 distinct sites and its stored energy is pymatgen's pair count
    lattice = cluster_expansion.fcc_lattice(2)
    site_of = {tuple(np.round(f * 4).astype(int)): k for k, f in enumerate(lattice.frac)}
    for frame in (0, 5):
        occupation = np.full(32, -1)
        for z, site in zip(np.asarray(train.species[frame]), np.round(np.asarray(train.frac[frame]) * 4).astype(int)):
            occupation[site_of[tuple(site % 4)]] = cluster_expansion.ATOMIC_NUMBERS.index(int(z))
        assert occupation.min() == 0
        assert abs(pymatgen_energy_per_atom(occupation, repeats=2) - info[frame]["formation_energy"]) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [300.0, 1500.0])
def test_equilibrium_ordering(temperature):
    """300 K: no 1NN Cr–Cr pairs, strong 1NN Ni–Cr ordering; 1500 K: all |α| small."""
    protocol = alloy.AlloyProtocol(chains=4, passes=2000, snapshot_every=10, n_structures=100)
    data = alloy.generate_alloy_dataset(temperature, "wide", protocol, seed=0)
    mean = dict(zip(cluster_expansion.SRO_LABELS, data["sro"].mean(axis=0)))
    if temperature == 300.0:
        assert mean["1NN_Cr-Cr"] > 0.95
        assert mean["1NN_Cr-Ni"] < -0.3
        assert data["energy_per_atom"].mean() < -0.09
    else:
        assert all(abs(mean[f"1NN_{p}"]) < 0.15 for p in ("Fe-Ni", "Cr-Fe", "Cr-Ni", "Fe-Fe", "Cr-Cr", "Ni-Ni"))
        assert max(abs(v) for v in mean.values()) < 0.3


@pytest.mark.slow
def test_energies_match_an_icet_cluster_expansion_fit():
    """icet's cluster space (pair cutoff 6.8 Å) spans the pair-count basis: a least-squares fit to dismax
    energies of random configurations reproduces held-out random and ordered configurations exactly."""
    pytest.importorskip("icet")
    from ase import Atoms
    from icet import ClusterSpace

    lattice = cluster_expansion.fcc_lattice()
    template = Atoms("Fe" * lattice.n_sites, scaled_positions=lattice.frac, cell=lattice.lattice, pbc=True)
    primitive = Atoms("Fe", cell=[[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]], pbc=True)
    space = ClusterSpace(primitive, cutoffs=[6.8], chemical_symbols=list(cluster_expansion.SPECIES))
    assert len(space) == 24
    rng = np.random.default_rng(4)
    # varied compositions, so that the point terms are determined as well
    fit = [random_occupation(rng, rng.multinomial(lattice.n_sites, rng.dirichlet(np.ones(3)))) for _ in range(60)]
    held_out = [random_occupation(rng) for _ in range(5)] + list(ordered_occupations().values())

    def icet_vector(occupation):
        atoms = template.copy()
        atoms.set_chemical_symbols([cluster_expansion.SPECIES[s] for s in occupation])
        return space.get_cluster_vector(atoms)

    pair_counts = jax.jit(lambda o: cluster_expansion.pair_counts(o, lattice))

    def dismax_energy(occupation):
        counts = np.asarray(pair_counts(occupation))
        vector = cluster_expansion.cluster_vectors(counts, np.bincount(occupation, minlength=3))
        return float(cluster_expansion.energy_per_atom(vector))

    parameters, *_ = np.linalg.lstsq(np.stack([icet_vector(o) for o in fit]),
                                     np.array([dismax_energy(o) for o in fit]), rcond=None)
    for occupation in held_out:
        assert abs(icet_vector(occupation) @ parameters - dismax_energy(occupation)) < 1e-10
