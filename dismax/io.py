"""Reading and writing structure files (extxyz via ASE, CIF via pymatgen) as :class:`Crystals`, with validation.

Every problem with an input file raises :class:`~dismax.errors.DismaxInputError` with one line that names
the file, the structure index (0-based frame or CIF data block) and what is wrong. Writers validate first
and write atomically (a temporary file in the target directory, then ``os.replace``), so a failed write
never leaves a partial output file behind.

The extxyz reader accepts the files of the original Dismai-Bench unchanged
(``Lattice="..." Properties=species:S:1:pos:R:3 pbc="T T T"`` plus optional extra info keys) and writes
exactly that header format.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dismax.errors import DismaxInputError
from dismax.runs import atomic_write
from dismax.structures import Crystals, StructureSet

EXTXYZ_SUFFIXES = (".extxyz", ".xyz")
CIF_SUFFIXES = (".cif",)
# A cell whose volume is below this fraction of |a||b||c| is treated as degenerate (zero volume).
DEGENERATE_CELL_TOLERANCE = 1e-8
DEFAULT_CHUNK = 1024


class _Problem(Exception):
    """A problem with one structure; turned into a DismaxInputError once the file name is known."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _input_error(path: Path, index: int | None, problem: str) -> DismaxInputError:
    where = f"{path}" if index is None else f"{path}, structure {index}"
    return DismaxInputError(f"{where}: {_one_line(problem)}")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise _input_error(path, None, "file not found")
    if path.is_dir():
        raise _input_error(path, None, "is a directory, expected a structure file")


# ---------------------------------------------------------------------- shared structure checks
def _check_cell_and_positions(lattice: np.ndarray, cart_or_frac: np.ndarray, what: str) -> None:
    """Raise _Problem for non-finite or degenerate cells and non-finite coordinates.

    ``lattice`` (3, 3) rows in Å; ``cart_or_frac`` (N, 3) named ``what`` in messages.
    """
    if not np.all(np.isfinite(lattice)):
        raise _Problem(f"cell contains NaN or inf ({lattice.ravel().tolist()})")
    bad = np.flatnonzero(~np.all(np.isfinite(cart_or_frac), axis=1))
    if bad.size:
        raise _Problem(
            f"atom {int(bad[0])} has NaN or inf {what} {cart_or_frac[bad[0]].tolist()} "
            f"({bad.size} atom(s) affected)"
        )
    volume = abs(float(np.linalg.det(lattice)))
    scale = float(np.prod(np.linalg.norm(lattice, axis=1)))
    if volume <= DEGENERATE_CELL_TOLERANCE * scale:
        raise _Problem(f"cell has zero volume ({volume:.3g} Å³; lattice rows {lattice.tolist()})")


def _formula(numbers: Sequence[int]) -> str:
    from ase.data import chemical_symbols

    counts = Counter(int(z) for z in numbers)
    order = list(dict.fromkeys(int(z) for z in numbers))
    return "".join(f"{chemical_symbols[z]}{counts[z]}" for z in order)


class _SetChecker:
    """Checks that every structure of a set has the atom count (and composition) of the first one."""

    def __init__(self, fixed_composition: bool):
        self.fixed_composition = fixed_composition
        self.first: tuple[Path, int, np.ndarray] | None = None

    def check(self, path: Path, index: int, numbers: np.ndarray) -> None:
        if self.first is None:
            self.first = (path, index, numbers)
            return
        first_path, first_index, first_numbers = self.first
        ref = "structure 0" if first_path == path and first_index == 0 else (
            f"structure {first_index} of {first_path}")
        if len(numbers) != len(first_numbers):
            raise _input_error(
                path, index,
                f"has {len(numbers)} atoms but {ref} has {len(first_numbers)}; "
                "all structures of a set need the same atom count",
            )
        if self.fixed_composition and Counter(numbers.tolist()) != Counter(first_numbers.tolist()):
            raise _input_error(
                path, index,
                f"has composition {_formula(numbers)} but {ref} has {_formula(first_numbers)}; "
                "a fixed composition is required",
            )


# ---------------------------------------------------------------------- extxyz: reading
_PROPERTIES = re.compile(r"""(?:^|\s)Properties=["']?([^\s"']+)""", re.IGNORECASE)


