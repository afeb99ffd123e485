"""One command from a dataset to a Dismai-Bench report: ``python -m dismax.bench run|status|score``.

An output directory ``DIR`` holds::

    DIR/bench.yaml                     the resolved bench config (a rerun must use the same one)
    DIR/data/                          train.extxyz, val.extxyz: the dataset every model trains and is scored on
    DIR/<model>/<seed>/train/          the training run directory (layout of ``python -m dismax.train``)
    DIR/<model>/ensemble/train/        instead, when the model trains ensembles (``seed_ensemble`` of its
                                       module) and ``ensemble`` is true: one run, a vmapped ensemble whose
                                       member k is seed k, shared by every seed's later stages
    DIR/<model>/<seed>/sample/         gen.extxyz: n_generated structures (a sampler that cannot decode some
                                       leaves them out and lists them in gen.extxyz.summary.json; they count
                                       as failed_decode, and an all-failed sample is an empty file)
    DIR/<model>/<seed>/postprocess/    gen_clean.extxyz, status.csv (move apart / lattice-site assignment)
    DIR/<model>/<seed>/relax/          relaxed.extxyz, results.csv (nothing when relax.potential is none)
    DIR/<model>/<seed>/score/          gen.extxyz + status.csv (exactly what ``bench metrics`` reads), then
                                       metrics.json, metrics.csv, structures.csv, curves.npz and
                                       replicates.npz (every metric's bootstrap replicates)
    DIR/report/ DIR/report.md DIR/report.html DIR/metrics.json     the report (see :mod:`dismax.bench.report`)
    DIR/timings.json                   wall time of every finished stage

With ``eval.best_by`` (a metric of the in-training evaluation, e.g. d_rdf) training keeps ``best/`` by that
metric (mean over the members) and every seed samples from ``best/`` instead of the latest checkpoint.

Every stage directory receives ``done.json`` (its completion record) last, atomically, after its outputs;
a rerun skips stages that have one and resumes the first unfinished stage (training resumes from its
checkpoints, relaxation from its results file). A stage that raises writes ``failed.json``; the other
models and seeds go on and the report lists the failure.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import time
import traceback
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import yaml

from dismax.bench import report
from dismax.bench.evaluation import METRICS as EVAL_METRICS
from dismax.bench.evaluation import benchmark_evaluation
from dismax.bench.cli import check_scored_structures, default_cache, postprocess_file, write_postprocessed
from dismax.bench.pipeline import (FAMILIES, ScoreOptions, check_family, read_status, records_csv, score,
                                   write_report)
from dismax.bench.postprocess import MAX_ITER, MIN_DIST
from dismax.config import from_dict, load_config, merge, parse_overrides, read_yaml, to_dict
from dismax.data.registry import available as available_datasets
from dismax.data.registry import ensure_dataset
from dismax.errors import DismaxConfigError, DismaxError, DismaxInputError
from dismax.io import read_extxyz, read_structure_set, write_extxyz
from dismax.relax import cli as relax_cli
from dismax.potentials.fire import DEFAULT_CHUNK_SIZE, DEFAULT_FMAX, DEFAULT_MAX_STEPS
from dismax.models import model_module
from dismax.potentials import is_potential_name, potential_names
from dismax.runs import RunDir, atomic_write_bytes, atomic_write_text, exclusive_lock, log, progress
from dismax.train import prepare_run
from dismax.validation import read_sample_summary, sample_summary_path

STAGES = ("train", "sample", "postprocess", "relax", "score")
DONE, FAILED = "done.json", "failed.json"
FAILURE_FMAX_MARGIN = 0.001     # eV/Å: a relaxed structure fails if its final max force exceeds fmax + this
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


# ---------------------------------------------------------------------- config
@dataclass(frozen=True)
class DatasetSection:
    """A registered/buildable dataset (``name``, ``size``, ``seed``) or explicit extxyz files."""

    name: str = ""
    size: str = "small"
    seed: int = 0
    train_file: Optional[str] = None
    val_file: Optional[str] = None


@dataclass(frozen=True)
class ModelEntry:
    """One generator: a training ``config`` (YAML, relative to the bench config) with dotted ``overrides``,
    or an existing file of ``generated`` structures (then the train and sample stages only copy it)."""

    name: str
    config: Optional[str] = None
    overrides: tuple[str, ...] = ()
    generated: Optional[str] = None


@dataclass(frozen=True)
class PostprocessSection:
    min_dist: float = MIN_DIST
    max_iter: int = MAX_ITER
    reference_compatible: bool = False
    alignment: str = ScoreOptions.alignment
    variant: str = ScoreOptions.reference_variant


@dataclass(frozen=True)
class RelaxSection:
    """``potential`` none (alloys), a name of :func:`dismax.potentials.potential_names` (e.g. ``sw_a_si``, the
    interface's ``interface_chgnet``), or ``run:DIR`` (a fitted potential's run directory)."""

    potential: str = "none"
    fmax: float = DEFAULT_FMAX
    max_steps: int = DEFAULT_MAX_STEPS
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class MetricsSection:
    seed: int = ScoreOptions.seed
    n_replicates: int = ScoreOptions.n_replicates
    workers: Optional[int] = None
    angle_cutoff: float = ScoreOptions.angle_cutoff


@dataclass(frozen=True)
class EvalSection:
    """Benchmark metrics inside training: every ``every`` epochs (0 = off) sample ``n_samples`` structures
    per member and log the family's metrics to the run's metrics.csv (see :mod:`dismax.bench.evaluation`)."""

    every: int = 0
    n_samples: int = 4
    best_by: str = ""         # e.g. d_rdf: keep best/ by this metric and sample from it ("" = latest checkpoint)


@dataclass(frozen=True)
class ReportSection:
    n_pictures: int = 2       # generated and training structures drawn per model


@dataclass(frozen=True)
class BenchConfig:
    family: Literal["alloy", "a_si", "interface"]
    dataset: DatasetSection
    models: tuple[ModelEntry, ...]
    seeds: tuple[int, ...] = (0,)
    n_generated: int = 1000
    postprocess: PostprocessSection = PostprocessSection()
    relax: RelaxSection = RelaxSection()
    metrics: MetricsSection = MetricsSection()
    eval: EvalSection = EvalSection()
    report: ReportSection = ReportSection()
    ensemble: bool = True     # train all seeds of a model as one vmapped ensemble where the model supports it


def load_bench_config(path: str | Path, overrides: list[str] = ()) -> tuple[BenchConfig, Path]:
    """The bench config from YAML plus dotted overrides, validated, and the directory its paths are relative to."""
    path = Path(path)
    config = from_dict(BenchConfig, merge(read_yaml(path), parse_overrides(overrides)))
    return config, path.resolve().parent


def _model_config_path(entry: ModelEntry, base: Path) -> Path:
    path = Path(entry.config)
    return path if path.is_absolute() else base / path


def model_config(entry: ModelEntry, base: Path, seed: int, data_dir: Path, extra: tuple[str, ...] = ()):
    """The model's training config with the bench's seed, data files and ``extra`` overrides applied (validated)."""
    path = _model_config_path(entry, base)
    plain = load_config(path, entry.overrides)
    data_overrides = [f"data.train_file={data_dir / 'train.extxyz'}"]
    if hasattr(plain, "data") and hasattr(plain.data, "val_file"):
        data_overrides.append(f"data.val_file={data_dir / 'val.extxyz'}")
    return load_config(path, [*entry.overrides, f"seed={seed}", *data_overrides, *extra])


def plan_ensembles(config: BenchConfig, base: Path, data_dir: Path) -> dict[str, list[str]]:
    """Model name -> the overrides that train all seeds as one ensemble, for every model that can (several
    seeds, ``ensemble`` true, a module with ``seed_ensemble`` that accepts the seeds)."""
    plan = {}
    if not config.ensemble or len(config.seeds) < 2:
        return plan
    for entry in config.models:
        if entry.generated is not None:
            continue
        model_cfg = model_config(entry, base, config.seeds[0], data_dir)
        hook = getattr(model_module(model_cfg.model.name), "seed_ensemble", None)
        overrides = hook(model_cfg, list(config.seeds)) if hook is not None else None
        if overrides is not None:
            plan[entry.name] = list(overrides)
    return plan


def validate(config: BenchConfig, base: Path, out: Path) -> None:
    """Check everything that can be checked before a stage runs; raises ``DismaxError`` for people."""
    if not config.models:
        raise DismaxConfigError("config key 'models' lists no model")
    names = [m.name for m in config.models]
    for name in names:
        if not _NAME.match(name):
            raise DismaxConfigError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    if len(set(names)) != len(names):
        raise DismaxConfigError(f"model names must be unique, got {names}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise DismaxConfigError(f"config key 'seeds' must list distinct seeds, got {list(config.seeds)}")
    if config.eval.every < 0 or config.eval.n_samples < 1:
        raise DismaxConfigError(f"config keys 'eval.every' (>= 0) and 'eval.n_samples' (>= 1) are "
                                f"{config.eval.every} and {config.eval.n_samples}")
    if config.eval.best_by and (config.eval.best_by not in EVAL_METRICS[config.family] or not config.eval.every):
        raise DismaxConfigError(f"config key 'eval.best_by' is {config.eval.best_by!r}; it needs eval.every > 0 and "
                                f"one of the {config.family} in-training metrics: "
                                f"{', '.join(EVAL_METRICS[config.family])}")
    if config.n_generated < 1:
        raise DismaxConfigError(f"config key 'n_generated' must be at least 1, got {config.n_generated}")
    potential = config.relax.potential
    if potential != "none" and not is_potential_name(potential):
        raise DismaxConfigError(f"config key 'relax.potential' is {potential!r}; use none, run:DIR or one of "
                                f"{', '.join(potential_names())}")
    dataset = config.dataset
    if dataset.train_file:
        for file in (dataset.train_file, dataset.val_file):
            if file and not Path(file).is_file():
                raise DismaxInputError(f"dataset file '{file}' does not exist")
    elif dataset.name not in available_datasets():
        raise DismaxInputError(f"dataset {dataset.name!r} is neither buildable nor registered; available: "
                               f"{', '.join(available_datasets())}")
    for entry in config.models:
        if (entry.config is None) == (entry.generated is None):
            raise DismaxConfigError(f"model '{entry.name}' needs exactly one of 'config' or 'generated'")
        if entry.generated is not None:
            read_generated(entry.generated, config.family)
            continue
        if not _model_config_path(entry, base).is_file():
            raise DismaxConfigError(f"model '{entry.name}': config file '{_model_config_path(entry, base)}' "
                                    "does not exist")
        trained = model_config(entry, base, config.seeds[0], out / "data")
        train_parameters = inspect.signature(model_module(trained.model.name).train).parameters
        if config.eval.every and "evaluation" not in train_parameters:
            raise DismaxConfigError(f"model '{entry.name}' ({trained.model.name}) has no in-training evaluation; "
                                    "set eval.every: 0")


# ---------------------------------------------------------------------- stage bookkeeping
def stage_record(directory: Path) -> dict | None:
    """The completion record of a stage directory, or None if the stage has not finished."""
    path = Path(directory) / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def run_stage(directory: Path, name: str, work: Callable[[Path], dict]) -> dict:
    """Run ``work(directory)`` unless the stage has finished; write its completion record with wall time."""
    record = stage_record(directory)
    if record is not None:
        return record
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FAILED).unlink(missing_ok=True)
    start = time.perf_counter()
    summary = work(directory)
    record = {"stage": name, "seconds": round(time.perf_counter() - start, 3), **summary}
    atomic_write_text(directory / DONE, json.dumps(record, indent=2) + "\n")
    return record


@dataclass
class Bench:
    """A bench run: its config, the directory its model configs are relative to, the output directory and
    the ensemble plan (model name -> overrides that train all seeds as one run; see :func:`plan_ensembles`)."""

    config: BenchConfig
    base: Path
    out: Path
    ensembles: dict[str, list[str]] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def stage_dir(self, model: str, seed: int, stage: str) -> Path:
        if stage == "train" and model in self.ensembles:
            return self.out / model / "ensemble" / "train"
        return self.out / model / str(seed) / stage

    def member(self, model: str, seed: int) -> int:
        """The ensemble member of ``seed`` in the model's training run (0 for a one-seed run)."""
        return self.config.seeds.index(seed) if model in self.ensembles else 0

    def units(self) -> list[tuple[ModelEntry, int]]:
        return [(entry, seed) for entry in self.config.models for seed in self.config.seeds]


