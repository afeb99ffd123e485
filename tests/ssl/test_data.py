"""The one reader of the masked-denoising models: a CIF folder and a CDVAE-format CSV give the same
structures, with a progress bar while reading; the ordered split of a disordered CIF folder is read once and
then loaded from its extxyz files; size buckets cut the padding."""

import csv

import numpy as np
import pytest
from pymatgen.io.cif import CifWriter

from dismax.errors import DismaxInputError
from dismax.ssl.data import PaddedSet, ordered_split, read_any, size_buckets
from tests.ssl.helpers import rock_salt_set


def test_cif_folder_and_cdvae_csv_read_alike_with_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISMAX_NO_PROGRESS", raising=False)
    structures = rock_salt_set(3)
    folder = tmp_path / "cifs"
    folder.mkdir()
    texts = []
    for i, crystals in enumerate(structures):
        texts.append(str(CifWriter(crystals.to_pymatgen()[0])))
        (folder / f"s{i}.cif").write_text(texts[-1])
    with open(tmp_path / "mp.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["material_id", "cif"])
        writer.writeheader()
        writer.writerows({"material_id": f"mp-{i}", "cif": text} for i, text in enumerate(texts))

    from_folder = read_any(folder)
    assert "reading cifs/" in capsys.readouterr().err
    from_csv = read_any(tmp_path / "mp.csv")
    assert "reading mp.csv" in capsys.readouterr().err
    for read in (from_folder, from_csv):
        assert read.atom_counts.tolist() == structures.atom_counts.tolist()
        for got, want in zip(read, structures):
            assert sorted(np.asarray(got.species).ravel()) == sorted(np.asarray(want.species).ravel())

    (tmp_path / "bad.csv").write_text("material_id,formula\nmp-1,NaCl\n")
    with pytest.raises(DismaxInputError, match="no 'cif' column"):
        read_any(tmp_path / "bad.csv")


def test_ordered_split_is_written_once_and_read_back(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    for i, crystals in enumerate(rock_salt_set(10)):
        (folder / f"s{i}.cif").write_text(str(CifWriter(crystals.to_pymatgen()[0])))
    first = ordered_split(folder, seed=3)
    assert [len(part) for part in first] == [8, 1, 1]
    for cif in folder.glob("*.cif"):
        cif.unlink()                                   # the second read needs only the written split
    again = ordered_split(folder, seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.atom_counts, b.atom_counts)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x.species), np.asarray(y.species))
            np.testing.assert_allclose(np.asarray(x.frac), np.asarray(y.frac), atol=1e-6)
    assert sorted(p.name for p in (folder / "ordered-split3").iterdir()) == ["test.extxyz", "train.extxyz",
                                                                             "val.extxyz"]


def test_size_buckets_cut_the_padding_and_keep_every_structure():
    structures = rock_salt_set(5)                      # 8, 6, 8, 6, 8 atoms
    padded = PaddedSet(*structures.padded(10))
    small, large = size_buckets(padded, 2)
    assert small.crystals.frac.shape == (2, 6, 3) and large.crystals.frac.shape == (3, 8, 3)
    assert small.atom_mask.all() and large.atom_mask.all()
    np.testing.assert_array_equal(small.crystals.species, padded.crystals.species[[1, 3], :6])
    np.testing.assert_array_equal(large.crystals.frac, padded.crystals.frac[[0, 2, 4], :8])
    (whole,) = size_buckets(padded, 1)
    assert whole.crystals.frac.shape == (5, 8, 3) and whole.atom_mask.sum() == 36
