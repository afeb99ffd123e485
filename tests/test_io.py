"""dismax.io: validation of bad inputs, Dismai-Bench extxyz compatibility, atomic writes and round trips."""

import os
import stat

import ase.io
import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import Lattice, Structure

from dismax import io as dio
from dismax.errors import DismaxInputError
from dismax.structures import Crystals

# The exact header layout of the original Dismai-Bench extxyz files (e.g. the alloy reference structure):
# full-precision lattice with round-off off-diagonals, species + positions only, pbc="T T T".
DISMAI_LATTICE = (
    'Lattice="7.2 0.0 4.408728476930472e-16 1.1578483077671783e-15 7.2 4.408728476930472e-16 0.0 0.0 7.2"'
)
DISMAI_HEADER = f'{DISMAI_LATTICE} Properties=species:S:1:pos:R:3 pbc="T T T"'
ATOM_LINES = [
    ("Cr", 3.6, 1.8, 1.8),
    ("Cr", 0.0, 5.4, 1.8),
    ("Fe", 0.0, 0.0, 0.0),
    ("Fe", 1.8, 1.8, 3.6),
    ("Ni", 1.8, 0.0, 1.8),
]


def frame(header: str = DISMAI_HEADER, atoms=ATOM_LINES, count: int | None = None) -> str:
    lines = [str(len(atoms) if count is None else count), header]
    lines += [f"{s:<2} {x:16.8f} {y:16.8f} {z:16.8f}" for s, x, y, z in atoms]
    return "\n".join(lines) + "\n"


def cart_error(a: np.ndarray, b: np.ndarray, lattice: np.ndarray) -> float:
    """Largest periodic (minimum-image) distance in Å between fractional coordinate sets a, b (N, 3)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d -= np.round(d)
    return float(np.abs(d @ np.asarray(lattice, float)).max())


def random_crystals(seed: int, batch: int = 3, species=(24, 24, 26, 26, 26, 28)) -> Crystals:
    rng = np.random.default_rng(seed)
    lattice = np.stack([np.diag(rng.uniform(4, 6, 3)) + rng.uniform(-1, 1, (3, 3)) for _ in range(batch)])
    frac = rng.random((batch, len(species), 3))
    return Crystals(frac, lattice, np.tile(np.asarray(species, np.int32), (batch, 1)))


# ---------------------------------------------------------------------- Dismai-Bench format
def test_reads_dismai_bench_header_unchanged(tmp_path):
    path = tmp_path / "gen.extxyz"
    extra = DISMAI_HEADER + " formation_energy=0.0123 energy=-40.5 config_type=relaxed"
    path.write_text(frame() + frame(extra))
    crystals, info = dio.read_extxyz(path, with_info=True)
    assert crystals.batch_size == 2 and crystals.n_atoms == 5
    assert np.asarray(crystals.species)[0].tolist() == [24, 24, 26, 26, 28]
    np.testing.assert_allclose(np.asarray(crystals.lattice[0]), np.eye(3) * 7.2, atol=1e-14)
    cart = np.einsum("ni,ij->nj", np.asarray(crystals.frac[1], float), np.asarray(crystals.lattice[1]))
    np.testing.assert_allclose(cart, np.array([a[1:] for a in ATOM_LINES]), atol=1e-9)
    assert info[0] == {}
    assert info[1]["formation_energy"] == pytest.approx(0.0123)
    assert info[1]["energy"] == pytest.approx(-40.5)
    assert info[1]["config_type"] == "relaxed"
    # ASE itself agrees frame by frame
    for b, atoms in enumerate(ase.io.read(path, index=":")):
        assert cart_error(crystals.frac[b], atoms.get_scaled_positions(), atoms.cell.array) < 1e-9


def test_relaxed_output_with_forces_gives_energy_and_stress_as_info(tmp_path):
    header = (DISMAI_LATTICE + " Properties=species:S:1:pos:R:3:forces:R:3 energy=-20.25 "
              'stress="0.1 0.0 0.0 0.0 0.1 0.0 0.0 0.0 0.1" pbc="T T T"')
    lines = [f"{s} {x} {y} {z} 0.01 -0.02 0.03" for s, x, y, z in ATOM_LINES]
    path = tmp_path / "gen_relaxed.extxyz"
    path.write_text("\n".join([str(len(lines)), header] + lines) + "\n")
    crystals, (info,) = dio.read_extxyz(path, with_info=True)
    assert crystals.n_atoms == 5
    assert info["energy"] == pytest.approx(-20.25)
    assert np.shape(info["stress"]) in ((6,), (3, 3))
    assert "forces" not in info


def test_written_header_matches_dismai_bench_format(tmp_path):
    path = dio.write_extxyz(random_crystals(0, batch=2), tmp_path / "out.extxyz")
    lines = path.read_text().splitlines()
    assert lines[0] == "6"
    assert lines[1].startswith('Lattice="') and lines[1].endswith('Properties=species:S:1:pos:R:3 pbc="T T T"')
    assert len(lines[2].split()) == 4


# ---------------------------------------------------------------------- bad inputs
CIF_OK = """data_test
_cell_length_a 3.6
_cell_length_b 3.6
_cell_length_c 3.6
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _symmetry_equiv_pos_as_xyz
 'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 Cu Cu0 0.0 0.0 0.0 1
 Au Au1 0.5 0.5 0.5 1
