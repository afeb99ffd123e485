"""Test-wide settings: CPU only, quiet progress bars, and a private dataset cache per session.

Tests never read or write the user's cache: ``DISMAX_CACHE`` is always replaced by a temporary folder
(removed with pytest's temporary files), or by ``DISMAX_TEST_CACHE`` when a developer sets it explicitly
to reuse datasets built by earlier test sessions.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("DISMAX_NO_PROGRESS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Point dismax's cache (datasets, bench fingerprints) at a folder that belongs to the tests."""
    previous = os.environ.get("DISMAX_CACHE")
    os.environ["DISMAX_CACHE"] = os.environ.get("DISMAX_TEST_CACHE") or str(tmp_path_factory.mktemp("dismax-cache"))
    yield
    if previous is None:
        del os.environ["DISMAX_CACHE"]
    else:
        os.environ["DISMAX_CACHE"] = previous
