"""Dismai-Bench metrics: dismax vs the tools the published scripts use, on the same structures, same run.

    python -m benchmarks.metrics_speed [--structures 3] [--skip crystalnn]    # from the repository root

For each operation prints the time per structure of the published approach (pymatgen / vasppy / matminer
used as the published scripts use them) and of dismax, their ratio, and the maximum absolute difference of
the results. Needs the ``dev`` extra (vasppy, matminer). JAX compile time is excluded (one warm-up call).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from tests.bench.published import published_crystalnn_angles


def timed(function, repeats=1):
    start = time.perf_counter()
    for _ in range(repeats):
        result = function()
    return result, (time.perf_counter() - start) / repeats


def report(name, reference_time, ours_time, difference, unit="structure"):
    print(f"{name:<34s} published {reference_time * 1e3:10.2f} ms/{unit}   dismax {ours_time * 1e3:9.3f} ms/{unit}"
          f"   ratio {reference_time / ours_time:8.1f}x   max|diff| {difference:.2e}", flush=True)


# ----------------------------------------------------------------------------------------- structures
def noisy_fcc(rng, noise=0.1):
    grid = np.array([(i, j, k) for i in range(8) for j in range(8) for k in range(8) if (i + j + k) % 2 == 0])
    numbers = np.array([26] * 154 + [28] * 51 + [24] * 51)
    rng.shuffle(numbers)
    cart = grid * 1.8 + rng.normal(0, noise, (256, 3))
    return cart, numbers, np.eye(3) * 14.4


def noisy_diamond(rng, noise=0.25):
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    cell = np.concatenate([base, base + 0.25])
    frac = np.concatenate([(cell + np.array(s)) / 4 for s in itertools.product(range(4), repeat=3)])
    lattice = np.eye(3) * 4 * 5.431
    frac = (frac + rng.normal(0, noise, frac.shape) / (4 * 5.431)) % 1.0
    return frac, lattice, np.full(len(frac), 14)


def structure(frac, lattice, numbers):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(lattice), [int(z) for z in numbers], frac)


# ----------------------------------------------------------------------------------------- alloy
def published_cluster_count(cart, numbers, lattice, basis):
    """The published per-target search: one pymatgen neighbour-list query per cluster site."""
    from pymatgen.core import Lattice, PeriodicSite, Structure

    from dismax import cluster_expansion
    from dismax.bench import alloy

    struc = Structure(Lattice(lattice), [int(z) for z in numbers], cart, coords_are_cartesian=True)
    offsets, shells = cluster_expansion.cluster_offsets()
    offsets = alloy.rotate_offsets(offsets, basis)
    tally = {}
    inverse = np.linalg.inv(lattice)
    for j in range(len(struc)):
        for k in range(len(offsets)):
            frac = np.around((struc.cart_coords[j] + offsets[k]) @ inverse, 3) % 1
            site = PeriodicSite("H", frac @ lattice + 1e-6, struc.lattice, coords_are_cartesian=True)
            _, found, _, distance = struc.get_neighbor_list(0.8, [site])
            if len(found):
                label = tuple(sorted([struc[j].specie.symbol, struc[found[distance.argmin()]].specie.symbol]))
                tally[(shells[k], label)] = tally.get((shells[k], label), 0) + 1
    n = len(struc)
    values = list(np.bincount(alloy.species_codes(numbers), minlength=3) / n)
    for shell in range(7):
        for a, b in cluster_expansion.PAIRS:
            label = (cluster_expansion.SPECIES[a], cluster_expansion.SPECIES[b])
            values.append(tally.get((shell, label), 0) / (2 * n))
    return np.round(values, 5)


def bench_alloy(rng, n_structures):
    from dismax.bench import alloy

    cart, numbers, lattice = noisy_fcc(rng)
    basis, _ = alloy.find_fcc_basis(cart, lattice, normalise_c=False)
    expected, reference_time = timed(lambda: published_cluster_count(cart, numbers, lattice, basis))
    alloy.count_clusters_one(cart, numbers, lattice, basis, reference_compatible=True)
    ours, ours_time = timed(lambda: alloy.count_clusters_one(cart, numbers, lattice, basis, True), 5)
    report("alloy cluster counts (reference)", reference_time, ours_time, np.abs(ours[0] - expected).max())

    from pymatgen.core import PeriodicSite

    frac = (cart @ np.linalg.inv(lattice)) % 1.0
    struc = structure(frac, lattice, numbers)
    reference_sites = alloy.reference_sites_frac()

    def published_cleanup():
        kept = 0
        for site_frac in reference_sites:
            site = PeriodicSite("H", site_frac, struc.lattice)
            _, found, _, _ = struc.get_neighbor_list(0.8, [site])
            kept += len(found) > 0
        return kept

    kept, reference_time = timed(published_cleanup)
    alloy.reference_cleanup(frac, numbers, lattice, "as_is")
    result, ours_time = timed(lambda: alloy.reference_cleanup(frac, numbers, lattice, "as_is"), 5)
    report("alloy clean-up (as-is)", reference_time, ours_time, abs(kept - len(result.numbers)))
    alloy.assign_sites(frac, numbers, lattice)
    _, ours_time = timed(lambda: alloy.assign_sites(frac, numbers, lattice), 5)
    report("alloy assignment (dismax translate)", reference_time, ours_time, 0.0)


# ----------------------------------------------------------------------------------------- a-Si
def bench_rdf(rng, n_structures):
    from vasppy.rdf import RadialDistributionFunction

    from dismax.bench.rdf import rdf

    samples = [noisy_diamond(rng) for _ in range(n_structures)]
    frac = np.stack([s[0] for s in samples])
    lattice = np.stack([s[1] for s in samples])

    def published():
        rows = []
        for f, l, n in samples:
            struc = structure(f, l, n)
            struc.make_supercell(2)
            indices = list(range(len(struc)))
            rows.append(RadialDistributionFunction([struc], indices_i=indices, indices_j=indices).rdf)
        return np.array(rows)

    expected, reference_time = timed(published)
    rdf(frac[:1], lattice[:1])
    ours, ours_time = timed(lambda: rdf(frac, lattice), 3)
    report("RDF (vasppy 2x2x2 supercell)", reference_time / n_structures, ours_time / n_structures,
           np.abs(ours - expected).max())


def bench_crystalnn(rng, n_structures, workers):
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    from dismax.bench import motifs

    samples = [noisy_diamond(rng) for _ in range(n_structures)]
    op_types = {cn: ["wt"] + [label for label, _, _ in motifs.MOTIFS.get(cn, [])] for cn in range(1, 25)}
    featurizer = CrystalNNFingerprint(op_types=op_types, cation_anion=False)
    struc = structure(*samples[0])
    expected, reference_time = timed(lambda: np.array([featurizer.featurize(struc, i) for i in range(len(struc))]))
    ours, ours_time = timed(lambda: motifs.per_structure(motifs.motif_fingerprints, "motif", samples,
                                                         workers=workers))
    report(f"a-Si motif fingerprint ({workers} proc)", reference_time, ours_time / n_structures,
           np.abs(ours[0] - expected).max())

    expected, reference_time = timed(lambda: motifs.angle_distribution(published_crystalnn_angles(struc)))
    ours, ours_time = timed(lambda: motifs.per_structure(motifs.crystalnn_bond_angles, "angles", samples,
                                                         workers=workers))
    report(f"bond angles CrystalNN ({workers} proc)", reference_time, ours_time / n_structures,
           np.abs(motifs.angle_distribution(ours[0]) - expected).max())
    frac = np.stack([s[0] for s in samples])
    lattice = np.stack([s[1] for s in samples])
    motifs.cutoff_angle_distributions(frac[:1], lattice[:1])
    fast, fast_time = timed(lambda: motifs.cutoff_angle_distributions(frac, lattice), 3)
    report("bond angles JAX cutoff 2.85 A", reference_time, fast_time / n_structures,
           np.abs(fast[0] - expected).max())


# ----------------------------------------------------------------------------------------- move apart, bootstrap
def bench_move_apart(rng, n_structures):
    from pymatgen.core import Structure

    from dismax.bench.postprocess import move_atoms_apart

    samples = [noisy_diamond(rng, noise=0.6) for _ in range(n_structures)]
    frac = np.stack([s[0] for s in samples])
    lattice = np.stack([s[1] for s in samples])

    def published():
        out = []
        for f, l, n in samples:
            struc = structure(f, l, n)
            count, iterations = 999, 0
            while count > 0 and iterations < 100:
                centres, neighbours, _, _ = struc.get_neighbor_list(1.5)
                pairs = np.column_stack((centres, neighbours))
                pairs = np.unique(np.sort(pairs, axis=1), axis=0).tolist() if pairs.size else []
                count = len(pairs)
                coords = struc.cart_coords
                for i, j in pairs:
                    vector = coords[j] - coords[i]
                    coords[j] = coords[i] + vector * (1.6 / np.linalg.norm(vector))
                struc = Structure(struc.lattice, struc.species, coords, coords_are_cartesian=True)
                iterations += 1
            out.append(struc.frac_coords)
        return np.array(out)

    expected, reference_time = timed(published)
    move_atoms_apart(frac, lattice, reference_compatible=True)
    ours, ours_time = timed(lambda: move_atoms_apart(frac, lattice, reference_compatible=True), 3)
    report("move atoms apart (reference)", reference_time / n_structures, ours_time / n_structures,
           np.abs(ours.frac - expected).max())


def bench_bootstrap(rng):
    import pandas as pd
    from scipy.spatial.distance import euclidean

    from dismax.bench import bootstrap

    generated = rng.random((1000, 500))
    train_mean = rng.random(500)

    def published():
        frame = pd.DataFrame(generated)
        generator = np.random.default_rng(7)
        population = np.arange(len(frame))
        values = [euclidean(train_mean, frame.iloc[generator.choice(population, size=len(frame))].mean(axis=0))
                  for _ in range(1000)]
        return np.percentile(values, [2.5, 97.5])

    expected, reference_time = timed(published)

    def ours():
        estimate = bootstrap.distance_estimate(train_mean, generated, bootstrap.bootstrap_indices(1000))
        return np.array([estimate.value - estimate.upper_error, estimate.value + estimate.lower_error])

    result, ours_time = timed(ours)
    report("bootstrap 1000 x (1000 x 500)", reference_time, ours_time, np.abs(result - expected).max(), "set")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="CrystalNN processes (default: all cores)")
    parser.add_argument("--skip", nargs="*", default=(), choices=("alloy", "rdf", "crystalnn", "move", "bootstrap"))
    args = parser.parse_args()
    import os

    workers = args.workers or os.cpu_count() or 1
    rng = np.random.default_rng(0)
    if "alloy" not in args.skip:
        bench_alloy(rng, args.structures)
    if "rdf" not in args.skip:
        bench_rdf(rng, args.structures)
    if "move" not in args.skip:
        bench_move_apart(rng, args.structures)
    if "bootstrap" not in args.skip:
        bench_bootstrap(rng)
    if "crystalnn" not in args.skip:
        bench_crystalnn(rng, max(args.structures, workers), workers)


if __name__ == "__main__":
    main()
