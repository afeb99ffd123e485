import csv
import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from dismax.bench.__main__ import main
from tests.bench.test_alloy import fcc_cart, random_alloy
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
    assert main(["postprocess", "--family", "alloy", "--input", str(tmp_path / "gen.extxyz"),
                 "--out", str(tmp_path / "clean")]) == 0
    with (tmp_path / "clean" / "status.csv").open() as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses == ["ok", "ok", "ok", "rejected_too_many_removed"]
    assert main(["score", "--family", "alloy", "--train", str(tmp_path / "train.extxyz"),
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
    assert main(["score", "--family", "a_si", "--train", str(tmp_path / "train.extxyz"), "--gen",
                 str(tmp_path / "gen.extxyz"), "--replicates", "20", "--workers", "1", "--angle-cutoff", "2.6",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    for name in ("d_motif", "d_rdf", "d_angle", "d_angle_cutoff", "d_motif_cosine"):
        assert report[name]["value"] > 0
    assert report["pct_failed"]["value"] == 0.0
    assert (tmp_path / "report" / "rdf.png").exists()


def test_bad_input_is_one_line_error(tmp_path, capsys):
    from dismax.cli import main_wrapper

    code = main_wrapper(main, ["score", "--family", "a_si", "--train", str(tmp_path / "missing.extxyz"),
                               "--gen", str(tmp_path / "missing.extxyz"), "--out", str(tmp_path)])
    assert code == 2
    assert "no such file" in capsys.readouterr().err
