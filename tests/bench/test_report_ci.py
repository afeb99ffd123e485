"""The report's CI: pivotal bootstrap interval of the mean over seeds, from each seed's own replicates."""

import numpy as np
import pytest

from dismax.bench import bootstrap
from dismax.bench.report import summarise


def _seed_results(n_structures: int, n_seeds: int = 3, n_replicates: int = 400) -> dict:
    """Per-seed scores of a distance metric as the score stage stores them (metrics.json entry + replicates):
    each seed's generated fingerprints are offset from the training mean by a seed-dependent amount."""
    rng = np.random.default_rng(11)
    train_mean = np.zeros(6)
    results = {}
    for seed in range(n_seeds):
        generated = 0.4 + 0.1 * seed + rng.normal(0.0, 0.5, (n_structures, 6))
        indices = bootstrap.bootstrap_indices(n_structures, n_replicates)   # the same indices for every seed
        estimate = bootstrap.distance_estimate(train_mean, generated, indices)
        results[seed] = {"metrics": {"d_x": estimate.to_dict(), "pct_failed": {"value": 0.0, "ci_low": None}},
                         "replicates": {"d_x": estimate.replicates}}
    return results


def test_ci_of_the_mean_over_seeds_contains_the_mean_and_shrinks_with_more_structures():
    widths = []
    for n in (16, 64, 256):
        results = _seed_results(n)
        summary = summarise(results, "d_x")
        values = [r["metrics"]["d_x"]["value"] for r in results.values()]
        assert summary["mean"] == pytest.approx(np.mean(values))
        assert summary["min"] == min(values) and summary["max"] == max(values)
        assert summary["ci_low"] < summary["mean"] < summary["ci_high"]
        assert "warning" not in summary
        widths.append(summary["ci_high"] - summary["ci_low"])
        # averaging three independently resampled seeds: narrower than the widest single-seed interval
        single = max(r["metrics"]["d_x"]["ci_high"] - r["metrics"]["d_x"]["ci_low"] for r in results.values())
        assert widths[-1] < single
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]          # ~1/sqrt(n): halves per 4x structures
    assert summarise(_seed_results(16), "pct_failed")["ci_low"] is None


def test_one_seed_gives_exactly_that_seeds_interval_and_groups_are_paired_independently():
    results = _seed_results(32, n_seeds=1)
    summary = summarise(results, "d_x")
    entry = results[0]["metrics"]["d_x"]
    assert (summary["ci_low"], summary["ci_high"]) == (entry["ci_low"], entry["ci_high"])
    # two identical groups: the mean's replicates must not just repeat one group's (independent pairing)
    replicates = results[0]["replicates"]["d_x"]
    paired = bootstrap.mean_over_groups([1.0, 1.0], [replicates, replicates])
    alone = bootstrap.mean_over_groups([1.0], [replicates])
    assert paired.ci_high - paired.ci_low < 0.85 * (alone.ci_high - alone.ci_low)
