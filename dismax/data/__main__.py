"""``python -m dismax.data``: build, list and register datasets."""

from __future__ import annotations

import argparse
import sys

from dismax.cli import main_wrapper


def build_parser() -> argparse.ArgumentParser:
    from dismax.data import registry

    parser = argparse.ArgumentParser(prog="python -m dismax.data", description="Build and manage dismax datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a dataset into the cache (or --out DIR)",
                                description="Build a named dataset: writes train.extxyz, val.extxyz and params.json.")
    build.add_argument("name", help=f"dataset name, one of: {', '.join(registry.available())}")
    build.add_argument("--size", choices=registry.SIZES, default="small",
                       help="small: builds in minutes on a CPU; full: the published size (default: small)")
    build.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    build.add_argument("--out", default=None, help="output directory (default: the dismax cache)")
    commands.add_parser("list", help="list available datasets and where they are cached")
    register = commands.add_parser("register", help="register your own extxyz files under a name")
    register.add_argument("name")
    register.add_argument("--train", required=True, help="training-set extxyz")
    register.add_argument("--val", default=None, help="validation-set extxyz (default: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from dismax.data import registry

    args = build_parser().parse_args(argv)
    if args.command == "build":
        directory = registry.build_dataset(args.name, args.size, args.seed, args.out)
        print(directory)
    elif args.command == "list":
        for name in registry.available():
            try:
                directory = registry.dataset_dir(name)
                state = "ready" if registry.is_complete(directory) else "not built"
            except Exception:  # noqa: BLE001 - listing must not fail on one bad entry
                directory, state = "?", "unavailable"
            print(f"{name:24s} {state:10s} {directory}")
    elif args.command == "register":
        print(registry.register_files(args.name, args.train, args.val))
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
