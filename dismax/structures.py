"""The one array type of dismax: a batch of periodic crystals as a JAX pytree.

``frac``    (B, N, 3) fractional coordinates in [0, 1)
``lattice`` (B, 3, 3) lattice vectors as rows, in Å (pymatgen/ASE convention; jax-md wants the transpose)
``species`` (B, N) atomic numbers (int32)

All structures of a batch have the same number of atoms N. Sets whose atom counts differ (post-processed
benchmark sets: alloy site assignment leaves vacancies, relaxation drops failed structures) are a
:class:`StructureSet`: one ``Crystals`` batch per atom count plus each structure's position in the set.
Conversion from and to ASE ``Atoms`` and pymatgen ``Structure`` lives here; file reading with validation
lives in :mod:`dismax.io`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from dismax.errors import DismaxInputError


# Fractional coordinates within this distance below 1 are wrapped to 0 (a shift of < 1e-11 Å in real cells).
WRAP_TOLERANCE = 1e-12


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Crystals:
    """A batch of B periodic structures with N atoms each (see module docstring for shapes/units)."""

    frac: jax.Array
    lattice: jax.Array
    species: jax.Array

    @property
    def batch_size(self) -> int:
        return self.frac.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.frac.shape[1]

    @property
    def cart(self) -> jax.Array:
        """Cartesian positions (B, N, 3) in Å."""
        return jnp.einsum("bni,bij->bnj", self.frac, self.lattice)

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index) -> "Crystals":
        """Select structures along the batch axis; an integer keeps a batch axis of size 1."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1) if index != -1 else slice(-1, None)
        return Crystals(self.frac[index], self.lattice[index], self.species[index])

    def to_numpy(self) -> "Crystals":
        return Crystals(np.asarray(self.frac), np.asarray(self.lattice), np.asarray(self.species))

    @staticmethod
    def concatenate(parts: Sequence["Crystals"]) -> "Crystals":
        """Join batches with equal N along the batch axis."""
        if not parts:
            raise DismaxInputError("cannot concatenate an empty list of Crystals")
        n = {p.n_atoms for p in parts}
        if len(n) > 1:
            raise DismaxInputError(f"cannot concatenate Crystals with different atom counts {sorted(n)}")
        return Crystals(
            np.concatenate([np.asarray(p.frac) for p in parts]),
            np.concatenate([np.asarray(p.lattice) for p in parts]),
            np.concatenate([np.asarray(p.species) for p in parts]),
        )

    # ------------------------------------------------------------------ conversion: ASE
    @classmethod
    def from_ase(cls, atoms_list) -> "Crystals":
        """Build a batch from ASE ``Atoms`` (one object or a list); every structure must have N atoms."""
        if not isinstance(atoms_list, (list, tuple)):
            atoms_list = [atoms_list]
        return cls._from_arrays(
            [(np.asarray(a.cell.array, float), np.asarray(a.get_scaled_positions(wrap=False), float),
              np.asarray(a.numbers, int)) for a in atoms_list]
        )

    def to_ase(self) -> list:
        """One ASE ``Atoms`` per structure, periodic in all directions."""
        c = self.to_numpy()
        return [
            Atoms(numbers=c.species[b], scaled_positions=c.frac[b], cell=c.lattice[b], pbc=True)
            for b in range(c.batch_size)
        ]

    # ------------------------------------------------------------------ conversion: pymatgen
    @classmethod
    def from_pymatgen(cls, structures) -> "Crystals":
        """Build a batch from ordered pymatgen ``Structure`` objects (one or a list)."""
        from pymatgen.core import Structure  # pymatgen is slow to import; only conversions need it

        if isinstance(structures, Structure):
            structures = [structures]
        arrays = []
        for i, s in enumerate(structures):
            if not s.is_ordered:
                raise DismaxInputError(
                    f"structure {i} has partial occupancies; a Crystals batch needs integer occupancy"
                )
            arrays.append(
                (np.asarray(s.lattice.matrix, float), np.asarray(s.frac_coords, float),
                 np.array([site.specie.Z for site in s], int))
            )
        return cls._from_arrays(arrays)

    def to_pymatgen(self) -> list:
        """One pymatgen ``Structure`` per structure."""
        from pymatgen.core import Lattice, Structure  # pymatgen is slow to import; only conversions need it

        c = self.to_numpy()
        return [
            Structure(Lattice(c.lattice[b]), c.species[b].tolist(), c.frac[b], coords_are_cartesian=False)
            for b in range(c.batch_size)
        ]

    @classmethod
    def _from_arrays(cls, arrays) -> "Crystals":
        if not arrays:
            raise DismaxInputError("no structures given")
        counts = {len(z) for _, _, z in arrays}
        if len(counts) > 1:
            raise DismaxInputError(f"structures have different atom counts {sorted(counts)}; pad or split them")
        lattice = np.stack([a[0] for a in arrays])
        frac = np.stack([a[1] for a in arrays]) % 1.0
        # round-off negatives (e.g. -1e-17 from a cell with 1e-15 off-diagonals) wrap to 0, not to 1 - 1e-17
        frac = np.where(frac >= 1.0 - WRAP_TOLERANCE, 0.0, frac)
        species = np.stack([a[2] for a in arrays]).astype(np.int32)
        return cls(frac, lattice, species)


