"""Shuffled ``Crystals`` batches for jitted training, deterministic given (seed, step) and resumable.

The batch served at step t depends only on the seed and t: epoch e = t // steps_per_epoch uses the
permutation drawn by ``numpy.random.default_rng([seed, e])``, so a run restored from a checkpoint continues
with exactly the batches it would have seen (store :meth:`BatchLoader.state` in the checkpoint's meta).

Augmentation by the integer translations of a cubic sub-cell (CryinGAN's alloy augmentation, Dismai-Bench
§4.2.5): in a 4×4×4 supercell of the 3.6 Å FCC cell the shifts (i/4, j/4, k/4), i, j, k ∈ {0..3}, give the
original plus 63 translated copies; they map lattice sites onto lattice sites and keep every atom's species,
so the species-block order is unchanged. Modes: ``"none"``; ``"offline"`` — each epoch is a pass over all
64 × M (structure, translation) pairs, the paper's expanded data without storing it; ``"online"`` — each
epoch is a pass over the M structures, each with one random translation of the 64.

The data may be ``Crystals`` or any pytree of arrays with a common leading (structure) axis, e.g.
``(Crystals, per-structure features)`` or the VAE's ``(sites, lattice, spacegroup)``; augmentation translates
the ``Crystals`` nodes and carries the other leaves along. Every process of a multi-host run can build the
same loader and take its own part of each global batch with ``batch(step, part, n_parts)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import read_extxyz
from dismax.structures import Crystals
from dismax.validation import require_valid

AUGMENTATIONS = ("none", "online", "offline")


def cubic_translations(grid=(4, 4, 4)) -> np.ndarray:
    """(∏grid, 3) fractional shifts (i/g0, j/g1, k/g2); row 0 is the identity (0, 0, 0)."""
    axes = [np.arange(g) / g for g in grid]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def translate(crystals: Crystals, shifts: np.ndarray) -> Crystals:
    """Shift every structure b by the fractional vector ``shifts[b]`` (B, 3), wrapped into [0, 1)."""
    frac = np.asarray(crystals.frac)
    frac = (frac + np.asarray(shifts, frac.dtype)[:, None, :]) % 1.0
    frac = np.where(frac >= 1.0, 0.0, frac)
    return Crystals(frac, np.asarray(crystals.lattice), np.asarray(crystals.species))


def load_split(directory: str | Path, split: str = "train") -> Crystals:
    """The ``train`` or ``val`` structures of a dataset directory (see :mod:`dismax.data.registry`)."""
    if split not in ("train", "val"):
        raise DismaxInputError(f"split must be 'train' or 'val', got {split!r}")
    return read_training_structures(Path(directory) / f"{split}.extxyz")


def read_training_structures(path: str | Path) -> Crystals:
    """An extxyz file of training (or validation) structures, read and validated: one atom count and
    composition (io), no overlapping atoms (:mod:`dismax.validation`)."""
    crystals = read_extxyz(path)
    require_valid(crystals, str(path))
    return crystals


def saved_step(state: dict, expected: dict) -> int:
    """The step of a loader's saved ``state``, after checking that its settings equal ``expected``."""
    different = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if different:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in different.items())
        raise DismaxConfigError(f"cannot resume the data loader, settings differ ({details})")
    return int(state["step"])