def _expected_columns(comment: str) -> int:
    """Number of whitespace-separated columns per atom line implied by the header's Properties."""
    match = _PROPERTIES.search(comment)
    if not match:
        return 4  # extxyz default: species:S:1:pos:R:3
    fields = match.group(1).split(":")
    if len(fields) % 3:
        raise _Problem(f"malformed Properties={match.group(1)} in the header")
    try:
        return sum(int(n) for n in fields[2::3])
    except ValueError:
        raise _Problem(f"malformed Properties={match.group(1)} in the header") from None


def _iter_frame_texts(path: Path) -> Iterator[tuple[int, int, str, str]]:
    """Split an extxyz file into frames: yields (index, first line number, comment line, frame text).

    Reads line by line (constant memory); truncation and malformed atom lines are reported here with
    line numbers, everything else is left to ASE's parser.
    """
    index = 0
    line_number = 0
    seen_content = False
    try:
        with open(path, encoding="utf-8") as handle:
            lines = iter(handle)
            for line in lines:
                line_number += 1
                if not line.strip():
                    continue  # blank lines between frames / at the end
                seen_content = True
                start = line_number
                try:
                    n_atoms = int(line.split()[0]) if len(line.split()) == 1 else -1
                except ValueError:
                    n_atoms = -1
                if n_atoms < 0:
                    raise _input_error(
                        path, index,
                        f"unparsable content at line {line_number}: expected the atom count of a frame, "
                        f"found {line.strip()[:60]!r}",
                    )
                comment = next(lines, None)
                if comment is None:
                    raise _input_error(path, index, f"truncated file: ends after the atom-count line {start}")
                line_number += 1
                try:
                    columns = _expected_columns(comment)
                except _Problem as problem:
                    raise _input_error(path, index, f"unparsable content at line {line_number}: {problem}")
                body = []
                for atom in range(n_atoms):
                    atom_line = next(lines, None)
                    if atom_line is None:
                        raise _input_error(
                            path, index,
                            f"truncated file: the frame declares {n_atoms} atoms but the file ends after {atom} "
                            "atom lines",
                        )
                    line_number += 1
                    found = len(atom_line.split())
                    if found < columns:
                        hint = " (truncated file?)" if not atom_line.endswith("\n") else ""
                        raise _input_error(
                            path, index,
                            f"unparsable content at line {line_number} (atom {atom}): {found} columns but the "
                            f"header's Properties needs {columns}{hint}",
                        )
                    body.append(atom_line)
                yield index, start, comment, line + comment + "".join(body)
                index += 1
    except UnicodeDecodeError:
        raise _input_error(path, index, f"unparsable content near line {line_number + 1}: not a UTF-8 text file")
    if not seen_content:
        raise _input_error(path, None, "file is empty (no structures)")


def _parse_frame(path: Path, index: int, start: int, comment: str, text: str, allow_nonfinite: bool = False):
    """One validated ASE ``Atoms`` from a frame's text (``allow_nonfinite``: NaN/inf coordinates are left for
    :mod:`dismax.validation` to give the structure a status)."""
    import ase.io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase.io.read(io.StringIO(text), format="extxyz")
    except KeyError as err:
        raise _input_error(path, index, f"unparsable content in the frame at line {start}: unknown chemical "
                           f"symbol {err}") from None
    except Exception as err:  # ASE raises ValueError, XYZError, IndexError, ... for malformed frames
        raise _input_error(path, index, f"unparsable content in the frame at line {start}: "
                           f"{type(err).__name__}: {err}") from None
    if len(atoms) == 0:
        raise _input_error(path, index, f"the frame at line {start} has no atoms")
    lattice = np.asarray(atoms.cell.array, float)
    if not np.any(lattice) and "lattice=" not in comment.lower():
        raise _input_error(path, index, "missing cell: the header has no Lattice=\"...\"")
    if not np.all(atoms.pbc):
        flags = " ".join("T" if p else "F" for p in atoms.pbc)
        raise _input_error(path, index, f"non-periodic boundary conditions pbc=\"{flags}\"; dismax needs "
                           "pbc=\"T T T\"")
    try:
        positions = np.zeros((1, 3)) if allow_nonfinite else np.asarray(atoms.positions, float)
        _check_cell_and_positions(lattice, positions, "position")
    except _Problem as problem:
        raise _input_error(path, index, str(problem)) from None
    return atoms


def _frame_info(atoms) -> dict:
    """The frame's info keys plus per-structure calculator results (energy, stress, ...)."""
    from ase.io.extxyz import per_config_properties

    info = dict(atoms.info)
    if atoms.calc is not None:
        for key, value in atoms.calc.results.items():
            if key in per_config_properties:
                info.setdefault(key, value)
    return info


