"""Periodic neighbour search: dismax.geometry vs the alternatives a user would otherwise use.

On the same random structures (B structures of N atoms in a rectangular cell, default the CryinGAN
interface size B = 32, N = 264), in one run:

- 6 nearest neighbours: ``dismax.geometry.knn`` (forward, and value + gradient) against the brute-force
  JAX version of the published CryinGAN feature (27-image replicated cloud, squared distances in
  matmul form as torch.cdist, top-7, drop self);
- cutoff neighbour list: ``dismax.geometry.neighbor_list`` against pymatgen ``Structure.get_neighbor_list``.

Prints wall and process CPU seconds (CPU time is the fairer number on a shared machine), the ratios and
the largest differences in distances.

    python benchmarks/geometry_neighbors.py [--batch 32] [--atoms 264] [--cutoff 3.5 6.0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def timed(function, repeats: int = 3) -> tuple[float, float]:
    """Mean (wall, CPU) seconds over ``repeats`` calls after one warm-up call."""
    import jax

    jax.block_until_ready(function())
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        jax.block_until_ready(function())
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--atoms", type=int, default=264)
    parser.add_argument("--cell", type=float, nargs=3, default=(10.2, 10.2, 32.0), help="cell edges in Å")
    parser.add_argument("--cutoff", type=float, nargs="+", default=(3.5, 6.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    from pymatgen.core import Structure

    from dismax import geometry

    rng = np.random.default_rng(args.seed)
    lattice = np.diag(args.cell)
    frac_host = rng.random((args.batch, args.atoms, 3))
    frac = jnp.asarray(frac_host, jnp.float32)
    lattices = jnp.asarray(np.tile(lattice, (args.batch, 1, 1)), jnp.float32)
    offsets = jnp.asarray(geometry.image_offsets(1), jnp.float32)

    def brute_force_knn(f):
        cart = jnp.einsum("bni,bij->bnj", f, lattices)
        cloud = jnp.einsum("bmni,bij->bmnj", f[:, None] + offsets[None, :, None], lattices)
        cloud = cloud.reshape(args.batch, -1, 3)
        squared = (jnp.sum(cart**2, -1)[:, :, None] + jnp.sum(cloud**2, -1)[:, None, :]
                   - 2.0 * jnp.einsum("bnk,bmk->bnm", cart, cloud))  # as torch.cdist (matmul form)
        # top_k's indices + a gather: consuming top_k's values makes XLA on CPU use a much slower sort
        _, nearest = jax.lax.top_k(-squared, 7)
        return jnp.sqrt(jnp.maximum(jnp.take_along_axis(squared, nearest[..., 1:], axis=-1), 0.0))

    ours = jax.jit(lambda f: geometry.knn(f, lattices, 6, 1).distances)
    theirs = jax.jit(brute_force_knn)
    ours_grad = jax.jit(jax.grad(lambda f: geometry.knn(f, lattices, 6, 1).distances.sum()))
    theirs_grad = jax.jit(jax.grad(lambda f: brute_force_knn(f).sum()))
    print(f"{args.batch} structures x {args.atoms} atoms, cell {args.cell} Å")
    difference = float(jnp.max(jnp.abs(ours(frac) - theirs(frac))))
    for name, a, b in (("knn k=6 forward", ours, theirs), ("knn k=6 value+grad", ours_grad, theirs_grad)):
        (wall_a, cpu_a), (wall_b, cpu_b) = timed(lambda: a(frac)), timed(lambda: b(frac))
        print(f"{name:24s} dismax {wall_a:.3f} s wall / {cpu_a:.3f} s CPU; brute-force 27-image cloud "
              f"{wall_b:.3f} / {cpu_b:.3f} s; CPU ratio {cpu_b / cpu_a:.1f}x")
    print(f"{'':24s} largest distance difference {difference:.2e} Å")

    structures = [Structure(lattice, ["Si"] * args.atoms, f) for f in frac_host]
    for cutoff in args.cutoff:
        counts = geometry.images_needed(lattice, cutoff)
        reference = [s.get_neighbor_list(cutoff) for s in structures]
        capacity = int(1.1 * max(len(r[0]) for r in reference)) + 1
        build = jax.jit(lambda f: geometry.neighbor_list(f, lattices, cutoff, capacity=capacity, n_images=counts))
        wall_a, cpu_a = timed(lambda: build(frac))
        wall, cpu = time.perf_counter(), time.process_time()
        for structure in structures:
            structure.get_neighbor_list(cutoff)
        wall_b, cpu_b = time.perf_counter() - wall, time.process_time() - cpu
        nl = build(frac)
        counts_match = all(int(nl.n_pairs[b]) == len(reference[b][0]) for b in range(args.batch))
        largest = max(abs(np.sort(np.asarray(nl.distances[b])[np.asarray(nl.mask[b])]) - np.sort(reference[b][3])).max()
                      for b in range(args.batch))
        print(f"neighbor_list {cutoff:4.1f} Å    dismax {wall_a:.3f} s wall / {cpu_a:.3f} s CPU (images {counts}, "
              f"capacity {capacity}); pymatgen {wall_b:.3f} / {cpu_b:.3f} s; CPU ratio {cpu_b / cpu_a:.2f}x; "
              f"pair counts equal: {counts_match}; largest distance difference {largest:.2e} Å")


if __name__ == "__main__":
    main()
