"""Outputs saved before the one-home-per-concept refactor, and the code that recomputes them.

Each ``*_outputs`` function rebuilds a fixed, deterministic output of the library (a reduced alloy dataset,
``bench metrics`` reports) as a JSON-able dict; the expected values live next to this file as JSON and
were written from the code before the refactor. ``python -m tests.reference.outputs`` rewrites them:
run it only when a change of these numbers is intended, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from dismax.bench.__main__ import main as bench_main
from dismax.data import alloy
from dismax.io import read_extxyz

HERE = Path(__file__).parent
ALLOY_DATASET_FILE = HERE / "alloy_dataset_seed0.json"
METRICS_FILE = HERE / "bench_metrics.json"

# A reduced build the alloy builder supports (``protocol=``): 2 chains x 100 passes, 10 structures.
REDUCED_PROTOCOL = alloy.AlloyProtocol(chains=2, passes=100, snapshot_every=1, n_structures=10, segments=2)
ALLOY_DATASETS = (("alloy_1500K_wide", 1500.0, "wide"), ("alloy_1500K_narrow", 1500.0, "narrow"),
                  ("alloy_300K_wide", 300.0, "wide"))


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def alloy_dataset_outputs(work_dir: Path) -> dict:
    """Per dataset: sha256 of every structure's species order and site indices, per-structure energies and
    SRO, and the run summary of ``params.json``, for the reduced seed-0 builds of ``ALLOY_DATASETS``."""
    result = {}
    for name, temperature, selection in ALLOY_DATASETS:
        out = Path(work_dir) / name
        alloy.write_alloy_dataset(name, temperature, selection, "small", 0, out, protocol=REDUCED_PROTOCOL)
        entry = {}
        for split in ("train", "val"):
            crystals, info = read_extxyz(out / f"{split}.extxyz", with_info=True)
            sites = np.round(np.asarray(crystals.frac) * 8).astype(np.int64) % 8
            entry[split] = {
                "species_sha256": [_digest(np.asarray(s, np.int64)) for s in np.asarray(crystals.species)],
                "sites_sha256": [_digest(s) for s in sites],
                "formation_energy": [frame["formation_energy"] for frame in info],
            }
        params = json.loads((out / "params.json").read_text())
        entry["params"] = {key: params[key] for key in (
            "passes_run", "pool_size", "sro_filter_mean", "acceptance_per_chain", "mean_sro",
            "mean_formation_energy", "structures")}
        result[name] = entry
    return result


def _write_frames(path: Path, structures) -> None:
    write(path, [Atoms(numbers=n, scaled_positions=f, cell=l, pbc=True) for f, l, n in structures],
          format="extxyz")


def _fcc_alloy(rng, noise: float, shift: float):
    """A 4x4x4 Fe154 Ni51 Cr51 FCC cell (a = 3.6 Å) with random occupation, Gaussian noise and a shift."""
    lattice = np.eye(3) * 14.4
    grid = np.array([(i, j, k) for i in range(8) for j in range(8) for k in range(8) if (i + j + k) % 2 == 0])
    numbers = np.array([26] * 154 + [28] * 51 + [24] * 51)
    rng.shuffle(numbers)
    cart = grid * 1.8 + rng.normal(0, noise, (256, 3)) + shift
    return (cart @ np.linalg.inv(lattice)) % 1.0, lattice, numbers


def _diamond_si(rng, noise: float):
    """A 2x2x2 diamond Si cell (64 atoms, a = 5.431 Å) with Gaussian noise of ``noise`` Å."""
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    cell = np.concatenate([base, base + 0.25])
    frac = np.concatenate([(cell + np.array(s)) / 2 for s in np.ndindex(2, 2, 2)])
    lattice = np.eye(3) * 2 * 5.431
    frac = frac + rng.normal(0, noise, frac.shape) / (2 * 5.431)
    return frac % 1.0, lattice, np.full(len(frac), 14)


def _report(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


METRICS_RUNS = ("alloy", "alloy_reference_compatible", "a_si")


def bench_metrics_outputs(work_dir: Path, names=METRICS_RUNS) -> dict:
    """``python -m dismax.bench metrics`` reports for fixed alloy (dismax and reference-compatible modes)
    and a-Si inputs; ``names`` selects runs of ``METRICS_RUNS``."""
    work = Path(work_dir)
    rng = np.random.default_rng(0)
    _write_frames(work / "alloy_train.extxyz", [_fcc_alloy(rng, 0.0, 0.0) for _ in range(3)])
    generated = [_fcc_alloy(rng, 0.12, 0.4) for _ in range(4)]
    generated[2][2][:3] = [26, 24, 28]
    _write_frames(work / "alloy_gen.extxyz", generated)
    _write_frames(work / "si_train.extxyz", [_diamond_si(rng, 0.05)])
    _write_frames(work / "si_gen.extxyz", [_diamond_si(rng, 0.25) for _ in range(2)])
    result = {}
    runs = {
        "alloy": ["--family", "alloy", "--train", "alloy_train.extxyz", "--gen", "alloy_gen.extxyz",
                  "--n-generated", "5"],
        "alloy_reference_compatible": ["--family", "alloy", "--train", "alloy_train.extxyz", "--gen",
                                       "alloy_gen.extxyz", "--reference-compatible"],
        "a_si": ["--family", "a_si", "--train", "si_train.extxyz", "--gen", "si_gen.extxyz", "--workers", "1",
                 "--angle-cutoff", "2.6", "--cache", "cache"],
    }
    for name in names:
        arguments = [str(work / a) if a.endswith(".extxyz") or a == "cache" else a for a in runs[name]]
        code = bench_main(["metrics", *arguments, "--replicates", "30", "--out", str(work / name)])
        assert code == 0, f"bench metrics {name} exited with {code}"
        result[name] = _report(work / name)
    return result


def assert_same_numbers(actual, expected, path: str = "", rtol: float = 1e-10, atol: float = 1e-12) -> None:
    """Recursive equality of JSON-like values: every expected key present (keys added later, such as new
    warnings, are allowed), strings equal, numbers within ``rtol``/``atol``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(expected) <= set(actual), \
            f"{path}: keys {sorted(actual) if isinstance(actual, dict) else actual} lack some of {sorted(expected)}"
        for key in expected:
            assert_same_numbers(actual[key], expected[key], f"{path}.{key}", rtol, atol)
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: length differs"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same_numbers(a, e, f"{path}[{index}]", rtol, atol)
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool) and expected is not None:
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{path}: {actual!r}"
        assert abs(actual - expected) <= atol + rtol * abs(expected), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def _regenerate(which: list[str]) -> None:
    with tempfile.TemporaryDirectory() as work:
        if "alloy" in which:
            ALLOY_DATASET_FILE.write_text(json.dumps(alloy_dataset_outputs(Path(work)), indent=1) + "\n")
        if "metrics" in which:
            METRICS_FILE.write_text(json.dumps(bench_metrics_outputs(Path(work)), indent=1) + "\n")


if __name__ == "__main__":
    _regenerate(sys.argv[1:] or ["alloy", "metrics"])