def iter_extxyz_chunks(path, chunk: int = DEFAULT_CHUNK, fixed_composition: bool = True,
                       with_info: bool = False) -> Iterator[Crystals | tuple[Crystals, list[dict]]]:
    """Stream a multi-frame extxyz file as Crystals batches of at most ``chunk`` structures.

    Every frame is validated (see module docstring); with ``fixed_composition`` all frames must share the
    composition of frame 0, otherwise only its atom count. ``with_info`` also yields each frame's info dict.
    """
    path = Path(path)
    _check_readable(path)
    if chunk < 1:
        raise DismaxInputError(f"chunk must be a positive number of structures, got {chunk}")
    checker = _SetChecker(fixed_composition)
    atoms_list, infos = [], []

    def flush():
        crystals = Crystals.from_ase(atoms_list)
        out = (crystals, list(infos)) if with_info else crystals
        atoms_list.clear()
        infos.clear()
        return out

    for index, start, comment, text in _iter_frame_texts(path):
        atoms = _parse_frame(path, index, start, comment, text)
        checker.check(path, index, np.asarray(atoms.numbers))
        atoms_list.append(atoms)
        if with_info:
            infos.append(_frame_info(atoms))
        if len(atoms_list) == chunk:
            yield flush()
    if atoms_list:
        yield flush()


def read_extxyz(path, fixed_composition: bool = True,
                with_info: bool = False) -> Crystals | tuple[Crystals, list[dict]]:
    """All frames of an extxyz file as one validated Crystals batch (and info dicts if ``with_info``)."""
    parts = list(iter_extxyz_chunks(path, DEFAULT_CHUNK, fixed_composition, with_info))
    if with_info:
        return Crystals.concatenate([p[0] for p in parts]), [i for p in parts for i in p[1]]
    return Crystals.concatenate(parts)


def read_structure_set(path, allow_nonfinite: bool = False,
                       with_info: bool = False) -> StructureSet | tuple[StructureSet, list[dict]]:
    """All frames of an extxyz file whose atom counts may differ (e.g. a post-processed set), validated.

    ``allow_nonfinite`` reads generated structures with NaN/inf coordinates too, so each keeps its
    index and gets a status from :func:`dismax.validation.screen` instead of failing the whole file;
    ``with_info`` also returns each frame's info dict."""
    path = Path(path)
    _check_readable(path)
    frames = [_parse_frame(path, index, start, comment, text, allow_nonfinite)
              for index, start, comment, text in _iter_frame_texts(path)]
    structures = StructureSet.from_ase(frames)
    return (structures, [_frame_info(atoms) for atoms in frames]) if with_info else structures


def _frame_labels(path: Path, index: int, atoms) -> tuple[float, np.ndarray]:
    """(energy eV, forces (N, 3) eV/Å) of one parsed frame (ASE conventions: info/calculator ``energy``,
    per-atom ``forces``)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    if energy is None:
        raise _input_error(path, index, "no energy: a labelled frame needs energy=... in its header")
    if forces is None:
        raise _input_error(path, index, "no forces: a labelled frame needs forces:R:3 in its Properties")
    forces = np.asarray(forces, float)
    if forces.shape != (len(atoms), 3):
        raise _input_error(path, index, f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise _input_error(path, index, "non-finite energy or forces")
    return float(energy), forces


def _labelled_frames(path: Path, checker: "_SetChecker | None") -> tuple[list, np.ndarray, list[np.ndarray]]:
    """(ASE frames, energies (M,) eV, forces [(N_m, 3)] eV/Å) of a labelled extxyz file, every frame
    validated; ``checker`` (when given) enforces one atom count (and composition)."""
    _check_readable(path)
    atoms_list, energies, forces = [], [], []
    for index, start, comment, text in _iter_frame_texts(path):
        atoms = _parse_frame(path, index, start, comment, text)
        if checker is not None:
            checker.check(path, index, np.asarray(atoms.numbers))
        energy, force = _frame_labels(path, index, atoms)
        atoms_list.append(atoms)
        energies.append(energy)
        forces.append(force)
    return atoms_list, np.asarray(energies), forces


def read_labelled_extxyz(path, fixed_composition: bool = False) -> tuple[Crystals, np.ndarray, np.ndarray]:
    """Frames with energies and forces (training data of a potential): (Crystals, energies (M,) in eV,
    Cartesian forces (M, N, 3) in eV/Å). Every frame is validated; all must share one atom count."""
    atoms_list, energies, forces = _labelled_frames(Path(path), _SetChecker(fixed_composition))
    return Crystals.from_ase(atoms_list), energies, np.stack(forces)


def read_labelled_set(path) -> tuple[StructureSet, np.ndarray, list[np.ndarray]]:
    """Labelled frames whose atom counts may differ: (StructureSet in file order, energies (M,) in eV,
    Cartesian forces [(N_m, 3)] in eV/Å, one array per frame). Every frame is validated."""
    atoms_list, energies, forces = _labelled_frames(Path(path), None)
    return StructureSet.from_ase(atoms_list), energies, forces


def write_labelled_frames(handle, crystals: Crystals, energies, forces, info: list[dict] | None = None) -> None:
    """Append frames with energies (B,) eV and forces (B, N, 3) eV/Å to an open text handle (extxyz, ASE
    conventions: ``energy=`` in the header, ``forces:R:3`` per atom)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms_list = _check_crystals(crystals, Path("<stream>")).to_ase()
    for b, atoms in enumerate(atoms_list):
        atoms.info.update(info[b] if info else {})
        atoms.calc = SinglePointCalculator(atoms, energy=float(energies[b]), forces=np.asarray(forces[b], float))
    ase.io.write(handle, atoms_list, format="extxyz")


