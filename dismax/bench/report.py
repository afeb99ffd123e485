"""The bench report: ``DIR/report.md``, a self-contained ``DIR/report.html`` and ``DIR/metrics.json``.

Per model, the paper-style table gives every metric as the mean over seeds with (min–max) and the 95 %
pivotal bootstrap interval of that mean (each seed's structures resampled independently, see
:func:`dismax.bench.bootstrap.mean_over_groups`), % failed, and the relaxation statistics (steps and
E_initial − E_final, mean ± standard deviation over relaxed structures, as in SI Tables S2–S3); the
published values (:mod:`dismax.bench.published`) stand beside it, labelled as published data. Plots
(PNG, Matplotlib Agg) go to ``DIR/report/`` and are embedded in the HTML as base64.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from dismax.bench import bootstrap
from dismax.bench.pipeline import read_status, save_figure
from dismax.cluster_expansion import SRO_LABELS
from dismax.bench.published import RELAXATION, RELAXATION_SOURCES, SOURCES, published_table
from dismax.io import read_extxyz, read_structure_set
from dismax.runs import RunDir, atomic_write_text
from dismax.validation import read_sample_summary

if TYPE_CHECKING:  # the run module imports this one
    from dismax.bench.run import Bench

METRICS = {"alloy": ("d_cluster", "pct_vacancy", "pct_failed"),
           "a_si": ("d_motif", "d_rdf", "d_angle", "d_angle_cutoff", "pct_failed"),
           "interface": ("d_Li", "d_Co", "d_Sc", "d_all", "pct_failed")}
LOSS_KEYS = ("loss", "train_loss", "val_loss", "val_loss_ema", "loss_d", "loss_g", "d_loss", "g_loss")


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3g}"


def _seed_results(bench: "Bench", model: str) -> dict[int, dict]:
    """seed -> {'metrics', 'curves', 'relax'} for every seed whose score stage finished."""
    results = {}
    for seed in bench.config.seeds:
        score_dir = bench.stage_dir(model, seed, "score")
        if not (score_dir / "done.json").is_file():
            continue
        metrics = json.loads((score_dir / "metrics.json").read_text())["metrics"]
        results[seed] = {"metrics": metrics, "curves": _arrays(score_dir / "curves.npz"),
                         "replicates": _arrays(score_dir / "replicates.npz"),
                         "relax": _relaxation(bench.stage_dir(model, seed, "relax") / "results.csv", score_dir)}
    return results


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (empty if it does not exist)."""
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _relaxation(results_csv: Path, score_dir: Path) -> dict[str, np.ndarray]:
    """Steps and E_initial − E_final (meV/atom) of the structures that were scored after relaxation."""
    if not results_csv.is_file():
        return {}
    with results_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    steps = np.array([int(r["steps"]) for r in rows if r["status"] == "converged"])
    delta = np.array([1000.0 * (float(r["e_initial"]) - float(r["e_final"])) for r in rows
                      if r["status"] == "converged"])
    return {"steps": steps, "delta_e": delta}


def summarise(results: dict[int, dict], metric: str, seed: int = bootstrap.SEED) -> dict | None:
    """Mean, min, max over seeds of one metric and the 95 % pivotal bootstrap CI of the mean (from every
    seed's replicates; None when a seed has none, e.g. % failed)."""
    scored = [r for r in results.values() if isinstance(r["metrics"].get(metric), dict)
              and r["metrics"][metric]["value"] is not None]
    if not scored:
        return None
    values = [r["metrics"][metric]["value"] for r in scored]
    summary = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
               "ci_low": None, "ci_high": None, "n_seeds": len(values)}
    if all(metric in r.get("replicates", {}) for r in scored):
        support = (0.0, 100.0) if metric.startswith("pct_") else (0.0, np.inf)
        estimate = bootstrap.mean_over_groups(values, [r["replicates"][metric] for r in scored], seed,
                                              support=support)
        summary.update(ci_low=estimate.ci_low, ci_high=estimate.ci_high)
        if estimate.warning:
            summary["warning"] = estimate.warning
    return summary


