"""Distil Stillinger–Weber a-Si into the JAX equivariant potential and check relaxations with it.

Steps (the README gives the exact commands):

1. ``frames --out frames.extxyz``: 16 random 64-atom cells at the a-Si density are pre-relaxed, melted
   (1 ps at 3000 K) and taken down through 3000, 2400, 1800, 1200, 900, 600 and 300 K; at each temperature
   ``--snapshots`` short NVT runs (0.3 ps each, Nosé–Hoover, :mod:`dismax.data.a_si`) each give one frame
   per cell; the 16 FIRE-relaxed end points are added (16 × (7 × 4 + 1) = 464 frames by default).
2. ``python -m dismax.data label --calculator sw_a_si`` labels them with Stillinger–Weber (three-body × 1.5,
   the potential of the a-Si melt-quench); ``python -m dismax.train`` fits
   ``configs/potential_a_si_small.yaml`` on them (80/20 split by the seed).
3. ``check --potential run:DIR``: 8 new cells quenched to 300 K are relaxed once with the fitted potential
   and once with SW (the batched FIRE engine, fmax 0.05 eV/Å); prints the SW energy of both results and
   their mean coordination (2.85 Å) and the differences (targets ≤ 20 meV/atom and ≤ 0.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from dismax.cli import main_wrapper
from dismax.data.a_si import SI_Z, melt_quench, random_start, structure_statistics, tiny_protocol
from dismax.io import write_extxyz
from dismax.potentials import amorphous_sw, energies_and_forces, get_potential
from dismax.potentials.fire import relax
from dismax.structures import Crystals

TEMPERATURES = (3000.0, 2400.0, 1800.0, 1200.0, 900.0, 600.0, 300.0)


def random_cells(n_cells: int, seed: int):
    """(protocol, pre-relaxed Crystals) of ``n_cells`` random 64-atom cells at the a-Si density."""
    protocol = tiny_protocol(n_structures=n_cells)
    rng = np.random.default_rng(seed)
    frac = np.stack([random_start(protocol, rng) for _ in range(n_cells)])
    lattice = np.tile(np.eye(3) * protocol.box_length, (n_cells, 1, 1))
    species = np.full((n_cells, protocol.n_atoms), SI_Z, np.int32)
    start = relax(Crystals(frac, lattice, species), amorphous_sw(), fmax=0.5, max_steps=protocol.pre_relax_steps)
    return protocol, start.crystals


def hold(protocol, cells: Crystals, temperature: float, picoseconds: float, seed: int) -> Crystals:
    """NVT at ``temperature`` K for ``picoseconds`` from ``cells`` (fresh velocities)."""
    steady = dataclasses.replace(protocol, t_melt=temperature, t_final=temperature, melt_ps=picoseconds,
                                 quench_ps=0.01)
    frac = melt_quench(steady, np.asarray(cells.frac), seed, progress=False)
    return Crystals(np.mod(frac, 1.0), cells.lattice, cells.species)


def make_frames(n_cells: int, snapshots: int, seed: int) -> Crystals:
    protocol, cells = random_cells(n_cells, seed)
    cells = hold(protocol, cells, TEMPERATURES[0], 1.0, seed)
    frames = []
    for t_index, temperature in enumerate(TEMPERATURES):
        for s in range(snapshots):
            cells = hold(protocol, cells, temperature, 0.3, seed + 1000 * (t_index + 1) + s)
            frames.append(cells)
        print(f"{temperature:.0f} K: {snapshots} × {n_cells} frames", file=sys.stderr)
    frames.append(relax(cells, amorphous_sw(), fmax=0.05, max_steps=protocol.final_max_steps).crystals)
    return Crystals.concatenate(frames)


def coordination(crystals: Crystals) -> np.ndarray:
    return np.array([s["mean_coordination"] for s in structure_statistics(crystals)["structures"]])


def relaxation_check(potential_name: str, n_cells: int = 8, seed: int = 123) -> dict:
    """Relax ``n_cells`` fresh 300 K a-Si cells with the named potential and with SW; SW energies (eV/atom)
    and mean coordinations of both results and their mean absolute differences."""
    protocol, cells = random_cells(n_cells, seed)
    cells = hold(protocol, cells, TEMPERATURES[0], 1.0, seed)
    quench = dataclasses.replace(protocol, melt_ps=0.01, quench_ps=3.0)
    cells = Crystals(np.mod(melt_quench(quench, np.asarray(cells.frac), seed + 1, progress=False), 1.0),
                     cells.lattice, cells.species)
    sw = amorphous_sw()
    fitted = relax(cells, get_potential(potential_name), fmax=0.05, max_steps=2000)
    reference = relax(cells, sw, fmax=0.05, max_steps=2000)
    n = cells.n_atoms
    e_fitted = np.asarray(energies_and_forces(sw, fitted.crystals)[0]) / n
    e_reference = np.asarray(energies_and_forces(sw, reference.crystals)[0]) / n
    cn_fitted, cn_reference = coordination(fitted.crystals), coordination(reference.crystals)
    return {"sw_energy_fitted": e_fitted, "sw_energy_sw": e_reference, "cn_fitted": cn_fitted,
            "cn_sw": cn_reference, "status_fitted": fitted.status, "status_sw": reference.status,
            "energy_difference_meV_per_atom": 1e3 * float(np.mean(np.abs(e_fitted - e_reference))),
            "coordination_difference": float(np.abs(cn_fitted.mean() - cn_reference.mean()))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/a_si_distillation.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    frames = commands.add_parser("frames", help="sample a-Si melt-quench frames (unlabelled extxyz)")
    frames.add_argument("--out", required=True, type=Path)
    frames.add_argument("--cells", type=int, default=16)
    frames.add_argument("--snapshots", type=int, default=4, help="frames per cell and temperature")
    frames.add_argument("--seed", type=int, default=0)
    check = commands.add_parser("check", help="relax 8 fresh a-Si cells with a fitted potential and with SW")
    check.add_argument("--potential", required=True, help="run:DIR of the fitted potential")
    check.add_argument("--cells", type=int, default=8)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.command == "frames":
        crystals = make_frames(args.cells, args.snapshots, args.seed)
        write_extxyz(crystals, args.out)
        print(f"{len(crystals)} frames of {crystals.n_atoms} atoms in {args.out} "
              f"({time.perf_counter() - started:.0f} s)")
    else:
        result = relaxation_check(args.potential, args.cells)
        for key, value in result.items():
            print(f"{key}: {np.round(value, 4).tolist() if isinstance(value, np.ndarray) and value.dtype.kind == 'f' else value}")
        print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