# ---------------------------------------------------------------------- writing
def _check_crystals(crystals: Crystals, target: Path) -> Crystals:
    """Validate a batch before writing it; returns the NumPy view."""
    crystals = crystals.to_numpy()
    if crystals.batch_size == 0:
        raise _input_error(target, None, "refusing to write an empty batch of structures")
    species = np.asarray(crystals.species)
    for b in range(crystals.batch_size):
        try:
            if np.any(species[b] < 1) or np.any(species[b] > 118):
                raise _Problem(f"invalid atomic numbers {sorted(set(species[b].tolist()))}")
            _check_cell_and_positions(np.asarray(crystals.lattice[b], float),
                                      np.asarray(crystals.frac[b], float), "fractional coordinates")
        except _Problem as problem:
            raise _input_error(target, b, f"cannot be written: {problem}") from None
    return crystals


_INFO_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _check_info(path: Path, index: int, entry: dict) -> None:
    """Info keys must be plain words and values numbers, bools, strings or numeric arrays (else ASE drops them)."""
    for key, value in entry.items():
        if not isinstance(key, str) or not _INFO_KEY.match(key) or key.lower() in ("lattice", "properties", "pbc"):
            raise _input_error(path, index, f"cannot be written: info key {key!r} is not a plain extxyz key")
        if isinstance(value, (str, bool, int, float, np.number, np.bool_)):
            continue
        array = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
        if array is None or array.dtype.kind not in "biuf" or array.ndim > 2:
            raise _input_error(path, index, f"cannot be written: info value of {key!r} is a "
                               f"{type(value).__name__}, not a number, string or numeric array")


def write_extxyz_frames(handle, crystals: Crystals | StructureSet, info: list[dict] | None = None,
                        target: Path | str = "<stream>") -> None:
    """Write validated structures as extxyz frames (Dismai-Bench header format) to an open text handle.

    The one extxyz formatter: :func:`write_extxyz` and the append-only writers (relaxation output,
    streamed samples) call it. ``info`` optionally gives one dict of extra header keys (numbers, strings,
    small arrays) per structure; ``target`` names the destination in error messages.
    """
    import ase.io

    target = Path(target)
    groups = crystals.groups if isinstance(crystals, StructureSet) else (crystals,)
    for group in groups:
        _check_crystals(group, target)
    atoms_list = crystals.to_ase() if isinstance(crystals, StructureSet) else crystals.to_numpy().to_ase()
    if info is not None:
        if len(info) != len(atoms_list):
            raise _input_error(target, None, f"got {len(info)} info dicts for {len(atoms_list)} structures")
        for b, (atoms, entry) in enumerate(zip(atoms_list, info)):
            _check_info(target, b, entry)
            atoms.info.update(entry)
    ase.io.write(handle, atoms_list, format="extxyz")


def write_extxyz(crystals: Crystals | StructureSet, path, info: list[dict] | None = None) -> Path:
    """Write a batch or a set as a multi-frame extxyz file (Dismai-Bench header format), atomically.

    ``info`` optionally gives one dict of extra header keys (numbers, strings, small arrays) per structure.
    Everything is validated before the file is touched.
    """
    path = Path(path)
    buffer = io.StringIO()
    write_extxyz_frames(buffer, crystals, info, path)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return path


