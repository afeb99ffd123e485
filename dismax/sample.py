"""``python -m dismax.sample --run-dir DIR --n N --out FILE.extxyz``: generate structures from a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dismax.cli import main_wrapper
from dismax.config import load_config
from dismax.errors import DismaxError
from dismax.models import model_module
from dismax.runs import RunDir, exclusive_lock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dismax.sample",
                                     description="Generate structures with a trained dismax model.")
    parser.add_argument("--run-dir", required=True, help="run directory written by python -m dismax.train")
    parser.add_argument("--n", type=int, required=True, help="number of structures to generate")
    parser.add_argument("--out", required=True, help="output file (.extxyz; .cif directory for wyckoff_vae)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--member", type=int, default=0, help="ensemble member to sample from (default 0)")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                        help="which checkpoint to sample from (default: latest)")
    parser.add_argument("--batch-size", type=int, default=None, help="structures per generation batch")
    parser.add_argument("--sampler", choices=("gaussian", "gmm", "kde"), default=None,
                        help="latent sampler of wyckoff_vae (default: the run config's sample.sampler)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = RunDir(args.run_dir)
    if not run.config_path.is_file():
        raise DismaxError(f"'{run.path}' is not a dismax run directory (no config.yaml)")
    if not run.has_checkpoints:
        raise DismaxError(f"run directory '{run.path}' has no checkpoints yet; train first")
    if args.n < 1:
        raise DismaxError(f"--n must be at least 1, got {args.n}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DismaxError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = load_config(run.config_path)
    module = model_module(config.model.name)
    options = {"member": args.member, "checkpoint": args.checkpoint}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.sampler is not None:
        options["sampler"] = args.sampler
    with exclusive_lock(Path(args.out), "output"):
        module.sample(run, args.n, Path(args.out), args.seed, **options)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
