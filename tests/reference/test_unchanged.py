"""Behaviour unchanged: library outputs equal those saved before the one-home-per-concept refactor."""

import json

import pytest

from tests.reference.outputs import (ALLOY_DATASET_FILE, METRICS_FILE, alloy_dataset_outputs, assert_same_numbers,
                                     bench_metrics_outputs)

SLOW_RUN = pytest.mark.slow  # CrystalNN and the published clean-up/counting take longer than the default budget


def test_reduced_alloy_datasets_are_unchanged(tmp_path):
    expected = json.loads(ALLOY_DATASET_FILE.read_text())
    assert_same_numbers(alloy_dataset_outputs(tmp_path), expected, rtol=0.0, atol=1e-9)


@pytest.mark.parametrize("run", ["alloy", pytest.param("alloy_reference_compatible", marks=SLOW_RUN),
                                 pytest.param("a_si", marks=SLOW_RUN)])
def test_bench_metrics_reports_are_unchanged(tmp_path, run):
    expected = json.loads(METRICS_FILE.read_text())[run]
    assert_same_numbers(bench_metrics_outputs(tmp_path, [run])[run], expected, rtol=1e-10, atol=1e-12)


def test_comparison_catches_a_changed_number():
    expected = {"metrics": {"d": {"value": 0.25, "ci": [0.1, 0.3]}, "n": 4}}
    assert_same_numbers({"metrics": {"d": {"value": 0.25, "ci": [0.1, 0.3]}, "n": 4}}, expected)
    assert_same_numbers({"metrics": {"d": {"value": 0.25, "ci": [0.1, 0.3], "warning": "few"}, "n": 4}}, expected)
    for changed in ({"metrics": {"d": {"value": 0.25 * (1 + 1e-8), "ci": [0.1, 0.3]}, "n": 4}},
                    {"metrics": {"d": {"value": 0.25, "ci": [0.1]}, "n": 4}},
                    {"metrics": {"d": {"value": 0.25, "ci": [0.1, 0.3]}}},
                    {"metrics": {"d": {"value": "0.25", "ci": [0.1, 0.3]}, "n": 4}}):
        try:
            assert_same_numbers(changed, expected)
        except AssertionError:
            continue
        raise AssertionError(f"{changed} was accepted")
