"""Distances between mean fingerprints and their structure-level pivotal bootstrap confidence intervals.

Matches the published metric scripts: NumPy ``default_rng(seed)`` (seed 7) re-created for every metric,
``choice(n, n, replace=True)`` per replicate (1000 replicates), NumPy percentiles (linear) at 2.5 / 97.5,
pivotal interval [2 s - P_97.5, 2 s - P_2.5] (Wasserman eq. 8.6). Several fingerprints of the same
structures (species blocks, vacancy flags) reuse the same resampled indices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

N_REPLICATES = 1000
SEED = 7
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic with its pivotal bootstrap interval; ``lower_error`` = P_hi - s and ``upper_error`` =
    s - P_lo as the published CSVs report them, so ci_low = value - lower_error."""

    value: float
    ci_low: float
    ci_high: float
    lower_error: float
    upper_error: float

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_indices(n_structures: int, n_replicates: int = N_REPLICATES, seed: int = SEED,
                      sample_size: int | None = None) -> np.ndarray:
    """Resampled structure indices (n_replicates, sample_size), as the published loop draws them."""
    rng = np.random.default_rng(seed)
    size = n_structures if sample_size is None or sample_size < 0 else sample_size
    population = np.arange(n_structures)
    return np.stack([rng.choice(population, size=size, replace=True) for _ in range(n_replicates)])


def pivotal_interval(statistic: float, replicates: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Pivotal interval of ``statistic`` from bootstrap ``replicates`` (R,)."""
    low = np.percentile(replicates, (1 - confidence) / 2 * 100)
    high = np.percentile(replicates, (confidence + (1 - confidence) / 2) * 100)
    lower_error, upper_error = high - statistic, statistic - low
    return Estimate(float(statistic), float(statistic - lower_error), float(statistic + upper_error),
                    float(lower_error), float(upper_error))


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance along the last axis."""
    return np.sqrt(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=-1))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity along the last axis (scipy's ``cosine``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return 1.0 - np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


DISTANCES = {"euclidean": euclidean, "cosine": cosine_distance}


def resampled_means(per_structure: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean vectors (R, D) of per-structure vectors (S, D) over each replicate's indices (R, n)."""
    per_structure = np.asarray(per_structure, float)
    n_structures = per_structure.shape[0]
    weights = np.zeros((indices.shape[0], n_structures))
    np.add.at(weights, (np.repeat(np.arange(indices.shape[0]), indices.shape[1]), indices.ravel()), 1.0)
    return weights @ per_structure / indices.shape[1]


def distance_estimate(train_mean: np.ndarray, per_structure: np.ndarray, indices: np.ndarray,
                      metric: str = "euclidean", confidence: float = CONFIDENCE) -> Estimate:
    """Distance between the training mean (D,) and the mean of per-structure vectors (S, D), with CI."""
    distance = DISTANCES[metric]
    value = distance(train_mean, np.mean(per_structure, axis=0))
    replicates = distance(np.asarray(train_mean)[None, :], resampled_means(per_structure, indices))
    return pivotal_interval(float(value), replicates, confidence)


def mean_estimate(per_structure: np.ndarray, indices: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of a per-structure scalar (S,) with its pivotal CI (e.g. percentage with vacancies)."""
    values = np.asarray(per_structure, float)
    replicates = values[indices].mean(axis=1)
    return pivotal_interval(float(values.mean()), replicates, confidence)


def mean_band(per_structure: np.ndarray, indices: np.ndarray, confidence: float = CONFIDENCE) -> tuple:
    """Generated mean (D,) with per-component pivotal bounds (D,), (D,) (the plotted CI bands)."""
    mean = np.mean(per_structure, axis=0)
    replicates = resampled_means(per_structure, indices)
    low = np.percentile(replicates, (1 - confidence) / 2 * 100, axis=0)
    high = np.percentile(replicates, (confidence + (1 - confidence) / 2) * 100, axis=0)
    return mean, 2 * mean - high, 2 * mean - low
