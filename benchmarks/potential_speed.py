"""Speed of the JAX equivariant potential on a 264-atom, five-species cell (the interface's size), next to
CHGNet 0.3.0 on the same cell when the optional ``teachers`` extra is installed.

Measures, after compilation: energy+forces of one frame; energy+forces of 8 frames in one vmapped call
(per frame); one training step (energy+force loss, Adam) on a batch of ``--batch`` frames. The cell is
random (Li, Sc, Co, Cl, O in the interface's proportions, 12.1 × 16.7 × 32.5 Å, atoms ≥ 1.6 Å apart) and
the weights are random: the cost does not depend on them.

    python benchmarks/potential_speed.py [--layers 3] [--irreps 32x0e+16x1o+8x2e] [--lmax 2] [--cutoff 5]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dismax.geometry import minimum_image
from dismax.potentials.fitted import initial_state, make_optimizer
from dismax.potentials.nequip import LearnedPotential, NetworkConfig, PotentialNetwork, initial_params
from dismax.potentials.trainer import Frames, frame_arrays, mean_neighbours, predictions, train_step
from dismax.structures import Crystals, StructureSet

CELL = np.diag([12.1, 16.7, 32.5])
COMPOSITION = {3: 72, 21: 12, 27: 36, 17: 72, 8: 72}  # 264 atoms: Li72 Sc12 Co36 Cl72 O72


def random_cell(seed: int, min_distance: float = 1.6) -> Crystals:
    rng = np.random.default_rng(seed)
    species = np.concatenate([np.full(n, z) for z, n in COMPOSITION.items()])
    frac = []
    while len(frac) < len(species):
        trial = rng.random(3)
        d = np.asarray(frac) - trial if frac else np.zeros((0, 3))
        if not len(frac) or np.min(np.linalg.norm(minimum_image(d, CELL, n_images=0), axis=1)) >= min_distance:
            frac.append(trial)
    return Crystals(np.asarray(frac)[None], CELL[None], rng.permutation(species)[None])


def timed(call, repeats: int) -> float:
    jax.block_until_ready(call())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(call())
    return (time.perf_counter() - start) / repeats


def chgnet_seconds(crystals: Crystals, repeats: int) -> float | None:
    try:
        from chgnet.model import CHGNet  # optional heavy dependency (torch)
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError:
        return None
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    atoms = crystals.to_ase()[0]
    atoms.calc = CHGNetCalculator(model=CHGNet.load(model_name="0.3.0", use_device="cpu"))
    atoms.get_forces()
    start = time.perf_counter()
    for _ in range(repeats):
        atoms.rattle(1e-4)
        atoms.get_forces()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--irreps", default="32x0e+16x1o+8x2e")
    parser.add_argument("--lmax", type=int, default=2)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=4, help="frames per training step")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    frames = Crystals.concatenate([random_cell(seed) for seed in range(8)])
    labels = Frames(StructureSet.from_structures([frames]), np.zeros(8), list(np.zeros((8, frames.n_atoms, 3))))
    arrays = frame_arrays(labels, args.cutoff)
    config = NetworkConfig(cutoff=args.cutoff, n_layers=args.layers, hidden_irreps=args.irreps, l_max=args.lmax,
                           avg_neighbors=mean_neighbours([arrays], args.cutoff))
    species = tuple(sorted(COMPOSITION))
    network = PotentialNetwork(config, len(species))
    params = initial_params(network, jax.random.PRNGKey(0))
    potential = LearnedPotential(config, species, params, np.zeros(len(species)), 1.0)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"model: {args.layers} layers, {args.irreps}, l <= {args.lmax}, cutoff {args.cutoff} Å, {n_params} parameters; "
          f"{frames.n_atoms} atoms, table K = {arrays['indices'].shape[-1]}, "
          f"{config.avg_neighbors:.1f} neighbours per atom; {jax.device_count()} {jax.default_backend()} device(s), "
          f"load average {os.getloadavg()[0]:.1f}")

    batch8 = {k: jnp.asarray(v) for k, v in arrays.items()}
    batch1 = {k: v[:1] for k, v in batch8.items()}
    evaluate = jax.jit(lambda p, b: predictions(potential, p, b))
    start = time.perf_counter()
    jax.block_until_ready(evaluate(params, batch1))
    print(f"compile energy+forces: {time.perf_counter() - start:.1f} s")
    single = timed(lambda: evaluate(params, batch1), args.repeats)
    vmapped = timed(lambda: evaluate(params, batch8), args.repeats) / 8
    print(f"energy+forces, one frame: {single:.3f} s")
    print(f"energy+forces, vmapped over 8: {vmapped:.3f} s per frame")

    optimizer = make_optimizer(1e-3, 1000)
    state = initial_state(network, optimizer, jax.random.PRNGKey(0))
    train_batch = {k: v[: args.batch] for k, v in batch8.items()}
    options = dict(potential=potential, optimizer=optimizer, energy_weight=1.0, force_weight=1.0, ema_decay=0.99)
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = train_step(holder["state"], train_batch, **options)
        return metrics["loss"]

    start = time.perf_counter()
    jax.block_until_ready(one_step())
    print(f"compile training step: {time.perf_counter() - start:.1f} s")
    print(f"training step ({args.batch} frames): {timed(one_step, args.repeats):.3f} s")

    reference = chgnet_seconds(frames[:1], args.repeats)
    if reference is None:
        print("CHGNet: not installed (pip install -e .[teachers]); no ratio")
    else:
        print(f"CHGNet 0.3.0 energy+forces, one frame: {reference:.3f} s; JAX potential is {reference / single:.1f}x "
              f"faster (one frame), {reference / vmapped:.1f}x (vmapped over 8)")


if __name__ == "__main__":
    main()
