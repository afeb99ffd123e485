"""Benchmark metrics inside training: a :class:`dismax.training.Evaluation` built at the CLI level.

Every ``every`` epochs (and after the last) each ensemble member generates ``n_samples`` structures, which
are post-processed as in the benchmark (move atoms apart / lattice-site assignment) and scored against the
training set with the family's metrics: alloy ``d_cluster``, a-Si ``d_rdf`` and ``d_angle``, interface
``d_all``. The values go to ``metrics.csv`` as ``bench_<metric>`` columns (NaN when every sample was
rejected). Model packages and the training loop never import :mod:`dismax.bench`; the bench CLI passes this
evaluation to a model's ``train(config, run, evaluation)``.
"""

from __future__ import annotations

import jax
import numpy as np

from dismax.bench.cli import postprocess
from dismax.bench.pipeline import ScoreOptions, score
from dismax.structures import Crystals, StructureSet
from dismax.training import Evaluation

METRICS = {"alloy": ("d_cluster",), "a_si": ("d_rdf", "d_angle"), "interface": ("d_all",)}
N_REPLICATES = 10   # the bootstrap CI is not logged; a few replicates keep the evaluation cheap


def columns(family: str) -> tuple[str, ...]:
    """metrics.csv columns written by the evaluation of ``family``."""
    return tuple(f"bench_{name}" for name in METRICS[family])


def benchmark_metrics(family: str, train: Crystals, generated: Crystals, options: ScoreOptions) -> dict[str, float]:
    """The family's in-training metrics of one batch of generated structures (NaN if none survives)."""
    accepted, _ = postprocess(family, StructureSet.from_structures([generated]))
    if accepted is None:
        return {column: float("nan") for column in columns(family)}
    metrics = score(family, train, accepted, options).metrics
    return {f"bench_{name}": float(metrics[name]["value"]) if name in metrics else float("nan")
            for name in METRICS[family]}


def benchmark_evaluation(family: str, train: Crystals, every: int, n_samples: int, seed: int = 0,
                         options: ScoreOptions | None = None, monitor: str | None = None) -> Evaluation:
    """An Evaluation that samples ``n_samples`` structures per member and logs the family's metrics;
    with ``monitor`` (one of them, e.g. ``d_rdf``) the run's ``best/`` checkpoint is chosen by it."""
    options = options or ScoreOptions(n_replicates=N_REPLICATES, workers=1)

    def evaluate(task, state, epoch):
        rows = []
        for member in range(len(task.members)):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), member)
            generated = task.sample(state, member, n_samples, key).to_numpy()
            rows.append(benchmark_metrics(family, train, generated, options))
        return {column: np.array([row[column] for row in rows]) for column in columns(family)}

    if monitor is not None and monitor not in METRICS[family]:
        raise ValueError(f"monitor {monitor!r} is not one of the {family} metrics {METRICS[family]}")
    return Evaluation(every=every, columns=columns(family), evaluate=evaluate,
                      monitor=None if monitor is None else f"bench_{monitor}")
