"""dismax.structures: the Crystals pytree, ASE/pymatgen conversion and species blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import Lattice, Structure

from dismax.errors import DismaxInputError
from dismax.structures import (Crystals, SpeciesBlocks, leading_atoms, sort_into_blocks, species_blocks,
                               unsort_blocks)


def random_atoms(rng, symbols="Li3CoO2", outside: bool = False) -> Atoms:
    cell = np.diag(rng.uniform(4, 7, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
    n = len(Atoms(symbols))
    frac = rng.uniform(-1.5, 2.5, (n, 3)) if outside else rng.random((n, 3))
    return Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)


def periodic_distance(frac_a, frac_b, lattice) -> np.ndarray:
    """(N,) minimum-image distance in Å between two fractional coordinate sets (N, 3)."""
    d = np.asarray(frac_a, float) - np.asarray(frac_b, float)
    d -= np.round(d)
    return np.linalg.norm(d @ np.asarray(lattice, float), axis=1)


# ---------------------------------------------------------------------- pytree
def test_crystals_is_a_pytree_usable_under_jit():
    rng = np.random.default_rng(0)
    crystals = Crystals.from_ase([random_atoms(rng) for _ in range(3)])
    leaves, treedef = jax.tree_util.tree_flatten(crystals)
    assert len(leaves) == 3
    assert jax.tree_util.tree_unflatten(treedef, leaves).frac is leaves[0]

    @jax.jit
    def shift(c: Crystals) -> Crystals:
        return Crystals(jnp.mod(c.frac + 0.25, 1.0), c.lattice, c.species)

    moved = shift(crystals)
    assert isinstance(moved, Crystals)
    np.testing.assert_allclose(np.asarray(moved.frac), (np.asarray(crystals.frac) + 0.25) % 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(moved.species), np.asarray(crystals.species))
    per_structure = jax.vmap(lambda frac, lattice: frac @ lattice)(crystals.frac, crystals.lattice)
    np.testing.assert_allclose(np.asarray(per_structure), np.asarray(crystals.cart), atol=1e-5)


def test_indexing_and_concatenate():
    rng = np.random.default_rng(1)
    crystals = Crystals.from_ase([random_atoms(rng) for _ in range(4)])
    frac = np.asarray(crystals.frac)
    assert crystals[2].batch_size == 1
    np.testing.assert_array_equal(np.asarray(crystals[2].frac), frac[2:3])
    np.testing.assert_array_equal(np.asarray(crystals[-1].frac), frac[3:4])
    np.testing.assert_array_equal(np.asarray(crystals[-2].frac), frac[2:3])
    assert len(crystals[1:3]) == 2
    joined = Crystals.concatenate([crystals[:1], crystals[1:]])
    np.testing.assert_array_equal(np.asarray(joined.frac), frac)
    other = Crystals.from_ase([random_atoms(rng, "Si2")])
    with pytest.raises(DismaxInputError, match="different atom counts"):
        Crystals.concatenate([crystals, other])
    with pytest.raises(DismaxInputError, match="empty"):
        Crystals.concatenate([])


# ---------------------------------------------------------------------- conversion
def test_ase_round_trip_preserves_species_cell_positions():
    rng = np.random.default_rng(2)
    originals = [random_atoms(rng) for _ in range(3)]
    back = Crystals.from_ase(originals).to_ase()
    for before, after in zip(originals, back):
        assert after.get_chemical_symbols() == before.get_chemical_symbols()
        np.testing.assert_array_equal(after.cell.array, before.cell.array)
        np.testing.assert_allclose(after.positions, before.positions, atol=1e-6)
        assert after.pbc.all()


def test_positions_outside_the_cell_are_wrapped_into_unit_interval():
    rng = np.random.default_rng(3)
    originals = [random_atoms(rng, outside=True) for _ in range(3)]
    crystals = Crystals.from_ase(originals)
    frac = np.asarray(crystals.frac)
    assert frac.min() >= 0.0 and frac.max() < 1.0
    for b, atoms in enumerate(originals):
        assert periodic_distance(frac[b], atoms.get_scaled_positions(wrap=False), atoms.cell.array).max() < 1e-6


def test_round_off_negative_fractions_wrap_to_zero():
    # the Dismai-Bench cells carry ~1e-15 off-diagonal round-off, so an atom at x = 0 has frac_x ~ -1e-17
    cell = np.array([[14.4, 0.0, 8.8e-16], [2.3e-15, 14.4, 8.8e-16], [0.0, 0.0, 14.4]])
    atoms = Atoms("Cr2", positions=[[0.0, 5.4, 1.8], [0.0, 0.0, 12.6]], cell=cell, pbc=True)
    assert atoms.get_scaled_positions(wrap=False)[0, 0] < 0
    crystals = Crystals.from_ase(atoms)
    np.testing.assert_allclose(np.asarray(crystals.frac)[0, :, 0], 0.0, atol=1e-15)


def test_pymatgen_round_trip_preserves_species_cell_positions():
    rng = np.random.default_rng(4)
    originals = [
        Structure(Lattice.from_parameters(5.2, 6.1, 7.3, 71, 95, 118), ["Li"] * 3 + ["Sc", "Cl", "Cl"],
                  rng.random((6, 3)))
        for _ in range(2)
    ]
    back = Crystals.from_pymatgen(originals).to_pymatgen()
    for before, after in zip(originals, back):
        assert [s.symbol for s in after.species] == [s.symbol for s in before.species]
        np.testing.assert_array_equal(after.lattice.matrix, before.lattice.matrix)
        np.testing.assert_allclose(after.cart_coords, before.cart_coords, atol=1e-6)


def test_ase_and_pymatgen_agree():
    rng = np.random.default_rng(5)
    atoms = random_atoms(rng)
    from_pymatgen = Crystals.from_pymatgen(Crystals.from_ase(atoms).to_pymatgen())
    np.testing.assert_allclose(np.asarray(from_pymatgen.frac)[0], atoms.get_scaled_positions(), atol=1e-12)
    np.testing.assert_array_equal(np.asarray(from_pymatgen.species)[0], atoms.numbers)


def test_conversion_errors():
    rng = np.random.default_rng(6)
    with pytest.raises(DismaxInputError, match="different atom counts"):
        Crystals.from_ase([random_atoms(rng, "Si2"), random_atoms(rng, "Si3")])
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(DismaxInputError, match="structure 1 has partial occupancies"):
        Crystals.from_pymatgen([Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]), disordered])
    with pytest.raises(DismaxInputError, match="no structures"):
        Crystals.from_ase([])


# ---------------------------------------------------------------------- species blocks
def shuffled_batch(seed: int, batch: int = 4) -> Crystals:
    """A fixed composition Cr3Fe2Ni4 with each structure's atoms in a different random order."""
    rng = np.random.default_rng(seed)
    base = np.array([26, 24, 28, 28, 24, 26, 28, 24, 28], np.int32)
    species = np.stack([base] + [rng.permutation(base) for _ in range(batch - 1)])
    return Crystals(rng.random((batch, 9, 3)), np.tile(np.eye(3) * 5.0, (batch, 1, 1)), species)