def _write_timings(bench: Bench) -> None:
    timings = {}
    record = stage_record(bench.data_dir)
    if record:
        timings["data"] = record["seconds"]
    for entry, seed in bench.units():
        for stage in STAGES:
            directory = bench.stage_dir(entry.name, seed, stage)
            record = stage_record(directory)
            if record:
                timings[directory.relative_to(bench.out).parent.as_posix() + f"/{stage}"] = record["seconds"]
    record = stage_record(bench.out / "report")
    if record:
        timings["report"] = record["seconds"]
    timings["total"] = round(sum(timings.values()), 3)
    atomic_write_text(bench.out / "timings.json", json.dumps(timings, indent=2) + "\n")


# ---------------------------------------------------------------------- stages
def _copy(source: Path, target: Path) -> None:
    atomic_write_bytes(target, Path(source).read_bytes())


def stage_data(bench: Bench, directory: Path) -> dict:
    """Copy the dataset's training (and validation) structures into DIR/data, validated."""
    dataset = bench.config.dataset
    if dataset.train_file:
        train, val = Path(dataset.train_file), Path(dataset.val_file or dataset.train_file)
    else:
        source = ensure_dataset(dataset.name, dataset.size, dataset.seed)
        train, val = source / "train.extxyz", source / "val.extxyz"
    structures = read_extxyz(train)
    check_family(bench.config.family, structures, str(train))
    read_extxyz(val)
    _copy(train, directory / "train.extxyz")
    _copy(val, directory / "val.extxyz")
    return {"source": str(train), "n_train": len(structures)}