def _relax_summary(results: dict[int, dict]) -> dict | None:
    steps = [r["relax"]["steps"] for r in results.values() if r["relax"]]
    delta = [r["relax"]["delta_e"] for r in results.values() if r["relax"]]
    if not steps or not sum(len(s) for s in steps):
        return None
    steps, delta = np.concatenate(steps), np.concatenate(delta)
    return {"steps_mean": float(steps.mean()), "steps_std": float(steps.std()),
            "delta_e_mean": float(delta.mean()), "delta_e_std": float(delta.std()), "n": int(len(steps))}


def _failure_causes(bench: "Bench", model: str, seeds) -> dict[str, int]:
    """Status -> number of structures over the scored seeds, for every status but ``ok`` (failed_decode,
    rejected_* of post-processing, failed_relax*), so the report says why % failed is what it is."""
    causes: dict[str, int] = {}
    for seed in seeds:
        for status in read_status(bench.stage_dir(model, seed, "score") / "status.csv").values():
            if status != "ok":
                causes[status] = causes.get(status, 0) + 1
    return dict(sorted(causes.items()))


def _species_accuracy(bench: "Bench", model: str, seeds) -> dict[str, float]:
    """Seed -> the fraction of sampled atoms decoded to the species of their index in the training order, where
    the sampler recorded it (the U-Net samplers on data with one atom order; failed structures included)."""
    values = {}
    for seed in seeds:
        summary = read_sample_summary(bench.stage_dir(model, seed, "sample") / "gen.extxyz")
        value = None if summary is None else summary.diagnostics.get("species_accuracy")
        if value is not None:
            values[str(seed)] = float(value)
    return values


def _cell(summary: dict | None) -> str:
    if summary is None:
        return "–"
    text = f"{_number(summary['mean'])} ({_number(summary['min'])}–{_number(summary['max'])})"
    if summary["ci_low"] is not None:
        text += f" [{_number(summary['ci_low'])}, {_number(summary['ci_high'])}]"
    return text


def tables(bench: "Bench", summaries: dict[str, dict]) -> str:
    """The Markdown tables: measured per model, then the published data."""
    family = bench.config.family
    names = METRICS[family]
    lines = [f"| model | seeds | {' | '.join(names)} | relax steps | E_initial − E_final (meV/atom) |",
             "|" + "---|" * (len(names) + 4)]
    for model, summary in summaries.items():
        relax = summary["relaxation"]
        relax_cells = ("–", "–") if relax is None else (
            f"{relax['steps_mean']:.3g} ± {relax['steps_std']:.3g}",
            f"{relax['delta_e_mean']:.3g} ± {relax['delta_e_std']:.3g}")
        lines.append(f"| {model} | {summary['n_seeds']} | "
                     + " | ".join(_cell(summary["metrics"].get(n)) for n in names)
                     + f" | {relax_cells[0]} | {relax_cells[1]} |")
    lines += ["", "Cells: mean over seeds (min–max) [95 % pivotal bootstrap interval of that mean, each seed's "
              "structures resampled]; relaxation: mean ± standard deviation over relaxed structures of all seeds. "
              "Lower is better."]
    causes = [f"{model}: " + ", ".join(f"{status} {count}" for status, count in summary["failure_causes"].items())
              for model, summary in summaries.items() if summary["failure_causes"]]
    if causes:
        lines += ["", "Failed structures by cause (all seeds):", ""] + [f"- {line}" for line in causes]
    accuracy = [f"{model}: " + ", ".join(f"seed {seed} {value:.3f}"
                                         for seed, value in summary["species_accuracy"].items())
                for model, summary in summaries.items() if summary["species_accuracy"]]
    if accuracy:
        lines += ["", "Species accuracy of the sampler (fraction of generated atoms decoded to the species of their "
                      "index in the training order, failed structures included):", ""]
        lines += [f"- {line}" for line in accuracy]
    warnings = [f"{model} {name}: {entry['warning']}" for model, summary in summaries.items()
                for name, entry in summary["metrics"].items() if entry and entry.get("warning")]
    if warnings:
        lines += ["", "Interval warnings:", ""] + [f"- {w}" for w in warnings]
    published = published_table(family, _dataset_name(bench))
    if published:
        lines += ["", f"Published data (Dismai-Bench {SOURCES[family]}: mean over 3 models (min–max), 1,000 "
                      "structures each, published potentials and scripts; for qualitative comparison):", "",
                  f"| published model | {' | '.join(n for n in names if n != 'd_angle_cutoff')} | relax steps | "
                  "E_initial − E_final (meV/atom) |",
                  "|" + "---|" * (len([n for n in names if n != 'd_angle_cutoff']) + 3)]
        for model, values in published.items():
            relax = RELAXATION.get(family, {}).get(model)
            relax_cells = ("–", "–") if relax is None else (f"{relax[0]:.3g} ± {relax[1]:.3g}",
                                                          f"{relax[2]:.3g} ± {relax[3]:.3g}")
            lines.append(f"| {model} (published data) | "
                         + " | ".join(f"{_number(values[n][0])} ({_number(values[n][1])}–{_number(values[n][2])})"
                                      for n in names if n != "d_angle_cutoff")
                         + f" | {relax_cells[0]} | {relax_cells[1]} |")
        if family in RELAXATION_SOURCES:
            lines.append(f"\nPublished relaxation statistics: {RELAXATION_SOURCES[family]}.")
    return "\n".join(lines)


