"""``python -m dismax.train --config FILE [--run-dir DIR] [key=value ...]``: train a model.

The config's ``model.name`` selects the model (:mod:`dismax.models`). The whole config is validated before
the run directory is written, so a rejected start leaves nothing behind. A run directory that already holds
checkpoints is resumed; only the budget keys (``train.epochs``, ``train.max_minutes``) may differ from the
config it was started with, so a finished run is extended by a larger ``train.epochs``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from dismax.cli import main_wrapper
from dismax.config import load_config, save_config, to_dict
from dismax.devices import add_distributed_arguments, initialize_from_args
from dismax.errors import DismaxError
from dismax.models import MODELS, model_module
from dismax.runs import RunDir, exclusive_lock, log
from dismax.training import BUDGET_KEYS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dismax.train",
        description="Train a dismax model. The YAML config's model.name selects the model "
                    f"({', '.join(MODELS)}); dotted key=value arguments override config entries.",
        epilog="Example: python -m dismax.train --config configs/cryingan_alloy_small.yaml train.epochs=5",
    )
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--run-dir", default=None,
                        help="run directory (default: runs/<config name>); resumed if it has checkpoints")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")
    add_distributed_arguments(parser)
    return parser


def prepare_run(config, run_dir: Path) -> RunDir:
    """Refuse a run directory started with a different config (other than the budget keys), then create the
    directory and save the resolved config. Validate the config (the model's ``check``) first."""
    run = RunDir(run_dir)
    resolved = to_dict(config)
    if run.config_path.exists():
        previous = yaml.safe_load(run.config_path.read_text())
        key = _first_difference(previous, resolved)
        if key is not None and key not in BUDGET_KEYS:
            raise DismaxError(
                f"run directory '{run.path}' was started with a different config (first difference at '{key}'); "
                f"only {' and '.join(BUDGET_KEYS)} may change when a run is resumed or extended; use a new "
                "--run-dir or the same config"
            )
    run.create()
    save_config(config, run.config_path)
    run.attach_log_file()
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    initialize_from_args(args)
    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    model = model_module(config.model.name)
    model.check(config)
    with exclusive_lock(run_dir, "run directory"):
        run = prepare_run(config, run_dir)
        log.info("%s run in %s", "resuming" if run.has_checkpoints else "starting", run.path)
        model.train(config, run)
    log.info("done: results in %s", run.path)
    return 0


def _first_difference(a, b, where: str = "") -> str | None:
    """Dotted key of the first difference between two config dicts (ignoring the budget keys), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            path = f"{where}.{key}" if where else key
            if path not in BUDGET_KEYS and a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), path)
        return None
    return None if a == b else (where or "<root>")


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