def test_species_blocks_order_and_counts():
    crystals = shuffled_batch(7)
    blocks = species_blocks(crystals)
    assert blocks.elements == (26, 24, 28)  # first appearance in structure 0
    assert blocks.counts == (2, 3, 4)
    assert blocks.starts == (0, 2, 5)
    assert blocks.n_atoms == 9
    assert blocks.species.tolist() == [26, 26, 24, 24, 24, 28, 28, 28, 28]
    assert blocks.block_index.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    custom = species_blocks(crystals, element_order=[24, 26, 28])
    assert custom == SpeciesBlocks((24, 26, 28), (3, 2, 4))


def test_species_blocks_errors():
    crystals = shuffled_batch(8)
    with pytest.raises(DismaxInputError, match=r"misses elements \[28\]"):
        species_blocks(crystals, element_order=[24, 26])
    species = np.asarray(crystals.species).copy()
    species[2, species[2] == 28] = 24  # structure 2 loses its Ni
    changed = Crystals(crystals.frac, crystals.lattice, species)
    with pytest.raises(DismaxInputError, match="structure 2 has composition .*fixed composition is required"):
        species_blocks(changed)


def test_leading_atoms_are_the_first_of_each_element_in_any_order():
    species = np.array([[8, 3, 3, 8, 17, 3, 8],
                        [3, 8, 8, 3, 3, 17, 8]])
    chosen = leading_atoms(species, {3: 2, 8: 1})
    assert chosen.tolist() == [[True, True, True, False, False, False, False],
                               [True, True, False, True, False, False, False]]
    assert leading_atoms(species[0], {17: 1}).tolist() == [False] * 4 + [True] + [False] * 2
    assert not leading_atoms(species, {}).any()
    with pytest.raises(DismaxInputError, match="first 2 atoms of element 17 but a structure has 1"):
        leading_atoms(species, {17: 2})


def test_sort_into_blocks_and_unsort_round_trip():
    crystals = shuffled_batch(9)
    blocks = species_blocks(crystals, element_order=[28, 24, 26])
    sorted_crystals, perm = sort_into_blocks(crystals, blocks)
    frac, species = np.asarray(crystals.frac), np.asarray(crystals.species)
    for b in range(crystals.batch_size):
        np.testing.assert_array_equal(np.asarray(sorted_crystals.species[b]), blocks.species)
        np.testing.assert_array_equal(np.asarray(sorted_crystals.frac[b]), frac[b, perm[b]])
        for element in blocks.elements:  # stable: original order kept within each element
            original_indices = perm[b][blocks.species == element]
            assert np.all(np.diff(original_indices) > 0)
            assert np.all(species[b, original_indices] == element)
    restored = unsort_blocks(sorted_crystals, perm)
    np.testing.assert_array_equal(np.asarray(restored.frac), frac)
    np.testing.assert_array_equal(np.asarray(restored.species), species)
    np.testing.assert_array_equal(np.asarray(restored.lattice), np.asarray(crystals.lattice))


def test_structure_set_groups_by_atom_count_and_keeps_order():
    from dismax.structures import StructureSet

    rng = np.random.default_rng(0)
    sizes = [4, 6, 4, 5, 6]
    parts = [Crystals(rng.random((1, n, 3)), np.eye(3)[None] * (3 + k), np.full((1, n), 14, np.int32))
             for k, n in enumerate(sizes)]
    structures = StructureSet.from_structures(parts)
    assert len(structures) == 5 and len(structures.groups) == 3
    assert structures.atom_counts.tolist() == sizes
    for part, got in zip(parts, structures):
        np.testing.assert_array_equal(got.frac, part.frac)
        np.testing.assert_array_equal(got.lattice, part.lattice)
    np.testing.assert_array_equal(structures[-1].frac, parts[-1].frac)
    assert structures.select([3, 0]).atom_counts.tolist() == [5, 4]
    with pytest.raises(DismaxInputError, match="different atom counts"):
        structures.as_crystals()
    same = StructureSet.from_structures([parts[2], parts[0]]).as_crystals()
    np.testing.assert_array_equal(same.lattice, np.stack([parts[2].lattice[0], parts[0].lattice[0]]))
