"""Dismai-Bench scoring pipeline: generated vs training structures -> metrics with bootstrap CIs.

Every generated structure keeps its ID (0-based index in the generated file, or the ``id`` of a status
file from earlier steps) and a status (``ok``, ``rejected_*`` from post-processing, ``failed_*`` from
relaxation ...); % failed is computed from these statuses and ``n_generated``, never from row counts.
Metric names follow the paper: alloy ``d_cluster``, ``pct_vacancy``, ``pct_failed``; a-Si ``d_motif``,
``d_rdf``, ``d_angle`` (+ ``d_angle_cutoff``, the fast cutoff-neighbour variant); interface ``d_Li``,
``d_Co``, ``d_Sc``, ``d_all``; cosine distances as ``<name>_cosine``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from dismax.bench import alloy as alloy_metrics
from dismax.bench import bootstrap, motifs
from dismax.bench.rdf import bin_centres, rdf
from dismax.errors import DismaxInputError

FAMILIES = ("alloy", "a_si", "interface")
INTERFACE_CATIONS = {"Li": 3, "Co": 27, "Sc": 21}
SI = 14


def read_structures(path: str | Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frac, lattice, numbers) of every frame of an extxyz file (atom counts may differ)."""
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise DismaxInputError(f"{path}: no such file")
    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE raises many types for malformed files
        raise DismaxInputError(f"{path}: cannot read as extxyz ({exc})") from exc
    if not frames:
        raise DismaxInputError(f"{path}: contains no structures")
    structures = []
    for index, atoms in enumerate(frames):
        lattice = np.asarray(atoms.cell.array, float)
        if abs(np.linalg.det(lattice)) < 1e-6:
            raise DismaxInputError(f"{path}: structure {index} has no periodic cell")
        structures.append((atoms.get_scaled_positions(wrap=True), lattice, np.asarray(atoms.numbers)))
    return structures


def read_status(path: str | Path) -> dict[int, str]:
    """Statuses from a CSV with columns ``id`` and ``status`` (e.g. written by ``postprocess`` or relax)."""
    path = Path(path)
    if not path.is_file():
        raise DismaxInputError(f"{path}: no such status file")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "id" not in rows[0] or "status" not in rows[0]:
        raise DismaxInputError(f"{path}: expected a CSV with columns 'id' and 'status'")
    return {int(row["id"]): row["status"] for row in rows}


def _estimate_dict(estimate: bootstrap.Estimate | None, value: float | None = None) -> dict:
    if estimate is None:
        return {"value": value, "ci_low": None, "ci_high": None}
    return {"value": estimate.value, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
            "lower_error": estimate.lower_error, "upper_error": estimate.upper_error}


def _distances(name: str, train_mean, per_structure, indices, metrics: dict) -> None:
    metrics[name] = _estimate_dict(bootstrap.distance_estimate(train_mean, per_structure, indices, "euclidean"))
    metrics[f"{name}_cosine"] = _estimate_dict(bootstrap.distance_estimate(train_mean, per_structure, indices,
                                                                           "cosine"))


