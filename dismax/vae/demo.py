"""A synthetic demonstration set of disordered crystals (ICSD data cannot be shipped).

`python -m dismax.vae.demo --out DIR [--n 2000] [--seed 0]` writes symmetrised CIFs: random space groups
from a list of common ones, random Wyckoff positions from the Wyckoff table, cations and anions drawn
from chemically similar families, then substitutional disorder (2-3 elements of one family on a cation
site) and vacancies on Wyckoff sites. Lattices follow the crystal system with ~10-25 Å^3 per site,
and structures with sites closer than 1.5 Å are redrawn. This is a demonstration set for the
pipeline, not a physical database: train on your own CIF collection for real work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dismax.vae import wyckoff
from dismax.vae.genes import WyckoffGene, WyckoffSite

GROUPS = (2, 11, 12, 14, 15, 62, 63, 65, 71, 74, 88, 123, 127, 129, 139, 140, 141, 148, 160, 164, 166, 167,
          176, 186, 187, 191, 194, 204, 215, 216, 221, 225, 227, 229)
CATION_FAMILIES = (
    ("Li", "Na", "K"), ("Mg", "Ca", "Sr", "Ba"), ("Mn", "Fe", "Co", "Ni"), ("Ti", "Zr", "Hf"),
    ("La", "Ce", "Pr", "Nd", "Y"), ("Al", "Ga", "In"), ("Cr", "V", "Fe"), ("Cu", "Zn", "Mg"), ("Nb", "Ta"),
)
ANIONS = ("O", "O", "O", "S", "F", "Cl", "N", "Se")


def _lattice(group: int, rng: np.random.Generator) -> np.ndarray:
    a, b, c = rng.uniform(3.5, 9.0, 3)
    if group >= 195:
        return np.array([a, a, a, 90, 90, 90])
    if group >= 168 or group in (143, 147, 148, 160, 164, 166, 167):
        return np.array([a, a, c * 1.3, 90, 90, 120])
    if group >= 75:
        return np.array([a, a, c, 90, 90, 90])
    if group >= 16:
        return np.array([a, b, c, 90, 90, 90])
    if group >= 3:
        return np.array([a, b, c, 90, rng.uniform(92, 115), 90])
    return np.array([a, b, c, *rng.uniform(75, 105, 3)])


def random_gene(rng: np.random.Generator, max_sites: int = 6) -> WyckoffGene:
    """One random disordered crystal as a Wyckoff gene (not yet checked for distances)."""
    group = int(rng.choice(GROUPS))
    positions = [p for p in wyckoff.wyckoff_positions(group) if p.multiplicity <= 24]
    n_sites = int(rng.integers(2, max_sites + 1))
    used_fixed: set[str] = set()
    sites = []
    n_anion_sites = max(1, n_sites // 2)
    for index in range(n_sites):
        free = [p for p in positions if p.dof > 0 or p.letter not in used_fixed]
        if not free:
            break
        position = free[int(rng.integers(len(free)))]
        used_fixed.add(position.letter)
        point = position.rotations[0] @ rng.uniform(0, 1, 3) + position.translations[0]
        if index < n_anion_sites:
            occupancy = ((str(rng.choice(ANIONS)), 1.0),)
        else:
            family = CATION_FAMILIES[int(rng.integers(len(CATION_FAMILIES)))]
            kind = rng.uniform()
            if kind < 0.45:
                count = int(rng.integers(2, min(3, len(family)) + 1))
                chosen = rng.choice(family, count, replace=False)
                cuts = np.sort(rng.choice(np.arange(1, 20), count - 1, replace=False))
                shares = np.diff(np.concatenate([[0], cuts, [20]])) / 20  # multiples of 0.05 summing to 1
                occupancy = tuple(sorted((str(el), round(float(v), 3)) for el, v in zip(chosen, shares)))
            elif kind < 0.6:
                occupancy = ((str(rng.choice(family)), round(float(rng.uniform(0.3, 0.95)), 2)),)
            else:
                occupancy = ((str(rng.choice(family)), 1.0),)
        sites.append(WyckoffSite(position.letter, position.multiplicity, occupancy,
                                 tuple(float(x) for x in np.mod(point, 1.0))))
    lattice = _lattice(group, rng)
    gene = WyckoffGene(group, tuple(float(x) for x in lattice), tuple(sites))
    return _scaled(gene, rng)


def _scaled(gene: WyckoffGene, rng: np.random.Generator) -> WyckoffGene:
    from pymatgen.core import Lattice

    n_atoms = sum(site.multiplicity for site in gene.sites)
    volume = Lattice.from_parameters(*gene.lattice).volume
    factor = (n_atoms * rng.uniform(10, 25) / volume) ** (1 / 3)
    lattice = tuple(round(x * factor, 3) for x in gene.lattice[:3]) + tuple(round(x, 2) for x in gene.lattice[3:])
    return WyckoffGene(gene.spacegroup, lattice, gene.sites)


def build(out_dir: str | Path, n: int = 2000, seed: int = 0, min_distance: float = 1.5) -> int:
    """Write n demonstration CIFs into out_dir; returns the number written."""
    from dismax.runs import progress
    from dismax.vae.structure import gene_to_cif, gene_to_structure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = 0
    bar = progress(total=n, desc="disordered_demo")
    while written < n:
        gene = random_gene(rng)
        structure = gene_to_structure(gene)
        if len(structure) != sum(site.multiplicity for site in gene.sites):
            continue  # a free parameter landed on a special position
        if len(structure) > 1:
            distances = structure.distance_matrix[np.triu_indices(len(structure), 1)]
            if distances.min() < min_distance:
                continue
        (out / f"demo_{written:05d}.cif").write_text(gene_to_cif(gene, f"demo_{written:05d}"))
        written += 1
        bar.update()
    bar.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dismax.vae.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for the CIF files")
    parser.add_argument("--n", type=int, default=2000, help="number of crystals (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    print(build(args.out, args.n, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
