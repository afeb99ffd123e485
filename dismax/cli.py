"""Shared CLI plumbing: every problem the user can fix becomes one ``error:`` line on stderr and exit code 2.

Mapped centrally here, so every entry point (``dismax.train``, ``dismax.sample``, ``dismax.data``,
``dismax.bench``) behaves the same: dismax errors, invalid options (argparse usage errors) and operating-
system errors (permission denied, missing folder, disk full) print one line and return 2, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable, NoReturn
from unittest import mock

import jax

from dismax.devices import PEER_LOST_EXIT_CODE, barrier, leave_run, process_count, process_index
from dismax.errors import DismaxError
from dismax.runs import setup_logging


class UsageError(DismaxError):
    """An invalid command-line option (what argparse would report with its usage block)."""


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    raise UsageError(f"{parser.prog}: {message} (see {parser.prog} --help)")


def os_error_message(exc: OSError) -> str:
    """One sentence for an operating-system error, naming the file it concerns."""
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.ENOENT: "no such file or folder", errno.EROFS: "read-only file system",
              errno.ENOTDIR: "a parent of the path is not a folder",
              errno.EEXIST: "exists and is not a folder",
              errno.EISDIR: "is a folder, expected a file"}.get(exc.errno, exc.strerror or type(exc).__name__)
    where = f" ('{exc.filename}')" if exc.filename else ""
    return f"{reason}{where}"


def main_wrapper(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a ``DismaxError``, an argparse usage error or an ``OSError`` is printed as
    ``error: ...`` and turns into exit code 2.

    In a multi-process run, a failed collective (a peer process died) is one ``error:`` line and exit code 1,
    and a process that fails leaves at once: JAX's exit-time barrier would otherwise wait for the others and
    then abort with a stack trace (the others stop through their heartbeat watchdog)."""
    setup_logging()
    try:
        with mock.patch.object(argparse.ArgumentParser, "error", _usage_error):
            code = main(argv)
        barrier("command finished")  # in a multi-process run, no process leaves while others still work
    except DismaxError as exc:
        return leave_run(_fail(str(exc)))
    except OSError as exc:
        return leave_run(_fail(os_error_message(exc)))
    except jax.errors.JaxRuntimeError as exc:
        if process_count() == 1:
            raise
        message = str(exc).strip().splitlines()[0][:300]
        return leave_run(_fail(f"process {process_index()}: an operation across the processes failed ({message}); "
                               f"another process probably stopped. Rerun the same command on every process to "
                               f"resume from the last checkpoint", PEER_LOST_EXIT_CODE))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # every process passed the barrier above: leave without JAX's exit-time shutdown barrier, whose timeout a
    # heavily loaded host can miss after a run that succeeded
    return leave_run(int(code or 0))


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code
