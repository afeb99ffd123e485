"""Structures for the masked-denoising models: one reader for every source, padded to static shapes.

Sources (``DataConfig``), first match wins:
- ``train_file`` (and ``val_file``): extxyz files whose frames may differ in size and composition;
- ``path``: a folder of CIF files, or a CDVAE-format CSV (columns ``material_id, cif, ...``, e.g. a copy
  of MP-20, perov_5 or carbon_24), split 80/10/10 by a permutation drawn from ``split_seed`` (the
  reference's proportions; the last 10 % is the test set);
- ``dataset``: a registered or buildable dismax dataset (``train.extxyz``/``val.extxyz``). The VAE demo's
  ``disordered_demo`` (partial occupancies) is turned into ordered crystals of varied composition and size by
  drawing every site's species from its occupancies (vacancies drop the site), with ``split_seed``. The first
  read writes the ordered split next to the CIFs (``ordered-split{split_seed}/{train,val,test}.extxyz``); later
  reads (a GAN stage using 64 structures, an evaluation's test set) load those files instead of every CIF.

Every set is padded to one atom count, ``max_atoms`` or its largest structure, with an atom mask
(:meth:`dismax.structures.StructureSet.padded`). With ``max_buckets`` > 1 the training set is also split into
size buckets (:func:`dismax.data.loader.choose_buckets`) for a :class:`dismax.data.loader.BucketedLoader`: a
set of mostly small cells padded to its few largest ones spends most of each step on padding.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from dismax.data.loader import assign_buckets, choose_buckets
from dismax.data.registry import dataset_dir, dataset_files, ensure_dataset
from dismax.errors import DismaxInputError
from dismax.io import CIF_SUFFIXES, read_cif, read_cif_structures, read_structure_set, write_extxyz
from dismax.runs import progress
from dismax.structures import Crystals, StructureSet

ORDERED_FROM_DISORDERED = ("disordered_demo",)


@dataclass(frozen=True)
class DataConfig:
    """Where the structures come from (see module docstring); max_train/max_val cap the sets;
    max_atoms: the padded atom count (None: the largest structure of the sets); max_buckets: size buckets of
    the pre-training batches (1: every batch padded to max_atoms; the GAN stage always pads to one shape, since
    each shape compiles its critic step, minutes on a CPU)."""

    dataset: str = "alloy_300K_wide"
    size: str = "small"
    dataset_seed: int = 0
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    path: Optional[str] = None
    split_seed: int = 42
    max_train: Optional[int] = None
    max_val: Optional[int] = None
    max_atoms: Optional[int] = None
    max_buckets: int = 1


class PaddedSet(NamedTuple):
    """A static-shape set: crystals (S, N, ·) padded with species 0 and atom_mask (S, N) for the real atoms."""

    crystals: Crystals
    atom_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.atom_mask)

    def take(self, indices) -> "PaddedSet":
        c = self.crystals
        return PaddedSet(Crystals(c.frac[indices], c.lattice[indices], c.species[indices]), self.atom_mask[indices])


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) index arrays: 80/10/10 of a permutation drawn from ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(0.8 * n)), int(round(0.1 * n))
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def read_cdvae_csv(path: Path) -> list:
    """pymatgen structures of a CDVAE-format CSV (one CIF string per row in column ``cif``)."""
    from pymatgen.core import Structure  # optional heavy dependency, only for CIF text

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "cif" not in rows[0]:
        raise DismaxInputError(f"'{path}' is not a CDVAE-format CSV: it has no 'cif' column")
    structures = []
    for index, row in enumerate(progress(rows, desc=f"reading {path.name}", unit="structure")):
        try:
            structures.append(Structure.from_str(row["cif"], fmt="cif"))
        except (ValueError, KeyError, IndexError) as exc:
            raise DismaxInputError(f"'{path}' row {index} ({row.get('material_id', '?')}): unreadable CIF "
                                   f"({exc})") from None
    return structures


def ordered_decoration(structures, seed: int) -> StructureSet:
    """Ordered crystals from disordered pymatgen structures: every site takes one species drawn from its
    occupancies (the remainder to 1 is a vacancy, which removes the site)."""
    rng = np.random.default_rng(seed)
    ordered = []
    for structure in structures:
        keep, numbers = [], []
        for i, site in enumerate(structure):
            options = [(element.Z, amount) for element, amount in site.species.items()]
            weights = np.array([amount for _, amount in options] + [max(0.0, 1.0 - site.species.num_atoms)])
            choice = rng.choice(len(weights), p=weights / weights.sum())
            if choice < len(options):
                keep.append(i)
                numbers.append(options[choice][0])
        if keep:
            frac = structure.frac_coords[keep] % 1.0
            ordered.append(Crystals(frac[None].astype(np.float32), structure.lattice.matrix[None].astype(np.float32),
                                    np.asarray(numbers, np.int32)[None]))
    return StructureSet.from_structures(ordered)


def _split(structures: StructureSet, seed: int) -> tuple[StructureSet, StructureSet, StructureSet]:
    return tuple(structures.select(part) for part in split_indices(len(structures), seed))


SPLIT_NAMES = ("train", "val", "test")


def ordered_split(directory: Path, seed: int) -> tuple[StructureSet, StructureSet, StructureSet]:
    """(train, val, test) ordered decorations of the disordered CIFs in ``directory`` (drawn and split with
    ``seed``), read from ``directory/ordered-split{seed}/`` when an earlier call wrote them there."""
    cache = directory / f"ordered-split{seed}"
    files = [cache / f"{name}.extxyz" for name in SPLIT_NAMES]
    if all(f.is_file() for f in files):
        return tuple(read_structure_set(f) for f in files)
    cifs = sorted(p for p in directory.iterdir() if p.suffix.lower() in CIF_SUFFIXES)
    structures = [structure for p in progress(cifs, desc=f"reading {directory.name}", unit="CIF")
                  for structure in read_cif_structures(p, allow_partial=True)]
    cache.mkdir(exist_ok=True)
    for part, path in zip(_split(ordered_decoration(structures, seed), seed), files):
        write_extxyz(part, path)
    return tuple(read_structure_set(f) for f in files)   # every call sees the same (written) numbers


def read_any(path: str | Path) -> StructureSet:
    """Every structure of an extxyz file, a folder of CIF files or a CDVAE-format CSV."""
    path = Path(path).expanduser()
    if path.is_dir():
        cifs = sorted(p for p in path.iterdir() if p.suffix.lower() in CIF_SUFFIXES)
        if not cifs:
            raise DismaxInputError(f"'{path}' contains no .cif files")
        return StructureSet.from_structures([read_cif(p, fixed_composition=False) for p in
                                             progress(cifs, desc=f"reading {path.name}/", unit="CIF")])
    if path.suffix.lower() == ".csv":
        return StructureSet.from_structures([Crystals.from_pymatgen([s]) for s in read_cdvae_csv(path)])
    if path.suffix.lower() in (".extxyz", ".xyz"):
        return read_structure_set(path)
    raise DismaxInputError(f"'{path}' is neither an extxyz file, a folder of CIF files nor a CDVAE-format .csv")


def read_sets(config: DataConfig) -> tuple[StructureSet, StructureSet, StructureSet | None]:
    """(train, val, test or None) as StructureSets, before capping and padding."""
    if config.train_file:
        train, val = dataset_files("", train_file=config.train_file, val_file=config.val_file)
        return read_structure_set(train), read_structure_set(val), None
    if config.path:
        return _split(read_any(config.path), config.split_seed)
    if config.dataset in ORDERED_FROM_DISORDERED:
        return ordered_split(ensure_dataset(config.dataset, config.size, config.dataset_seed), config.split_seed)
    dataset_dir(config.dataset, config.size, config.dataset_seed)  # a clear error for unknown names
    train, val = dataset_files(config.dataset, config.size, config.dataset_seed)
    return read_structure_set(train), read_structure_set(val), None


def load_padded(config: DataConfig) -> tuple[PaddedSet, PaddedSet]:
    """(train, validation) padded to one atom count (see module docstring)."""
    train, val, _ = read_sets(config)
    if config.max_train:
        train = train.select(range(min(config.max_train, len(train))))
    if config.max_val:
        val = val.select(range(min(config.max_val, len(val))))
    n_atoms = config.max_atoms or int(max(train.atom_counts.max(), val.atom_counts.max()))
    return PaddedSet(*train.padded(n_atoms)), PaddedSet(*val.padded(n_atoms))


def size_buckets(padded: PaddedSet, max_buckets: int) -> list[PaddedSet]:
    """``padded`` split into at most ``max_buckets`` sets by atom count, each cut to its largest structure
    (real atoms come first in every row, padding after them)."""
    counts = padded.atom_mask.sum(axis=1)
    buckets = choose_buckets(counts, max_buckets)
    which = assign_buckets(counts, buckets)
    parts = []
    for index, n_atoms in enumerate(buckets):
        part = padded.take(np.flatnonzero(which == index))
        c = part.crystals
        parts.append(PaddedSet(Crystals(c.frac[:, :n_atoms], c.lattice, c.species[:, :n_atoms]),
                               part.atom_mask[:, :n_atoms]))
    return parts