"""
SKEWED_LATTICE = 'Lattice="7.2 0 0 0 7.2 0 3.6 3.6 0"'  # third vector lies in the plane of the first two

# (case id, file name, content (None = no file), reader kwargs, structure index or None, words in the message)
BAD_INPUTS = [
    ("missing file", "absent.extxyz", None, {}, None, "file not found"),
    ("empty file", "empty.extxyz", "", {}, None, "empty"),
    ("blank file", "blank.extxyz", "\n  \n", {}, None, "empty"),
    ("truncated atom lines", "trunc.extxyz", frame() + frame()[:-60], {}, 1, "truncated"),
    ("truncated after count", "trunc2.extxyz", frame() + "5\n", {}, 1, "truncated"),
    ("truncated mid-line", "trunc3.extxyz", frame()[:-30], {}, 0, "truncated"),
    ("not extxyz", "words.extxyz", "hello world\nthis is text\n", {}, 0, "unparsable"),
    ("bad number", "nan_text.extxyz", frame().replace("5.40000000", "5.4x"), {}, 0, "unparsable"),
    ("unknown element", "xx.extxyz", frame() + frame().replace("Ni", "Xx"), {}, 1, "unknown chemical symbol"),
    ("malformed lattice", "lat.extxyz", frame('Lattice="1 2 3" Properties=species:S:1:pos:R:3'), {}, 0,
     "unparsable"),
    ("frame without atoms", "zero_atoms.extxyz", frame(atoms=[]), {}, 0, "has no atoms"),
    ("binary", "bin.extxyz", b"\x00\xff\xfe\x81garbage", {}, 0, "unparsable"),
    ("atom counts differ", "counts.extxyz", frame() + frame(atoms=ATOM_LINES[:4]), {"fixed_composition": False},
     1, "atom count"),
    ("composition differs", "comp.extxyz", frame() + frame().replace("Ni", "Fe"), {}, 1,
     "fixed composition"),
    ("missing cell", "nocell.extxyz", frame("Properties=species:S:1:pos:R:3"), {}, 0, "missing cell"),
    ("non-periodic", "pbc.extxyz", frame() + frame(DISMAI_HEADER.replace("T T T", "T T F")), {}, 1,
     "non-periodic"),
    ("NaN position", "nan.extxyz", frame() + frame().replace("3.60000000", "nan", 1), {}, 1, "NaN or inf"),
    ("inf position", "inf.extxyz", frame().replace("1.80000000", "inf", 1), {}, 0, "NaN or inf"),
    ("zero-volume cell", "flat.extxyz", frame(SKEWED_LATTICE), {}, 0, "zero volume"),
    ("all-zero lattice", "zero.extxyz", frame('Lattice="0 0 0 0 0 0 0 0 0"'), {}, 0, "zero volume"),
    ("partial occupancy", "dis.cif", CIF_OK.replace("Cu Cu0 0.0 0.0 0.0 1", "Cu Cu0 0.0 0.0 0.0 0.5"), {}, 0,
     "partial occupancy"),
    ("cif second block disordered", "dis2.cif",
     CIF_OK + CIF_OK.replace("data_test", "data_b").replace("Au Au1 0.5 0.5 0.5 1", "Au Au1 0.5 0.5 0.5 0.7"),
     {}, 1, "partial occupancy"),
    ("cif missing cell", "nocell.cif", CIF_OK.replace("_cell_length_b 3.6\n", ""), {}, 0, "missing cell"),
    ("cif zero-volume cell", "flat.cif", CIF_OK.replace("_cell_length_c 3.6", "_cell_length_c 0"), {}, 0,
     "zero volume"),
    ("cif NaN coordinate", "nan.cif", CIF_OK.replace("0.5 0.5 0.5 1", "0.5 nan 0.5 1"), {}, 0, "NaN or inf"),
    ("cif unknown element", "xx.cif", CIF_OK.replace("Au Au1", "Xx Xx1"), {}, 0, "unparsable"),
    ("cif not a cif", "words.cif", "hello world\n", {}, 0, "unparsable"),
    ("cif truncated", "trunc.cif", CIF_OK[: CIF_OK.index("loop_\n _atom_site")], {}, 0, "no atom sites"),
    ("cif empty", "empty.cif", "", {}, None, "empty"),
    ("cif overlapping atoms", "dup.cif", CIF_OK + " Cu Cu2 0.00001 0.0 0.0 1\n", {}, 0, "overlapping atoms"),
    ("cif compositions differ", "comp.cif", CIF_OK + CIF_OK.replace("data_test", "data_b").replace("Au Au1", "Cu Cu1"),
     {}, 1, "fixed composition"),
    ("unknown extension", "structures.pdb", frame(), {}, None, "unknown file type"),
]


def write_bad_input(tmp_path, filename, content):
    """Write one BAD_INPUTS case (``content`` None = no file); returns (source, conversion target) paths."""
    source = tmp_path / filename
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        source.write_text(content)
    return source, tmp_path / "out" / "converted.extxyz"


@pytest.mark.parametrize("name, filename, content, kwargs, index, words", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_one_line_error_and_leave_no_output(tmp_path, name, filename, content, kwargs, index,
                                                            words):
    source, target = write_bad_input(tmp_path, filename, content)
    with pytest.raises(DismaxInputError) as caught:
        dio.write_extxyz(dio.read_structures(source, **kwargs), target)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(source))
    assert words in message
    where = message[len(str(source)):]
    if index is None:
        assert where.startswith(": ")
    else:
        assert where.startswith(f", structure {index}: ")
    assert not target.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_error_message_names_line_of_truncation(tmp_path):
    path = tmp_path / "t.extxyz"
    path.write_text(frame() + frame() + frame()[:-60])
    with pytest.raises(DismaxInputError, match=r"structure 2: truncated file: the frame declares 5 atoms"):
        dio.read_extxyz(path)


def test_fixed_composition_off_accepts_equal_counts(tmp_path):
    path = tmp_path / "mixed.extxyz"
    path.write_text(frame() + frame().replace("Ni", "Fe"))
    crystals = dio.read_extxyz(path, fixed_composition=False)
    assert np.asarray(crystals.species)[1].tolist() == [24, 24, 26, 26, 26]


def test_plain_xyz_with_blank_lines_between_frames(tmp_path):
    path = tmp_path / "spaced.xyz"
    path.write_text(frame() + "\n\n" + frame() + "\n")
    assert dio.read_structures(path).batch_size == 2


# ---------------------------------------------------------------------- writing
def test_write_rejects_bad_batches_without_touching_disk(tmp_path):
    good = random_crystals(1)
    nan = Crystals(np.where(np.arange(3) == 1, np.nan, np.asarray(good.frac)), good.lattice, good.species)
    flat_lattice = np.asarray(good.lattice).copy()
    flat_lattice[1, 2] = flat_lattice[1, 0] + flat_lattice[1, 1]
    flat = Crystals(good.frac, flat_lattice, good.species)
    for bad, words in [(nan, "structure 0: cannot be written: atom 0 has NaN"), (flat, "structure 1: cannot be "
                                                                                     "written: cell has zero volume")]:
        for writer, target in [(dio.write_extxyz, tmp_path / "x.extxyz"), (dio.write_cif, tmp_path / "x.cif")]:
            with pytest.raises(DismaxInputError, match=words):
                writer(bad, target)
    with pytest.raises(DismaxInputError, match="2 info dicts for 3 structures"):
        dio.write_extxyz(good, tmp_path / "x.extxyz", info=[{}, {}])
    assert list(tmp_path.iterdir()) == []


def test_info_values_ase_would_drop_are_rejected(tmp_path):
    crystals = random_crystals(2, batch=2)
    for info, words in [([{}, {"bad": object()}], "structure 1: cannot be written: info value of 'bad'"),
                        ([{"two words": 1}, {}], "structure 0: cannot be written: info key 'two words'")]:
        with pytest.raises(DismaxInputError, match=words):
            dio.write_extxyz(crystals, tmp_path / "x.extxyz", info=info)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = dio.write_extxyz(random_crystals(2), tmp_path / "keep.extxyz")
    before = path.read_text()

    def write_half_then_fail(handle, images, format):
        handle.write("6\nLattice=")
        raise OSError("disk full")

    monkeypatch.setattr(ase.io, "write", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        dio.write_extxyz(random_crystals(3), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.extxyz"]


def test_written_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = dio.write_extxyz(random_crystals(2), tmp_path / "perm.extxyz")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ---------------------------------------------------------------------- round trips
def test_extxyz_round_trip_through_crystals(tmp_path):
    rng = np.random.default_rng(4)
    originals = []
    for b in range(4):
        cell = np.diag(rng.uniform(5, 9, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
        atoms = Atoms("Li3Co2O", scaled_positions=rng.random((6, 3)), cell=cell, pbc=True)
        atoms.info["formation_energy"] = float(rng.normal())
        originals.append(atoms)
    source = tmp_path / "source.extxyz"
    ase.io.write(source, originals, format="extxyz")
    crystals, info = dio.read_extxyz(source, with_info=True)
    copy = dio.write_extxyz(crystals, tmp_path / "copy.extxyz", info=info)
    for before, after in zip(originals, ase.io.read(copy, index=":")):
        assert after.get_chemical_symbols() == before.get_chemical_symbols()
        np.testing.assert_allclose(after.cell.array, before.cell.array, atol=1e-12)
        np.testing.assert_allclose(after.positions, before.positions, atol=1e-6)
        assert after.info["formation_energy"] == pytest.approx(before.info["formation_energy"], abs=1e-12)
        assert after.pbc.all()


def test_chunked_reading_matches_whole_file(tmp_path):
    crystals = random_crystals(5, batch=5)
    path = dio.write_extxyz(crystals, tmp_path / "set.extxyz")
    chunks = list(dio.iter_extxyz_chunks(path, chunk=2))
    assert [c.batch_size for c in chunks] == [2, 2, 1]
    whole = dio.read_extxyz(path)
    joined = Crystals.concatenate(chunks)
    np.testing.assert_array_equal(np.asarray(joined.frac), np.asarray(whole.frac))
    for b in range(5):
        assert cart_error(whole.frac[b], crystals.frac[b], crystals.lattice[b]) < 1e-6
    with pytest.raises(DismaxInputError, match="chunk"):
        next(dio.iter_extxyz_chunks(path, chunk=0))


def test_cif_round_trip_single_file_and_directory(tmp_path):
    crystals = random_crystals(6, batch=3)
    gram = np.einsum("bij,bkj->bik", crystals.lattice, crystals.lattice)
    for target in (tmp_path / "all.cif", tmp_path / "cifs"):
        written = dio.write_cif(crystals, target)
        back = dio.read_structures(target)
        assert len(written) == (1 if target.suffix else 3)
        np.testing.assert_array_equal(np.asarray(back.species), np.asarray(crystals.species))
        # a CIF stores cell parameters, so the cell comes back in pymatgen's orientation: compare metrics
        back_gram = np.einsum("bij,bkj->bik", back.lattice, back.lattice)
        np.testing.assert_allclose(back_gram, gram, atol=1e-5)
        for b in range(3):
            assert cart_error(back.frac[b], crystals.frac[b], back.lattice[b]) < 1e-6


def test_read_cif_many_paths_and_partial_occupancy(tmp_path):
    ordered = tmp_path / "a.cif"
    ordered.write_text(CIF_OK)
    disordered = tmp_path / "b.cif"
    disordered.write_text(CIF_OK.replace("Au Au1 0.5 0.5 0.5 1", "Au Au1 0.5 0.5 0.5 0.5"))
    crystals = dio.read_cif([ordered, ordered])
    assert crystals.batch_size == 2
    structures = dio.read_cif([ordered, disordered], allow_partial=True)
    assert [s.is_ordered for s in structures] == [True, False]
    assert structures[1][1].species.get_atomic_fraction("Au") == pytest.approx(1.0)
    with pytest.raises(DismaxInputError, match=r"b\.cif, structure 0: partial occupancy"):
        dio.read_cif([ordered, disordered])
    # the message names the site as the CIF does (label, row of the _atom_site loop), not pymatgen's order
    with pytest.raises(DismaxInputError, match=r"atom site Au1 \(row 2 of the _atom_site loop\) has occupancy 0\.5"):
        dio.read_cif(disordered)


def test_ase_and_pymatgen_round_trips_through_files(tmp_path):
    rng = np.random.default_rng(7)
    lattice = Lattice.from_parameters(5.1, 6.3, 7.2, 75, 88, 101)
    structure = Structure(lattice, ["Si"] * 4 + ["O"] * 4, rng.random((8, 3)))
    path = dio.write_extxyz(Crystals.from_pymatgen(structure), tmp_path / "s.extxyz")
    (back,) = dio.read_extxyz(path).to_pymatgen()
    assert [s.symbol for s in back.species] == [s.symbol for s in structure.species]
    np.testing.assert_allclose(back.lattice.matrix, structure.lattice.matrix, atol=1e-12)
    np.testing.assert_allclose(back.cart_coords, structure.cart_coords, atol=1e-6)


def test_structure_set_round_trip_with_different_atom_counts(tmp_path):
    from dismax.structures import StructureSet

    rng = np.random.default_rng(1)
    parts = [Crystals(rng.random((1, n, 3)), np.diag([4.0, 5.0, 6.0])[None], np.full((1, n), z, np.int32))
             for n, z in [(3, 14), (5, 26), (3, 28)]]
    structures = StructureSet.from_structures(parts)
    path = dio.write_extxyz(structures, tmp_path / "set.extxyz", info=[{"id": i} for i in range(3)])
    back = dio.read_structure_set(path)
    assert back.atom_counts.tolist() == [3, 5, 3]
    for a, b in zip(structures, back):
        np.testing.assert_allclose(np.asarray(b.frac), np.asarray(a.frac), atol=1e-7)
        np.testing.assert_array_equal(b.species, a.species)
    with pytest.raises(DismaxInputError, match="structure 1: has 5 atoms"):
        dio.read_extxyz(path)