# ---------------------------------------------------------------------- variable atom counts
@dataclass(frozen=True)
class StructureSet:
    """An ordered set of structures whose atom counts may differ, grouped by atom count.

    ``groups`` holds one NumPy :class:`Crystals` batch per distinct atom count (in order of first
    appearance); ``positions[g]`` (B_g,) gives the index in the set of each structure of ``groups[g]``.
    Iterating or indexing yields single structures as ``Crystals`` of batch size 1, in set order.
    """

    groups: tuple[Crystals, ...]
    positions: tuple[np.ndarray, ...]

    @classmethod
    def from_structures(cls, structures: Sequence[Crystals]) -> "StructureSet":
        """Group a sequence of ``Crystals`` batches (any atom counts) into a set, keeping their order."""
        frames: dict[int, list] = {}
        for crystals in structures:
            c = crystals.to_numpy()
            for b in range(c.batch_size):
                frames.setdefault(c.n_atoms, []).append(c[b])
        if not frames:
            raise DismaxInputError("no structures given")
        index = 0
        order: dict[int, list[int]] = {n: [] for n in frames}
        for crystals in structures:
            for _ in range(crystals.batch_size):
                order[crystals.n_atoms].append(index)
                index += 1
        return cls(tuple(Crystals.concatenate(frames[n]) for n in frames),
                   tuple(np.asarray(order[n], int) for n in frames))

    @classmethod
    def from_ase(cls, atoms_list) -> "StructureSet":
        """A set from ASE ``Atoms`` of any sizes."""
        return cls.from_structures([Crystals.from_ase(atoms) for atoms in atoms_list])

    def __len__(self) -> int:
        return int(sum(len(p) for p in self.positions))

    @cached_property
    def _locate(self) -> list[tuple[int, int]]:
        """(group, index in group) of every structure, in set order."""
        where = [(0, 0)] * len(self)
        for g, positions in enumerate(self.positions):
            for b, index in enumerate(positions):
                where[int(index)] = (g, b)
        return where

    def __getitem__(self, index: int) -> Crystals:
        if not -len(self) <= index < len(self):
            raise IndexError(f"structure {index} of a set of {len(self)}")
        g, b = self._locate[index % len(self)]
        return self.groups[g][b]

    def __iter__(self):
        for g, b in self._locate:
            yield self.groups[g][b]

    @property
    def atom_counts(self) -> np.ndarray:
        """(S,) number of atoms of every structure, in set order."""
        counts = np.zeros(len(self), int)
        for crystals, positions in zip(self.groups, self.positions):
            counts[positions] = crystals.n_atoms
        return counts

    def select(self, indices: Sequence[int]) -> "StructureSet":
        """The structures at ``indices`` (in that order) as a new set."""
        return StructureSet.from_structures([self[int(i)] for i in indices])

    def as_crystals(self) -> Crystals:
        """The whole set as one batch; raises ``DismaxInputError`` when atom counts differ."""
        if len(self.groups) > 1:
            counts = sorted(c.n_atoms for c in self.groups)
            raise DismaxInputError(f"structures have different atom counts {counts}; a batch needs one count")
        order = np.argsort(self.positions[0])
        c = self.groups[0]
        return Crystals(np.asarray(c.frac)[order], np.asarray(c.lattice)[order], np.asarray(c.species)[order])

    def to_ase(self) -> list:
        """One ASE ``Atoms`` per structure, in set order."""
        return [crystals.to_ase()[0] for crystals in self]

    def padded(self, n_atoms: int | None = None) -> tuple[Crystals, np.ndarray]:
        """The set as one static-shape batch padded to ``n_atoms`` (default: the largest count), in set order:
        (Crystals (S, n_atoms, ·), atom_mask (S, n_atoms) True for real atoms). Padding atoms sit at the
        origin with species 0; models must ignore them through the mask."""
        n_atoms = int(self.atom_counts.max()) if n_atoms is None else int(n_atoms)
        if n_atoms < self.atom_counts.max():
            raise DismaxInputError(f"cannot pad structures of up to {self.atom_counts.max()} atoms to {n_atoms}")
        frac = np.zeros((len(self), n_atoms, 3), np.float32)
        lattice = np.zeros((len(self), 3, 3), np.float32)
        species = np.zeros((len(self), n_atoms), np.int32)
        mask = np.zeros((len(self), n_atoms), bool)
        for crystals, positions in zip(self.groups, self.positions):
            n = crystals.n_atoms
            frac[positions, :n] = crystals.frac
            lattice[positions] = crystals.lattice
            species[positions, :n] = crystals.species
            mask[positions, :n] = True
        return Crystals(frac, lattice, species), mask


