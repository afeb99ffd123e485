"""Wyckoff positions of the 230 space groups: table access, setting choice, projection, orbits.

The static table (`data/wyckoff_positions.json.gz`, built by `build_wyckoff_table.py`) uses origin
choice 2, hexagonal axes for rhombohedral groups and unique axis b for monoclinic groups. spglib
standardises to origin choice 1 by default, so symmetry analysis must ask spglib for the Hall
number returned by `hall_number(group)` to get coordinates in the table's setting.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).parent / "data" / "wyckoff_positions.json.gz"
LETTERS = "abcdefghijklmnopqrstuvwxyzA"


@dataclass(frozen=True)
class WyckoffPosition:
    """One Wyckoff position: orbit operations x = W p + w, shapes (M, 3, 3) and (M, 3); M = multiplicity."""

    group: int
    letter: str
    multiplicity: int
    dof: int
    rotations: np.ndarray
    translations: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.multiplicity}{self.letter}"


def parse_xyz_operation(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an operation such as '-x+y,1/2+z,x' into (W (3, 3), w (3,))."""
    rotation = np.zeros((3, 3))
    translation = np.zeros(3)
    for row, expression in enumerate(text.replace(" ", "").split(",")):
        term = ""
        for char in expression + "+":
            if char in "+-" and term not in ("", "+", "-"):
                _add_term(term, rotation, translation, row)
                term = char
            else:
                term += char
    return rotation, translation


def _add_term(term: str, rotation: np.ndarray, translation: np.ndarray, row: int) -> None:
    sign = -1.0 if term.startswith("-") else 1.0
    body = term.lstrip("+-")
    if body and body[-1] in "xyz":
        factor = body[:-1].rstrip("*")
        rotation[row, "xyz".index(body[-1])] += sign * (float(Fraction(factor)) if factor else 1.0)
    else:
        translation[row] += sign * float(Fraction(body))


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    with gzip.open(TABLE_PATH, "rt", encoding="utf-8") as handle:
        return json.load(handle)["groups"]


@functools.lru_cache(maxsize=None)
def wyckoff_positions(group: int) -> tuple[WyckoffPosition, ...]:
    """All Wyckoff positions of a space group (1-230) in letter order a, b, ..."""
    if not 1 <= int(group) <= 230:
        raise ValueError(f"space group number must be 1-230, got {group}")
    positions = []
    for entry in _table()[str(int(group))]["positions"]:
        parsed = [parse_xyz_operation(op) for op in entry["ops"]]
        positions.append(
            WyckoffPosition(
                group=int(group),
                letter=entry["letter"],
                multiplicity=entry["multiplicity"],
                dof=entry["dof"],
                rotations=np.stack([r for r, _ in parsed]),
                translations=np.stack([t for _, t in parsed]),
            )
        )
    return tuple(positions)


def group_symbol(group: int) -> str:
    """Hermann-Mauguin symbol of the group in the table's setting, e.g. 'R-3m'."""
    return _table()[str(int(group))]["symbol"]


def general_position(group: int) -> WyckoffPosition:
    """The general position (largest multiplicity); its operations are the group's coset representatives."""
    return max(wyckoff_positions(group), key=lambda wp: wp.multiplicity)


def find_position(group: int, letter: str) -> WyckoffPosition | None:
    """The Wyckoff position with this letter in the group, or None if the group has no such letter."""
    for position in wyckoff_positions(group):
        if position.letter == letter:
            return position
    return None


def multiplicity_of(group: int, letter: str) -> int | None:
    """Tabulated multiplicity of a letter in a group (None if the letter does not exist there)."""
    position = find_position(group, letter)
    return None if position is None else position.multiplicity


@functools.lru_cache(maxsize=None)
def hall_number(group: int) -> int:
    """spglib Hall number of the table's setting: origin choice 2 where there are two, hexagonal axes for R."""
    import spglib

    candidates = [h for h in range(1, 531) if spglib.get_spacegroup_type(h).number == int(group)]
    for h in candidates:
        if spglib.get_spacegroup_type(h).choice in ("2", "H"):
            return h
    return candidates[0]


def project_onto_position(point: np.ndarray, position: WyckoffPosition, lattice: np.ndarray) -> np.ndarray:
    """Nearest point of a Wyckoff position's orbit to `point` (fractional, (3,)), Cartesian distance.

    For every orbit operation (W, w) and lattice translation t in {-1, 0, 1}^3 the free parameters are
    p = W^+ (x + t - w); the candidate W p + w with the smallest Cartesian distance to x + t wins.
    Returns the projected point, shifted back by t and wrapped into [0, 1).
    """
    point = np.asarray(point, dtype=float)
    shifts = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T
    targets = point[None, :] + shifts  # (27, 3)
    pinv = np.linalg.pinv(position.rotations)  # (M, 3, 3)
    params = np.einsum("mij,mtj->mti", pinv, targets[None] - position.translations[:, None, :])
    candidates = np.einsum("mij,mtj->mti", position.rotations, params) + position.translations[:, None, :]
    distances = np.linalg.norm((candidates - targets[None]) @ np.asarray(lattice), axis=-1)
    m, t = np.unravel_index(np.argmin(distances), distances.shape)
    return np.mod(candidates[m, t] - shifts[t], 1.0)


def expand_orbit(point: np.ndarray, group: int, tolerance: float = 1e-3) -> np.ndarray:
    """Symmetry copies of a fractional point under the group's general position, deduplicated mod 1: (K, 3)."""
    general = general_position(group)
    images = np.mod(np.einsum("mij,j->mi", general.rotations, np.asarray(point, float)) + general.translations, 1.0)
    difference = images[:, None, :] - images[None, :, :]
    same = np.all(np.abs((difference + 0.5) % 1.0 - 0.5) < tolerance, axis=-1)
    first_copy = np.argmax(same, axis=1) == np.arange(len(images))
    return np.mod(np.round(images[first_copy], 12), 1.0)


def operations_as_strings(group: int) -> list[str]:
    """The group's general-position operations as 'x,y,z' strings (for writing CIFs)."""
    return list(_table()[str(int(group))]["positions"][LETTERS.index(general_position(group).letter)]["ops"])


def crystal_system(group: int) -> str:
    """Crystal system of a space group number (trigonal groups share the hexagonal lattice here)."""
    group = int(group)
    for last, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                       (194, "hexagonal"), (230, "cubic")):
        if group <= last:
            return name
    raise ValueError(f"space group number must be 1-230, got {group}")


def constrain_lattice(group: int, lattice) -> np.ndarray:
    """Lattice parameters (a, b, c Å, alpha, beta, gamma degrees) projected onto the crystal system of the
    table's setting: monoclinic (unique axis b) alpha = gamma = 90; orthorhombic all angles 90; tetragonal
    a = b (their mean); hexagonal and rhombohedral groups (hexagonal axes) a = b, gamma = 120; cubic
    a = b = c (their mean). Triclinic parameters are returned unchanged."""
    a, b, c, alpha, beta, gamma = (float(x) for x in lattice)
    system = crystal_system(group)
    if system == "monoclinic":
        alpha = gamma = 90.0
    elif system == "orthorhombic":
        alpha = beta = gamma = 90.0
    elif system == "tetragonal":
        a = b = (a + b) / 2
        alpha = beta = gamma = 90.0
    elif system == "hexagonal":
        a = b = (a + b) / 2
        alpha, beta, gamma = 90.0, 90.0, 120.0
    elif system == "cubic":
        a = b = c = (a + b + c) / 3
        alpha = beta = gamma = 90.0
    return np.array([a, b, c, alpha, beta, gamma])
