"""A demonstration set of disordered crystals with learnable chemistry (ICSD data cannot be shipped).

Every crystal is one of 15 prototype structures (rock salt, perovskite, layered R-3m oxide, spinel,
fluorite, rutile, wurtzite, corundum, olivine, CsCl, zinc blende, anatase, scheelite, wolframite, NiAs)
with each Wyckoff orbit filled from a family of chemically similar ions of the orbit's formal charge:
substitution mixes 2-3 members of the family (occupancies in steps of 0.05), and on some cation orbits
charge-compensated vacancies replace two ions of charge q by one of charge 2q and a vacancy. Every
composition is therefore charge-balanced (and is kept only when `chemistry.charge_neutral` agrees).
Lattice lengths scale with the multiplicity-weighted ionic radii of the chosen ions (relative to the
prototype's), with 0.5 % noise; free coordinates are the prototype's plus 0.005 noise, projected back
onto their Wyckoff position.

`python -m dismax.data build disordered_demo [--size small|full] [--seed S] [--out DIR]` writes the
symmetrised CIFs (small: 2,000, full: 20,000) and params.json; `python -m dismax.vae.demo --out DIR
--n N` writes N CIFs directly. A demonstration set, not a physical database: train on your own CIF
collection for real work.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dismax.runs import atomic_write_text
from dismax.vae import wyckoff
from dismax.vae.chemistry import charge_neutral
from dismax.vae.genes import WyckoffGene, WyckoffSite

SIZES = {"small": 2000, "full": 20000}

# ion families of one formal charge and similar size
ALKALI_SMALL = ("Li", "Na")
ALKALI_LARGE = ("K", "Rb", "Cs")
DIVALENT_SMALL = ("Mg", "Mn", "Fe", "Co", "Ni", "Zn")
DIVALENT_LARGE = ("Ca", "Sr", "Ba")
TRIVALENT_SMALL = ("Al", "Cr", "Fe", "Ga", "Mn", "Co")
TRIVALENT_LARGE = ("La", "Pr", "Nd", "Sm")
TETRAVALENT = ("Ti", "Zr", "Hf", "Sn")
CHALCOGENIDE = ("S", "Se")
HALIDE = ("Cl", "Br")
# compensating ion of charge 2q for a vacancy on a site of charge q (similar size)
COMPENSATING = {"Li": "Mg", "Na": "Ca", "K": "Sr", "Rb": "Sr", "Cs": "Ba", "Mg": "Ti", "Ca": "Ce", "Sr": "Ce",
                "Ba": "Ce"}


@dataclass(frozen=True, eq=False)  # hashed by identity (chemistries hold dicts)
class Prototype:
    """A prototype: space group (pymatgen's setting), lattice parameters, per orbit (reference species,
    fractional coordinates) and chemistries mapping each reference species to (charge, ion family)."""

    name: str
    group: int
    lattice: tuple[float, ...]
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    chemistries: tuple[dict, ...]


O2 = (-2, ("O",))
PROTOTYPES = (
    Prototype("rocksalt", 225, (4.21, 4.21, 4.21, 90, 90, 90), (("Mg", (0, 0, 0)), ("O", (0.5, 0.5, 0.5))),
              ({"Mg": (2, DIVALENT_SMALL), "O": O2}, {"Mg": (1, ALKALI_SMALL), "O": (-1, HALIDE)},
               {"Mg": (2, DIVALENT_LARGE), "O": (-2, CHALCOGENIDE)})),
    Prototype("perovskite", 221, (3.9, 3.9, 3.9, 90, 90, 90),
              (("Sr", (0.5, 0.5, 0.5)), ("Ti", (0, 0, 0)), ("O", (0.5, 0, 0))),
              ({"Sr": (2, DIVALENT_LARGE), "Ti": (4, TETRAVALENT), "O": O2},
               {"Sr": (3, TRIVALENT_LARGE), "Ti": (3, TRIVALENT_SMALL), "O": O2},
               {"Sr": (1, ALKALI_LARGE), "Ti": (2, DIVALENT_SMALL), "O": (-1, ("F",))})),
    Prototype("layered", 166, (2.82, 2.82, 14.05, 90, 90, 120),
              (("Li", (0, 0, 0)), ("Co", (0, 0, 0.5)), ("O", (0, 0, 0.24))),
              ({"Li": (1, ALKALI_SMALL), "Co": (3, TRIVALENT_SMALL), "O": O2},)),
    Prototype("spinel", 227, (8.08, 8.08, 8.08, 90, 90, 90),
              (("Mg", (0, 0, 0)), ("Al", (0.625, 0.625, 0.625)), ("O", (0.3875, 0.3875, 0.3875))),
              ({"Mg": (2, DIVALENT_SMALL), "Al": (3, TRIVALENT_SMALL), "O": O2},)),
    Prototype("fluorite", 225, (5.41, 5.41, 5.41, 90, 90, 90), (("Ce", (0, 0, 0)), ("O", (0.25, 0.25, 0.25))),
              ({"Ce": (4, ("Ce", "Zr", "Hf")), "O": O2}, {"Ce": (2, DIVALENT_LARGE), "O": (-1, ("F",))})),
    Prototype("rutile", 136, (4.59, 4.59, 2.96, 90, 90, 90), (("Ti", (0, 0, 0)), ("O", (0.305, 0.305, 0))),
              ({"Ti": (4, ("Ti", "Sn", "Ge", "Mn")), "O": O2}, {"Ti": (2, DIVALENT_SMALL), "O": (-1, ("F",))})),
    Prototype("wurtzite", 186, (3.25, 3.25, 5.21, 90, 90, 120),
              (("Zn", (1 / 3, 2 / 3, 0)), ("O", (1 / 3, 2 / 3, 0.382))),
              ({"Zn": (2, ("Zn", "Cd", "Mg")), "O": (-2, ("O", "S", "Se"))},)),
    Prototype("corundum", 167, (4.76, 4.76, 12.99, 90, 90, 120), (("Al", (0, 0, 0.352)), ("O", (0.306, 0, 0.25))),
              ({"Al": (3, TRIVALENT_SMALL), "O": O2},)),
    Prototype("olivine", 62, (10.33, 6.01, 4.69, 90, 90, 90),
              (("Li", (0, 0, 0)), ("Fe", (0.282, 0.25, 0.975)), ("P", (0.095, 0.25, 0.418)),
               ("O", (0.097, 0.25, 0.743)), ("S", (0.457, 0.25, 0.206)), ("N", (0.166, 0.047, 0.285))),
              ({"Li": (1, ALKALI_SMALL), "Fe": (2, DIVALENT_SMALL), "P": (5, ("P", "As")), "O": O2, "S": O2,
                "N": O2},
               {"Li": (2, DIVALENT_SMALL), "Fe": (2, DIVALENT_SMALL), "P": (4, ("Si", "Ge")), "O": O2, "S": O2,
                "N": O2})),
    Prototype("cscl", 221, (4.12, 4.12, 4.12, 90, 90, 90), (("Cs", (0, 0, 0)), ("Cl", (0.5, 0.5, 0.5))),
              ({"Cs": (1, ("Cs", "Rb", "Tl")), "Cl": (-1, ("Cl", "Br", "I"))},)),
    Prototype("zincblende", 216, (5.41, 5.41, 5.41, 90, 90, 90), (("Zn", (0, 0, 0)), ("S", (0.25, 0.25, 0.25))),
              ({"Zn": (2, ("Zn", "Cd")), "S": (-2, ("S", "Se", "Te"))},
               {"Zn": (3, ("Al", "Ga", "In")), "S": (-3, ("P", "As", "Sb"))})),
    Prototype("anatase", 141, (3.785, 3.785, 9.514, 90, 90, 90), (("Ti", (0, 0, 0)), ("O", (0, 0, 0.2083))),
              ({"Ti": (4, ("Ti", "Sn", "Zr")), "O": O2},)),
    Prototype("scheelite", 88, (5.24, 5.24, 11.37, 90, 90, 90),
              (("Ca", (0, 0.25, 0.625)), ("W", (0, 0.25, 0.125)), ("O", (0.2413, 0.1511, 0.0861))),
              ({"Ca": (2, DIVALENT_LARGE), "W": (6, ("W", "Mo")), "O": O2},)),
    Prototype("wolframite", 13, (4.69, 5.67, 4.93, 90, 90.6, 90),
              (("Mg", (0.5, 0.673, 0.25)), ("W", (0, 0.18, 0.25)), ("O", (0.22, 0.106, 0.94)),
               ("S", (0.26, 0.38, 0.39))),
              ({"Mg": (2, DIVALENT_SMALL), "W": (6, ("W", "Mo")), "O": O2, "S": O2},)),
    Prototype("nickeline", 194, (3.62, 3.62, 5.04, 90, 90, 120), (("Ni", (0, 0, 0)), ("As", (1 / 3, 2 / 3, 0.25))),
              ({"Ni": (2, ("Fe", "Co", "Ni", "Mn")), "As": (-2, ("S", "Se", "Te"))},)),
)


@functools.lru_cache(maxsize=None)
def template(prototype: Prototype) -> tuple[WyckoffGene, tuple[str, ...]]:
    """The prototype as a Wyckoff gene in the table's setting and the reference species of each of its sites
    (symmetry analysis of the pymatgen structure, so settings and origin choices follow the ingestion path)."""
    from pymatgen.core import Lattice, Structure

    from dismax.vae.ingest import analyse_structure

    species = [symbol for symbol, _ in prototype.sites]
    structure = Structure.from_spacegroup(prototype.group, Lattice.from_parameters(*prototype.lattice), species,
                                          [frac for _, frac in prototype.sites])
    gene = analyse_structure(structure)
    if gene.spacegroup != prototype.group:
        raise RuntimeError(f"prototype {prototype.name} analyses to group {gene.spacegroup}")
    return gene, tuple(site.occupancy[0][0] for site in gene.sites)


@functools.lru_cache(maxsize=None)
def ionic_radius(symbol: str, charge: int) -> float:
    """Shannon ionic radius (Å) of an ion, falling back to the element's average ionic radius."""
    from pymatgen.core import Element

    element = Element(symbol)
    radius = element.ionic_radii.get(charge)
    return float(radius if radius is not None else element.average_ionic_radius)


