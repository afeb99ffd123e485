"""Distances between mean fingerprints and their structure-level pivotal bootstrap confidence intervals.

Matches the published metric scripts: NumPy ``default_rng(seed)`` (seed 7) re-created for every metric,
``choice(n, n, replace=True)`` per replicate (1000 replicates), NumPy percentiles (linear) at 2.5 / 97.5,
pivotal interval [2 s - P_97.5, 2 s - P_2.5] (Wasserman eq. 8.6). Several fingerprints of the same
structures (species blocks, vacancy flags) reuse the same resampled indices.

Small samples: a distance between means is biased upward, so with few structures the resampled distances
can all exceed the observed one and the pivotal interval [2 s - P_97.5, 2 s - P_2.5] lands below it, even
below zero (d_cluster 0.0023 with "95 % CI" [-0.0174, -0.0048] from 4 structures). Every estimate checks its
interval against the statistic and its support and carries a ``warning`` (also logged) when the interval
leaves the support or excludes the value; ``method="percentile"`` gives [P_2.5, P_97.5], which always stays
within the support (but may still exclude the value; the warning says so). The default stays the published
pivotal interval, so numbers remain comparable with the published CIs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import numpy as np

log = logging.getLogger("dismax")

N_REPLICATES = 1000
SEED = 7
CONFIDENCE = 0.95
METHODS = ("pivotal", "percentile")


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval; ``lower_error`` = value - ci_low and ``upper_error`` =
    ci_high - value (pivotal: P_hi - s and s - P_lo, as the published CSVs report them). ``warning`` is
    empty unless the interval leaves the statistic's support or excludes the value."""

    value: float
    ci_low: float
    ci_high: float
    lower_error: float
    upper_error: float
    warning: str = ""
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)   # (R,) statistic values

    def to_dict(self) -> dict:
        """The JSON fields (everything but the replicates)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "replicates"}


def bootstrap_indices(n_structures: int, n_replicates: int = N_REPLICATES, seed: int = SEED,
                      sample_size: int | None = None) -> np.ndarray:
    """Resampled structure indices (n_replicates, sample_size), as the published loop draws them."""
    rng = np.random.default_rng(seed)
    size = n_structures if sample_size is None or sample_size < 0 else sample_size
    population = np.arange(n_structures)
    return np.stack([rng.choice(population, size=size, replace=True) for _ in range(n_replicates)])


def pivotal_interval(statistic: float, replicates: np.ndarray, confidence: float = CONFIDENCE,
                     method: str = "pivotal", support: tuple[float, float] = (-np.inf, np.inf)) -> Estimate:
    """Interval of ``statistic`` from bootstrap ``replicates`` (R,): ``pivotal`` (published) or
    ``percentile``; checked against ``support`` (the statistic's possible values) and the value itself."""
    if method not in METHODS:
        raise ValueError(f"bootstrap method must be one of {METHODS}, got {method!r}")
    low = np.percentile(replicates, (1 - confidence) / 2 * 100)
    high = np.percentile(replicates, (confidence + (1 - confidence) / 2) * 100)
    ci_low, ci_high = (2 * statistic - high, 2 * statistic - low) if method == "pivotal" else (low, high)
    problems = []
    if ci_low < support[0] or ci_high > support[1]:
        problems.append(f"leaves the support [{support[0]:g}, {support[1]:g}]")
    if not ci_low <= statistic <= ci_high:
        problems.append("excludes the value")
    warning = ""
    if problems:
        warning = (f"{confidence:.0%} {method} bootstrap interval [{ci_low:.4g}, {ci_high:.4g}] of {statistic:.4g} "
                   f"{' and '.join(problems)}: too few structures for a reliable interval")
        log.warning("%s", warning)
    return Estimate(float(statistic), float(ci_low), float(ci_high), float(statistic - ci_low),
                    float(ci_high - statistic), warning, np.asarray(replicates, float))


def mean_over_groups(values, replicates, seed: int = SEED, confidence: float = CONFIDENCE,
                     support: tuple[float, float] = (-np.inf, np.inf)) -> Estimate:
    """Pivotal interval of the mean of ``values`` (G,), one statistic per independent group (e.g. the
    structures of one trained model), from each group's own structure-level bootstrap ``replicates`` (G, R).

    Replicate r of the mean averages one replicate of every group; the groups' replicates are paired by
    independent random permutations (``default_rng(seed)``; group 0 keeps its order), so every group is
    resampled independently even when the groups drew the same resampled indices (the published seed 7).
    With one group this is exactly that group's interval.
    """
    replicates = np.asarray(replicates, float)
    rng = np.random.default_rng(seed)
    paired = [replicates[0]] + [group[rng.permutation(len(group))] for group in replicates[1:]]
    return pivotal_interval(float(np.mean(values)), np.mean(paired, axis=0), confidence, "pivotal", support)


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance along the last axis."""
    return np.sqrt(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=-1))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity along the last axis (scipy's ``cosine``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return 1.0 - np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


DISTANCES = {"euclidean": euclidean, "cosine": cosine_distance}
SUPPORTS = {"euclidean": (0.0, np.inf), "cosine": (0.0, 2.0)}


def resampled_means(per_structure: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean vectors (R, D) of per-structure vectors (S, D) over each replicate's indices (R, n)."""
    per_structure = np.asarray(per_structure, float)
    n_structures = per_structure.shape[0]
    weights = np.zeros((indices.shape[0], n_structures))
    np.add.at(weights, (np.repeat(np.arange(indices.shape[0]), indices.shape[1]), indices.ravel()), 1.0)
    return weights @ per_structure / indices.shape[1]


def distance_estimate(train_mean: np.ndarray, per_structure: np.ndarray, indices: np.ndarray,
                      metric: str = "euclidean", confidence: float = CONFIDENCE, method: str = "pivotal") -> Estimate:
    """Distance between the training mean (D,) and the mean of per-structure vectors (S, D), with CI."""
    distance = DISTANCES[metric]
    value = distance(train_mean, np.mean(per_structure, axis=0))
    replicates = distance(np.asarray(train_mean)[None, :], resampled_means(per_structure, indices))
    return pivotal_interval(float(value), replicates, confidence, method, SUPPORTS[metric])


def mean_estimate(per_structure: np.ndarray, indices: np.ndarray, confidence: float = CONFIDENCE,
                  method: str = "pivotal") -> Estimate:
    """Mean of a per-structure scalar (S,) with its CI (e.g. percentage with vacancies); the support is
    the range of the per-structure values."""
    values = np.asarray(per_structure, float)
    replicates = values[indices].mean(axis=1)
    return pivotal_interval(float(values.mean()), replicates, confidence, method,
                            (float(values.min()), float(values.max())))


def mean_band(per_structure: np.ndarray, indices: np.ndarray, confidence: float = CONFIDENCE) -> tuple:
    """Generated mean (D,) with per-component pivotal bounds (D,), (D,) (the plotted CI bands)."""
    mean = np.mean(per_structure, axis=0)
    replicates = resampled_means(per_structure, indices)
    low = np.percentile(replicates, (1 - confidence) / 2 * 100, axis=0)
    high = np.percentile(replicates, (confidence + (1 - confidence) / 2) * 100, axis=0)
    return mean, 2 * mean - high, 2 * mean - low
