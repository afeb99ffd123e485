import numpy as np
import pytest
import spglib

from dismax.vae import wyckoff

TWO_ORIGIN_GROUPS = [48, 50, 59, 68, 70, 85, 86, 88, 125, 126, 129, 130, 133, 134, 137, 138, 141, 142, 201,
                     203, 222, 224, 227, 228]


def test_table_size_and_limits():
    positions = [p for g in range(1, 231) for p in wyckoff.wyckoff_positions(g)]
    assert len(positions) == 1731
    assert max(p.multiplicity for p in positions) == 192
    assert max(len(wyckoff.wyckoff_positions(g)) for g in range(1, 231)) == 27
    assert [p.letter for p in wyckoff.wyckoff_positions(166)] == list("abcdefghi")


def test_every_orbit_expands_to_its_multiplicity():
    generic = np.array([0.1234, 0.2345, 0.3456])
    for group in range(1, 231):
        for position in wyckoff.wyckoff_positions(group):
            point = position.rotations[0] @ generic + position.translations[0]
            assert len(wyckoff.expand_orbit(point, group)) == position.multiplicity, (group, position.letter)


def test_parse_operation():
    rotation, translation = wyckoff.parse_xyz_operation("-x+y,1/2+z,x-1/4")
    np.testing.assert_allclose(rotation, [[-1, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(translation, [0, 0.5, -0.25])


def test_projection_onto_6c_of_r3m():
    # the spec's example where pyxtal's search_closest_wp fails: 6c (0, 0, z) in R-3m
    position = wyckoff.find_position(166, "c")
    lattice = np.diag([2.86, 2.86, 14.2])
    np.testing.assert_allclose(wyckoff.project_onto_position([0.01, -0.02, 0.26], position, lattice),
                               [0, 0, 0.26], atol=1e-9)
    # a point near another orbit member (0, 0, -z) projects onto that member, not a far one
    projected = wyckoff.project_onto_position([0.005, 0.0, 0.741], position, lattice)
    np.testing.assert_allclose(projected, [0, 0, 0.741], atol=1e-9)


@pytest.mark.parametrize("group", TWO_ORIGIN_GROUPS)
def test_hall_numbers_choose_origin_two(group):
    kind = spglib.get_spacegroup_type(wyckoff.hall_number(group))
    assert kind.number == group and kind.choice == "2"


def test_rhombohedral_groups_use_hexagonal_axes():
    for group in (146, 148, 155, 160, 161, 166, 167):
        assert spglib.get_spacegroup_type(wyckoff.hall_number(group)).choice == "H"


def test_table_general_positions_match_spglib_operations():
    # the table's general position in each setting equals spglib's symmetry operations for that Hall number
    for group in (14, 62, 141, 166, 227, 230):
        ops = spglib.get_symmetry_from_database(wyckoff.hall_number(group))
        general = wyckoff.general_position(group)
        table = {(tuple(r.astype(int).ravel()), tuple(np.round(np.mod(t, 1), 6)))
                 for r, t in zip(general.rotations, general.translations)}
        ours = {(tuple(r.ravel()), tuple(np.round(np.mod(t, 1), 6)))
                for r, t in zip(ops["rotations"], ops["translations"])}
        assert table == ours, group