def _dataset_name(bench: "Bench") -> str:
    return bench.config.dataset.name or Path(bench.config.dataset.train_file or "").stem


# ---------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib  # optional heavy dependency, only for reports

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _training_plot(bench: "Bench", model: str, path: Path, columns: Callable[[list[str]], list[str]],
                   ylabel: str, title: str) -> bool:
    """Columns of the training runs' metrics.csv (chosen by ``columns(header)``) against the epoch, all seeds."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for seed in bench.config.seeds:
        member = bench.member(model, seed)       # an ensemble run holds every seed as one member
        rows = [r for r in RunDir(bench.stage_dir(model, seed, "train")).read_metrics()
                if r.get("member", 0) == member]
        for key in columns(list(rows[0])) if rows else []:
            points = [(r.get("epoch", k), r[key]) for k, r in enumerate(rows)
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if points:
                axis.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, lw=1,
                          label=f"{key.removeprefix('bench_')} (seed {seed})")
                drawn = True
    if not drawn:
        plt.close(figure)
        return False
    axis.set(xlabel="epoch", ylabel=ylabel, title=f"{model}: {title}")
    if all(v > 0 for line in axis.get_lines() for v in line.get_ydata()):
        axis.set_yscale("log")
    axis.legend(fontsize="small")
    save_figure(figure, path)
    return True


def _pooled(results: dict[int, dict], key: str) -> np.ndarray | None:
    parts = [r["curves"][key] for r in results.values() if key in r["curves"]]
    return np.concatenate([np.atleast_2d(p) if p.ndim > 1 else p[None] for p in parts]) if parts else None


def _curve_plots(family: str, model: str, results: dict[int, dict], out: Path) -> list[tuple[str, str]]:
    """Family plots of one model (generated pooled over seeds vs training); returns (caption, file) pairs."""
    plt = _pyplot()
    first = next(iter(results.values()))["curves"]
    made = []

    def save(figure, name, caption):
        save_figure(figure, out / f"{model}_{name}.png")
        made.append((caption, f"{model}_{name}.png"))

    if "train_rdf" in first:
        figure, axis = plt.subplots(figsize=(6, 3.6))
        axis.plot(first["r"], first["train_rdf"], label="training", color="black")
        for seed, r in results.items():
            axis.plot(r["curves"]["r"], r["curves"]["gen_rdf"], label=f"generated (seed {seed})", lw=1)
        axis.set(xlabel="r (Å)", ylabel="g(r)", xlim=(0, 8), title=f"{model}: radial distribution")
        axis.legend(fontsize="small")
        save(figure, "rdf", "Radial distribution function, generated vs training")
        figure, axis = plt.subplots(figsize=(6, 3.6))
        axis.plot(first["angle"], 100 * first["train_angle"], label="training", color="black")
        for seed, r in results.items():
            axis.plot(r["curves"]["angle"], 100 * r["curves"]["gen_angle"], label=f"generated (seed {seed})", lw=1)
        axis.set(xlabel="bond angle (°)", ylabel="fraction (%)", title=f"{model}: CrystalNN bond angles")
        axis.legend(fontsize="small")
        save(figure, "angles", "Bond-angle distribution, generated vs training")
    if "train_fingerprint" in first:
        generated = np.mean([r["curves"]["gen_fingerprint"] for r in results.values()], axis=0)
        index = np.arange(len(generated))
        figure, axis = plt.subplots(figsize=(9, 3.4))
        axis.bar(index - 0.2, first["train_fingerprint"], width=0.4, label="training")
        axis.bar(index + 0.2, generated, width=0.4, label="generated (mean over seeds)")
        label = "cluster probability" if family == "alloy" else "mean fingerprint value"
        axis.set(xlabel="fingerprint component", ylabel=label, title=f"{model}: {'cluster' if family == 'alloy' else 'motif'} fingerprint")
        axis.legend(fontsize="small")
        save(figure, "fingerprint", "Mean fingerprint (motif or cluster probabilities), generated vs training")
    if "train_sro" in first:
        generated = _pooled(results, "gen_sro")
        figure, axes = plt.subplots(2, 6, figsize=(16, 5))
        bins = np.linspace(-1, 1, 41)
        for k, (axis, name) in enumerate(zip(axes.ravel(), SRO_LABELS)):
            axis.hist(first["train_sro"][:, k], bins, alpha=0.5, density=True, label="training")
            axis.hist(generated[:, k], bins, alpha=0.5, density=True, label="generated")
            axis.set_title(name, fontsize=9)
        axes[0, 0].legend(fontsize=7)
        figure.suptitle(f"{model}: Warren–Cowley SRO per pair and shell")
        save(figure, "sro", "Warren–Cowley short-range order per pair (1NN top row, 2NN bottom row)")
    if "train_cluster" in first:
        generated = _pooled(results, "gen_cluster")
        figure, axis = plt.subplots(figsize=(10, 3.6))
        positions = np.arange(first["train_cluster"].shape[1])
        for offset, data, label in ((-0.15, first["train_cluster"], "training"), (0.15, generated, "generated")):
            axis.errorbar(positions + offset, data.mean(axis=0), yerr=data.std(axis=0), fmt="o", ms=3, lw=1,
                          label=label)
        axis.set(xlabel="cluster (0–2 monomers Cr Fe Ni, then dimers by shell)", ylabel="probability",
                 title=f"{model}: cluster-count distributions")
        axis.legend(fontsize="small")
        save(figure, "clusters", "Per-structure cluster probabilities: mean ± standard deviation over structures")
    if "train_energy" in first:
        generated = np.concatenate([r["curves"]["gen_energy"] for r in results.values()])
        reference = first["train_energy"].mean()
        figure, axis = plt.subplots(figsize=(6, 3.6))
        bins = np.arange(-5, 15.5, 0.5)
        axis.hist(1000 * (first["train_energy"] - reference), bins, alpha=0.5, density=True, label="training")
        axis.hist(1000 * (generated - reference), bins, alpha=0.5, density=True, label="generated")
        axis.set(xlabel="CE formation energy − training mean (meV/atom)", ylabel="density",
                 title=f"{model}: cluster-expansion energy")
        axis.legend(fontsize="small")
        save(figure, "ce_energy", "Cluster-expansion formation energy, generated vs training")
    return made


def _pictures(bench: "Bench", model: str, path: Path) -> bool:
    """Generated (scored) and training structures side by side, drawn with ASE."""
    from ase.visualize.plot import plot_atoms  # pulls in matplotlib; only for reports

    n = bench.config.report.n_pictures
    generated = []
    for seed in bench.config.seeds:
        file = bench.stage_dir(model, seed, "score") / "gen.extxyz"
        if file.is_file() and file.stat().st_size:
            generated = read_structure_set(file).to_ase()[:n]
            break
    training = read_extxyz(bench.data_dir / "train.extxyz")[:n].to_ase()
    if not generated or n < 1:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.4), squeeze=False)
    for row, (label, structures) in enumerate((("generated", generated), ("training", training))):
        for k in range(n):
            axis = axes[row, k]
            axis.set_axis_off()
            if k < len(structures):
                plot_atoms(structures[k], axis, radii=0.6, rotation="10x,20y,0z")
                axis.set_title(f"{label} {k}", fontsize=9)
    save_figure(figure, path)
    return True


# ---------------------------------------------------------------------- report
def _failures(bench: "Bench") -> list[str]:
    lines = []
    for entry, seed in bench.units():
        for stage in ("train", "sample", "postprocess", "relax", "score"):
            failed = bench.stage_dir(entry.name, seed, stage) / "failed.json"
            if failed.is_file():
                lines.append(f"{entry.name} seed {seed}: {stage} failed: {json.loads(failed.read_text())['error']}")
    return lines


def write(bench: "Bench") -> dict:
    """Write DIR/metrics.json, DIR/report.md, DIR/report.html and DIR/report/*.png; returns a summary."""
    out = bench.out
    figures = out / "report"
    figures.mkdir(parents=True, exist_ok=True)
    family = bench.config.family
    summaries, per_seed, sections = {}, {}, []
    for entry in bench.config.models:
        results = _seed_results(bench, entry.name)
        if not results:
            continue
        per_seed[entry.name] = {str(seed): r["metrics"] for seed, r in results.items()}
        metrics = {name: summarise(results, name, bench.config.metrics.seed) for name in METRICS[family]}
        summaries[entry.name] = {"n_seeds": len(results), "metrics": metrics, "relaxation": _relax_summary(results),
                                 "failure_causes": _failure_causes(bench, entry.name, results),
                                 "species_accuracy": _species_accuracy(bench, entry.name, results)}
        plots = []
        if _training_plot(bench, entry.name, figures / f"{entry.name}_losses.png",
                          lambda header: [k for k in LOSS_KEYS if k in header], "loss", "training curves"):
            plots.append(("Training curves", f"{entry.name}_losses.png"))
        if _training_plot(bench, entry.name, figures / f"{entry.name}_bench_metrics.png",
                          lambda header: [k for k in header if k.startswith("bench_")], "distance to training set",
                          "benchmark metrics during training"):
            plots.append(("Benchmark metrics of samples drawn during training (eval.every)",
                          f"{entry.name}_bench_metrics.png"))
        plots += _curve_plots(family, entry.name, results, figures)
        if _pictures(bench, entry.name, figures / f"{entry.name}_structures.png"):
            plots.append(("Generated (top) and training (bottom) structures", f"{entry.name}_structures.png"))
        sections.append((entry.name, plots))
    document = {"family": family, "dataset": _dataset_name(bench), "seeds": list(bench.config.seeds),
                "n_generated": bench.config.n_generated, "models": summaries, "per_seed": per_seed,
                "failures": _failures(bench)}
    atomic_write_text(out / "metrics.json", json.dumps(document, indent=2, sort_keys=True) + "\n")
    table = tables(bench, summaries)
    markdown = [f"# Dismai-Bench report: {family}, dataset {_dataset_name(bench)}", "",
                f"{len(bench.config.seeds)} seed(s) per model, {bench.config.n_generated} structures generated "
                f"per seed; relaxation: {bench.config.relax.potential}.", "", table, ""]
    if document["failures"]:
        markdown += ["## Failures", ""] + [f"- {line}" for line in document["failures"]] + [""]
    for model, plots in sections:
        markdown += [f"## {model}", ""]
        markdown += [f"![{caption}](report/{file})\n\n{caption}\n" for caption, file in plots]
    text = "\n".join(markdown)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", _html(text, figures))
    return {"models": sorted(summaries)}


def _html(markdown: str, figures: Path) -> str:
    """A self-contained HTML rendering of the report's Markdown (tables, headings, embedded PNGs)."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-")]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            caption, file = line[2:].split("](", 1)
            data = base64.b64encode((figures / Path(file.rstrip(")")).name).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Dismai-Bench report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
