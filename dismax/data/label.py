"""``python -m dismax.data label``: energies and forces of every frame of an extxyz file from a calculator.

Calculators: ``sw`` / ``sw_a_si`` (Stillinger–Weber) and ``run:DIR`` (a fitted dismax potential) run in JAX;
``module:Class`` is any importable ASE calculator class built without arguments; ``chgnet`` (CHGNet 0.3.0)
and ``sevennet`` (SevenNet-0) need the optional ``teachers`` extra (CPU torch).

Resumable frame by frame: each labelled frame is appended to ``OUT.partial`` (flushed to disk) and the
count of finished frames and the file length are recorded atomically in ``OUT.progress.json``; a rerun
truncates the partial file to the recorded length and continues with the next frame. When every frame is
done the partial file is renamed onto ``OUT``. Frames may differ in atom count; their info keys are kept.
"""

from __future__ import annotations

import importlib
import io
import json
import os
from pathlib import Path

import numpy as np

from dismax.errors import DismaxInputError
from dismax.io import read_structure_set, write_labelled_frames
from dismax.potentials import energies_and_forces, get_potential
from dismax.runs import atomic_write_text, exclusive_lock, progress
from dismax.structures import Crystals

TEACHER_HINT = "install the optional teachers: pip install -e .[teachers]"
LABEL_KEYS = ("energy", "forces", "free_energy", "stress")


class AseLabeller:
    """Energies and forces of one frame from an ASE calculator."""

    def __init__(self, calculator, name: str):
        self.calculator, self.name = calculator, name

    def __call__(self, crystals: Crystals):
        atoms = crystals.to_ase()[0]
        atoms.calc = self.calculator
        return np.array([atoms.get_potential_energy()]), atoms.get_forces()[None]


class JaxLabeller:
    """Energies and forces of one frame from a dismax potential (Stillinger–Weber or a fitted one)."""

    def __init__(self, potential, name: str):
        self.potential, self.name = potential, name

    def __call__(self, crystals: Crystals):
        return tuple(np.asarray(x, np.float64) for x in energies_and_forces(self.potential, crystals))

    def check(self, structures, source: Path) -> None:
        """Raise the potential's error for the first frame with an element it does not know."""
        for index, frame in enumerate(structures):
            try:
                self.potential.check_species(frame.species)
            except DismaxInputError as exc:
                raise DismaxInputError(f"{source}, frame {index}: {str(exc).replace('structure 0 ', '')}") from None


def _import_class(module_name: str, class_name: str, hint: str):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise DismaxInputError(f"calculator module {module_name!r} cannot be imported ({exc}); {hint}") from None
    if not hasattr(module, class_name):
        raise DismaxInputError(f"module {module_name!r} has no class {class_name!r}")
    return getattr(module, class_name)


def labeller(name: str):
    """The labeller for ``--calculator NAME`` (see the module docstring)."""
    if name == "chgnet":
        calculator_class = _import_class("chgnet.model.dynamics", "CHGNetCalculator", TEACHER_HINT)
        model_class = _import_class("chgnet.model", "CHGNet", TEACHER_HINT)
        return AseLabeller(calculator_class(model=model_class.load(model_name="0.3.0", use_device="cpu")), name)
    if name == "sevennet":
        calculator_class = _import_class("sevenn.calculator", "SevenNetCalculator", TEACHER_HINT)
        return AseLabeller(calculator_class(model="7net-0", device="cpu"), name)
    if ":" in name and not name.startswith("run:"):
        module_name, _, class_name = name.partition(":")
        return AseLabeller(_import_class(module_name, class_name, "is it installed?")(), name)
    return JaxLabeller(get_potential(name), name)


def _resume_point(out: Path, partial: Path, record: Path, source: str, calculator: str) -> int:
    """Frames already labelled (0 for a fresh start); truncates the partial file to its recorded length."""
    if not record.exists() or not partial.exists():
        partial.write_text("")
        return 0
    state = json.loads(record.read_text())
    if state.get("input") != source or state.get("calculator") != calculator:
        raise DismaxInputError(f"'{out}' has an unfinished labelling of {state.get('input')} with "
                               f"{state.get('calculator')}; delete {partial.name} and {record.name} to start over")
    with open(partial, "r+b") as handle:
        handle.truncate(int(state["bytes"]))
    return int(state["done"])


def label_file(source, out, calculator: str, show_progress: bool = True) -> Path:
    """Label every frame of ``source`` into ``out`` (resumable; see the module docstring)."""
    source, out = Path(source), Path(out)
    structures, infos = read_structure_set(source, with_info=True)
    label = labeller(calculator)
    if isinstance(label, JaxLabeller):
        label.check(structures, source)
    partial = out.with_name(out.name + ".partial")
    record = out.with_name(out.name + ".progress.json")
    with exclusive_lock(out, "labelling output"):
        done = _resume_point(out, partial, record, str(source.resolve()), calculator)
        indices = range(done, len(structures))
        if show_progress:
            indices = progress(indices, total=len(structures), initial=done, desc=f"label ({calculator})",
                               unit="frame")
        with open(partial, "a", encoding="utf-8") as handle:
            for index in indices:
                frame = structures[index]
                energies, forces = label(frame)
                info = {k: v for k, v in infos[index].items() if k not in LABEL_KEYS}
                text = io.StringIO()
                write_labelled_frames(text, frame, energies, forces, [info])
                handle.write(text.getvalue())
                handle.flush()
                os.fsync(handle.fileno())
                atomic_write_text(record, json.dumps({"input": str(source.resolve()), "calculator": calculator,
                                                      "done": index + 1, "bytes": handle.tell()}))
        os.replace(partial, out)
        record.unlink()
    return out
