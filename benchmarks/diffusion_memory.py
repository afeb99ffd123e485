"""Peak memory and time per training step and per sampling step of the diffusion denoisers.

For each denoiser (the Dismai-Bench CSPNet 256 x 4 with 128 frequencies, with and without per-layer
rematerialisation, and the e3nn equivariant network without and with the cell-wide Fourier context) at
N atoms and batch B on the current JAX backend:
XLA's compiled temp-buffer size of the jitted train step and of one predictor-corrector step (2 network
evaluations per structure), the process peak RSS, and the median wall time over a few repeats after
compilation. Each configuration runs in its own subprocess so peak RSS is per configuration.

    python benchmarks/diffusion_memory.py [--n-atoms 256] [--batch 4] [--repeats 3] [--only cspnet ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGS = {
    "cspnet": dict(name="cspnet", hidden=256, n_layers=4, n_freq=128, time_dim=256),
    "cspnet_remat": dict(name="cspnet", hidden=256, n_layers=4, n_freq=128, time_dim=256, remat=True),
    "equivariant": dict(name="equivariant", hidden_irreps="64x0e+32x1o+16x2e", n_layers=4, n_neighbors=32,
                        cutoff=6.0, time_dim=128),
    "equivariant_context": dict(name="equivariant", hidden_irreps="64x0e+32x1o+16x2e", n_layers=4, n_neighbors=32,
                                cutoff=6.0, time_dim=128, global_frequencies=16),
}


def measure(label: str, n_atoms: int, batch: int, repeats: int) -> dict:
    """Run in a fresh process: compile, time and size the train step and one PC sampling step."""
    import resource
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
    from dismax.diffusion.noise import SigmaSchedule
    from dismax.diffusion.sampling import predictor_corrector
    from dismax.diffusion.trainer import init_state, make_optimizer, train_step

    network = build_denoiser(DenoiserConfig(**CONFIGS[label]))
    schedule = SigmaSchedule(0.005, 0.1, 1000)
    optimizer = make_optimizer(1e-3)
    rng = np.random.default_rng(0)
    side = 3.61 * (n_atoms / 4) ** (1 / 3)  # FCC-like density (alloy cell: 256 atoms, 14.4 Å)
    frac = jnp.asarray(rng.random((batch, n_atoms, 3)), jnp.float32)
    lattice = jnp.asarray(np.repeat(np.eye(3)[None] * side, batch, 0), jnp.float32)
    species = jnp.asarray(rng.choice([24, 26, 28], (batch, n_atoms)), jnp.int32)
    state = init_state(network, optimizer, (frac[0], lattice[0], species[0]), jax.random.PRNGKey(0))
    n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))

    step = train_step.lower(state, (frac, lattice, species), network=network, optimizer=optimizer,
                            schedule=schedule, ema_decay=0.999).compile()
    train_temp = step.memory_analysis().temp_size_in_bytes
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        state, loss = train_step(state, (frac, lattice, species), network=network, optimizer=optimizer,
                                 schedule=schedule, ema_decay=0.999)
        loss.block_until_ready()
        times.append(time.perf_counter() - started)
    train_seconds = statistics.median(times[1:])

    kwargs = dict(network=network, schedule=schedule, n_steps=1, step_lr=1e-5, n_structures=batch)
    sampler = predictor_corrector.lower(state.ema_params, lattice[0], species[0], jax.random.PRNGKey(1),
                                        **kwargs).compile()
    sample_temp = sampler.memory_analysis().temp_size_in_bytes
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        predictor_corrector(state.ema_params, lattice[0], species[0], jax.random.PRNGKey(i), **kwargs
                            ).block_until_ready()
        times.append(time.perf_counter() - started)
    sample_seconds = statistics.median(times[1:])
    return {"denoiser": label, "params": n_params, "train_temp_gib": train_temp / 2**30,
            "train_s": train_seconds, "sample_temp_gib": sample_temp / 2**30, "sample_step_s": sample_seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "backend": jax.default_backend()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-atoms", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.n_atoms, args.batch, args.repeats)))
        return 0
    rows = []
    for label in args.only:
        command = [sys.executable, __file__, "--worker", label, "--n-atoms", str(args.n_atoms), "--batch",
                   str(args.batch), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{label}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"finished {label}", file=sys.stderr)
    print(f"\nN = {args.n_atoms} atoms, batch B = {args.batch}, backend {rows[0]['backend'] if rows else '?'}; "
          "a sampling step is one predictor-corrector step (2 network evaluations) for B structures")
    header = ("denoiser", "params", "train temp GiB", "train s/step", "sample temp GiB", "sample s/step",
              "peak RSS GiB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['denoiser']} | {r['params']:,} | {r['train_temp_gib']:.2f} | {r['train_s']:.2f} | "
              f"{r['sample_temp_gib']:.2f} | {r['sample_step_s']:.2f} | {r['peak_rss_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