# ---------------------------------------------------------------------- CIF
_CIF_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:\(\d+\))?$")
_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def _split_cif_blocks(text: str) -> list[str]:
    """Split CIF text into its ``data_`` blocks (ignoring ``data_`` inside ;-delimited text fields)."""
    blocks: list[list[str]] = []
    in_text_field = False
    for line in text.splitlines(keepends=True):
        if line.startswith(";"):
            in_text_field = not in_text_field
        if not in_text_field and line.lstrip().lower().startswith("data_"):
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    return ["".join(b) for b in blocks]


def _cif_number(value) -> float:
    """A CIF numeric value (uncertainty in parentheses allowed); raises _Problem otherwise."""
    text = str(value).strip().strip("'\"")
    if text.lower() in ("nan", "inf", "+inf", "-inf"):
        return float(text)
    match = _CIF_NUMBER.match(text)
    if not match:
        raise _Problem(f"{text!r} is not a number")
    return float(match.group(1))


def _precheck_cif_block(block_text: str) -> None:
    """Check the cell and coordinates of one CIF data block before pymatgen parses it."""
    from pymatgen.core import Lattice
    from pymatgen.io.cif import CifBlock

    data = {key.lower(): value for key, value in CifBlock.from_str(block_text).data.items()}  # tags ignore case
    missing = [key for key in _CELL_KEYS if key not in data]
    if missing:
        raise _Problem(f"missing cell: no {', '.join(missing)}")
    try:
        params = [_cif_number(data[key]) for key in _CELL_KEYS]
    except _Problem as problem:
        raise _Problem(f"unparsable cell parameter: {problem}") from None
    if not np.all(np.isfinite(params)):
        raise _Problem(f"cell contains NaN or inf ({params})")
    if min(params[:3]) <= 0:
        raise _Problem(f"cell has zero volume (cell lengths {params[:3]} Å)")
    matrix = Lattice.from_parameters(*params).matrix
    coord_keys = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
    if not all(key in data for key in coord_keys):
        raise _Problem("no atom sites (_atom_site_fract_x/y/z missing)")
    columns = [data[key] if isinstance(data[key], list) else [data[key]] for key in coord_keys]
    try:
        frac = np.array([[_cif_number(v) for v in column] for column in columns]).T
    except _Problem as problem:
        raise _Problem(f"unparsable atom coordinate: {problem}") from None
    _check_cell_and_positions(matrix, frac, "fractional coordinates")


