"""Named datasets and their on-disk cache.

A dataset is a directory holding ``train.extxyz``, ``val.extxyz`` and ``params.json`` (generation
parameters and per-structure properties). Built datasets live in the cache,
``$DISMAX_CACHE/datasets/NAME/SIZE-seedSEED`` (default cache: ``~/.cache/dismax``); datasets a user
registers from their own extxyz files (e.g. the original Dismai-Bench ones) are recorded in
``$DISMAX_CACHE/registered.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from dismax.data import BUILDERS, BUILT_FILES, STALE_CHECKS
from dismax.devices import barrier, is_primary, on_all_processes
from dismax.errors import DismaxInputError
from dismax.runs import atomic_write_text, exclusive_lock, log, make_staging_dir

SIZES = ("small", "full")
DATASET_FILES = ("train.extxyz", "val.extxyz", "params.json")


def cache_root() -> Path:
    """Root of dismax's cache: $DISMAX_CACHE, else $XDG_CACHE_HOME/dismax, else ~/.cache/dismax."""
    if os.environ.get("DISMAX_CACHE"):
        return Path(os.environ["DISMAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dismax"


def register_dataset(name: str, builder: str) -> None:
    """Register a builder given as ``"module:function"`` (see :mod:`dismax.data`)."""
    BUILDERS[name] = builder


def available() -> list[str]:
    """Names of all buildable and user-registered datasets."""
    return sorted(set(BUILDERS) | set(_registered()))


def dataset_dir(name: str, size: str = "small", seed: int = 0) -> Path:
    """Where dataset ``name`` lives (built or registered); the directory may not exist yet."""
    registered = _registered()
    if name in registered:
        return Path(registered[name]["dir"])
    _check_buildable(name, size)
    return cache_root() / "datasets" / name / f"{size}-seed{seed}"


def is_complete(directory: Path, name: str | None = None) -> bool:
    """Whether ``directory`` holds the files a build of dataset ``name`` writes (train/val extxyz by default)."""
    files = BUILT_FILES.get(name, ("train.extxyz", "val.extxyz"))
    return all((Path(directory) / f).is_file() for f in files)


def build_dataset(name: str, size: str = "small", seed: int = 0, out_dir: str | Path | None = None,
                  options: dict | None = None) -> Path:
    """Build dataset ``name`` into ``out_dir`` (default: the cache) and return the directory.

    The builder writes into a temporary sibling directory that is renamed when complete, so an
    interrupted build never leaves a directory that looks finished. Builds of one folder take turns
    (a second build waits for the first); the next build removes a killed build's staging folder. In a
    multi-process run every process runs the builder (which may split its work across them) and process 0
    alone writes the folder. ``options`` are extra keyword arguments of the builder (e.g. the interface's
    ``potential``).
    """
    _check_buildable(name, size)
    target = Path(out_dir) if out_dir is not None else dataset_dir(name, size, seed)
    with exclusive_lock(target, "dataset folder", wait=True):
        if is_primary():
            _build_into(name, size, seed, target, options or {})
        else:
            with tempfile.TemporaryDirectory() as scratch:
                _builder(name)(size=size, seed=seed, out_dir=Path(scratch), **(options or {}))
    barrier(f"dataset {target} built")
    return target


def _build_into(name: str, size: str, seed: int, target: Path, options: dict) -> None:
    staging = make_staging_dir(target)
    try:
        _builder(name)(size=size, seed=seed, out_dir=staging, **options)
        missing = [f for f in BUILT_FILES.get(name, DATASET_FILES) if not (staging / f).is_file()]
        if missing:
            raise RuntimeError(f"builder of '{name}' did not write {missing}")
        if target.exists():
            for f in DATASET_FILES:
                if (target / f).exists():
                    (target / f).unlink()
            for f in staging.iterdir():
                os.replace(f, target / f.name)
            staging.rmdir()
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def ensure_dataset(name: str, size: str = "small", seed: int = 0) -> Path:
    """The directory of dataset ``name``, building (and caching) it first if needed."""
    directory = dataset_dir(name, size, seed)
    if on_all_processes(is_complete(directory, name)):  # every process of a run takes the same branch
        _warn_if_stale(name, size, seed, directory)
        return directory
    if name in _registered():
        raise DismaxInputError(f"registered dataset '{name}' is missing its files in {directory}")
    with exclusive_lock(directory, "dataset folder", wait=True):
        if on_all_processes(is_complete(directory, name)):  # built by another process while this one waited
            return directory
        log.info("dataset '%s' (size %s, seed %d) not in the cache; building it into %s", name, size, seed,
                 directory)
        return build_dataset(name, size, seed)


def dataset_files(name: str, size: str = "small", seed: int = 0, train_file: str | None = None,
                  val_file: str | None = None) -> tuple[Path, Path]:
    """(train, val) extxyz paths a trainer reads: explicit files when ``train_file`` is given (validation
    defaults to the training file), else dataset ``name`` from the cache, built first if needed."""
    if train_file:
        return Path(train_file), Path(val_file or train_file)
    directory = ensure_dataset(name, size, seed)
    return directory / "train.extxyz", directory / "val.extxyz"


def register_files(name: str, train: str | Path, val: str | Path | None = None) -> Path:
    """Register a user's extxyz files under ``name`` (validated by reading them); returns the dataset dir.

    The files are copied into the cache so the dataset stays usable if the originals move.
    """
    from dismax.io import read_extxyz

    if name in BUILDERS:
        raise DismaxInputError(f"'{name}' is the name of a built-in dataset; choose another name")
    train = Path(train)
    val = Path(val) if val is not None else None
    counts = {"train": len(read_extxyz(train, fixed_composition=False))}
    if val is not None:
        counts["val"] = len(read_extxyz(val, fixed_composition=False))
    directory = cache_root() / "registered" / name
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(train, directory / "train.extxyz")
    shutil.copyfile(val if val is not None else train, directory / "val.extxyz")
    params = {"name": name, "source": {"train": str(train.resolve()),
                                       "val": str(val.resolve()) if val is not None else None},
              "n_structures": counts}
    atomic_write_text(directory / "params.json", json.dumps(params, indent=2))
    registry = _registered()
    registry[name] = {"dir": str(directory)}
    atomic_write_text(cache_root() / "registered.json", json.dumps(registry, indent=2))
    return directory


def _registered() -> dict:
    path = cache_root() / "registered.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_buildable(name: str, size: str) -> None:
    if name not in BUILDERS:
        raise DismaxInputError(f"unknown dataset '{name}'; available: {', '.join(available()) or 'none'}")
    if size not in SIZES:
        raise DismaxInputError(f"unknown dataset size '{size}'; choose one of {', '.join(SIZES)}")


def _warn_if_stale(name: str, size: str, seed: int, directory: Path) -> None:
    """Warn when the cached build of ``name`` differs from what its builder writes now (:data:`STALE_CHECKS`)."""
    if name not in STALE_CHECKS or name in _registered():
        return
    module_name, function_name = STALE_CHECKS[name].split(":")
    reason = getattr(importlib.import_module(module_name), function_name)(directory, size)
    if reason:
        log.warning("dataset '%s' in %s was built differently from what the builder writes now (%s); it is used "
                    "as it is; rebuild it with `python -m dismax.data build %s --size %s --seed %d`", name,
                    directory, reason, name, size, seed)


def _builder(name: str):
    module_name, function_name = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)