def _fractions(count: int, rng: np.random.Generator, total_steps: int = 20) -> list[float]:
    """`count` occupancies in steps of 1/total_steps, each >= 0.1, summing to total_steps/20."""
    cuts = np.sort(rng.choice(np.arange(2, total_steps - 1), count - 1, replace=False))
    steps = np.diff(np.concatenate([[0], cuts, [total_steps]]))
    if steps.min() < 2:
        return _fractions(count, rng, total_steps)
    return [round(float(s) / 20, 3) for s in steps]


def _occupancy(charge: int, family: tuple[str, ...], rng: np.random.Generator) -> tuple[tuple[str, float, int], ...]:
    """(ion, occupancy, charge) of one orbit: one ion (55 %), a 2-3 ion mixture of the family (35 %) or,
    when the host has a compensating ion, host(1 - 2x) + compensator(x, charge 2q) + vacancy(x) with x in
    {0.05, 0.1, 0.15} (10 %)."""
    draw = rng.uniform()
    host = str(rng.choice(family))
    if 0.55 <= draw < 0.9 and len(family) > 1:
        count = int(rng.integers(2, min(3, len(family)) + 1))
        chosen = rng.choice(family, count, replace=False)
        return tuple(sorted((str(el), value, charge) for el, value in zip(chosen, _fractions(count, rng))))
    if draw >= 0.9 and host in COMPENSATING:
        x = float(rng.choice([0.05, 0.1, 0.15]))
        return tuple(sorted(((host, round(1 - 2 * x, 3), charge), (COMPENSATING[host], x, 2 * charge))))
    return ((host, 1.0, charge),)


