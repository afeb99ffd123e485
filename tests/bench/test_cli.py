import csv
import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from dismax.bench.__main__ import main
from tests.bench.test_alloy import random_alloy
from tests.bench.test_motifs import diamond


def _write(path, structures):
    write(path, [Atoms(numbers=n, scaled_positions=f, cell=l, pbc=True) for f, l, n in structures],
          format="extxyz")


def test_alloy_postprocess_and_score(tmp_path):
    rng = np.random.default_rng(0)
    lattice = np.eye(3) * 14.4
    train = [random_alloy(rng) for _ in range(3)]
    train = [((c @ np.linalg.inv(lattice)) % 1, lattice, n) for c, n in train]
    generated = []
    for k in range(4):
        cart, numbers = random_alloy(rng, noise=0.1)
        if k == 3:
            cart = rng.random((256, 3)) * 14.4                       # not a lattice: rejected
        generated.append((((cart + 0.4) @ np.linalg.inv(lattice)) % 1, lattice, numbers))
    _write(tmp_path / "train.extxyz", train)
    _write(tmp_path / "gen.extxyz", generated)
    assert main(["postprocess", "--family", "alloy", "--in", str(tmp_path / "gen.extxyz"),
                 "--out", str(tmp_path / "clean")]) == 0
    with (tmp_path / "clean" / "status.csv").open() as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses == ["ok", "ok", "ok", "rejected_too_many_removed"]
    assert main(["metrics", "--family", "alloy", "--train", str(tmp_path / "train.extxyz"),
                 "--gen", str(tmp_path / "clean" / "gen_clean.extxyz"), "--status",
                 str(tmp_path / "clean" / "status.csv"), "--n-generated", "5", "--replicates", "50",
                 "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    assert report["pct_failed"]["value"] == pytest.approx(40.0)
    assert report["pct_vacancy"]["value"] == 0.0
    assert 0 < report["d_cluster"]["value"] < 0.1
    assert report["d_cluster"]["ci_low"] <= report["d_cluster"]["ci_high"]
    assert (tmp_path / "report" / "sro.png").exists()


def test_a_si_score(tmp_path):
    train = [diamond(noise=0.05, seed=0)]
    generated = [diamond(noise=0.2, seed=10 + s) for s in range(2)]
    _write(tmp_path / "train.extxyz", train)
    _write(tmp_path / "gen.extxyz", generated)
    assert main(["metrics", "--family", "a_si", "--train", str(tmp_path / "train.extxyz"), "--gen",
                 str(tmp_path / "gen.extxyz"), "--replicates", "20", "--workers", "1", "--angle-cutoff", "2.6",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    for name in ("d_motif", "d_rdf", "d_angle", "d_angle_cutoff", "d_motif_cosine"):
        assert report[name]["value"] > 0
    assert report["pct_failed"]["value"] == 0.0
    assert (tmp_path / "report" / "rdf.png").exists()


def test_bad_input_is_one_line_error(tmp_path, capsys):
    from dismax.cli import main_wrapper

    code = main_wrapper(main, ["metrics", "--family", "a_si", "--train", str(tmp_path / "missing.extxyz"),
                               "--gen", str(tmp_path / "missing.extxyz"), "--out", str(tmp_path)])
    assert code == 2
    assert "file not found" in capsys.readouterr().err


def _rock_salt(rng, noise):
    grid = np.array(list(np.ndindex(4, 4, 4))) / 4.0
    parity = grid.sum(axis=1) * 4 % 2
    cations = rng.choice([3, 3, 3, 27, 21], 64)
    anions = rng.choice([17, 8], 64)
    numbers = np.where(parity == 0, cations, anions)
    numbers[0], numbers[2], numbers[4] = 3, 27, 21
    return (grid + rng.normal(0, noise, grid.shape)) % 1.0, np.eye(3) * 7.0, numbers


@pytest.mark.slow
def test_interface_score(tmp_path):
    from dismax.bench.pipeline import ScoreOptions, score
    from dismax.structures import Crystals

    rng = np.random.default_rng(0)
    as_crystals = lambda structures: Crystals(*(np.stack(a) for a in zip(*structures)))
    train = as_crystals([_rock_salt(rng, 0.005)])
    generated = as_crystals([_rock_salt(rng, 0.02) for _ in range(2)])
    metrics, records, _ = score("interface", train, generated, ScoreOptions(n_replicates=20, workers=1),
                                statuses={0: "ok", 1: "rejected_too_close", 2: "ok"})
    for name in ("d_Li", "d_Co", "d_Sc", "d_all", "d_all_cosine"):
        assert metrics[name]["value"] >= 0
    assert metrics["pct_failed"]["value"] == pytest.approx(100 / 3)
    assert [r["status"] for r in records] == ["ok", "rejected_too_close", "ok"]
