"""Relaxation speed: dismax (batched FIRE, dismax.potentials.fire) vs ASE FIRE + matscipy Stillinger-Weber.

The same perturbed 256-atom a-Si structures are relaxed by both, with the same potential parameters
(SW, three-body term x1.5) and the same force criterion, in one run. Prints structure-steps per wall and
per CPU second for each, their ratios, the largest difference in final energies (eV/atom) and the structures
more than 1 meV/atom apart, and a simple roofline (benchmarks/roofline.py): the flops and bytes XLA counts for
one batched force evaluation (the dominant part of a FIRE step) times the steps taken, over same-run matmul and
streaming probes.

    python benchmarks/relax_speed.py [--n 32] [--fmax 0.05] [--structures FILE.extxyz] [--dtype float32|float64]
                                     [--profile]

Without ``--structures`` the a-Si structures come from a short melt-quench (dismax.data.a_si).
``--profile`` also times the pieces of a step (force evaluation, table rebuild) on the same batch and
prints where the time of a short traced run goes (XLA operations by total time, jax.profiler).

Measured (``--n 32 --structures`` 4 melt-quenched 256-atom cells cycled and perturbed by 0.1 Å, 2 shared
CPU cores). Before (O(N·K²) three-body table with per-step top-k compaction, load average 0.9-1.7): dismax
1,623 structure-steps in 6.83 s wall / 9.89 s CPU against ASE + matscipy 1,731 in 351 s / 347 s: 48.2x
wall-clock, 32.9x per CPU second; XLA counted 5.47 MFLOP and 12.8 MB per structure-step; 17.1 % of a traced
step in the backward pass of the (N, 21, 21) cosine einsum. After (three-body sum factorised into per-atom
moments, whole skin table, Cartesian image shifts stored at build time; load average 9.8-10.6): dismax
1,623 structure-steps in 8.21 s wall / 4.12 s CPU against ASE + matscipy 1,731 in 959 s / 384 s: 109.6x
wall-clock, 87.4x per CPU second (the wall-clock ratio at that load flatters dismax: ASE got 40 % of a core),
final energies within 1.04e-4 eV/atom of ASE's, the same steps per structure as before. Idle (load average
0.4-1.4, four cells of the small a-Si set): dismax 1,895 structure-steps in 5.99 s wall / 8.59 s CPU against
ASE + matscipy 1,812 in 390 s / 387 s: 68.1x wall-clock, 47.1x per CPU second, energies within 3.5e-4 eV/atom;
roofline 1.0 % of a 130 GFLOP/s matmul probe, 9.4 % of a 40.1 GB/s streaming probe.
``--n 32`` with freshly melt-quenched cells, before the per-slot forces, per-structure rebuilds and shrinking
batches (load average 0.5-8.0): 1,889 structure-steps in 18.5 s wall / 8.8 s CPU against ASE 1,850 in 814 s /
361 s, 44.9x wall-clock, 41.7x per CPU second, energies within 1.9e-3 eV/atom; after (load average 6.8-5.2):
2,028 in 3.22 s / 1.98 s against 1,910 in 362 s / 283 s, 119.4x wall-clock, 151.5x per CPU second, energies
within 2.2e-3 eV/atom (different local minima of the two FIRE variants on a few structures).
With ASE's FIRE step in dismax.potentials.fire instead of jax-md's fire_descent (load average 6.0-3.5): 1,985
structure-steps in 2.93 s / 1.46 s against ASE 1,985 in 420 s / 315 s, 143.0x wall-clock, 215.4x per CPU second,
the same steps as ASE for every structure, energies within 1.07e-6 eV/atom (0 of 32 above 1 meV/atom); the jax-md
engine just before, same command (load average 0.4-6.6): 2,028 against 1,910 structure-steps, 216.4x wall-clock,
168.2x per CPU second, 2.18 meV/atom on one structure. Idle (load average 1.7-1.0, ``--n 32 --profile``): 1,985 in
1.16 s / 1.87 s against 361 s / 361 s, 311.5x wall-clock, 192.9x per CPU second, energies within 1.07e-6 eV/atom. ``--dtype float64`` runs dismax's relaxation in JAX's x64 mode.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from ase.optimize import FIRE

from dismax.data.a_si import generate, tiny_protocol
from dismax.io import read_extxyz
from dismax.potentials import amorphous_sw
from dismax.potentials.fire import FireSettings, compiled_relaxation, relax, step_cost
from dismax.structures import Crystals

from roofline import bandwidth_probe, matmul_probe, roofline, trace_summary  # benchmarks/roofline.py

PROFILE_STEPS = 50  # FIRE steps traced by --profile
ENERGY_TOLERANCE = 1e-3  # eV/atom: the largest accepted final-energy difference from ASE


def a_si_structures(n: int, seed: int):
    protocol = tiny_protocol(n_structures=n, n_atoms=256, melt_ps=0.5, quench_ps=1.5)
    crystals, _ = generate(protocol, seed, progress=False)
    return crystals


def matscipy_sw(potential):
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import StillingerWeber
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import Stillinger_Weber_PRB_31_5262_Si

    parameters = dict(Stillinger_Weber_PRB_31_5262_Si)
    parameters["epsilon"] = potential.epsilon
    parameters["lambda1"] = potential.lam * potential.three_body_strength
    return Manybody(**StillingerWeber(parameters))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="number of structures")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.1, help="Gaussian displacement (Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--structures", default=None,
                        help="extxyz of Si structures to perturb (cycled through when shorter than --n)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float type of dismax's relaxation (float64 runs it in JAX's x64 mode)")
    parser.add_argument("--profile", action="store_true",
                        help="also time the pieces of one step and print a trace summary")
    args = parser.parse_args()

    if args.structures:  # perturbed copies cycle through the file's structures
        base = read_extxyz(args.structures).to_numpy()
        base = base[np.arange(args.n) % len(base)]
    else:
        base = a_si_structures(args.n, args.seed).to_numpy()
    rng = np.random.default_rng(args.seed)
    cart = np.einsum("bni,bij->bnj", base.frac, base.lattice) + rng.normal(0.0, args.noise, base.frac.shape)
    frac = np.einsum("bnj,bji->bni", cart, np.linalg.inv(base.lattice)) % 1.0
    crystals = Crystals(frac, base.lattice, base.species)
    potential = amorphous_sw()
    n = len(crystals)
    print(f"{n} structures x {crystals.n_atoms} atoms, SW three-body x{potential.three_body_strength}, "
          f"fmax {args.fmax} eV/Å, {jax.device_count()} {jax.default_backend()} device(s)")

    settings = FireSettings(dtype=args.dtype)
    with jax.enable_x64(args.dtype == "float64"):  # dismax's relaxation only, not the melt-quench above
        start = time.perf_counter()
        relax(crystals, potential, fmax=args.fmax, max_steps=1, chunk_size=n, settings=settings)  # compile
        compile_time = time.perf_counter() - start
        wall, cpu = time.perf_counter(), time.process_time()
        ours = relax(crystals, potential, fmax=args.fmax, max_steps=args.max_steps, chunk_size=n, settings=settings)
        ours_time, ours_cpu = time.perf_counter() - wall, time.process_time() - cpu

    ase_steps, ase_energy = [], []
    wall, cpu = time.perf_counter(), time.process_time()
    for k, atoms in enumerate(crystals.to_ase()):
        atoms.calc = matscipy_sw(potential)
        optimizer = FIRE(atoms, logfile=None)
        optimizer.run(fmax=args.fmax, steps=args.max_steps)
        ase_steps.append(optimizer.nsteps)
        ase_energy.append(atoms.get_potential_energy() / len(atoms))
        print(f"ASE structure {k + 1}/{n}: {optimizer.nsteps} steps, {time.perf_counter() - wall:.0f} s so far",
              file=sys.stderr, flush=True)
    ase_time, ase_cpu = time.perf_counter() - wall, time.process_time() - cpu

    statuses = ", ".join(f"{name} {count}" for name, count in zip(*np.unique(ours.status, return_counts=True)))
    ours_steps, ase_total = int(ours.steps.sum()), int(np.sum(ase_steps))
    print(f"{'relaxer':14s} {'structure-steps':>15s} {'wall s':>8s} {'CPU s':>8s} {'per wall s':>11s} "
          f"{'per CPU s':>10s}")
    print(f"{'dismax':14s} {ours_steps:15d} {ours_time:8.2f} {ours_cpu:8.2f} {ours_steps / ours_time:11.1f} "
          f"{ours_steps / ours_cpu:10.1f}   (compile {compile_time:.1f} s; status {statuses})")
    print(f"{'ASE+matscipy':14s} {ase_total:15d} {ase_time:8.2f} {ase_cpu:8.2f} {ase_total / ase_time:11.1f} "
          f"{ase_total / ase_cpu:10.1f}")
    print(f"ratio (structure-steps/s): {ours_steps / ours_time / (ase_total / ase_time):.1f}x wall-clock, "
          f"{ours_steps / ours_cpu / (ase_total / ase_cpu):.1f}x per CPU second; "
          f"wall-clock ratio for the whole set: {ase_time / ours_time:.1f}x")
    print(f"steps per structure dismax {ours.steps.tolist()} ASE {ase_steps}")
    difference = np.abs(ours.e_final - np.array(ase_energy))  # eV/atom
    above = np.flatnonzero(difference > ENERGY_TOLERANCE)
    print(f"max |E_final(dismax) - E_final(ASE)|: {difference.max():.2e} eV/atom; {len(above)} of {n} structures "
          f"above {1e3 * ENERGY_TOLERANCE:g} meV/atom"
          + "".join(f"; structure {i}: {1e3 * difference[i]:.2f} meV/atom" for i in above))

    with jax.enable_x64(args.dtype == "float64"):
        cost = step_cost(crystals, potential, settings)
    batch_steps = int(ours.steps.max())  # the chunk advances together until its last structure stops
    print(f"XLA cost of one batched force evaluation: {cost['flops'] / n / 1e6:.2f} MFLOP and "
          f"{cost['bytes'] / n / 1e6:.2f} MB per structure-step (table capacity {cost['capacity']})")
    print(roofline(cost["flops"] * batch_steps, cost["bytes"] * batch_steps, ours_time, matmul_probe(),
                   bandwidth_probe()))
    if args.profile:
        for piece, seconds in cost["timings"].items():
            print(f"profile: {piece:>28s} {1e3 * seconds:8.2f} ms per batch ({1e6 * seconds / n:.1f} µs/structure)")
        print(f"profile: {'whole FIRE step (measured)':>28s} {1e3 * ours_time / batch_steps:8.2f} ms per batch")
        with jax.enable_x64(args.dtype == "float64"):
            compiled, arguments = compiled_relaxation(crystals, potential, args.fmax, PROFILE_STEPS, settings)
            jax.block_until_ready(compiled(*arguments))
            print(f"trace of {PROFILE_STEPS} FIRE steps of the {n} structures (share of XLA operation time, top "
                  f"operations):")
            for line in trace_summary(lambda: compiled(*arguments), compiled, top=12):
                print(f"  {line}")

if __name__ == "__main__":
    main()
