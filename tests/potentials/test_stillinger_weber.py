"""Stillinger-Weber against matscipy's independent implementation and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from dismax.errors import DismaxInputError
from dismax.potentials import amorphous_sw, energies_and_forces, original_sw
from dismax.potentials.stillinger_weber import three_body_sums
from dismax.structures import Crystals


def distorted_silicon(seed=0, noise=0.15, a=5.431):
    """64-atom diamond Si with random displacements in a sheared (triclinic) cell."""
    atoms = bulk("Si", "diamond", a=a, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0.0, noise, atoms.positions.shape)
    shear = np.array([[1.0, 0.05, 0.02], [0.0, 1.0, 0.03], [0.01, 0.0, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    return atoms


def matscipy_calculator(potential):
    pytest.importorskip("matscipy")
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import StillingerWeber
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import Stillinger_Weber_PRB_31_5262_Si

    parameters = dict(Stillinger_Weber_PRB_31_5262_Si)
    parameters["epsilon"] = potential.epsilon  # matscipy rounds ε to 2.1683 eV
    parameters["lambda1"] = potential.lam * potential.three_body_strength
    return Manybody(**StillingerWeber(parameters))


@pytest.mark.parametrize("potential", [original_sw(), amorphous_sw()], ids=["original", "three_body_1.5"])
def test_sw_matches_matscipy(potential):
    atoms_list = [distorted_silicon(seed) for seed in (0, 1)]
    energies, forces = energies_and_forces(potential, Crystals.from_ase(atoms_list))
    for b, atoms in enumerate(atoms_list):
        atoms.calc = matscipy_calculator(potential)
        n = len(atoms)
        assert abs(float(energies[b]) / n - atoms.get_potential_energy() / n) < 1e-5
        np.testing.assert_allclose(np.asarray(forces[b]), atoms.get_forces(), atol=1e-4)


def test_sw_matches_matscipy_with_second_shell_inside_the_cutoff():
    # Compressed to a = 5.0 Å the 12 second neighbours (3.54 Å) are inside the 3.77 Å cutoff: 16 per atom.
    potential = amorphous_sw()
    atoms = distorted_silicon(seed=5, noise=0.1, a=5.0)
    energies, forces = energies_and_forces(potential, Crystals.from_ase(atoms))
    atoms.calc = matscipy_calculator(potential)
    assert abs(float(energies[0]) - atoms.get_potential_energy()) / len(atoms) < 1e-5
    np.testing.assert_allclose(np.asarray(forces[0]), atoms.get_forces(), atol=1e-4)


def explicit_three_body(radial, unit):
    """Σ_{j≠k} g_j g_k (cos θ_jk + 1/3)² per atom by the explicit (N, K, K) table of every ordered pair."""
    cos = jnp.einsum("nja,nka->njk", unit, unit)
    terms = (cos + 1.0 / 3.0) ** 2 * radial[:, :, None] * radial[:, None, :]
    return jnp.sum(jnp.where(jnp.eye(radial.shape[1], dtype=bool), 0.0, terms), axis=(1, 2))


def test_separable_three_body_equals_the_explicit_triplet_sum():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(50, 21, 3))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    radial = rng.uniform(0.0, 0.5, size=(50, 21)) * (rng.random((50, 21)) < 0.7)  # empty slots have g = 0
    single = three_body_sums(jnp.asarray(radial, jnp.float32), jnp.asarray(unit, jnp.float32))
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(single), np.asarray(explicit_three_body(radial, unit)),
                                   rtol=1e-5, atol=1e-5)
        gradients = [jax.grad(lambda g, u: jnp.sum(f(g, u)), argnums=(0, 1))(radial, unit)
                     for f in (three_body_sums, explicit_three_body)]
        for separable, explicit in zip(*gradients):
            np.testing.assert_allclose(np.asarray(separable), np.asarray(explicit), rtol=1e-10, atol=1e-10)


def test_diamond_energy_and_zero_forces():
    crystals = Crystals.from_ase(bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2))
    energies, forces = energies_and_forces(original_sw(), crystals)
    assert float(energies[0]) / 64 == pytest.approx(-4.33652, abs=2e-5)
    assert np.abs(np.asarray(forces)).max() < 1e-4


def test_forces_match_finite_differences():
    atoms = distorted_silicon(seed=3)
    potential = amorphous_sw()
    _, forces32 = energies_and_forces(potential, Crystals.from_ase(atoms))
    with jax.enable_x64(True):
        _, forces = energies_and_forces(potential, Crystals.from_ase(atoms))
        assert forces.dtype == np.float64
        np.testing.assert_allclose(np.asarray(forces32), np.asarray(forces), atol=1e-4)
        check_finite_differences(potential, atoms, np.asarray(forces))


def check_finite_differences(potential, atoms, forces):
    step = 1e-4
    rng = np.random.default_rng(0)
    for atom in rng.choice(len(atoms), 4, replace=False):
        for axis in range(3):
            energy = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[atom, axis] += sign * step
                energy.append(float(potential(Crystals.from_ase(moved))[0]))
            assert forces[0, atom, axis] == pytest.approx(-(energy[0] - energy[1]) / (2 * step), abs=1e-5)


def test_rejects_other_elements_and_small_cells():
    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)
    atoms.numbers[0] = 6
    with pytest.raises(DismaxInputError, match="structure 0 contains element Z=6"):
        original_sw()(Crystals.from_ase(atoms))
    with pytest.raises(DismaxInputError, match="below twice the interaction range"):
        original_sw()(Crystals.from_ase(bulk("Si", "diamond", a=5.431, cubic=True)))
