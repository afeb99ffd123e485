"""Space-group-respecting decoding: lattice constraints, orbit collapse, overlap merging and rejection."""

import numpy as np
import pytest
from pymatgen.core import Lattice

from dismax.vae import representation as rep
from dismax.vae import wyckoff
from dismax.vae.genes import WyckoffGene, WyckoffSite
from dismax.vae.structure import Rejection, placed_sites, realise_gene

SKEWED = (5.1, 5.3, 6.0, 90.4, 101.0, 87.6)


@pytest.mark.parametrize("group, expected", [
    (2, SKEWED),
    (15, (5.1, 5.3, 6.0, 90, 101.0, 90)),
    (62, (5.1, 5.3, 6.0, 90, 90, 90)),
    (139, (5.2, 5.2, 6.0, 90, 90, 90)),
    (166, (5.2, 5.2, 6.0, 90, 90, 120)),
    (194, (5.2, 5.2, 6.0, 90, 90, 120)),
    (225, (5.4667, 5.4667, 5.4667, 90, 90, 90)),
])
def test_lattice_is_projected_onto_the_crystal_system(group, expected):
    assert wyckoff.constrain_lattice(group, SKEWED) == pytest.approx(expected, abs=1e-4)


def test_decoded_gene_has_the_crystal_system_lattice_and_occupancy_at_most_one():
    # the example: C2/c decoded with alpha = 90.2, gamma = 87.6; a disordered site whose probabilities
    # round to more than 1
    element = np.full((9, 101), 0.0)
    element[:, 100] = 1.0
    element[0, :] = 0.0
    element[0, [2, 10, 18]] = [0.3336, 0.3336, 0.3328]  # Li, Na, K: rounds to 0.334 + 0.334 + 0.333
    letters, multiplicities = np.zeros((9, 27)), np.zeros((9, 51))
    letters[:, 0] = multiplicities[:, 0] = 1
    letters[0] = 0
    letters[0, 5] = 1  # 'e'
    multiplicities[0] = 0
    multiplicities[0, 4] = 1
    gene = rep.decode_gene(element, letters, multiplicities, np.array([0.9] + [0] * 8), np.full((9, 3), 0.2),
                           np.array([9.71, 8.8, 5.3, 90.2, 105.1, 87.6]), 15)
    assert gene.lattice[3] == 90 and gene.lattice[5] == 90 and gene.lattice[4] == pytest.approx(105.1)
    assert sum(v for _, v in gene.sites[0].occupancy) <= 1.0


def _gene(sites, group=221, lattice=(4.0, 4.0, 4.0, 90, 90, 90)):
    return WyckoffGene(group, lattice, tuple(WyckoffSite(*site) for site in sites))


def test_coincident_orbits_of_one_position_merge_when_their_occupancy_fits():
    gene = _gene([("a", 1, (("La", 0.6),), (0, 0, 0)), ("a", 1, (("Sr", 0.4),), (0, 0, 0)),
                  ("d", 3, (("O", 1.0),), (0.5, 0, 0))])
    sites = placed_sites(gene)
    assert [(letter, occupancy) for letter, _, occupancy, _ in sites] == [("a", {"La": 0.6, "Sr": 0.4}),
                                                                          ("d", {"O": 1.0})]
    text, structure = realise_gene(gene)
    assert len(structure) == 4 and structure[0].species.num_atoms == pytest.approx(1.0)


@pytest.mark.parametrize("sites, reason", [
    ([("a", 1, (("La", 0.7),), (0, 0, 0)), ("a", 1, (("Sr", 0.4),), (0, 0, 0))], "combined occupancy 1.100"),
    # 1a at the origin and 6e (x, 0, 0) with x = 0.05: 0.2 Å apart
    ([("a", 1, (("La", 1.0),), (0, 0, 0)), ("e", 6, (("O", 1.0),), (0.05, 0, 0))], "closer than 0.5"),
])
def test_overlapping_orbits_are_rejected_with_a_reason(sites, reason):
    with pytest.raises(Rejection, match=reason) as rejected:
        realise_gene(_gene(sites))
    assert rejected.value.stage == "overlap"


def test_a_free_parameter_on_a_special_value_is_rejected_as_collapsed():
    # 6e (x, 0, 0) with x = 0 is the 1a position: one copy instead of six
    with pytest.raises(Rejection, match="special position") as rejected:
        realise_gene(_gene([("e", 6, (("O", 1.0),), (0.0, 0, 0))]))
    assert rejected.value.stage == "collapse"


def test_a_structure_with_higher_symmetry_than_declared_is_rejected():
    # P4/mmm (123) sites that happen to form a cubic (Pm-3m) arrangement when a = c
    gene = _gene([("a", 1, (("Cs", 1.0),), (0, 0, 0)), ("d", 1, (("Cl", 1.0),), (0.5, 0.5, 0.5))], group=123)
    with pytest.raises(Rejection, match="finds group 221") as rejected:
        realise_gene(gene)
    assert rejected.value.stage == "symmetry"
    tetragonal = WyckoffGene(123, (4.0, 4.0, 4.6, 90, 90, 90), gene.sites)
    assert realise_gene(tetragonal)[1].lattice.abc == pytest.approx(Lattice.tetragonal(4.0, 4.6).abc)