class Scorer:
    """Scores one family; ``records`` are per generated structure dicts with at least id and status."""

    def __init__(self, family: str, reference_compatible: bool = False, alignment: str = "translate",
                 reference_variant: str = "as_is", seed: int = bootstrap.SEED,
                 n_replicates: int = bootstrap.N_REPLICATES, workers: int | None = None,
                 cache_dir: str | Path | None = None, progress=None, angle_cutoff: float = 2.85):
        if family not in FAMILIES:
            raise DismaxInputError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
        self.family = family
        self.reference_compatible = reference_compatible
        self.alignment = alignment
        self.reference_variant = reference_variant
        self.seed = seed
        self.n_replicates = n_replicates
        self.workers = workers
        self.cache_dir = cache_dir
        self.progress = progress
        self.angle_cutoff = angle_cutoff
        self.curves: dict[str, np.ndarray] = {}

    def indices(self, n: int) -> np.ndarray:
        return bootstrap.bootstrap_indices(n, self.n_replicates, self.seed)

    # ------------------------------------------------------------------ alloy
    def _alloy_clean(self, structure):
        frac, lattice, numbers = structure
        if self.reference_compatible:
            return alloy_metrics.reference_cleanup(frac, lattice=lattice, numbers=numbers,
                                                   variant=self.reference_variant)
        return alloy_metrics.assign_sites(frac, numbers, lattice, alignment=self.alignment)

    def _alloy_counts(self, cleaned: list) -> alloy_metrics.ClusterCounts:
        return alloy_metrics.count_clusters(cleaned, reference_compatible=self.reference_compatible)

    def score_alloy(self, train, generated, records, metrics):
        train_clean = [alloy_metrics.CleanedAlloy(f, n, l, len(n), 0) for f, l, n in train]
        train_counts = self._alloy_counts(train_clean)
        cleaned, ok_records = [], []
        for record, structure in zip(records, generated):
            result = self._alloy_clean(structure)
            record.update(n_removed=result.n_removed, n_vacancies=result.n_vacancies,
                          n_discarded=result.n_discarded)
            if not result.ok:
                record["status"] = result.status
                continue
            cleaned.append(result)
            ok_records.append(record)
        if not cleaned:
            return
        counts = self._alloy_counts(cleaned)
        if self.reference_compatible and self.reference_variant == "rotate":
            vacancies = []
            for result, flag in zip(cleaned, counts.has_vacancy_1nn):
                cart = result.frac @ result.lattice
                basis, _ = alloy_metrics.find_fcc_basis(cart, result.lattice, normalise_c=False)
                vacancies.append(alloy_metrics.reference_vacancy_estimate(cart, result.lattice, basis) if flag else 0)
        else:
            vacancies = [result.n_vacancies for result in cleaned]
        energies = alloy_metrics.formation_energy(counts.counts)
        sro = alloy_metrics.warren_cowley(counts.counts)
        for record, vacancy, energy, sro_row in zip(ok_records, vacancies, energies, sro):
            record.update(n_vacancies=vacancy, formation_energy=float(energy),
                          **{f"sro_{c}": float(v) for c, v in zip(alloy_metrics.SRO_COLUMNS, sro_row)})
        indices = self.indices(len(cleaned))
        train_probabilities = train_counts.probabilities
        _distances("d_cluster", train_probabilities.mean(axis=0), counts.probabilities, indices, metrics)
        metrics["pct_vacancy"] = _estimate_dict(bootstrap.mean_estimate(100.0 * (np.array(vacancies) > 0), indices))
        self.curves.update(train_energy=alloy_metrics.formation_energy(train_counts.counts), gen_energy=energies,
                           train_sro=alloy_metrics.warren_cowley(train_counts.counts), gen_sro=sro,
                           train_fingerprint=train_probabilities.mean(axis=0),
                           gen_fingerprint=counts.probabilities.mean(axis=0))

    # ------------------------------------------------------------------ a-Si
    def _motif_rows(self, structures, kind, settings):
        return motifs.per_structure(motifs.motif_fingerprints, kind, structures, settings, self.cache_dir,
                                    self.workers, self.progress)

    def score_a_si(self, train, generated, records, metrics):
        indices = self.indices(len(generated))
        settings = {"site_numbers": [SI]}
        train_motif = np.concatenate(self._motif_rows(train, "motif_a_si", settings))
        gen_motif = np.array([rows.mean(axis=0) for rows in self._motif_rows(generated, "motif_a_si", settings)])
        _distances("d_motif", train_motif.mean(axis=0), gen_motif, indices, metrics)

        def rdfs(structures):
            return np.concatenate([rdf(f[None], l[None], n[None], SI, SI) for f, l, n in structures])

        train_rdf, gen_rdf = rdfs(train), rdfs(generated)
        metrics["d_rdf"] = _estimate_dict(bootstrap.distance_estimate(train_rdf.mean(axis=0), gen_rdf, indices))

        def angles(structures):
            pooled = motifs.per_structure(motifs.crystalnn_bond_angles, "bond_angles", structures, {},
                                          self.cache_dir, self.workers, self.progress)
            return np.array([motifs.angle_distribution(a) for a in pooled])

        train_angle, gen_angle = angles(train), angles(generated)
        metrics["d_angle"] = _estimate_dict(bootstrap.distance_estimate(train_angle.mean(axis=0), gen_angle,
                                                                        indices))
        fast_train = np.concatenate([motifs.cutoff_angle_distributions(f[None], l[None], self.angle_cutoff)
                                     for f, l, _ in train])
        fast_gen = np.concatenate([motifs.cutoff_angle_distributions(f[None], l[None], self.angle_cutoff)
                                   for f, l, _ in generated])
        metrics["d_angle_cutoff"] = _estimate_dict(bootstrap.distance_estimate(fast_train.mean(axis=0), fast_gen,
                                                                               indices))
        mean, low, high = bootstrap.mean_band(gen_rdf, indices)
        self.curves.update(r=bin_centres(), train_rdf=train_rdf.mean(axis=0), gen_rdf=mean, gen_rdf_low=low,
                           gen_rdf_high=high, angle=motifs.angle_bin_centres(),
                           train_angle=train_angle.mean(axis=0), gen_angle=gen_angle.mean(axis=0))

    # ------------------------------------------------------------------ interface
    def score_interface(self, train, generated, records, metrics):
        indices = self.indices(len(generated))
        settings = {"site_numbers": sorted(INTERFACE_CATIONS.values()), "cation_anion": True,
                    "oxidation": motifs.INTERFACE_OXIDATION, "species_fractions": list(motifs.INTERFACE_ANIONS)}
        train_rows = self._motif_rows(train, "motif_interface", settings)
        gen_rows = self._motif_rows(generated, "motif_interface", settings)

        def split(structures, rows, symbol):
            z = INTERFACE_CATIONS[symbol]
            out = []
            for (_, _, numbers), values in zip(structures, rows):
                site_numbers = np.asarray(numbers)[np.isin(numbers, sorted(INTERFACE_CATIONS.values()))]
                out.append(values[site_numbers == z])
            return out

        gen_all = []
        for symbol in INTERFACE_CATIONS:
            train_sites = np.concatenate(split(train, train_rows, symbol))
            gen_sites = split(generated, gen_rows, symbol)
            if any(len(s) == 0 for s in gen_sites) or len(train_sites) == 0:
                raise DismaxInputError(f"interface scoring: a structure has no {symbol} atoms")
            _distances(f"d_{symbol}", train_sites.mean(axis=0), np.array([s.mean(axis=0) for s in gen_sites]),
                       indices, metrics)
        train_all = np.concatenate(train_rows)
        gen_all = np.array([rows.mean(axis=0) for rows in gen_rows])
        _distances("d_all", train_all.mean(axis=0), gen_all, indices, metrics)
        self.curves.update(train_fingerprint=train_all.mean(axis=0), gen_fingerprint=gen_all.mean(axis=0))

    # ------------------------------------------------------------------ driver
    def score(self, train, generated, statuses: dict[int, str] | None = None,
              n_generated: int | None = None) -> tuple[dict, list[dict]]:
        """Metrics dict and per-structure records for generated structures (already post-processed and,
        for interface / a-Si, relaxed). ``statuses`` (ID -> status of earlier steps): the generated frames
        are the IDs with status ``ok``, in increasing order; the others count as failed."""
        if statuses:
            records = [{"id": i, "status": s} for i, s in sorted(statuses.items())]
            ok_records = [r for r in records if r["status"] == "ok"]
            if len(ok_records) != len(generated):
                raise DismaxInputError(f"status file lists {len(ok_records)} ok structures but the generated file "
                                       f"has {len(generated)}")
        else:
            records = [{"id": i, "status": "ok"} for i in range(len(generated))]
            ok_records = list(records)
        if not generated:
            raise DismaxInputError("no generated structures to score")
        metrics: dict = {}
        getattr(self, f"score_{self.family}")(train, generated, ok_records, metrics)
        n_total = n_generated if n_generated is not None else len(records)
        n_ok = sum(r["status"] == "ok" for r in records)
        if n_ok > n_total:
            raise DismaxInputError(f"n_generated = {n_total} is smaller than the {n_ok} accepted structures")
        metrics["pct_failed"] = _estimate_dict(None, 100.0 - 100.0 * n_ok / n_total)
        metrics["n_generated"] = n_total
        metrics["n_scored"] = n_ok
        return metrics, records


