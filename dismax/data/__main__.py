"""``python -m dismax.data``: build, list and register datasets."""

from __future__ import annotations

import argparse
import sys

from dismax.cli import main_wrapper
from dismax.devices import add_distributed_arguments, initialize_from_args
from dismax.errors import DismaxInputError
from dismax.validation import DEFAULT_MIN_DISTANCE, MIN_DISTANCE, min_distance_for, require_valid


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
    build.add_argument("--potential", default=None,
                       help="interface only: the relaxation potential (default: the shipped interface_chgnet; "
                            "none = unrelaxed random interfaces; another one needs --out)")
    add_distributed_arguments(build)
    commands.add_parser("list", help="list available datasets and where they are cached")
    register = commands.add_parser("register", help="register your own extxyz files under a name")
    register.add_argument("name")
    register.add_argument("--train", required=True, help="training-set extxyz")
    register.add_argument("--val", default=None, help="validation-set extxyz (default: none)")
    convert = commands.add_parser("convert", help="convert structures between extxyz and CIF, validating them",
                                  description="Read IN (.extxyz/.xyz, .cif or a folder of CIFs), validate every "
                                              "structure and write OUT (.extxyz, .cif, or a folder of CIFs).")
    convert.add_argument("input", metavar="IN")
    convert.add_argument("output", metavar="OUT")
    convert.add_argument("--mixed-composition", action="store_true",
                         help="allow structures with different compositions (same atom count)")
    check = commands.add_parser("check", help="validate a structure file and summarise it")
    check.add_argument("input", metavar="FILE")
    check.add_argument("--mixed-composition", action="store_true",
                       help="allow structures with different compositions (same atom count)")
    label = commands.add_parser("label", help="label frames with energies and forces from a calculator",
                                description="Write IN's frames with energy and forces (ASE conventions) to OUT; "
                                            "resumable frame by frame.")
    label.add_argument("--calculator", required=True,
                       help="sw | sw_a_si | run:DIR (a fitted dismax potential) | module:Class (an ASE calculator) | "
                            "chgnet | sevennet (optional extra: pip install -e .[teachers])")
    label.add_argument("--in", dest="input", required=True, help="frames (extxyz)")
    label.add_argument("--out", required=True, help="labelled frames (extxyz)")
    for command in (convert, check):
        command.add_argument("--family", choices=sorted(MIN_DISTANCE), default=None,
                             help="material family: sets the overlap threshold (atoms closer than it are an error)")
        command.add_argument("--min-distance", type=float, default=None,
                             help=f"overlap threshold in Å (default: the family's, else {DEFAULT_MIN_DISTANCE})")
    return parser


def main(argv: list[str] | None = None) -> int:
    from dismax.data import registry

    args = build_parser().parse_args(argv)
    if args.command == "build":
        initialize_from_args(args)
        options = {}
        if args.potential is not None:
            if args.name != "interface":
                raise DismaxInputError("--potential applies to the interface dataset only")
            if args.out is None:
                raise DismaxInputError("--potential needs --out DIR (the cache holds the default potential's build)")
            options["potential"] = args.potential
        directory = registry.build_dataset(args.name, args.size, args.seed, args.out, options)
        print(directory)
    elif args.command == "list":
        for name in registry.available():
            try:
                directory = registry.dataset_dir(name)
                state = "ready" if registry.is_complete(directory, name) else "not built"
            except Exception:  # noqa: BLE001 - listing must not fail on one bad entry
                directory, state = "?", "unavailable"
            print(f"{name:24s} {state:10s} {directory}")
    elif args.command in ("convert", "check"):
        from dismax.io import read_structures, write_cif, write_extxyz

        crystals = read_structures(args.input, fixed_composition=not args.mixed_composition)
        threshold = args.min_distance if args.min_distance is not None else min_distance_for(args.family)
        require_valid(crystals, args.input, threshold)
        if args.command == "check":
            print(f"{args.input}: {crystals.batch_size} structures of {crystals.n_atoms} atoms, all valid")
        elif str(args.output).endswith((".extxyz", ".xyz")):
            print(write_extxyz(crystals, args.output))
        else:
            write_cif(crystals, args.output)
            print(args.output)
    elif args.command == "label":
        from dismax.data.label import label_file

        print(label_file(args.input, args.out, args.calculator))
    elif args.command == "register":
        print(registry.register_files(args.name, args.train, args.val))
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