def process_rows(batch_size: int, part: int, n_parts: int) -> slice:
    """Rows [part·B/n_parts, (part+1)·B/n_parts) of a global batch of ``batch_size``: the share of one
    process when several processes each feed their local devices."""
    if batch_size % n_parts or not 0 <= part < n_parts:
        raise DismaxConfigError(f"batch_size {batch_size} cannot be split into part {part} of {n_parts}")
    return slice(part * batch_size // n_parts, (part + 1) * batch_size // n_parts)


@dataclass
class BatchLoader:
    """Serves ``batch_size`` structures per step from ``data`` (host NumPy ``Crystals`` or a pytree of arrays
    with a common leading axis). With ``drop_last`` the incomplete last batch of each epoch is dropped;
    without it that batch is completed with the first samples of the epoch's order, so every batch has the
    same shape (one compiled step). Iterate it, or call :meth:`batch` with any step."""

    data: Any
    batch_size: int
    seed: int = 0
    augment: str = "none"
    translation_grid: tuple[int, int, int] = (4, 4, 4)
    drop_last: bool = True
    step: int = 0
    _epoch_cache: tuple = field(default=(None, None, None), init=False, repr=False)

    def __post_init__(self):
        self.data = jax.tree.map(np.asarray, self.data)
        if self.augment not in AUGMENTATIONS:
            raise DismaxConfigError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.augment != "none" and not any(isinstance(node, Crystals) for node in self._nodes()):
            raise DismaxConfigError("augmentation translates Crystals, but the loader's data holds none")
        if self.batch_size < 1:
            raise DismaxConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.batch_size > self.epoch_size and self.drop_last:
            raise DismaxConfigError(
                f"batch_size {self.batch_size} exceeds the {self.epoch_size} samples of one epoch"
            )
        self.translations = cubic_translations(self.translation_grid)

    def _nodes(self):
        return jax.tree.leaves(self.data, is_leaf=lambda node: isinstance(node, Crystals))

    @property
    def n_structures(self) -> int:
        return len(jax.tree.leaves(self.data)[0])

    @property
    def epoch_size(self) -> int:
        """Samples per epoch: M, or 64·M with offline augmentation."""
        factor = int(np.prod(self.translation_grid)) if self.augment == "offline" else 1
        return self.n_structures * factor

    @property
    def steps_per_epoch(self) -> int:
        return self.epoch_size // self.batch_size if self.drop_last else -(-self.epoch_size // self.batch_size)

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self.step // self.steps_per_epoch

    def _epoch_plan(self, epoch: int):
        """(sample order, translation index per sample) of ``epoch``; cached for the current epoch."""
        if self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.epoch_size)
            if not self.drop_last:
                order = np.resize(order, self.steps_per_epoch * self.batch_size)
            if self.augment == "online":
                translation = np.random.default_rng([self.seed, epoch, 1]).integers(
                    0, len(self.translations), size=self.n_structures)
            else:
                translation = None
            self._epoch_cache = (epoch, order, translation)
        return self._epoch_cache[1], self._epoch_cache[2]

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(structure index (B,), translation index (B,)) of the batch at ``step``."""
        if step < 0:
            raise DismaxInputError(f"step must be non-negative, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        order, translation = self._epoch_plan(epoch)
        samples = order[position * self.batch_size:(position + 1) * self.batch_size]
        if self.augment == "offline":
            return samples % self.n_structures, samples // self.n_structures
        if self.augment == "online":
            return samples, translation[samples]
        return samples, np.zeros_like(samples)

    def batch(self, step: int, part: int = 0, n_parts: int = 1):
        """The batch at ``step`` (a pure function of seed and step), NumPy arrays shaped like ``data``, or
        only this process's ``part`` of ``n_parts`` (:func:`process_rows`)."""
        rows = process_rows(self.batch_size, part, n_parts)
        structures, translation = self.indices(step)
        structures, translation = structures[rows], translation[rows]
        shifts = self.translations[translation]

        def select(node):
            chosen = node[structures]
            return translate(chosen, shifts) if isinstance(node, Crystals) and self.augment != "none" else chosen

        return jax.tree.map(select, self.data, is_leaf=lambda node: isinstance(node, Crystals))

    def __iter__(self):
        return self

    def __next__(self) -> Crystals:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state(self) -> dict:
        """JSON position to store with a checkpoint (pass to :meth:`restore`)."""
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "augment": self.augment,
                "n_structures": self.n_structures, "drop_last": self.drop_last}

    def restore(self, state: dict) -> "BatchLoader":
        """Continue from a saved :meth:`state`; the loader must be built on the same data and settings."""
        expected = {"seed": self.seed, "batch_size": self.batch_size, "augment": self.augment,
                    "n_structures": self.n_structures, "drop_last": self.drop_last}
        self.step = saved_step(state, expected)
        return self


