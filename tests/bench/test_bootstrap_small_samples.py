"""Bootstrap intervals from few structures: the published pivotal interval can land below zero and exclude
the distance it belongs to; it then carries a warning, and the percentile method stays in the support."""

import numpy as np

from dismax.bench.bootstrap import bootstrap_indices, distance_estimate, mean_estimate


def _few_noisy_structures():
    rng = np.random.default_rng(3)
    per_structure = rng.normal(0.0, 0.01, (4, 6))
    train_mean = per_structure.mean(axis=0) + 0.0005  # the generated mean is close to the training mean
    return train_mean, per_structure, bootstrap_indices(4, n_replicates=10)


def test_pivotal_interval_of_a_small_sample_warns_and_percentile_stays_in_support():
    train_mean, per_structure, indices = _few_noisy_structures()
    pivotal = distance_estimate(train_mean, per_structure, indices)
    assert pivotal.ci_high < pivotal.value and pivotal.ci_low < 0  # the published interval's failure
    assert "excludes the value" in pivotal.warning and "leaves the support" in pivotal.warning
    percentile = distance_estimate(train_mean, per_structure, indices, method="percentile")
    assert 0 <= percentile.ci_low <= percentile.ci_high
    assert "leaves the support" not in percentile.warning
    assert percentile.value == pivotal.value
    assert np.isclose(percentile.value - percentile.lower_error, percentile.ci_low)


def test_large_sample_interval_has_no_warning():
    rng = np.random.default_rng(0)
    per_structure = rng.normal(0.0, 0.01, (400, 6))
    train_mean = np.full(6, 0.05)
    estimate = distance_estimate(train_mean, per_structure, bootstrap_indices(400, n_replicates=200))
    assert estimate.warning == "" and estimate.ci_low <= estimate.value <= estimate.ci_high
    flags = mean_estimate((rng.random(400) < 0.3) * 100.0, bootstrap_indices(400, n_replicates=200))
    assert flags.warning == "" and 0 <= flags.ci_low <= flags.ci_high <= 100