def write_report(out_dir: str | Path, family: str, metrics: dict, records: list[dict], curves: dict) -> Path:
    """metrics.json, metrics.csv, structures.csv and PNG plots into out_dir; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"family": family, "metrics": metrics}, indent=2))
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value", "ci_low", "ci_high"])
        for name, entry in metrics.items():
            if isinstance(entry, dict):
                writer.writerow([name, entry["value"], entry["ci_low"], entry["ci_high"]])
    columns = list(dict.fromkeys(key for record in records for key in record))
    with (out / "structures.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    _plots(out, family, curves)
    return out / "metrics.json"


def _plots(out: Path, family: str, curves: dict) -> None:
    if not curves:
        return
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    def save(figure, name):
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)

    if "train_rdf" in curves:
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(curves["r"], curves["train_rdf"], label="training")
        axis.plot(curves["r"], curves["gen_rdf"], label="generated")
        axis.fill_between(curves["r"], curves["gen_rdf_low"], curves["gen_rdf_high"], alpha=0.3)
        axis.set(xlabel="r (Å)", ylabel="g(r)")
        axis.legend()
        save(figure, "rdf.png")
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(curves["angle"], 100 * curves["train_angle"], label="training")
        axis.plot(curves["angle"], 100 * curves["gen_angle"], label="generated")
        axis.set(xlabel="bond angle (°)", ylabel="fraction (%)")
        axis.legend()
        save(figure, "bond_angles.png")
    if "train_sro" in curves:
        figure, axes = plt.subplots(2, 6, figsize=(16, 5))
        for k, (axis, name) in enumerate(zip(axes.ravel(), alloy_metrics.SRO_COLUMNS)):
            bins = np.linspace(-1, 1, 41)
            axis.hist(curves["train_sro"][:, k], bins, alpha=0.5, density=True, label="training")
            axis.hist(curves["gen_sro"][:, k], bins, alpha=0.5, density=True, label="generated")
            axis.set_title(name, fontsize=9)
        axes[0, 0].legend(fontsize=7)
        save(figure, "sro.png")
    if "train_fingerprint" in curves:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        axis.plot(curves["train_fingerprint"], "o-", ms=3, label="training")
        axis.plot(curves["gen_fingerprint"], "s-", ms=3, label="generated")
        axis.set(xlabel="fingerprint index", ylabel="mean value")
        axis.legend()
        save(figure, "fingerprint.png")
