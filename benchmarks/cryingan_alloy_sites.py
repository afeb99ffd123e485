"""How close generated alloy atoms sit to ideal FCC sites (the quality check of the small CryinGAN run).

For every atom: the minimum-image distance (Å) to the nearest site of the 4×4×4 FCC supercell
(a = 3.6 Å) of the training lattice. Prints mean / median / 90th percentile and the fraction of atoms
within 0.8 Å, and the fraction of distinct sites the atoms occupy (a collapsed generator puts every atom
near one site: small distances but few distinct sites), for the generated file and for uniformly random
positions as the no-learning baseline.

    python benchmarks/cryingan_alloy_sites.py GENERATED.extxyz [--repeats 4]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from dismax.io import read_extxyz

FCC_BASIS = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def fcc_sites(repeats: int) -> np.ndarray:
    cells = np.array(list(itertools.product(range(repeats), repeat=3)))
    return ((cells[:, None, :] + FCC_BASIS[None]).reshape(-1, 3) / repeats) % 1.0


def site_distances(frac: np.ndarray, lattice: np.ndarray, sites: np.ndarray):
    """(B, N) minimum-image distance in Å from every atom to its nearest site (orthogonal-ish cells), and
    (B,) the fraction of distinct nearest sites per structure."""
    distances, distinct = np.empty(frac.shape[:2]), np.empty(len(frac))
    for b in range(len(frac)):
        delta = frac[b][:, None, :] - sites[None]
        delta -= np.round(delta)
        lengths = np.linalg.norm(delta @ lattice[b], axis=-1)
        distances[b] = lengths.min(axis=1)
        distinct[b] = len(np.unique(lengths.argmin(axis=1))) / frac.shape[1]
    return distances, distinct


def summary(distances: np.ndarray, distinct: np.ndarray) -> str:
    return (f"mean {distances.mean():.3f} Å, median {np.median(distances):.3f} Å, "
            f"90th pct {np.percentile(distances, 90):.3f} Å, atoms within 0.8 Å {100 * (distances < 0.8).mean():.1f} %, "
            f"distinct sites {100 * distinct.mean():.1f} % of atoms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structures", help="extxyz with structures on the alloy training lattice")
    parser.add_argument("--repeats", type=int, default=4, help="FCC conventional cells per axis")
    args = parser.parse_args()
    crystals = read_extxyz(args.structures).to_numpy()
    sites = fcc_sites(args.repeats)
    frac, lattice = np.asarray(crystals.frac), np.asarray(crystals.lattice)
    print(f"{args.structures}: {len(frac)} structures x {frac.shape[1]} atoms")
    print("  generated:", summary(*site_distances(frac, lattice, sites)))
    random = np.random.default_rng(0).random(frac.shape)
    print("  uniform random positions:", summary(*site_distances(random, lattice, sites)))


if __name__ == "__main__":
    main()