def as_structure_set(structures: "Crystals | StructureSet") -> StructureSet:
    """A ``StructureSet`` view of a fixed-size batch (returned unchanged if already a set)."""
    if isinstance(structures, StructureSet):
        return structures
    return StructureSet.from_structures([structures])


# ---------------------------------------------------------------------- species blocks
@dataclass(frozen=True)
class SpeciesBlocks:
    """Contiguous per-element ordering of a fixed composition (what CryinGAN's pooling needs).

    ``elements`` atomic numbers in block order; ``counts`` atoms per element; ``starts`` first index of
    each block. A structure is in block order when ``species == np.repeat(elements, counts)``.
    """

    elements: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(int(s) for s in np.concatenate([[0], np.cumsum(self.counts)[:-1]]))

    @property
    def n_atoms(self) -> int:
        return int(sum(self.counts))

    @property
    def species(self) -> np.ndarray:
        """(N,) atomic numbers in block order."""
        return np.repeat(np.asarray(self.elements, np.int32), self.counts)

    @property
    def block_index(self) -> np.ndarray:
        """(N,) index of the element block each atom belongs to."""
        return np.repeat(np.arange(len(self.elements)), self.counts)


def leading_atoms(species: np.ndarray, counts: dict[int, int]) -> np.ndarray:
    """(..., N) bool: the first ``counts[z]`` atoms of each element z along the last axis of ``species`` (..., N)
    (e.g. the random interface region of interfaces in the published atom order, whose interface atoms come
    first within each element block). Raises ``DismaxInputError`` where an element has fewer atoms."""
    species = np.asarray(species)
    chosen = np.zeros(species.shape, bool)
    for z, count in counts.items():
        present = (species == z).sum(-1)
        if np.any(present < count):
            raise DismaxInputError(f"asked for the first {count} atoms of element {z} but a structure has "
                                   f"{int(present.min())}")
        chosen |= (species == z) & (np.cumsum(species == z, axis=-1) <= count)
    return chosen


def species_blocks(crystals: Crystals, element_order: Sequence[int] | None = None) -> SpeciesBlocks:
    """The element order and counts shared by every structure of ``crystals``.

    ``element_order`` defaults to the order of first appearance in structure 0 (the order a dataset's
    extxyz files use). Raises ``DismaxInputError`` if the structures do not share one composition.
    """
    species = np.asarray(crystals.species)
    first = species[0]
    if element_order is None:
        _, idx = np.unique(first, return_index=True)
        element_order = [int(first[i]) for i in sorted(idx)]
    element_order = [int(e) for e in element_order]
    counts = [int((first == e).sum()) for e in element_order]
    if sum(counts) != species.shape[1]:
        missing = sorted(set(first.tolist()) - set(element_order))
        raise DismaxInputError(f"element order {element_order} misses elements {missing} of structure 0")
    for b in range(species.shape[0]):
        got = [int((species[b] == e).sum()) for e in element_order]
        if got != counts:
            raise DismaxInputError(
                f"structure {b} has composition {dict(zip(element_order, got))}, "
                f"structure 0 has {dict(zip(element_order, counts))}; a fixed composition is required"
            )
    return SpeciesBlocks(tuple(element_order), tuple(counts))


def sort_into_blocks(crystals: Crystals, blocks: SpeciesBlocks) -> tuple[Crystals, np.ndarray]:
    """Reorder atoms of every structure into contiguous element blocks (stable within an element).

    Returns the sorted batch and ``perm`` (B, N) with ``sorted.frac[b] == crystals.frac[b, perm[b]]``;
    undo it with :func:`unsort_blocks`.
    """
    species = np.asarray(crystals.species)
    rank = {e: i for i, e in enumerate(blocks.elements)}
    keys = np.vectorize(rank.__getitem__)(species)
    perm = np.argsort(keys, axis=1, kind="stable")
    take = lambda x: np.take_along_axis(np.asarray(x), perm[..., None] if x.ndim == 3 else perm, axis=1)
    return Crystals(take(crystals.frac), np.asarray(crystals.lattice), take(crystals.species)), perm


def unsort_blocks(crystals: Crystals, perm: np.ndarray) -> Crystals:
    """Inverse of :func:`sort_into_blocks`: restore each structure's original atom order."""
    inverse = np.argsort(perm, axis=1)
    take = lambda x: np.take_along_axis(np.asarray(x), inverse[..., None] if x.ndim == 3 else inverse, axis=1)
    return Crystals(take(crystals.frac), np.asarray(crystals.lattice), take(crystals.species))
