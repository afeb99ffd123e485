"""The NequIP-class potential: symmetries, forces = −∇E, extensivity, neighbour-table overflow, small cells."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.transform import Rotation

from dismax.errors import DismaxInputError
from dismax.potentials.nequip import (LearnedPotential, NetworkConfig, PotentialNetwork, energy_and_forces_one,
                                      initial_params, neighbour_tables)
from dismax.structures import Crystals

SMALL = NetworkConfig(cutoff=3.5, n_layers=2, hidden_irreps="8x0e+4x1o+4x1e+2x2e", n_radial=6, radial_hidden=16,
                      avg_neighbors=8.0)


def random_potential(species=(3, 8, 27), config=SMALL, seed=0):
    """A potential with random weights and non-trivial reference energies (every test here holds for any
    weights)."""
    network = PotentialNetwork(config, len(species))
    params = initial_params(network, jax.random.PRNGKey(seed))
    shift = -1.0 - 0.5 * np.arange(len(species))
    return LearnedPotential(config, species, params, shift, scale=0.7)


@pytest.fixture(scope="module")
def potential():
    """One potential for the module, so its jitted evaluation compiles once per shape."""
    return random_potential()


def mixed_structure(seed=0, repeat=(2, 2, 2)):
    """A distorted triclinic rocksalt-like cell with three species (Li, O, Co)."""
    atoms = bulk("LiO", "rocksalt", a=4.2, cubic=True) * repeat
    rng = np.random.default_rng(seed)
    numbers = atoms.numbers.copy()
    numbers[rng.choice(len(atoms), 5, replace=False)] = 27
    atoms.numbers = numbers
    atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.04, 0.0], [0.02, 1.0, 0.03], [0.0, 0.01, 1.0]]),
                   scale_atoms=True)
    return Crystals.from_ase([atoms])


def test_rotation_invariant_energy_equivariant_forces(potential):
    c = mixed_structure()
    e, f = potential.energies_and_forces(c)
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = Crystals(c.frac, np.asarray(c.lattice) @ rotation.T, c.species)
    e_rot, f_rot = potential.energies_and_forces(rotated)
    assert abs(e_rot[0] - e[0]) / len(c.frac[0]) < 1e-4
    np.testing.assert_allclose(f_rot, f @ rotation.T, atol=1e-4)
    assert np.abs(f).max() > 1e-2  # the forces are not trivially zero


def test_permutation_and_translation_invariance(potential):
    c = mixed_structure(seed=1)
    e, f = potential.energies_and_forces(c)
    order = np.random.default_rng(0).permutation(c.n_atoms)
    permuted = Crystals(np.asarray(c.frac)[:, order], c.lattice, np.asarray(c.species)[:, order])
    e_perm, f_perm = potential.energies_and_forces(permuted)
    np.testing.assert_allclose(e_perm, e, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(f_perm, f[:, order], atol=1e-4)
    shifted = Crystals((np.asarray(c.frac) + np.array([0.31, -0.17, 0.52])) % 1.0, c.lattice, c.species)
    e_shift, f_shift = potential.energies_and_forces(shifted)
    np.testing.assert_allclose(e_shift, e, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(f_shift, f, atol=1e-4)


@pytest.mark.slow  # float64 compile of the model: ~30 s of CPU
def test_forces_are_finite_differences_of_the_energy(potential):
    c = mixed_structure(seed=2)
    with jax.enable_x64():
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), potential.params)
        tables = neighbour_tables(c, potential.cutoff + 0.3)  # the finite steps stay inside the tables
        frac0, lattice = np.asarray(c.frac[0], np.float64), np.asarray(c.lattice[0], np.float64)
        species, idx, images = (jnp.asarray(a[0]) for a in (c.species, tables.indices, tables.images))

        @jax.jit
        def total_energy(cart):
            frac = cart @ jnp.linalg.inv(lattice)
            dR = (jnp.take(frac, idx, axis=0, mode="clip") + images - frac[:, None]) @ lattice
            return jnp.sum(potential.atomic_energies(params64, dR, idx, species))

        def energy(cart):
            return float(total_energy(jnp.asarray(cart)))

        cart = frac0 @ lattice
        _, forces = energy_and_forces_one(potential, params64, jnp.asarray(frac0), jnp.asarray(lattice), species,
                                          idx, images)
        h = 1e-5
        for atom, axis in [(0, 0), (3, 1), (7, 2), (20, 0)]:
            plus, minus = cart.copy(), cart.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            numeric = -(energy(plus) - energy(minus)) / (2 * h)
            assert abs(numeric - float(forces[atom, axis])) < 1e-5 * max(1.0, abs(numeric))


def test_supercell_doubles_energy_with_the_same_forces(potential):
    c = mixed_structure(seed=3)
    e, f = potential.energies_and_forces(c)
    atoms = c.to_ase()[0]
    double = Crystals.from_ase([atoms * (2, 1, 1)])
    e2, f2 = potential.energies_and_forces(double)
    np.testing.assert_allclose(e2[0], 2 * e[0], rtol=1e-5)
    n = c.n_atoms
    np.testing.assert_allclose(f2[0, :n], f[0], atol=1e-4)
    np.testing.assert_allclose(f2[0, n:], f[0], atol=1e-4)


@pytest.mark.slow  # the image search over 125 offsets compiles slowly
def test_narrow_cell_uses_explicit_images():
    """A primitive cell narrower than 2 × cutoff gives per-atom results equal to its wide supercell."""
    potential = random_potential(species=(14,), config=NetworkConfig(**{**SMALL.__dict__, "cutoff": 4.0}))
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[1] += [0.05, -0.03, 0.02]
    small = Crystals.from_ase([atoms])
    big = Crystals.from_ase([atoms * (2, 2, 2)])
    e_small, f_small = potential.energies_and_forces(small)
    e_big, f_big = potential.energies_and_forces(big)
    np.testing.assert_allclose(e_big[0] / 8, e_small[0], rtol=1e-5)
    np.testing.assert_allclose(f_big[0, :2], f_small[0], atol=1e-4)


def test_table_overflow_grows_the_capacity():
    c = mixed_structure()
    tables = neighbour_tables(c, 3.5, capacity=4)
    frac, lattice = np.asarray(c.frac[0]), np.asarray(c.lattice[0])
    d = frac[None] - frac[:, None]
    d -= np.round(d)
    r = np.linalg.norm(d @ lattice, axis=-1)
    within = ((r < 3.5) & ~np.eye(len(frac), dtype=bool)).sum(axis=1).max()
    assert tables.indices.shape[-1] > within > 4


def test_unseen_element_is_a_clear_error(potential):
    c = mixed_structure()
    species = np.asarray(c.species).copy()
    species[0, 4] = 26
    with pytest.raises(DismaxInputError, match="structure 0 contains element Z=26.*not trained on"):
        potential.energies_and_forces(Crystals(c.frac, c.lattice, species))


def test_ase_calculator_equals_the_jax_path(potential):
    from ase.optimize import FIRE

    from dismax.potentials import Calculator

    c = mixed_structure(seed=4)
    e, f = potential.energies_and_forces(c)
    atoms = c.to_ase()[0]
    atoms.calc = Calculator(potential=potential)
    assert abs(atoms.get_potential_energy() - e[0]) < 1e-6 * max(1.0, abs(e[0]))
    np.testing.assert_allclose(atoms.get_forces(), f[0], atol=1e-6)
    before = atoms.get_potential_energy()
    FIRE(atoms, logfile=None).run(fmax=1e-3, steps=3)
    assert atoms.get_potential_energy() < before


@pytest.mark.slow  # compiles the whole FIRE loop around the network
def test_batched_fire_relaxes_with_the_fitted_potential(potential):
    """The relaxation engine's neighbour tables give the same energy as the potential's own evaluation."""
    from dismax.potentials.fire import relax

    c = Crystals.concatenate([mixed_structure(seed=5), mixed_structure(seed=6)])
    result = relax(c, potential, fmax=1e-3, max_steps=15)
    assert np.all(result.steps > 0)
    assert np.all(result.e_final < result.e_initial)
    e_start, _ = potential.energies_and_forces(c)
    e_end, _ = potential.energies_and_forces(result.crystals)
    np.testing.assert_allclose(result.e_initial, e_start / c.n_atoms, atol=1e-5)
    np.testing.assert_allclose(result.e_final, e_end / c.n_atoms, atol=1e-5)
