"""The test session itself: it never uses the user's dataset cache."""

import os
from pathlib import Path

from dismax.data.registry import cache_root


def test_cache_is_private_to_the_tests(tmp_path_factory):
    root = cache_root()
    assert str(root) == os.environ["DISMAX_CACHE"]
    if not os.environ.get("DISMAX_TEST_CACHE"):
        assert Path(tmp_path_factory.getbasetemp()) in root.parents
    assert root != Path.home() / ".cache" / "dismax"