class _LogHandlers:
    """Removes the log handlers a training run attaches (its train.log) once the stage is over."""

    def __enter__(self):
        self.before = list(log.handlers)

    def __exit__(self, *exc):
        for handler in [h for h in log.handlers if h not in self.before]:
            log.removeHandler(handler)
            handler.close()


def stage_train(bench: Bench, entry: ModelEntry, seed: int, directory: Path) -> dict:
    """Train (or resume) the model in the stage directory through the model registry, as ``dismax.train``;
    one ensemble run for all seeds when the plan says so."""
    if entry.generated is not None:
        return {"model": "external file"}
    ensemble = bench.ensembles.get(entry.name)
    if ensemble is not None:
        seed = bench.config.seeds[0]
    config = model_config(entry, bench.base, seed, bench.data_dir, tuple(ensemble or ()))
    model = model_module(config.model.name)
    model.check(config)
    section = bench.config.eval
    evaluation = []
    if section.every:
        evaluation = [benchmark_evaluation(bench.config.family, read_extxyz(bench.data_dir / "train.extxyz"),
                                           section.every, section.n_samples, seed,
                                           monitor=section.best_by or None)]
    with _LogHandlers(), exclusive_lock(directory, "run directory"):
        run = prepare_run(config, directory)
        model.train(config, run, *evaluation)
    return {"model": config.model.name, "seeds": list(bench.config.seeds) if ensemble is not None else [seed]}