def _reference_radius(reference: str, charge: int, family: tuple[str, ...]) -> float:
    """Radius of the ion the prototype's lattice refers to (the reference species, or the family's first)."""
    return ionic_radius(reference if reference in family else family[0], charge)


def random_gene(rng: np.random.Generator) -> WyckoffGene:
    """One demo crystal: a random prototype and chemistry, substituted orbits, lattice scaled by the ionic
    radii, perturbed free coordinates."""
    prototype = PROTOTYPES[int(rng.integers(len(PROTOTYPES)))]
    chemistry = prototype.chemistries[int(rng.integers(len(prototype.chemistries)))]
    base, references = template(prototype)
    lattice_matrix = _lattice_matrix(base.lattice)
    sites, radius_sum, reference_sum = [], 0.0, 0.0
    for site, reference in zip(base.sites, references):
        ions = _occupancy(*chemistry[reference], rng)
        radius_sum += site.multiplicity * sum(value * ionic_radius(el, q) for el, value, q in ions)
        reference_sum += site.multiplicity * _reference_radius(reference, *prototype.chemistries[0][reference])
        position = wyckoff.find_position(base.spacegroup, site.letter)
        point = np.asarray(site.frac) + rng.normal(0, 0.005, 3) * (position.dof > 0)
        point = wyckoff.project_onto_position(point, position, lattice_matrix)
        sites.append(WyckoffSite(site.letter, site.multiplicity, tuple((el, value) for el, value, _ in ions),
                                 tuple(round(float(x), 5) for x in point)))
    scale = radius_sum / reference_sum * (1 + rng.normal(0, 0.005))
    lengths = [round(length * scale, 3) for length in base.lattice[:3]]
    lattice = wyckoff.constrain_lattice(base.spacegroup, [*lengths, *base.lattice[3:]])
    return WyckoffGene(base.spacegroup, tuple(round(float(x), 3) for x in lattice), tuple(sites))