def _parse_cif_block(block_text: str):
    """One pymatgen Structure from a CIF data block; raises _Problem with the reason on failure."""
    from pymatgen.io.cif import CifParser

    _precheck_cif_block(block_text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(block_text).parse_structures(primitive=False, on_error="raise")
        except Exception as err:  # pymatgen raises ValueError/KeyError/... with the reason as last line
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            overfull = re.match(r"Occupancy ([\d.]+) exceeded tolerance", reason)
            if overfull:
                raise _Problem(f"overlapping atoms: occupancies on one site sum to {overfull.group(1)} (sites closer "
                               "than 1e-4 in fractional coordinates are merged)") from None
            raise _Problem(f"unparsable content: {reason}") from None
    for warning in caught:
        message = str(warning.message)
        if "is not a valid Element" in message or "No structure parsed" in message:
            raise _Problem(f"unparsable content: {message}")
    if len(structures) != 1:
        raise _Problem(f"unparsable content: expected one structure in the data block, got {len(structures)}")
    return structures[0]


def _describe_disorder(block_text: str, structure) -> str:
    """The first partially occupied atom site as the CIF names it (label and row of its _atom_site loop);
    pymatgen's expanded structure orders sites differently, so it is only the fallback."""
    from pymatgen.io.cif import CifFile

    data = next(iter(CifFile.from_str(block_text).data.values())).data
    labels, occupancies = data.get("_atom_site_label", []), data.get("_atom_site_occupancy", [])
    for row, (label, occupancy) in enumerate(zip(labels, occupancies), start=1):
        try:
            value = float(str(occupancy).split("(")[0])
        except ValueError:
            continue
        if value < 1.0 - 1e-6:
            return f"atom site {label} (row {row} of the _atom_site loop) has occupancy {occupancy}"
    for k, site in enumerate(structure):
        if not site.is_ordered:
            occupancy = ", ".join(f"{sp}:{occ:g}" for sp, occ in site.species.items())
            return f"site {k} has occupancy {occupancy}"
    return "a site is not fully occupied"


def _read_cif_entries(path_or_paths, allow_partial: bool) -> list[tuple[Path, int, object]]:
    """(path, block index, pymatgen Structure) for every data block of one or more CIF files."""
    paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, os.PathLike)) else [
        Path(p) for p in path_or_paths]
    if not paths:
        raise DismaxInputError("no CIF files given")
    entries = []
    for path in paths:
        _check_readable(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise _input_error(path, None, "unparsable content: not a UTF-8 text file") from None
        if not text.strip():
            raise _input_error(path, None, "file is empty (no structures)")
        blocks = _split_cif_blocks(text)
        if not blocks:
            raise _input_error(path, 0, "unparsable content: no data_ block found (not a CIF file, or truncated)")
        for index, block in enumerate(blocks):
            try:
                structure = _parse_cif_block(block)
            except _Problem as problem:
                raise _input_error(path, index, str(problem)) from None
            if not allow_partial and not structure.is_ordered:
                raise _input_error(path, index, f"partial occupancy ({_describe_disorder(block, structure)}); "
                                   "integer occupancy is required")
            entries.append((path, index, structure))
    return entries


def read_cif_structures(path_or_paths, allow_partial: bool = False) -> list:
    """Validated pymatgen ``Structure`` objects from one or more CIF files (every data block, in order).

    Partial occupancies raise ``DismaxInputError`` unless ``allow_partial``.
    """
    return [structure for _, _, structure in _read_cif_entries(path_or_paths, allow_partial)]


def read_cif(path_or_paths, allow_partial: bool = False, fixed_composition: bool = True):
    """Read one or more CIF files (all data blocks, in order).

    Returns a validated :class:`Crystals` batch of ordered structures. With ``allow_partial`` the
    structures are returned as a list of pymatgen ``Structure`` instead (disorder kept, no batch checks),
    since a Crystals batch cannot hold partial occupancies.
    """
    found = _read_cif_entries(path_or_paths, allow_partial)
    if allow_partial:
        return [structure for _, _, structure in found]
    checker = _SetChecker(fixed_composition)
    for path, index, structure in found:
        checker.check(path, index, np.array([site.specie.Z for site in structure]))
    return Crystals.from_pymatgen([s for _, _, s in found])


def write_cif(crystals: Crystals, path) -> list[Path]:
    """Write a batch as CIF, atomically per file; returns the written paths.

    A ``path`` ending in ``.cif`` receives all structures as data blocks ``data_structure_<i>`` of one file;
    any other ``path`` is a directory that receives one ``<i>.cif`` per structure (zero-padded index).
    """
    from pymatgen.io.cif import CifFile, CifWriter

    path = Path(path)
    crystals = _check_crystals(crystals, path)
    structures = crystals.to_pymatgen()

    def block(structure, index):
        cif_block = next(iter(CifWriter(structure).cif_file.data.values()))
        cif_block.header = f"structure_{index}"  # unique data_ names, so any CIF reader sees every block
        return cif_block

    if path.suffix.lower() == ".cif":
        cif = CifFile({f"structure_{i}": block(s, i) for i, s in enumerate(structures)})
        atomic_write(path, lambda handle: handle.write(str(cif) + "\n"))
        return [path]
    width = max(4, len(str(len(structures) - 1)))
    written = []
    for i, structure in enumerate(structures):
        target = path / f"{i:0{width}d}.cif"
        cif = CifFile({f"structure_{i}": block(structure, i)})
        atomic_write(target, lambda handle: handle.write(str(cif) + "\n"))
        written.append(target)
    return written


# ---------------------------------------------------------------------- dispatch
def read_structures(path, fixed_composition: bool = True) -> Crystals:
    """Read an extxyz file, a CIF file or a directory of CIF files into one validated Crystals batch."""
    path = Path(path)
    if path.is_dir():
        cifs = sorted(p for p in path.iterdir() if p.suffix.lower() in CIF_SUFFIXES)
        if not cifs:
            raise _input_error(path, None, "directory contains no .cif files")
        return read_cif(cifs, fixed_composition=fixed_composition)
    suffix = path.suffix.lower()
    if suffix in EXTXYZ_SUFFIXES:
        return read_extxyz(path, fixed_composition=fixed_composition)
    if suffix in CIF_SUFFIXES:
        return read_cif(path, fixed_composition=fixed_composition)
    _check_readable(path)
    raise _input_error(path, None, f"unknown file type {suffix or '(no extension)'!r}; expected "
                       f"{', '.join(EXTXYZ_SUFFIXES + CIF_SUFFIXES)} or a directory of .cif files")