# ---------------------------------------------------------------------- size buckets
def choose_buckets(atom_counts, max_buckets: int = 4) -> tuple[int, ...]:
    """Padded atom counts (ascending) for frames of ``atom_counts`` atoms: every distinct count when there
    are at most ``max_buckets`` of them (no padding at all), else the counts at the quantiles
    1/max_buckets, 2/max_buckets, …, 1 of the frames' counts (about as many frames per bucket)."""
    counts = np.asarray(atom_counts, int)
    if max_buckets < 1:
        raise DismaxConfigError(f"max_buckets must be at least 1, got {max_buckets}")
    distinct = np.unique(counts)
    if len(distinct) <= max_buckets:
        return tuple(int(n) for n in distinct)
    quantiles = np.quantile(counts, np.arange(1, max_buckets + 1) / max_buckets, method="inverted_cdf")
    return tuple(int(n) for n in np.unique(quantiles))


def assign_buckets(atom_counts, buckets) -> np.ndarray:
    """(M,) index of the smallest bucket that holds each frame of ``atom_counts`` atoms."""
    counts, buckets = np.asarray(atom_counts, int), np.sort(np.asarray(buckets, int))
    too_big = counts > buckets[-1]
    if too_big.any():
        frame = int(np.argmax(too_big))
        raise DismaxConfigError(f"frame {frame} has {counts[frame]} atoms, more than the largest bucket "
                                f"({buckets[-1]} atoms); add a larger bucket")
    return np.searchsorted(buckets, counts)


@dataclass
class BucketedLoader:
    """Shuffled batches of ``batch_size`` frames from size buckets, one static shape per bucket.

    ``data`` is a list of pytrees of arrays, one per bucket, each with a leading frame axis (the frames of
    that bucket padded to its atom count). Epoch e draws a permutation of every bucket and a shuffled
    order of all buckets' batches from ``numpy.random.default_rng([seed, e])``, so a batch depends only
    on (seed, step) and runs resume exactly. A bucket's last batch is completed with the first frames of
    its epoch order (those frames are seen twice in that epoch), so a bucket smaller than a batch is used
    too. Every batch holds frames of a single bucket: a jitted step compiles once per bucket. The same
    interface as :class:`BatchLoader` (``batch``, ``steps_per_epoch``, ``state``/``restore``), so the
    shared training loop drives either.
    """

    data: list
    batch_size: int
    seed: int = 0
    step: int = 0
    _epoch_cache: tuple = field(default=(None, None), init=False, repr=False)

    def __post_init__(self):
        self.data = [jax.tree.map(np.asarray, bucket) for bucket in self.data]
        if self.batch_size < 1:
            raise DismaxConfigError(f"batch_size must be positive, got {self.batch_size}")
        if not self.data or min(self.bucket_sizes) < 1:
            raise DismaxInputError("every bucket of a BucketedLoader needs at least one frame")

    @property
    def bucket_sizes(self) -> list[int]:
        return [len(jax.tree.leaves(bucket)[0]) for bucket in self.data]

    @property
    def steps_per_epoch(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.bucket_sizes)

    def indices(self, step: int) -> tuple[int, np.ndarray]:
        """(bucket, frame indices in that bucket (B,)) of the batch at ``step``."""
        if step < 0:
            raise DismaxInputError(f"step must be non-negative, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for bucket, n in enumerate(self.bucket_sizes):
                order = np.resize(rng.permutation(n), -(-n // self.batch_size) * self.batch_size)
                batches += [(bucket, rows) for rows in order.reshape(-1, self.batch_size)]
            self._epoch_cache = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch_cache[1][position]

    def batch(self, step: int, part: int = 0, n_parts: int = 1):
        """The batch at ``step``: the bucket's pytree with (B, ...) leaves (or this process's ``part``)."""
        part_rows = process_rows(self.batch_size, part, n_parts)
        bucket, rows = self.indices(step)
        rows = rows[part_rows]
        return jax.tree.map(lambda leaf: leaf[rows], self.data[bucket])

    def state(self) -> dict:
        """JSON position to store with a checkpoint (pass to :meth:`restore`)."""
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                "bucket_sizes": self.bucket_sizes}

    def restore(self, state: dict) -> "BucketedLoader":
        """Continue from a saved :meth:`state`; the loader must be built on the same data and settings."""
        expected = {"seed": self.seed, "batch_size": self.batch_size, "bucket_sizes": self.bucket_sizes}
        self.step = saved_step(state, expected)
        return self
