"""Test-wide settings: CPU only, quiet progress bars, and a private dataset cache per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("DISMAX_NO_PROGRESS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Datasets built by tests go to a temporary cache unless DISMAX_CACHE is set explicitly."""
    if "DISMAX_CACHE" not in os.environ:
        os.environ["DISMAX_CACHE"] = str(tmp_path_factory.mktemp("dismax-cache"))
    yield
