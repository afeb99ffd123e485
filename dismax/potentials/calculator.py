"""An ASE calculator for fitted dismax potentials, so ASE optimisers and MD can use them.

``Calculator(run_dir)`` loads the run's best checkpoint (or takes a ``LearnedPotential`` directly) and
returns energy (eV) and forces (eV/Å) from the same JAX evaluation as the rest of dismax (neighbour tables
with images, forces through the fractional route). Periodic cells only; the cell is held fixed (no stress).
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes

from dismax.errors import DismaxInputError
from dismax.potentials.fitted import load_potential
from dismax.potentials.nequip import LearnedPotential
from dismax.structures import Crystals


class Calculator(AseCalculator):
    """ASE calculator of a fitted potential: ``Calculator(run_dir, which="best")`` or
    ``Calculator(potential=LearnedPotential)``."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, run_dir=None, which: str = "best", potential: LearnedPotential | None = None, **kwargs):
        super().__init__(**kwargs)
        if (run_dir is None) == (potential is None):
            raise DismaxInputError("give either a run directory or a potential")
        self.potential = potential if potential is not None else load_potential(run_dir, which)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if not np.all(self.atoms.pbc):
            raise DismaxInputError("the dismax potential needs a periodic cell (pbc = True on all axes)")
        energies, forces = self.potential.energies_and_forces(Crystals.from_ase([self.atoms]))
        self.results = {"energy": float(energies[0]), "free_energy": float(energies[0]), "forces": forces[0]}
