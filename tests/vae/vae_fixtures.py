"""Small disordered test crystals written as symmetrised CIFs (built here, no downloaded data)."""

import functools

from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter


def nmc_structure() -> Structure:
    """LiNi1/3Mn1/3Co1/3O2, R-3m: Li 3a, mixed transition-metal 3b, O 6c."""
    return Structure.from_spacegroup(
        "R-3m",
        Lattice.hexagonal(2.86, 14.22),
        ["Li", {"Ni": 0.333, "Mn": 0.333, "Co": 0.334}, "O"],
        [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.2412]],
    )


def perovskite_structure() -> Structure:
    """La0.7Sr0.3MnO3, Pm-3m: mixed A site 1b, Mn 1a, O 3d."""
    return Structure.from_spacegroup(
        "Pm-3m",
        Lattice.cubic(3.88),
        [{"La": 0.7, "Sr": 0.3}, "Mn", "O"],
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]],
    )


def spinel_structure() -> Structure:
    """Li0.58Mn2O4 spinel, Fd-3m (a two-origin group; pymatgen builds origin choice 1 here): Li 8a with
    vacancies, Mn 16d, O 32e."""
    return Structure.from_spacegroup(
        227,
        Lattice.cubic(8.24),
        [{"Li": 0.58}, "Mn", "O"],
        [[0, 0, 0], [0.625, 0.625, 0.625], [0.3875, 0.3875, 0.3875]],
    )


def anatase_structure() -> Structure:
    """TiO2 anatase with Ti/Nb mixing, I4_1/amd (two-origin group 141; origin choice 1 coordinates)."""
    return Structure.from_spacegroup(
        141, Lattice.tetragonal(3.785, 9.514), [{"Ti": 0.9, "Nb": 0.1}, "O"], [[0, 0, 0], [0, 0, 0.2083]]
    )


def scheelite_structure() -> Structure:
    """CaWO4 scheelite with Ca/Sr mixing, I4_1/a (two-origin group 88)."""
    return Structure.from_spacegroup(
        88, Lattice.tetragonal(5.24, 11.37), [{"Ca": 0.8, "Sr": 0.2}, "W", "O"],
        [[0, 0.25, 0.625], [0, 0.25, 0.125], [0.2413, 0.1511, 0.0861]],
    )


def to_cif(structure: Structure) -> str:
    """Symmetrised CIF text (declares the space group number, as ICSD/COD exports do)."""
    return str(CifWriter(structure, symprec=0.01))


def _cached(build):
    """Build once per session (pymatgen's from_spacegroup is slow for cubic groups); hand out copies."""
    once = functools.cache(build)

    @functools.wraps(build)
    def copy():
        return once().copy()

    return copy


nmc_structure = _cached(nmc_structure)
perovskite_structure = _cached(perovskite_structure)
spinel_structure = _cached(spinel_structure)
anatase_structure = _cached(anatase_structure)
scheelite_structure = _cached(scheelite_structure)

ALL = {
    "nmc": nmc_structure,
    "perovskite": perovskite_structure,
    "spinel": spinel_structure,
    "anatase": anatase_structure,
    "scheelite": scheelite_structure,
}


def write_training_cifs(folder, copies: int = 3) -> int:
    """Write `copies` variants (scaled lattice, shifted occupancies) of each test crystal as CIFs; returns
    the number of files."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, build in ALL.items():
        for k in range(copies):
            structure = build()
            structure.scale_lattice(structure.volume * (1.0 + 0.03 * k))
            if k:
                for site in structure:
                    if len(site.species) > 1 or site.species.num_atoms < 1:
                        site.species = {el: round(v * (1 - 0.1 * k), 3) for el, v in site.species.items()}
            (folder / f"{name}_{k}.cif").write_text(to_cif(structure))
            count += 1
    return count
