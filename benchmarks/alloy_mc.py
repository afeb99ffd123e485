"""Kawasaki Monte Carlo speed: dismax (JAX) vs icet's CanonicalEnsemble, same model, cell and temperature.

The Fe–Ni–Cr model of the alloy datasets (4×4×4 FCC, a = 3.6 Å, Fe154 Ni51 Cr51, the 46 published
chemical ECIs). icet gets the same energy model by a least-squares fit of its cluster space (pair cutoff
6.8 Å, species Cr/Fe/Ni: 24 parameters spanning the pair-count basis) to dismax energies of random
configurations of the fixed composition (which is all a canonical run sees); the fit RMSE is printed (it
is at round-off level, so both codes sample the same energy landscape). Both run the same number of passes
(N = 256 swap attempts each) at the same temperature; the script prints swap attempts per wall-clock second
and per process CPU second (the fairer number on a shared machine) of icet (one chain, its only mode),
dismax with one chain and dismax with ``--chains`` chains vmapped in one call, the acceptance rates and the
speed ratios; then the roofline fraction of the dismax step (benchmarks/roofline.py) and a trace summary.

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

import roofline  # benchmarks/roofline.py, next to this script


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


def timed(call) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``call()``, blocking on its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    jax.block_until_ready(result)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_icet(expansion, template, occupation, temperature: float, steps: int, seed: int):
    from mchammer.calculators import ClusterExpansionCalculator
    from mchammer.ensembles import CanonicalEnsemble

    atoms = template.copy()
    atoms.set_chemical_symbols([cluster_expansion.SPECIES[s] for s in occupation])
    calculator = ClusterExpansionCalculator(atoms, expansion)
    ensemble = CanonicalEnsemble(structure=atoms, calculator=calculator, temperature=temperature,
                                 random_seed=seed, ensemble_data_write_interval=2 * steps,
                                 trajectory_write_interval=2 * steps)  # observe only at step 0
    wall, cpu = timed(lambda: ensemble.run(steps))
    return wall, cpu, ensemble._accepted_trials / steps  # icet's running count (private attribute)


def time_dismax(chains: int, temperature: float, passes: int, seed: int):
    """Wall and CPU seconds of ``passes`` passes of ``chains`` vmapped chains (compiled beforehand), and the
    acceptance rate."""
    sampler = alloy.published_sampler()
    states = jax.vmap(sampler.init)(jax.random.split(jax.random.PRNGKey(seed), chains))
    attempts = passes * sampler.lattice.n_sites
    jax.block_until_ready(sampler.run(states, temperature, 1, attempts))  # compile
    outcome = []
    wall, cpu = timed(lambda: outcome.append(sampler.run(states, temperature, 1, attempts)) or outcome[-1])
    final = outcome[-1][0]
    acceptance = float(np.mean(np.asarray(final.accepted) / np.asarray(final.attempted)))
    return wall, cpu, acceptance


def profile_dismax(chains: int, temperature: float, seconds_per_step: float):
    """Roofline of one vmapped swap attempt (XLA's count) at the measured step time, and a trace summary of
    a short run: the operations the time goes to."""
    sampler = alloy.published_sampler()
    states = jax.vmap(sampler.init)(jax.random.split(jax.random.PRNGKey(0), chains))
    carry = jax.vmap(sampler.carry)(states)
    draw = tuple(x[:, 0] for x in jax.vmap(lambda k: sampler.proposals(k, 1)[1:])(states.key))
    step = jax.jit(jax.vmap(lambda c, d: sampler.attempt(c, d, temperature)[0]))
    flops, bytes_accessed = roofline.xla_cost(step.lower(carry, draw).compile())
    print(f"XLA cost of one swap attempt of {chains} chains: {flops:.0f} flop, {bytes_accessed:.0f} bytes")
    print(roofline.roofline(flops, bytes_accessed, seconds_per_step, roofline.matmul_probe(),
                            roofline.bandwidth_probe()))
    attempts = 2 * sampler.lattice.n_sites
    compiled = alloy.KawasakiSampler.run.lower(sampler, states, temperature, 1, attempts).compile()
    jax.block_until_ready(compiled(states, temperature))
    print(f"trace of {attempts} attempts x {chains} chains (share of XLA operation time, top operations):")
    for line in roofline.trace_summary(lambda: compiled(states, temperature), compiled):
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=50, help="passes of 256 swap attempts (default 50)")
    parser.add_argument("--chains", type=int, default=10, help="vmapped dismax chains (default 10)")
    parser.add_argument("--temperature", type=float, default=1500.0, help="K (default 1500)")
    parser.add_argument("--fit-configurations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip the roofline and trace summary")
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
        wall, cpu, acceptance = time_dismax(chains, args.temperature, args.passes, args.seed)
        rows.append((f"dismax, {chains} chain(s) vmapped", chains * attempts, wall, cpu, acceptance))
    if icet is not None:
        expansion, template, rmse, n_parameters = fitted_icet_expansion(args.fit_configurations, args.seed)
        print(f"icet {icet.__version__}: {n_parameters} cluster-space parameters fitted to dismax energies of "
              f"{args.fit_configurations} random configurations, RMSE {rmse:.2e} eV/atom")
        species_of_site = np.repeat(np.arange(3), cluster_expansion.COMPOSITION)
        occupation = np.random.default_rng(args.seed).permutation(species_of_site)
        wall, cpu, acceptance = time_icet(expansion, template, occupation, args.temperature, attempts, args.seed)
        rows.append(("icet CanonicalEnsemble, 1 chain", attempts, wall, cpu, acceptance))

    print(f"{'sampler':38s} {'attempts/s':>12s} {'per CPU s':>12s} {'acceptance':>11s} {'wall s':>8s} {'CPU s':>8s}")
    for name, done, wall, cpu, acceptance in rows:
        print(f"{name:38s} {done / wall:12.0f} {done / cpu:12.0f} {acceptance:11.3f} {wall:8.2f} {cpu:8.2f}")
    if icet is not None:
        _, icet_done, icet_wall, icet_cpu, _ = rows[-1]
        for name, done, wall, cpu, _ in rows[:-1]:
            print(f"speed ratio {name} / icet: {done / wall / (icet_done / icet_wall):.1f}x wall-clock, "
                  f"{done / cpu / (icet_done / icet_cpu):.1f}x per CPU second")
    if not args.no_profile:
        _, _, wall, _, _ = next(row for row in rows if row[0].startswith(f"dismax, {args.chains} "))
        profile_dismax(args.chains, args.temperature, wall / attempts)


if __name__ == "__main__":
    main()