def read_generated(path: str | Path, family: str):
    """(structures or None, sample summary or None) of a generated file: None structures when its sample
    summary says every structure failed (the file is then empty); checked against the family's elements."""
    summary = read_sample_summary(path)
    if summary is not None and not summary.written_ids:
        return None, summary
    structures = read_structure_set(path)
    check_family(family, structures, str(path))
    return structures, summary


def stage_sample(bench: Bench, entry: ModelEntry, seed: int, directory: Path) -> dict:
    """n_generated structures into gen.extxyz, as ``dismax.sample`` writes them (or the external file, with
    its sample summary if it has one). A sampler that cannot decode some structures leaves them out and says
    so in gen.extxyz.summary.json; post-processing counts them as failed (all of them, if the file is empty)."""
    target = directory / "gen.extxyz"
    if entry.generated is not None:
        _copy(entry.generated, target)
        if sample_summary_path(entry.generated).is_file():
            _copy(sample_summary_path(entry.generated), sample_summary_path(target))
    else:
        run = RunDir(bench.stage_dir(entry.name, seed, "train"))
        config = load_config(run.config_path)
        checkpoint = "best" if bench.config.eval.best_by else "latest"
        model_module(config.model.name).sample(run, bench.config.n_generated, target, seed,
                                               member=bench.member(entry.name, seed), checkpoint=checkpoint)
    structures, summary = read_generated(target, bench.config.family)
    record = {"n": 0 if structures is None else len(structures)}
    return record if summary is None else {**record, "n_failed_decode": len(summary.failed_ids)}


