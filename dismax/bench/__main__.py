"""``python -m dismax.bench SUBCOMMAND ...``: Dismai-Bench post-processing, relaxation and scoring.

Each subcommand lives in its own module exposing an ``add_arguments(parser)`` and a ``run(args)``
function; modules are imported only to build their parser or run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dismax.cli import main_wrapper

# name -> (module, add-arguments function, run function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "relax": ("dismax.relax.cli", "add_arguments", "run",
              "relax structures with batched FIRE (resumable; writes relaxed.extxyz and results.csv)"),
    "postprocess": ("dismax.bench.cli", "add_postprocess_arguments", "run_postprocess",
                    "move atoms apart / assign alloy lattice sites before relaxation"),
    "metrics": ("dismax.bench.cli", "add_metrics_arguments", "run_metrics",
              "compute the Dismai-Bench metrics of generated vs training structures with bootstrap CIs"),
}


def _available() -> dict:
    """The subcommands whose modules are importable in this installation."""
    found = {}
    for name, (module_name, add_name, run_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        if hasattr(module, add_name) and hasattr(module, run_name):
            found[name] = (getattr(module, add_name), getattr(module, run_name), help_text)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dismax.bench",
                                     description="Dismai-Bench: post-process, relax and score generated structures against training structures.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run, help_text) in _available().items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
