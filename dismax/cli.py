"""Shared CLI plumbing: a dismax error becomes one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import sys
from typing import Callable

from dismax.errors import DismaxError
from dismax.runs import setup_logging


def main_wrapper(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a ``DismaxError`` is printed as ``error: ...`` and turns into exit code 2."""
    setup_logging()
    try:
        code = main(argv)
    except DismaxError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
