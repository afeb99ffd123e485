"""dismax.validation: statuses of generated structures, errors naming the offending pair, and the commands
that use them (bench postprocess keeps a NaN structure's ID with status rejected_nan)."""

import csv
import json

import numpy as np
import pytest

from dismax.bench.__main__ import main as bench_main
from dismax.errors import DismaxInputError
from dismax.io import read_structure_set, write_extxyz
from dismax.structures import Crystals, StructureSet
from dismax.validation import count_failed, partition, require_valid, screen
from tests.gan.helpers import fcc_sites


def _batch(frac, cell=5.0, species=14):
    frac = np.asarray(frac, float)
    return Crystals(frac, np.broadcast_to(np.eye(3) * cell, (len(frac), 3, 3)).copy(),
                    np.full(frac.shape[:2], species))


def test_every_structure_gets_a_status_and_keeps_its_index():
    rng = np.random.default_rng(0)
    frac = np.array([[0.1, 0.1, 0.1], [0.6, 0.1, 0.1], [0.1, 0.6, 0.1], [0.6, 0.6, 0.6]])
    batch = np.stack([frac] * 4)
    batch[1, 3] = [0.99, 0.1, 0.1]  # 0.55 Å from atom 0 across the periodic boundary
    batch[2, 2, 1] = np.nan
    batch[3] = rng.random((4, 3))
    verdicts = screen(_batch(batch), min_distance=1.0)
    assert [v.status for v in verdicts[:3]] == ["ok", "rejected_overlap", "rejected_nan"]
    assert "atoms 0 and 3 are 0.550 Å apart" in verdicts[1].reason
    mixed = StructureSet.from_structures([_batch(batch[:1]), _batch(batch[:1, :3]), _batch(batch[:1])])
    assert [v.status for v in screen(mixed, n_atoms=4)] == ["ok", "rejected_atom_count", "ok"]
    counts = screen(_batch(batch[:1]), composition={14: 3, 26: 1})
    assert counts[0].status == "rejected_composition"
    assert count_failed(verdicts[:3]) == {"rejected_overlap": 1, "rejected_nan": 1}
    flat = _batch(batch[:1])
    flat = Crystals(flat.frac, np.array([[[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 0]]]), flat.species)
    assert screen(flat)[0].status == "rejected_cell"


def test_require_valid_names_source_structure_and_pair():
    frac = np.array([[[0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.1, 0.1, 0.1]]])
    with pytest.raises(DismaxInputError, match=r"gen.extxyz, structure 0: atoms 0 and 2 are 0.000 Å apart"):
        require_valid(_batch(frac), "gen.extxyz")
    require_valid(_batch(frac[:, :2]), "gen.extxyz")


def test_partition_drops_nothing_silently():
    frac = np.stack([fcc_sites((1, 1, 1))] * 3)
    frac[1, 0, 0] = np.inf
    usable, ids, rejected = partition(StructureSet.from_structures([_batch(frac, cell=3.6)]))
    assert ids == [0, 2] and len(usable) == 2
    assert rejected == [{"id": 1, "status": "rejected_nan", "reason": rejected[0]["reason"]}]


def _nan_file(path, crystals, index):
    write_extxyz(crystals, path)
    lines = path.read_text().splitlines()
    frame = crystals.n_atoms + 2
    lines[index * frame + 2] = "  ".join(lines[index * frame + 2].split()[:1] + ["nan", "0.0", "0.0"])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("family", ["a_si", "alloy"])
def test_postprocess_gives_a_nan_structure_status_rejected_nan(family, tmp_path, capsys):
    rng = np.random.default_rng(1)
    if family == "alloy":
        sites = fcc_sites((4, 4, 4))
        frac = np.stack([sites + rng.normal(0, 0.003, sites.shape) for _ in range(3)]) % 1.0
        species = np.tile(np.repeat([24, 26, 28], [64, 128, 64]), (3, 1))
        crystals = Crystals(frac, np.broadcast_to(np.eye(3) * 14.4, (3, 3, 3)).copy(), species)
    else:
        diamond = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                            [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
        crystals = _batch(np.stack([diamond] * 3) + rng.normal(0, 0.002, (3, 8, 3)), cell=5.43)
    _nan_file(tmp_path / "gen.extxyz", crystals, index=1)
    code = bench_main(["postprocess", "--family", family, "--in", str(tmp_path / "gen.extxyz"),
                       "--out", str(tmp_path / "pp")])
    assert code == 0
    with open(tmp_path / "pp" / "status.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["id"]), r["status"]) for r in rows] == [(0, "ok"), (1, "rejected_nan"), (2, "ok")]
    cleaned = read_structure_set(tmp_path / "pp" / "gen_clean.extxyz")
    assert len(cleaned) == 2 and all(np.isfinite(c.frac).all() for c in cleaned.groups)
    assert "2/3 structures accepted" in capsys.readouterr().out


def test_sample_summary_round_trip_and_failed_decode_rows(tmp_path):
    from dismax.validation import read_sample_summary, with_sample_failures, write_sample_summary

    gen = tmp_path / "gen.extxyz"
    assert read_sample_summary(gen) is None
    write_sample_summary(gen, 5, [3, 0], "wrong composition")
    summary = read_sample_summary(gen)
    assert (summary.n_requested, summary.failed_ids, summary.written_ids) == (5, (0, 3), [1, 2, 4])
    written = json.loads((tmp_path / "gen.extxyz.summary.json").read_text())
    assert (written["n_failed"], written["percent_failed"]) == (2, 40.0)
    assert summary.diagnostics == {}
    write_sample_summary(gen, 5, [3, 0], "wrong composition", {"species_accuracy": 0.75})
    assert read_sample_summary(gen).diagnostics == {"species_accuracy": 0.75}
    frames = [{"id": 0, "status": "ok"}, {"id": 1, "status": "rejected_nan"}, {"id": 2, "status": "ok"}]
    rows = with_sample_failures(frames, summary, "gen.extxyz")
    assert [(r["id"], r["status"]) for r in rows] == [(0, "failed_decode"), (1, "ok"), (2, "rejected_nan"),
                                                      (3, "failed_decode"), (4, "ok")]
    with pytest.raises(DismaxInputError, match="gen.extxyz: its sample summary lists 3 written structures but "
                                               "the file has 2"):
        with_sample_failures(frames[:2], summary, "gen.extxyz")
    write_sample_summary(gen, 2, [2], "wrong composition")
    with pytest.raises(DismaxInputError, match=r"failed_ids must be distinct IDs in 0..1"):
        read_sample_summary(gen)
    (tmp_path / "gen.extxyz.summary.json").write_text('{"n_failed": 1}')
    with pytest.raises(DismaxInputError, match="not a sample summary"):
        read_sample_summary(gen)
