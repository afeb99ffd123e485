"""The one reader of the masked-denoising models: a CIF folder and a CDVAE-format CSV give the same
structures, with a progress bar while reading."""

import csv

import numpy as np
import pytest
from pymatgen.io.cif import CifWriter

from dismax.errors import DismaxInputError
from dismax.ssl.data import read_any
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
