import csv
import zipfile

import numpy as np
import pytest
import spglib
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Species, Structure

from dismax.vae import representation as rep
from dismax.vae import wyckoff
from dismax.vae.ingest import IngestOptions, Rejected, analyse_cif_text, analyse_structure, ingest_cifs
from dismax.vae.structure import gene_to_cif, gene_to_structure, read_cif_text, symmetry_matches

from tests.vae.vae_fixtures import ALL, nmc_structure, perovskite_structure, to_cif

TIGHT = StructureMatcher(primitive_cell=False, ltol=1e-3, stol=1e-3, angle_tol=0.05, scale=False)


def occupancy_multiset(structure):
    return sorted(tuple(sorted((el.symbol, round(v, 3)) for el, v in site.species.items())) for site in structure)


@pytest.mark.parametrize("name", list(ALL))
def test_wyckoff_sites_agree_with_spglib(name):
    structure = ALL[name]()
    gene = analyse_cif_text(to_cif(structure))
    # independent reference: spglib on the input, atoms typed by their occupancy dictionary; letters in the
    # table's setting (origin choice 2 may legitimately relabel e.g. 4a <-> 4b), multiplicities in any setting
    kinds = {}
    types = [kinds.setdefault(tuple(sorted(s.species.as_dict().items())), len(kinds)) for s in structure]
    cell = (structure.lattice.matrix, structure.frac_coords, types)
    default = spglib.get_symmetry_dataset(cell, symprec=0.01)
    same_setting = spglib.get_symmetry_dataset(cell, symprec=0.01, hall_number=wyckoff.hall_number(default.number))
    assert gene.spacegroup == default.number

    def orbits(dataset):
        return sorted((int(np.sum(dataset.equivalent_atoms == i)), dataset.wyckoffs[i])
                      for i in set(dataset.equivalent_atoms))

    assert sorted((s.multiplicity, s.letter) for s in gene.sites) == orbits(same_setting)
    assert sorted(s.multiplicity for s in gene.sites) == sorted(m for m, _ in orbits(default))


@pytest.mark.parametrize("name", list(ALL))
def test_round_trip_through_arrays_and_cif(name):
    structure = ALL[name]()
    gene = analyse_cif_text(to_cif(structure))
    arrays = rep.encode_genes([gene])
    assert arrays.sites.shape == (1, 9, 183)
    decoded = rep.decode_arrays(arrays.sites[0], arrays.lattice[0], int(arrays.spacegroup[0]),
                                element_acc=1e-6, lattice_decimals=6)
    assert symmetry_matches(decoded)
    rebuilt = gene_to_structure(decoded)
    assert len(rebuilt) == len(structure)
    assert occupancy_multiset(rebuilt) == occupancy_multiset(structure)
    assert TIGHT.fit(structure, rebuilt)
    parsed = read_cif_text(gene_to_cif(decoded))
    assert parsed is not None and len(parsed) == len(structure)
    assert occupancy_multiset(parsed) == occupancy_multiset(structure)
    assert TIGHT.fit(structure, parsed)


def test_nmc_encoding_columns():
    gene = analyse_structure(nmc_structure())
    arrays = rep.encode_genes([gene])
    by_letter = {site.letter: arrays.sites[0, j] for j, site in enumerate(gene.sites)}
    mixed = by_letter["b"]
    assert mixed[26] == pytest.approx(0.334) and mixed[24] == pytest.approx(0.333)  # Co (Z 27), Mn (Z 25)
    assert mixed[27] == pytest.approx(0.333) and mixed[rep.VACANCY_INDEX] == 0  # Ni (Z 28)
    assert mixed[rep.DISORDER] == 1 and mixed[rep.MULTIPLICITY.start + 3] == 1
    assert mixed[rep.LETTER.start + 2] == 1
    assert by_letter["a"][rep.DISORDER] == 0 and by_letter["a"][2] == 1  # Li, Z = 3
    assert arrays.site_mask[0].sum() == 3
    np.testing.assert_array_equal(arrays.sites[0, 3], rep.padding_row())
    c = rep.crystal_vector(np.zeros((1, 6)), arrays.spacegroup)
    assert c.shape == (1, 236) and c[0, 6 + 165] == 1


def test_vacancy_site_is_disordered():
    gene = analyse_structure(ALL["spinel"]())
    lithium = next(s for s in gene.sites if dict(s.occupancy).get("Li"))
    assert lithium.disordered and lithium.vacancy == pytest.approx(0.42)
    assert rep.encode_site(lithium)[rep.VACANCY_INDEX] == pytest.approx(0.42)


def _reason(structure, options=IngestOptions(), declared=None):
    with pytest.raises(Rejected) as info:
        analyse_structure(structure, options, declared)
    return str(info.value)


def test_filters_give_reasons():
    assert "P1" in _reason(Structure(Lattice.from_parameters(3, 4, 5, 80, 85, 95), ["Na", "Cl"],
                                     [[0, 0, 0], [0.31, 0.22, 0.43]]))
    mixed_valence = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.2), [{Species("Fe", 2): 0.5, Species("Fe", 3): 0.5}, Species("O", -2)],
        [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert "charge disorder" in _reason(mixed_valence)
    heavy = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.0), ["Md", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert "Z > 100" in _reason(heavy)
    assert "declared" in _reason(perovskite_structure(), declared=225)
    general = Structure.from_spacegroup("Pm-3m", Lattice.cubic(8.0), ["Na", "Cl"],
                                        [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    assert "multiplicity 48 > 24" in _reason(general, IngestOptions(max_multiplicity=24))
    corners = [[x, y, z] for x in (0, 0.5) for y in (0, 0.5) for z in (0, 0.5)]
    many = Structure.from_spacegroup("Pmmm", Lattice.orthorhombic(4, 5, 6),
                                     ["Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Cl", "Br"],
                                     corners + [[0.25, 0, 0], [0, 0.25, 0]])
    assert "Wyckoff sites > 9" in _reason(many)
    assert "disordered" in _reason(nmc_structure(), IngestOptions(max_disordered_sites=0))
    split = Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.0), [{"Na": 0.5}, "Cl"],
                                      [[0.1, 0, 0], [0.5, 0.5, 0.5]])
    assert "split-site" in _reason(split)


def test_folder_and_zip_ingestion_with_report_and_cache(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for name, build in ALL.items():
        (folder / f"{name}.cif").write_text(to_cif(build()))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    report = tmp_path / "rejected.csv"
    result = ingest_cifs(folder, workers=1, cache_dir=tmp_path / "cache", report_path=report)
    assert sorted(result.names) == sorted(f"{n}.cif" for n in ALL)
    rows = list(csv.DictReader(report.open()))
    assert [r["file"] for r in rows] == ["broken.cif"] and rows[0]["reason"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(ALL) + 1
    archive = tmp_path / "cifs.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in folder.glob("*.cif"):
            handle.write(path, path.name)
    again = ingest_cifs(archive, workers=1, cache_dir=tmp_path / "cache")
    assert [g.to_dict() for g in again.genes] == [g.to_dict() for g in result.genes]


@pytest.mark.slow
def test_parallel_ingestion_matches_serial(tmp_path):
    for name, build in ALL.items():
        (tmp_path / f"{name}.cif").write_text(to_cif(build()))
    serial = ingest_cifs(tmp_path, workers=1)
    parallel = ingest_cifs(tmp_path, workers=2)
    assert [g.to_dict() for g in parallel.genes] == [g.to_dict() for g in serial.genes]