def stage_postprocess(bench: Bench, entry: ModelEntry, seed: int, directory: Path) -> dict:
    """Move atoms apart (interface, a-Si) or assign alloy lattice sites; gen_clean.extxyz + status.csv."""
    section = bench.config.postprocess
    source = bench.stage_dir(entry.name, seed, "sample") / "gen.extxyz"
    accepted, rows, n_structures = postprocess_file(bench.config.family, source, section.reference_compatible,
                                                    section.alignment, section.variant, section.min_dist,
                                                    section.max_iter)
    write_postprocessed(directory, accepted, rows)
    return {"n_accepted": 0 if accepted is None else len(accepted), "n_input": n_structures}


def stage_relax(bench: Bench, entry: ModelEntry, seed: int, directory: Path) -> dict:
    """Relax the accepted structures with the configured potential (fixed cell); nothing if potential none."""
    section = bench.config.relax
    source = bench.stage_dir(entry.name, seed, "postprocess") / "gen_clean.extxyz"
    if section.potential == "none" or source.stat().st_size == 0:
        return {"potential": section.potential, "relaxed": False}
    relax_cli.run(argparse.Namespace(input=source, out=directory, potential=section.potential, fmax=section.fmax,
                                     max_steps=section.max_steps, chunk_size=section.chunk_size))
    return {"potential": section.potential, "relaxed": True}


def score_inputs(bench: Bench, entry: ModelEntry, seed: int):
    """(structures to score or None, statuses ID -> status) from the postprocess and relax outputs.

    A structure relaxed with a final max force above fmax + 0.001 eV/Å is ``failed_relax`` (the
    published failure rule); IDs are positions in the sampled file.
    """
    post = bench.stage_dir(entry.name, seed, "postprocess")
    statuses = read_status(post / "status.csv")
    clean_ids = [i for i in sorted(statuses) if statuses[i] == "ok"]
    clean_file = post / "gen_clean.extxyz"
    if not clean_ids:
        return None, statuses
    relax_dir = bench.stage_dir(entry.name, seed, "relax")
    if not (relax_dir / "results.csv").is_file():
        return read_structure_set(clean_file), statuses
    results = _relax_results(relax_dir / "results.csv")
    relaxed, infos = (read_structure_set(relax_dir / "relaxed.extxyz", with_info=True)
                      if (relax_dir / "relaxed.extxyz").is_file() else (None, []))
    frame_of = {int(info["id"]): frame for frame, info in enumerate(infos)}
    limit = bench.config.relax.fmax + FAILURE_FMAX_MARGIN
    keep = []
    for clean_index, structure_id in enumerate(clean_ids):
        row = results[clean_index]
        if row["status"] == "failed" or clean_index not in frame_of:
            statuses[structure_id] = "failed_relax"
        elif row["fmax"] > limit:
            statuses[structure_id] = "failed_relax_max_steps"
        else:
            keep.append(frame_of[clean_index])
    return (relaxed.select(keep) if keep else None), statuses


def _relax_results(path: Path) -> dict[int, dict]:
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        i, status, steps, e_initial, e_final, fmax = line.split(",")
        rows[int(i)] = {"status": status, "steps": int(steps), "e_initial": float(e_initial),
                        "e_final": float(e_final), "fmax": float(fmax)}
    return rows


def score_options(bench: Bench) -> ScoreOptions:
    metrics, post = bench.config.metrics, bench.config.postprocess
    return ScoreOptions(reference_compatible=post.reference_compatible, alignment=post.alignment,
                        reference_variant=post.variant, seed=metrics.seed, n_replicates=metrics.n_replicates,
                        workers=metrics.workers, cache_dir=default_cache(), progress=progress,
                        angle_cutoff=metrics.angle_cutoff)