def _lattice_matrix(parameters) -> np.ndarray:
    from dismax.vae.structure import lattice_matrix

    return lattice_matrix(parameters)


def composition(gene: WyckoffGene) -> dict[str, float]:
    """Element -> amount per conventional cell."""
    amounts: dict[str, float] = {}
    for site in gene.sites:
        for symbol, value in site.occupancy:
            amounts[symbol] = amounts.get(symbol, 0.0) + site.multiplicity * value
    return amounts


def write_cifs(out_dir: str | Path, n: int, seed: int = 0) -> dict:
    """Write n demo CIFs (demo_00000.cif, ...) into out_dir; returns counts per prototype and of redraws."""
    from dismax.runs import progress
    from dismax.vae.structure import Rejection, realise_gene

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {"written": 0, "redrawn_not_neutral": 0, "redrawn_invalid": 0}
    bar = progress(total=n, desc="disordered_demo")
    while counts["written"] < n:
        gene = random_gene(rng)
        if not charge_neutral(composition(gene)):
            counts["redrawn_not_neutral"] += 1
            continue
        name = f"demo_{counts['written']:05d}"
        try:
            text, _ = realise_gene(gene, name, overlap_distance=1.2)
        except Rejection:
            counts["redrawn_invalid"] += 1
            continue
        atomic_write_text(out / f"{name}.cif", text)
        counts["written"] += 1
        bar.update()
    bar.close()
    return counts


def build(size: str, seed: int, out_dir: Path) -> None:
    """Dataset-registry builder of `disordered_demo`: CIFs and params.json into out_dir."""
    counts = write_cifs(out_dir, SIZES[size], seed)
    params = {"name": "disordered_demo", "size": size, "seed": seed, "format": "cif",
              "prototypes": [p.name for p in PROTOTYPES], **counts}
    atomic_write_text(Path(out_dir) / "params.json", json.dumps(params, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dismax.vae.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for the CIF files")
    parser.add_argument("--n", type=int, default=2000, help="number of crystals (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    print(write_cifs(args.out, args.n, args.seed)["written"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
