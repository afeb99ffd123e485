"""Relaxation and MD results equal the ones saved before the potentials layer moved (reference_cases.py)."""

from pathlib import Path

import numpy as np
import pytest

from tests.potentials.reference_cases import REFERENCE_FILE, compute


@pytest.fixture(scope="module")
def results():
    return compute()


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(Path(__file__).with_name(REFERENCE_FILE)))


@pytest.mark.parametrize("potential", ["sw", "sw_a_si"])
def test_relaxations_unchanged(results, reference, potential):
    for field in ("e_initial", "e_final"):
        np.testing.assert_allclose(results[f"{potential}_{field}"], reference[f"{potential}_{field}"], atol=1e-6)
    np.testing.assert_array_equal(results[f"{potential}_steps"], reference[f"{potential}_steps"])
    difference = results[f"{potential}_frac"] - reference[f"{potential}_frac"]
    np.testing.assert_allclose(difference - np.round(difference), 0.0, atol=1e-6)


def test_melt_md_end_state_unchanged(results, reference):
    difference = results["md_frac"] - reference["md_frac"]
    np.testing.assert_allclose(difference - np.round(difference), 0.0, atol=1e-6)
