"""Dismai-Bench scoring pipeline: generated vs training structures -> metrics with bootstrap CIs.

Every generated structure keeps its ID (0-based index in the generated file, or the ``id`` of a status
file from earlier steps) and a status (``failed_decode`` for what a sampler could not decode, see
:func:`dismax.validation.read_sample_summary`; ``rejected_*`` from post-processing; ``failed_*`` from
relaxation; ``ok``); % failed is computed from these statuses and ``n_generated``, never from row counts.
Metric names follow the paper: alloy ``d_cluster``, ``pct_vacancy``, ``pct_failed``; a-Si ``d_motif``,
``d_rdf``, ``d_angle`` (+ ``d_angle_cutoff``, the fast cutoff-neighbour variant); interface ``d_Li``,
``d_Co``, ``d_Sc``, ``d_all``; cosine distances as ``<name>_cosine``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from ase.data import chemical_symbols

from dismax import cluster_expansion
from dismax.bench import alloy as alloy_metrics
from dismax.bench import bootstrap, motifs
from dismax.bench.rdf import bin_centres, rdf
from dismax.errors import DismaxInputError
from dismax.runs import atomic_write_bytes, atomic_write_text
from dismax.structures import Crystals, StructureSet, as_structure_set

INTERFACE_CATIONS = {"Li": 3, "Co": 27, "Sc": 21}
SI = 14
FAMILY_ELEMENTS = {"alloy": {24, 26, 28}, "a_si": {SI}, "interface": {3, 8, 17, 21, 27}}
ANGLE_CUTOFF = 2.85   # Å, neighbour cutoff of the fast bond-angle variant (d_angle_cutoff)


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



@dataclass(frozen=True)
class ScoreOptions:
    """How to score: published-script behaviour, alloy alignment, bootstrap and CrystalNN settings.

    ``reference_compatible`` reproduces the published scripts (alloy clean-up ``reference_variant`` and
    geometric cluster counting); ``alignment`` is the dismax alloy site-assignment mode; ``seed`` and
    ``n_replicates`` set the bootstrap; ``workers`` CrystalNN processes (None: all cores); ``cache_dir``
    keeps per-structure fingerprints across runs; ``progress`` is a tqdm-like factory or None.
    """

    reference_compatible: bool = False
    alignment: str = "translate"
    reference_variant: str = "as_is"
    seed: int = bootstrap.SEED
    n_replicates: int = bootstrap.N_REPLICATES
    workers: int | None = None
    cache_dir: str | Path | None = None
    progress: Callable | None = None
    angle_cutoff: float = ANGLE_CUTOFF


class Score(NamedTuple):
    """A family scorer's result: ``metrics`` name -> estimate dict, ``rows`` one dict per generated
    structure (same order as the input; ``status`` set when the scorer rejects a structure), ``curves``
    name -> array for the report's plots, ``replicates`` name -> (R,) bootstrap replicates of every
    metric with a CI (the report's CI of the mean over seeds resamples them)."""

    metrics: dict
    rows: list[dict]
    curves: dict
    replicates: dict = {}


def _arrays(crystals: Crystals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frac (N, 3), lattice (3, 3), species (N,)) of a one-structure batch as NumPy arrays."""
    c = crystals.to_numpy()
    return c.frac[0], c.lattice[0], c.species[0]


def _estimate_dict(estimate: bootstrap.Estimate | None, value: float | None = None) -> dict:
    if estimate is None:
        return {"value": value, "ci_low": None, "ci_high": None}
    entry = {"value": estimate.value, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
             "lower_error": estimate.lower_error, "upper_error": estimate.upper_error}
    return {**entry, "warning": estimate.warning} if estimate.warning else entry


def _record(metrics: dict, replicates: dict, name: str, estimate: bootstrap.Estimate) -> None:
    """Store ``estimate`` as metric ``name`` (JSON entry) and its bootstrap replicates."""
    metrics[name] = _estimate_dict(estimate)
    replicates[name] = estimate.replicates


def _distances(metrics: dict, replicates: dict, name: str, train_mean, per_structure, indices) -> None:
    """Euclidean distance ``name`` and cosine distance ``name_cosine`` with their bootstrap CIs."""
    for suffix, distance in (("", "euclidean"), ("_cosine", "cosine")):
        _record(metrics, replicates, name + suffix,
                bootstrap.distance_estimate(train_mean, per_structure, indices, distance))


def _indices(n: int, options: ScoreOptions) -> np.ndarray:
    return bootstrap.bootstrap_indices(n, options.n_replicates, options.seed)


# ---------------------------------------------------------------------- alloy
def _alloy_clean(structure: Crystals, options: ScoreOptions) -> alloy_metrics.CleanedAlloy:
    frac, lattice, numbers = _arrays(structure)
    if options.reference_compatible:
        return alloy_metrics.reference_cleanup(frac, lattice=lattice, numbers=numbers,
                                               variant=options.reference_variant)
    return alloy_metrics.assign_sites(frac, numbers, lattice, alignment=options.alignment)


def score_alloy(train: StructureSet, generated: StructureSet, options: ScoreOptions) -> Score:
    """d_cluster (45-value cluster fingerprint) and % with vacancies; rejects structures off the lattice."""
    train_clean = [alloy_metrics.CleanedAlloy(f, n, l, len(n), 0) for f, l, n in map(_arrays, train)]
    train_counts = alloy_metrics.count_clusters(train_clean, reference_compatible=options.reference_compatible)
    rows, cleaned, accepted_rows = [], [], []
    for structure in generated:
        result = _alloy_clean(structure, options)
        row = {"n_removed": result.n_removed, "n_vacancies": result.n_vacancies, "n_discarded": result.n_discarded}
        rows.append(row)
        if not result.ok:
            row["status"] = result.status
            continue
        cleaned.append(result)
        accepted_rows.append(row)
    if not cleaned:
        return Score({}, rows, {})
    counts = alloy_metrics.count_clusters(cleaned, reference_compatible=options.reference_compatible)
    if options.reference_compatible and options.reference_variant == "rotate":
        vacancies = []
        for result, flag in zip(cleaned, counts.has_vacancy_1nn):
            cart = result.frac @ result.lattice
            basis, _ = alloy_metrics.find_fcc_basis(cart, result.lattice, normalise_c=False)
            vacancies.append(alloy_metrics.reference_vacancy_estimate(cart, result.lattice, basis) if flag else 0)
    else:
        vacancies = [result.n_vacancies for result in cleaned]
    energies = cluster_expansion.energy_per_atom(counts.counts)
    sro = cluster_expansion.warren_cowley(counts.counts)
    for row, vacancy, energy, sro_row in zip(accepted_rows, vacancies, energies, sro):
        row.update(n_vacancies=vacancy, formation_energy=float(energy),
                   **{f"sro_{c}": float(v) for c, v in zip(cluster_expansion.SRO_LABELS, sro_row)})
    indices = _indices(len(cleaned), options)
    train_probabilities = train_counts.probabilities
    metrics, replicates = {}, {}
    _distances(metrics, replicates, "d_cluster", train_probabilities.mean(axis=0), counts.probabilities, indices)
    _record(metrics, replicates, "pct_vacancy", bootstrap.mean_estimate(100.0 * (np.array(vacancies) > 0), indices))
    curves = dict(train_energy=cluster_expansion.energy_per_atom(train_counts.counts), gen_energy=energies,
                  train_sro=cluster_expansion.warren_cowley(train_counts.counts), gen_sro=sro,
                  train_fingerprint=train_probabilities.mean(axis=0),
                  gen_fingerprint=counts.probabilities.mean(axis=0), train_cluster=train_probabilities,
                  gen_cluster=counts.probabilities)
    return Score(metrics, rows, curves, replicates)


# ---------------------------------------------------------------------- a-Si
def _per_structure(function, kind: str, structures: StructureSet, settings: dict,
                   options: ScoreOptions) -> list[np.ndarray]:
    """``function`` on every structure through the cached process pool of :mod:`motifs`."""
    return motifs.per_structure(function, kind, [_arrays(c) for c in structures], settings, options.cache_dir,
                                options.workers, options.progress)


def score_a_si(train: StructureSet, generated: StructureSet, options: ScoreOptions) -> Score:
    """d_motif (61-value CrystalNN fingerprint), d_rdf, d_angle (CrystalNN) and d_angle_cutoff."""
    indices = _indices(len(generated), options)
    settings = {"site_numbers": [SI]}
    train_motif = np.concatenate(_per_structure(motifs.motif_fingerprints, "motif_a_si", train, settings, options))
    gen_motif = np.array([rows.mean(axis=0) for rows in
                          _per_structure(motifs.motif_fingerprints, "motif_a_si", generated, settings, options)])
    metrics, replicates = {}, {}
    _distances(metrics, replicates, "d_motif", train_motif.mean(axis=0), gen_motif, indices)

    def rdfs(structures):
        return np.concatenate([rdf(c.frac, c.lattice, c.species, SI, SI) for c in map(Crystals.to_numpy, structures)])

    train_rdf, gen_rdf = rdfs(train), rdfs(generated)
    _record(metrics, replicates, "d_rdf", bootstrap.distance_estimate(train_rdf.mean(axis=0), gen_rdf, indices))

    def angles(structures):
        pooled = _per_structure(motifs.crystalnn_bond_angles, "bond_angles", structures, {}, options)
        return np.array([motifs.angle_distribution(a) for a in pooled])

    train_angle, gen_angle = angles(train), angles(generated)
    _record(metrics, replicates, "d_angle",
            bootstrap.distance_estimate(train_angle.mean(axis=0), gen_angle, indices))

    def cutoff_angles(structures):
        return np.concatenate([motifs.cutoff_angle_distributions(c.frac, c.lattice, options.angle_cutoff)
                               for c in map(Crystals.to_numpy, structures)])

    fast_train, fast_gen = cutoff_angles(train), cutoff_angles(generated)
    _record(metrics, replicates, "d_angle_cutoff",
            bootstrap.distance_estimate(fast_train.mean(axis=0), fast_gen, indices))
    mean, low, high = bootstrap.mean_band(gen_rdf, indices)
    curves = dict(r=bin_centres(), train_rdf=train_rdf.mean(axis=0), gen_rdf=mean, gen_rdf_low=low,
                  gen_rdf_high=high, angle=motifs.angle_bin_centres(), train_angle=train_angle.mean(axis=0),
                  gen_angle=gen_angle.mean(axis=0), train_fingerprint=train_motif.mean(axis=0),
                  gen_fingerprint=gen_motif.mean(axis=0))
    return Score(metrics, [{} for _ in range(len(generated))], curves, replicates)


# ---------------------------------------------------------------------- interface
def score_interface(train: StructureSet, generated: StructureSet, options: ScoreOptions) -> Score:
    """d_Li, d_Co, d_Sc (109-value cation fingerprints) and d_all (all 120 cation sites)."""
    indices = _indices(len(generated), options)
    settings = {"site_numbers": sorted(INTERFACE_CATIONS.values()), "cation_anion": True,
                "oxidation": motifs.INTERFACE_OXIDATION, "species_fractions": list(motifs.INTERFACE_ANIONS)}
    train_rows = _per_structure(motifs.motif_fingerprints, "motif_interface", train, settings, options)
    gen_rows = _per_structure(motifs.motif_fingerprints, "motif_interface", generated, settings, options)

    def split(structures, rows, symbol):
        z = INTERFACE_CATIONS[symbol]
        out = []
        for structure, values in zip(structures, rows):
            numbers = _arrays(structure)[2]
            site_numbers = numbers[np.isin(numbers, sorted(INTERFACE_CATIONS.values()))]
            out.append(values[site_numbers == z])
        return out

    metrics, replicates = {}, {}
    for symbol in INTERFACE_CATIONS:
        train_sites = np.concatenate(split(train, train_rows, symbol))
        gen_sites = split(generated, gen_rows, symbol)
        if any(len(s) == 0 for s in gen_sites) or len(train_sites) == 0:
            raise DismaxInputError(f"interface scoring: a structure has no {symbol} atoms")
        _distances(metrics, replicates, f"d_{symbol}", train_sites.mean(axis=0),
                   np.array([s.mean(axis=0) for s in gen_sites]), indices)
    train_all = np.concatenate(train_rows)
    gen_all = np.array([rows.mean(axis=0) for rows in gen_rows])
    _distances(metrics, replicates, "d_all", train_all.mean(axis=0), gen_all, indices)
    curves = dict(train_fingerprint=train_all.mean(axis=0), gen_fingerprint=gen_all.mean(axis=0))
    return Score(metrics, [{} for _ in range(len(generated))], curves, replicates)


def check_family(family: str, structures: Crystals | StructureSet, source: str) -> None:
    """Raise ``DismaxInputError`` when ``structures`` contain elements the family's systems do not have."""
    groups = structures.groups if isinstance(structures, StructureSet) else (structures,)
    found = set(np.unique(np.concatenate([np.asarray(c.species).ravel() for c in groups])).tolist())
    foreign = sorted(found - FAMILY_ELEMENTS[family])
    if foreign:
        allowed = ", ".join(chemical_symbols[z] for z in sorted(FAMILY_ELEMENTS[family]))
        raise DismaxInputError(f"{source}: contains {', '.join(chemical_symbols[z] for z in foreign)}, which the "
                               f"{family} family does not have (its elements: {allowed}); a file of another family?")


SCORERS: dict[str, Callable[[StructureSet, StructureSet, ScoreOptions], Score]] = {
    "alloy": score_alloy, "a_si": score_a_si, "interface": score_interface}
FAMILIES = tuple(SCORERS)


# ---------------------------------------------------------------------- driver
def score(family: str, train: Crystals | StructureSet, generated: Crystals | StructureSet | None,
          options: ScoreOptions = ScoreOptions(), statuses: dict[int, str] | None = None,
          n_generated: int | None = None) -> Score:
    """Metrics, per-structure rows and curves of generated vs training structures of one family.

    ``generated`` is already post-processed and, for interface / a-Si, relaxed (None when every structure
    failed earlier, which needs ``statuses``). ``statuses`` (ID -> status of earlier steps): the generated
    structures are the IDs with status ``ok``, in increasing order; the others count as failed.
    % failed = 100 - 100 * n_ok / ``n_generated`` (default: number of IDs).
    """
    if family not in SCORERS:
        raise DismaxInputError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    generated = None if generated is None else as_structure_set(generated)
    n_frames = 0 if generated is None else len(generated)
    if statuses:
        rows = [{"id": i, "status": s} for i, s in sorted(statuses.items())]
        ok_rows = [r for r in rows if r["status"] == "ok"]
        if len(ok_rows) != n_frames:
            raise DismaxInputError(f"status file lists {len(ok_rows)} ok structures but the generated file "
                                   f"has {n_frames}")
    elif generated is None:
        raise DismaxInputError("no generated structures to score")
    else:
        rows = [{"id": i, "status": "ok"} for i in range(n_frames)]
        ok_rows = list(rows)
    family_score = SCORERS[family](as_structure_set(train), generated, options) if n_frames else Score({}, [], {})
    for row, update in zip(ok_rows, family_score.rows):
        row.update(update)
    metrics = dict(family_score.metrics)
    n_total = n_generated if n_generated is not None else len(rows)
    n_ok = sum(r["status"] == "ok" for r in rows)
    if n_ok > n_total:
        raise DismaxInputError(f"n_generated = {n_total} is smaller than the {n_ok} accepted structures")
    metrics["pct_failed"] = _estimate_dict(None, 100.0 - 100.0 * n_ok / n_total)
    metrics["n_generated"] = n_total
    metrics["n_scored"] = n_ok
    return Score(metrics, rows, family_score.curves, family_score.replicates)


def csv_text(columns: list[str], rows: list) -> str:
    """CSV text with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def records_csv(records: list[dict]) -> str:
    """CSV text of per-structure dicts; columns are the union of their keys in first-seen order."""
    columns = list(dict.fromkeys(key for record in records for key in record))
    return csv_text(columns, [[record.get(c, "") for c in columns] for record in records])


def write_report(out_dir: str | Path, family: str, metrics: dict, records: list[dict], curves: dict,
                 plots: bool = True) -> Path:
    """metrics.json, metrics.csv, structures.csv and (with ``plots``) PNG plots into out_dir (atomic);
    returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps({"family": family, "metrics": metrics}, indent=2))
    atomic_write_text(out / "metrics.csv", csv_text(
        ["metric", "value", "ci_low", "ci_high"],
        [[name, e["value"], e["ci_low"], e["ci_high"]] for name, e in metrics.items() if isinstance(e, dict)]))
    atomic_write_text(out / "structures.csv", records_csv(records))
    if plots:
        _plots(out, family, curves)
    return out / "metrics.json"


def save_figure(figure, path: Path) -> None:
    """Save a Matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt  # optional heavy dependency, only for reports

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _plots(out: Path, family: str, curves: dict) -> None:
    if not curves:
        return
    import matplotlib  # optional heavy dependency, only for reports

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(figure, name):
        save_figure(figure, out / name)

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
        for k, (axis, name) in enumerate(zip(axes.ravel(), cluster_expansion.SRO_LABELS)):
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