def _save_arrays(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


def stage_score(bench: Bench, entry: ModelEntry, seed: int, directory: Path) -> dict:
    """Write the scored structures and statuses (the inputs of ``bench metrics``), then score them."""
    structures, statuses = score_inputs(bench, entry, seed)
    n_generated = bench.config.n_generated
    if structures is not None:
        write_extxyz(structures, directory / "gen.extxyz")
    atomic_write_text(directory / "status.csv", records_csv([{"id": i, "status": s} for i, s in
                                                            sorted(statuses.items())]))
    train = read_extxyz(bench.data_dir / "train.extxyz")
    if structures is not None:
        check_scored_structures(bench.config.family, train, structures, str(directory / "gen.extxyz"))
    result = score(bench.config.family, train, structures, score_options(bench), statuses, n_generated)
    write_report(directory, bench.config.family, result.metrics, result.rows, result.curves, plots=False)
    _save_arrays(directory / "curves.npz", result.curves)
    _save_arrays(directory / "replicates.npz", result.replicates)
    return {"n_scored": result.metrics["n_scored"], "n_generated": n_generated}


STAGE_FUNCTIONS = {"train": stage_train, "sample": stage_sample, "postprocess": stage_postprocess,
                   "relax": stage_relax, "score": stage_score}


# ---------------------------------------------------------------------- driver
def _prepare_out(bench: Bench) -> None:
    """Create DIR and save the resolved config; refuse a rerun whose config differs."""
    path = bench.out / "bench.yaml"
    resolved = to_dict(bench.config)
    resolved["base"] = str(bench.base)
    resolved["ensembles"] = bench.ensembles
    if path.is_file():
        previous = yaml.safe_load(path.read_text())
        previous.setdefault("ensembles", {})      # written before ensembles existed: every model per seed
        if previous != resolved:
            changed = sorted(k for k in set(previous) | set(resolved) if previous.get(k) != resolved.get(k))
            raise DismaxConfigError(f"'{bench.out}' holds a bench run with a different config (differs in "
                                    f"{', '.join(changed)}); use another --out or the same config")
    else:
        bench.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def remaining_time(plan: list[tuple[str, str, Path]]) -> str:
    """The overall ETA of a plan of (model, stage, directory): every unfinished stage is estimated by the
    mean wall time of the finished stages of the same model and kind (their completion records, also from
    earlier runs); kinds not yet timed are named (each stage shows its own progress bar with ETA)."""
    timed: dict[tuple[str, str], list[float]] = {}
    pending = {}
    for model, stage, directory in plan:
        record = stage_record(directory)
        if record is None:
            pending[directory] = (model, stage)
        else:
            timed.setdefault((model, stage), []).append(record["seconds"])
    if not pending:
        return "nothing left"
    estimate = sum(float(np.mean(timed[kind])) for kind in pending.values() if kind in timed)
    untimed = list(dict.fromkeys(f"{model} {stage}" for model, stage in pending.values()
                                 if (model, stage) not in timed))
    if not untimed:
        return f"ETA {_duration(estimate)}"
    if len(untimed) == len(set(pending.values())):
        return f"no ETA yet: {', '.join(untimed)} not yet timed"
    return f"ETA > {_duration(estimate)}: {', '.join(untimed)} not yet timed"


def execute(bench: Bench) -> list[str]:
    """Run every unfinished stage; returns one line per failed model/seed (empty if all succeeded)."""
    _prepare_out(bench)
    units = bench.units()
    total = 1 + len(units) * len(STAGES) + 1
    plan = [(entry.name, stage, bench.stage_dir(entry.name, seed, stage)) for entry, seed in units for stage in STAGES]
    started = time.perf_counter()
    count = 0

    def announce(label: str) -> None:
        nonlocal count
        count += 1
        log.info("stage %d/%d: %s (%s elapsed; %s)", count, total, label,
                 _duration(time.perf_counter() - started), remaining_time(plan))

    announce("data")
    ran_any = stage_record(bench.data_dir) is None
    run_stage(bench.data_dir, "data", lambda d: stage_data(bench, d))
    _write_timings(bench)
    failures, failed_here = [], {}      # failed_here: stage directory -> message (a shared run fails once)
    for entry, seed in units:
        for index, stage in enumerate(STAGES):
            directory = bench.stage_dir(entry.name, seed, stage)
            announce(f"{entry.name} seed {seed} {stage}")
            ran_any = ran_any or stage_record(directory) is None
            try:
                if directory in failed_here:
                    raise DismaxError(failed_here[directory])
                run_stage(directory, stage, lambda d: STAGE_FUNCTIONS[stage](bench, entry, seed, d))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # a failing model/seed must not stop the others
                message = " ".join(str(exc).split()) or type(exc).__name__
                if directory not in failed_here:
                    failed_here[directory] = message
                    atomic_write_text(directory / FAILED, json.dumps(
                        {"stage": stage, "error": message,
                         "traceback": None if isinstance(exc, DismaxError) else traceback.format_exc()}, indent=2))
                failures.append(f"{entry.name} seed {seed}: {stage} failed: {message}")
                log.error("%s", failures[-1])
                count += len(STAGES) - index - 1
                break
            finally:
                _write_timings(bench)
    announce("report")
    if ran_any or failures:
        (bench.out / "report" / DONE).unlink(missing_ok=True)
    run_stage(bench.out / "report", "report", lambda d: report.write(bench))
    _write_timings(bench)
    return failures


def stage_table(out: Path) -> str:
    """The status table of a bench output directory: one row per model/seed, one column per stage."""
    out = Path(out)
    path = out / "bench.yaml"
    if not path.is_file():
        raise DismaxInputError(f"'{out}' is not a bench output directory (no bench.yaml)")
    resolved = yaml.safe_load(path.read_text())
    resolved.pop("base", None)
    ensembles = resolved.pop("ensembles", {})
    bench = Bench(from_dict(BenchConfig, resolved), out, out, ensembles)

    def cell(directory: Path) -> str:
        record = stage_record(directory)
        if record is not None:
            return f"done {record['seconds']:.0f}s"
        if (directory / FAILED).is_file():
            return "FAILED"
        return "started" if directory.is_dir() else "-"

    rows = [("data", "", cell(bench.data_dir), *[""] * (len(STAGES) - 1))]
    for entry, seed in bench.units():
        rows.append((entry.name, str(seed), *[cell(bench.stage_dir(entry.name, seed, s)) for s in STAGES]))
    rows.append(("report", "", cell(out / "report"), *[""] * (len(STAGES) - 1)))
    header = ("model", "seed", *STAGES)
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    for entry, seed in bench.units():
        for stage in STAGES:
            failed = bench.stage_dir(entry.name, seed, stage) / FAILED
            if failed.is_file():
                lines.append(f"{entry.name} seed {seed} {stage}: {json.loads(failed.read_text())['error']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="bench config (see configs/bench/)")
    parser.add_argument("--out", default=None, help="output directory (default: bench_runs/<config name>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="bench config overrides, e.g. n_generated=8")


def run_run(args: argparse.Namespace) -> int:
    config, base = load_bench_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("bench_runs") / Path(args.config).stem
    return _finish(Bench(config, base, out))


def _finish(bench: Bench) -> int:
    validate(bench.config, bench.base, bench.out)
    bench.ensembles = plan_ensembles(bench.config, bench.base, bench.data_dir)
    failures = execute(bench)
    print(stage_table(bench.out))
    print(f"report: {bench.out / 'report.md'} and {bench.out / 'report.html'}")
    if failures:
        print(f"{len(failures)} model/seed run(s) failed; see the table above")
        return 1
    return 0


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="bench output directory")


def run_status(args: argparse.Namespace) -> int:
    print(stage_table(Path(args.dir)))
    return 0


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--train", required=True, help="training structures (extxyz)")
    parser.add_argument("--gen", required=True, help="generated structures (extxyz), from any model")
    parser.add_argument("--relax", default="none",
                        help=f"potential: none, run:DIR or one of {', '.join(potential_names())}")
    parser.add_argument("--n-generated", type=int, default=None,
                        help="number of structures originally generated (default: n_requested of the sample "
                             "summary GEN.summary.json, else the frames of --gen)")
    parser.add_argument("--out", required=True, help="output directory (resumable)")
    parser.add_argument("--replicates", type=int, default=ScoreOptions.n_replicates, help="bootstrap replicates")
    parser.add_argument("--workers", type=int, default=None, help="CrystalNN processes (default: all cores)")
    parser.add_argument("--angle-cutoff", type=float, default=ScoreOptions.angle_cutoff,
                        help=f"Å, fast cutoff bond-angle variant ({ScoreOptions.angle_cutoff})")


def run_score(args: argparse.Namespace) -> int:
    """Post-process, relax, score and report structures generated by any model."""
    structures, summary = read_generated(args.gen, args.family)
    n_frames = 0 if structures is None else len(structures)
    n_generated = (summary.n_requested if summary else n_frames) if args.n_generated is None else args.n_generated
    if n_generated < n_frames:
        raise DismaxInputError(f"--n-generated {n_generated} is smaller than the {n_frames} structures in {args.gen}")
    config = BenchConfig(family=args.family, dataset=DatasetSection(train_file=str(Path(args.train).resolve())),
                         models=(ModelEntry(name="generated", generated=str(Path(args.gen).resolve())),),
                         n_generated=n_generated, relax=RelaxSection(potential=args.relax),
                         metrics=MetricsSection(n_replicates=args.replicates, workers=args.workers,
                                                angle_cutoff=args.angle_cutoff))
    return _finish(Bench(config, Path(args.out).resolve(), Path(args.out)))
