"""Relaxation speed: dismax (batched FIRE, dismax.potentials.fire) vs ASE FIRE + matscipy Stillinger-Weber.

The same perturbed 256-atom a-Si structures are relaxed by both, with the same potential parameters
(SW, three-body term x1.5) and the same force criterion, in one run. Prints structure-steps per second
for each, their ratio, the largest difference in final energies (eV/atom), and a simple roofline: the
flops XLA counts for one batched force evaluation (the dominant part of a FIRE step) times the steps
taken, over the rate of a same-run float32 matmul probe.

    python benchmarks/relax_speed.py [--n 32] [--fmax 0.05] [--structures FILE.extxyz] [--profile]

Without ``--structures`` the a-Si structures come from a short melt-quench (dismax.data.a_si).
``--profile`` also times the pieces of a step (force evaluation, table rebuild) on the same batch.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from ase.optimize import FIRE

from dismax.data.a_si import generate, tiny_protocol
from dismax.io import read_extxyz
from dismax.potentials import amorphous_sw
from dismax.potentials.fire import FireSettings, relax, step_cost
from dismax.structures import Crystals

from roofline import matmul_probe  # benchmarks/roofline.py, next to this script


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
    parser.add_argument("--profile", action="store_true", help="also time the pieces of one step")
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

    start = time.perf_counter()
    relax(crystals, potential, fmax=args.fmax, max_steps=1, chunk_size=n)  # compile
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    ours = relax(crystals, potential, fmax=args.fmax, max_steps=args.max_steps, chunk_size=n)
    ours_time = time.perf_counter() - start
    probe = matmul_probe()

    ase_steps, ase_energy = [], []
    start = time.perf_counter()
    for atoms in crystals.to_ase():
        atoms.calc = matscipy_sw(potential)
        optimizer = FIRE(atoms, logfile=None)
        optimizer.run(fmax=args.fmax, steps=args.max_steps)
        ase_steps.append(optimizer.nsteps)
        ase_energy.append(atoms.get_potential_energy() / len(atoms))
    ase_time = time.perf_counter() - start

    statuses = ", ".join(f"{name} {count}" for name, count in zip(*np.unique(ours.status, return_counts=True)))
    ours_rate = ours.steps.sum() / ours_time
    ase_rate = np.sum(ase_steps) / ase_time
    print(f"dismax:      {ours.steps.sum():6d} structure-steps in {ours_time:7.2f} s = {ours_rate:8.1f} /s "
          f"(compile {compile_time:.1f} s; status {statuses})")
    print(f"ASE+matscipy:{np.sum(ase_steps):6d} structure-steps in {ase_time:7.2f} s = {ase_rate:8.1f} /s")
    print(f"ratio (structure-steps/s): {ours_rate / ase_rate:.1f}x; "
          f"wall-clock ratio for the whole set: {ase_time / ours_time:.1f}x")
    print(f"steps per structure dismax {ours.steps.tolist()} ASE {ase_steps}")
    print(f"max |E_final(dismax) - E_final(ASE)|: {np.max(np.abs(ours.e_final - np.array(ase_energy))):.2e} eV/atom")

    cost = step_cost(crystals, potential, FireSettings())
    batch_steps = int(ours.steps.max())  # the chunk advances together until its last structure stops
    achieved = cost["flops"] * batch_steps / ours_time
    print(f"roofline: {cost['flops'] / n / 1e6:.2f} MFLOP per structure-step (XLA count of the batched force, "
          f"capacity {cost['capacity']}, compact {cost['compact']}); {achieved / 1e9:.2f} GFLOP/s achieved vs "
          f"{probe / 1e9:.1f} GFLOP/s matmul probe = {100 * achieved / probe:.1f} % of the roofline")
    if args.profile:
        for piece, seconds in cost["timings"].items():
            print(f"profile: {piece:>28s} {1e3 * seconds:8.2f} ms per batch ({1e6 * seconds / n:.1f} µs/structure)")
        print(f"profile: {'whole FIRE step (measured)':>28s} {1e3 * ours_time / batch_steps:8.2f} ms per batch")


if __name__ == "__main__":
    main()
