"""``python -m dismax.train --config FILE [--run-dir DIR] [key=value ...]``: train a model.

The config's ``model.name`` selects the model package. Each package's trainer module defines
``Config`` (a frozen dataclass), ``train(config, run)`` and ``sample(run, n, out, seed, **options)``.
A run directory that already holds checkpoints is resumed automatically.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

from dismax.cli import main_wrapper
from dismax.errors import DismaxConfigError, DismaxError

MODELS: dict[str, str] = {
    "cryingan": "dismax.gan.trainer",
    "diffusion": "dismax.diffusion.trainer",
    "crystens": "dismax.diffusion.unet_trainer",
    "unimat": "dismax.diffusion.unet_trainer",
    "wyckoff_vae": "dismax.vae.trainer",
}


def model_module(name: str | None):
    """The trainer module registered for ``model.name``."""
    if name not in MODELS:
        raise DismaxConfigError(f"config key 'model.name' is {name!r}; valid model names are: {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ModuleNotFoundError as exc:
        if exc.name and MODELS[name].startswith(exc.name):
            raise DismaxError(f"model '{name}' is not available in this version of dismax") from None
        raise


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
    return parser


def prepare_run(config, run_dir: Path):
    """Create the run directory and save the resolved config; refuse to resume with a different config."""
    from dismax.config import save_config, to_dict
    from dismax.runs import RunDir

    run = RunDir(run_dir)
    resolved = to_dict(config)
    if run.config_path.exists():
        previous = yaml.safe_load(run.config_path.read_text())
        if previous != resolved:
            key = _first_difference(previous, resolved)
            raise DismaxError(
                f"run directory '{run.path}' was started with a different config (first difference at '{key}'); "
                "use a new --run-dir or the same config to resume"
            )
    run.create()
    save_config(config, run.config_path)
    run.attach_log_file()
    return run


def main(argv: list[str] | None = None) -> int:
    from dismax.config import load_config
    from dismax.runs import exclusive_lock, log

    args = build_parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    with exclusive_lock(run_dir, "run directory"):
        run = prepare_run(config, run_dir)
        log.info("%s run in %s", "resuming" if run.has_checkpoints else "starting", run.path)
        model_module(config.model.name).train(config, run)
    log.info("done: results in %s", run.path)
    return 0


def _first_difference(a, b, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return where or "<root>"


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
