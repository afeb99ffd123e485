"""Kawasaki Monte Carlo speed: dismax (JAX) vs icet's CanonicalEnsemble, same model, cell and temperature.

The Fe–Ni–Cr model of the alloy datasets (4×4×4 FCC, a = 3.6 Å, Fe154 Ni51 Cr51, the 46 published
chemical ECIs). icet gets the same energy model by a least-squares fit of its cluster space (pair cutoff
6.8 Å, species Cr/Fe/Ni: 24 parameters spanning the pair-count basis) to dismax energies of random
configurations of the fixed composition (which is all a canonical run sees); the fit RMSE is printed (it is at round-off level, so both codes sample the same energy
landscape). Both run the same number of passes (N = 256 swap attempts each) at the same temperature; the
script prints swap attempts per second of icet (one chain, its only mode), dismax with one chain, and
dismax with ``--chains`` chains vmapped in one call, the acceptance rates and the speed ratios.

    pip install -e .[bench]        # icet
    python benchmarks/alloy_mc.py [--passes 50] [--chains 10] [--temperature 1500]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from dismax import cluster_expansion
from dismax.data import alloy


def fitted_icet_expansion(n_configurations: int, seed: int):
    """icet ClusterExpansion fitted to dismax CE energies; returns (expansion, primitive-site atoms, rmse)."""
    from ase import Atoms
    from icet import ClusterExpansion, ClusterSpace

    lattice = cluster_expansion.fcc_lattice()
    template = Atoms("Fe" * lattice.n_sites, scaled_positions=lattice.frac, cell=lattice.lattice, pbc=True)
    primitive = Atoms("Fe", cell=[[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]], pbc=True)
    space = ClusterSpace(primitive, cutoffs=[6.8], chemical_symbols=list(cluster_expansion.SPECIES))
    rng = np.random.default_rng(seed)
    occupations = np.stack([rng.permutation(np.repeat(np.arange(3), cluster_expansion.COMPOSITION))
                            for _ in range(n_configurations)])
    counts = np.asarray(jax.vmap(lambda o: cluster_expansion.pair_counts(o, lattice))(jnp.asarray(occupations)))
    energies = cluster_expansion.energy_per_atom(
        cluster_expansion.cluster_vectors(counts, cluster_expansion.COMPOSITION))
    vectors = []
    for occupation in occupations:
        atoms = template.copy()
        atoms.set_chemical_symbols([cluster_expansion.SPECIES[s] for s in occupation])
        vectors.append(space.get_cluster_vector(atoms))
    vectors = np.asarray(vectors)
    parameters, *_ = np.linalg.lstsq(vectors, energies, rcond=None)
    rmse = float(np.sqrt(np.mean((vectors @ parameters - energies) ** 2)))
    return ClusterExpansion(space, parameters), template, rmse, len(space)


def time_icet(expansion, template, occupation, temperature: float, steps: int, seed: int):
    from mchammer.calculators import ClusterExpansionCalculator
    from mchammer.ensembles import CanonicalEnsemble

    atoms = template.copy()
    atoms.set_chemical_symbols([cluster_expansion.SPECIES[s] for s in occupation])
    calculator = ClusterExpansionCalculator(atoms, expansion)
    ensemble = CanonicalEnsemble(structure=atoms, calculator=calculator, temperature=temperature,
                                 random_seed=seed, ensemble_data_write_interval=2 * steps,
                                 trajectory_write_interval=2 * steps)  # observe only at step 0
    start = time.perf_counter()
    ensemble.run(steps)
    elapsed = time.perf_counter() - start
    return elapsed, ensemble._accepted_trials / steps  # icet's running count (private attribute)


def time_dismax(chains: int, temperature: float, passes: int, seed: int):
    sampler = alloy.published_sampler()
    states = jax.vmap(sampler.init)(jax.random.split(jax.random.PRNGKey(seed), chains))
    attempts = passes * sampler.lattice.n_sites
    warm, _, _ = sampler.run(states, temperature, 1, attempts)  # compile
    jax.block_until_ready(warm.occupation)
    start = time.perf_counter()
    states, _, counts = sampler.run(states, temperature, 1, attempts)
    jax.block_until_ready(counts)
    elapsed = time.perf_counter() - start
    acceptance = float(np.mean(np.asarray(states.accepted) / np.asarray(states.attempted)))
    return elapsed, acceptance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=50, help="passes of 256 swap attempts (default 50)")
    parser.add_argument("--chains", type=int, default=10, help="vmapped dismax chains (default 10)")
    parser.add_argument("--temperature", type=float, default=1500.0, help="K (default 1500)")
    parser.add_argument("--fit-configurations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n_sites = cluster_expansion.fcc_lattice().n_sites
    attempts = args.passes * n_sites
    print(f"model: 4x4x4 FCC Fe154 Ni51 Cr51, T = {args.temperature:g} K, {args.passes} passes "
          f"= {attempts} swap attempts per chain; jax {jax.__version__} on {jax.devices()[0].platform}")
    try:
        import icet
    except ImportError:
        icet = None
        print("icet not installed (pip install -e .[bench]): timing dismax only")

    rows = []
    for chains in sorted({1, args.chains}):
        elapsed, acceptance = time_dismax(chains, args.temperature, args.passes, args.seed)
        rows.append((f"dismax, {chains} chain(s) vmapped", chains * attempts / elapsed, acceptance, elapsed))
    if icet is not None:
        expansion, template, rmse, n_parameters = fitted_icet_expansion(args.fit_configurations, args.seed)
        print(f"icet {icet.__version__}: {n_parameters} cluster-space parameters fitted to dismax energies of "
              f"{args.fit_configurations} random configurations, RMSE {rmse:.2e} eV/atom")
        species_of_site = np.repeat(np.arange(3), cluster_expansion.COMPOSITION)
        occupation = np.random.default_rng(args.seed).permutation(species_of_site)
        elapsed, acceptance = time_icet(expansion, template, occupation, args.temperature, attempts, args.seed)
        rows.append(("icet CanonicalEnsemble, 1 chain", attempts / elapsed, acceptance, elapsed))

    print(f"{'sampler':38s} {'attempts/s':>12s} {'acceptance':>11s} {'wall s':>8s}")
    for name, rate, acceptance, elapsed in rows:
        print(f"{name:38s} {rate:12.0f} {acceptance:11.3f} {elapsed:8.2f}")
    if icet is not None:
        icet_rate = rows[-1][1]
        for name, rate, _, _ in rows[:-1]:
            print(f"speed ratio {name} / icet: {rate / icet_rate:.1f}x")


if __name__ == "__main__":
    main()
