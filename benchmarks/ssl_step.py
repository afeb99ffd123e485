"""Time the masked-denoising backbone at 256 atoms: one forward pass and one pre-training step.

The structures are Fe–Ni–Cr FCC supercells (4×4×4 conventional cells, a = 3.6 Å, 256 atoms, random
species with small positional jitter), batch ``--batch``; the backbone and the corruption come from a
pre-training config (default ``configs/ssl_pretrain_alloy_small.yaml``). The pre-training step is the jitted
:func:`dismax.ssl.pretrain.train_step` (corruption, forward, backward, Adam). Prints compile seconds and
medians in milliseconds with the load average, since the machine may be shared.

    python benchmarks/ssl_step.py [--config FILE] [--batch 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dismax.config import load_config
from dismax.ssl import pretrain
from dismax.ssl.backbone import Backbone
from dismax.ssl.steps import Batch, apply_batch

FCC_BASIS = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def alloy_batch(batch_size: int, seed: int = 0) -> Batch:
    """``batch_size`` 256-atom Fe–Ni–Cr FCC supercells (random species, 0.05 Å jitter)."""
    rng = np.random.default_rng(seed)
    cells = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    frac = ((cells + FCC_BASIS[None]).reshape(-1, 3) / 4.0)
    lattice = np.diag([14.4] * 3)
    jitter = rng.normal(0, 0.05, (batch_size, len(frac), 3)) / 14.4
    return Batch(jnp.asarray((frac[None] + jitter) % 1.0, jnp.float32),
                 jnp.asarray(np.broadcast_to(lattice, (batch_size, 3, 3)), jnp.float32),
                 jnp.asarray(rng.choice([24, 26, 28], (batch_size, len(frac))), jnp.int32),
                 jnp.ones((batch_size, len(frac)), bool))


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, including compilation; median seconds of the next ``repeats``)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ssl_pretrain_alloy_small.yaml")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config, config_class=pretrain.Config)
    network = Backbone(config.model.backbone)
    optimizer = pretrain.make_optimizer(config.train.lr, config.train.clip_norm)
    params = pretrain.initial_params(network, jax.random.PRNGKey(0))
    state = pretrain.TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), jax.random.PRNGKey(1))
    batch = alloy_batch(args.batch)
    forward = jax.jit(lambda p, b: apply_batch(network, p, b.frac, b.lattice, b.species, b.atom_mask))
    step = jax.jit(lambda s, b: pretrain.train_step.__wrapped__(s, b, network=network, optimizer=optimizer,
                                                                model=config.model))
    b = config.model.backbone
    print(f"backbone of {args.config}: {b.n_layers} layers, {b.hidden_irreps}, K={b.n_neighbors}, "
          f"{sum(x.size for x in jax.tree.leaves(params))} parameters; batch {args.batch} x 256 atoms; "
          f"{jax.device_count()} {jax.default_backend()} device(s)")
    for name, fn in (("forward", lambda: forward(params, batch)), ("pre-training step", lambda: step(state, batch))):
        load = os.getloadavg()[0]
        first, median = timed(fn, args.repeats)
        print(f"{name:18s} first call {first:7.1f} s, median {1e3 * median:8.1f} ms "
              f"({1e3 * median / args.batch:.1f} ms per structure); load average {load:.2f} -> "
              f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
