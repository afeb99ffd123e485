"""``python -m dismax.sample --run-dir DIR --n N --out FILE.extxyz``: generate structures from a trained run."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from dismax.cli import main_wrapper
from dismax.config import load_config
from dismax.data.registry import dataset_dir
from dismax.devices import add_distributed_arguments, initialize_from_args
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
    parser.add_argument("--force", action="store_true",
                        help="sample even when the output's disk looks too small for the estimated output size")
    add_distributed_arguments(parser)
    return parser


# Upper estimates of extxyz sizes: ASE writes one '%-2s %16.8f %16.8f %16.8f' line per atom and a header
# line (Lattice, Properties, pbc) per structure.
EXTXYZ_BYTES_PER_ATOM = 56
EXTXYZ_BYTES_PER_STRUCTURE = 200


def estimated_output_bytes(run, n: int) -> int | None:
    """Estimated size in bytes of ``n`` sampled structures as extxyz, from the atom count of the run's
    training structures (first line of the training file); None when that file is not known or absent."""
    data = (yaml.safe_load(run.config_path.read_text()) or {}).get("data") or {}
    try:
        path = Path(data["train_file"]) if data.get("train_file") else dataset_dir(
            data["dataset"], data.get("size", "small"), data.get("dataset_seed", 0)) / "train.extxyz"
        with open(path) as handle:
            n_atoms = int(handle.readline())
    except (KeyError, OSError, ValueError, DismaxError):
        return None
    return n * (n_atoms * EXTXYZ_BYTES_PER_ATOM + EXTXYZ_BYTES_PER_STRUCTURE)


def check_free_space(run, n: int, out: Path) -> None:
    """Refuse to start sampling when the disk holding ``out`` cannot hold the estimated output."""
    needed = estimated_output_bytes(run, n)
    folder = next((p for p in [out.absolute(), *out.absolute().parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    if needed is not None and needed > free:
        raise DismaxError(f"sampling {n} structures needs about {needed / 1e9:.3g} GB in '{folder}' but only "
                          f"{free / 1e9:.3g} GB are free; sample fewer structures, choose another --out or pass "
                          f"--force")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    initialize_from_args(args)
    if args.n < 1:
        raise DismaxError(f"--n must be at least 1, got {args.n}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DismaxError(f"--batch-size must be at least 1, got {args.batch_size}")
    run = RunDir(args.run_dir)
    if not run.config_path.is_file():
        raise DismaxError(f"'{run.path}' is not a dismax run directory (no config.yaml)")
    if not run.has_checkpoints:
        raise DismaxError(f"run directory '{run.path}' has no checkpoints yet; train first")
    if not args.force:
        check_free_space(run, args.n, Path(args.out))
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
