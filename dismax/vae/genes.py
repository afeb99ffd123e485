"""Wyckoff genes: a crystal as space group + lattice parameters + one record per Wyckoff orbit.

A gene is the host-side, human-readable form of the Dis-GEN representation; `representation.py`
turns genes into the (A, c) arrays and back, `structure.py` turns genes into pymatgen Structures/CIFs.
"""

from __future__ import annotations

from dataclasses import dataclass

VACANCY = "X"


@dataclass(frozen=True)
class WyckoffSite:
    """One Wyckoff orbit: letter, multiplicity, species -> occupancy (vacancy excluded), representative
    fractional coordinates (3,), and whether the site is disordered (> 1 species counting the vacancy)."""

    letter: str
    multiplicity: int
    occupancy: tuple[tuple[str, float], ...]
    frac: tuple[float, float, float]

    @property
    def label(self) -> str:
        """Wyckoff label such as '4e'."""
        return f"{self.multiplicity}{self.letter}"

    @property
    def vacancy(self) -> float:
        """Occupancy left to the vacancy: 1 - sum of the species occupancies (>= 0)."""
        return max(0.0, 1.0 - sum(value for _, value in self.occupancy))

    @property
    def disordered(self) -> bool:
        return len(self.occupancy) + (1 if self.vacancy > 1e-6 else 0) > 1

    def to_dict(self) -> dict:
        return {
            "letter": self.letter,
            "multiplicity": self.multiplicity,
            "occupancy": dict(self.occupancy),
            "frac": list(self.frac),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "WyckoffSite":
        return cls(
            letter=data["letter"],
            multiplicity=int(data["multiplicity"]),
            occupancy=tuple((str(k), float(v)) for k, v in data["occupancy"].items()),
            frac=tuple(float(x) for x in data["frac"]),
        )


@dataclass(frozen=True)
class WyckoffGene:
    """A crystal: space group number (1-230, table setting), lattice (a, b, c in Å, alpha, beta, gamma in
    degrees) and its Wyckoff sites."""

    spacegroup: int
    lattice: tuple[float, float, float, float, float, float]
    sites: tuple[WyckoffSite, ...]

    @property
    def n_disordered(self) -> int:
        return sum(site.disordered for site in self.sites)

    def to_dict(self) -> dict:
        return {
            "spacegroup": self.spacegroup,
            "lattice": list(self.lattice),
            "sites": [site.to_dict() for site in self.sites],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "WyckoffGene":
        return cls(
            spacegroup=int(data["spacegroup"]),
            lattice=tuple(float(x) for x in data["lattice"]),
            sites=tuple(WyckoffSite.from_dict(site) for site in data["sites"]),
        )
