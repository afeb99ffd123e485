"""Energy models for relaxation, MD and labelling.

A potential provides ``cutoff`` (Å), ``name``, ``check_species(species)``, the pure-JAX
``energy_from_displacements(dR (N, K, 3), mask (N, K)) -> eV`` of one structure (optionally also
``energy_from_components(dx, dy, dz, mask)`` on the (N, K) components, which the relaxation differentiates
faster), and ``potential(crystals) -> (B,)`` energies. :mod:`dismax.potentials.evaluate` evaluates any potential on
Crystals (energies, forces); :mod:`dismax.potentials.fire` relaxes with any of them, and
:mod:`dismax.potentials.jaxmd` is the neighbour-list plumbing of the a-Si MD.
"""

from pathlib import Path

from dismax.errors import DismaxInputError
from dismax.potentials.calculator import Calculator
from dismax.potentials.evaluate import energies_and_forces
from dismax.potentials.fitted import load_exported, load_potential
from dismax.potentials.stillinger_weber import StillingerWeber, amorphous_sw, original_sw

POTENTIALS = {"sw": original_sw, "sw_a_si": amorphous_sw}
# fitted potentials shipped in the package (files written by fitted.export_potential)
SHIPPED = {"interface_chgnet": Path(__file__).parent / "weights" / "interface_chgnet.msgpack"}


def potential_names() -> list[str]:
    """The names :func:`get_potential` takes besides ``run:DIR``: the built-in potentials, then the shipped ones."""
    return sorted(POTENTIALS) + sorted(SHIPPED)


def is_potential_name(name: str) -> bool:
    """Whether :func:`get_potential` knows ``name`` (without loading anything; a ``run:DIR`` is checked on load)."""
    return name.startswith("run:") or name in POTENTIALS or name in SHIPPED


def get_potential(name: str):
    """Potential by its CLI name (``sw``, ``sw_a_si``, a shipped one such as ``interface_chgnet``) or
    ``run:DIR``, a fitted potential's run directory (its best checkpoint)."""
    if name.startswith("run:"):
        return load_potential(name[len("run:"):])
    if name in SHIPPED:
        return load_exported(SHIPPED[name], name)
    if name not in POTENTIALS:
        raise DismaxInputError(f"unknown potential {name!r}; choose one of {potential_names()} or run:DIR")
    return POTENTIALS[name]()


__all__ = ["Calculator", "POTENTIALS", "SHIPPED", "StillingerWeber", "amorphous_sw", "energies_and_forces", "get_potential", "is_potential_name",
           "load_potential", "original_sw", "potential_names"]
