"""Time one CryinGAN critic step and one generator step: dismax (JAX) vs PyTorch, same run.

Sizes of the paper: B = 32; the interface composition Li72 Sc12 Co36 Cl72 O72 (N = 264, λ = 0.05) and
the Fe–Ni–Cr alloy (N = 256, λ = 0.1). The PyTorch side is dismax.gan.reference_torch (the implementation
the parity test checks against dismax), with the reference's convolution layout and with dense per-atom
layers (brute-force kNN over the 27-image cloud, autograd gradient penalties, Adam); it runs only when
torch is installed (``pip install -e .[dev]``). Prints medians in milliseconds, the
torch/dismax ratio, the dismax step's process CPU time (≈ 2 × wall when it had both cores), and its
achieved GFLOP/s (XLA's flop count of the step) as a fraction of a float32 matmul timed alternately with
the step (one matmul before every timed step), so both rates are measured under the same machine load.

    python benchmarks/cryingan_step.py [--repeats 3] [--threads 2] [--matmul 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dismax.gan.steps import GanSetup, critic_update, generator_update, init_state

# Interface cell: the published in-plane cell (a = 12.470 Å, b = 17.200 Å, γ = 75.67°); the out-of-plane
# length is not public, 30 Å is used (it does not change the amount of arithmetic).
INTERFACE_LATTICE = np.array([[12.46997, 0.0, 0.0],
                              [17.19967 * np.cos(np.radians(75.6674)), 17.19967 * np.sin(np.radians(75.6674)), 0.0],
                              [0.0, 0.0, 30.0]])
PROBLEMS = {
    "interface N=264": dict(counts=(72, 12, 36, 72, 72), lattice=INTERFACE_LATTICE, w_dist=0.05),
    "alloy N=256": dict(counts=(154, 51, 51), lattice=np.diag([14.4, 14.4, 14.4]), w_dist=0.1),
}
BATCH = 32


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_fn(size: int):
    """(call, flop count) of a jitted float32 size × size matmul, compiled and warmed up."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    return (lambda: jax.block_until_ready(f(a))), 2.0 * size ** 3


def alternate_with_matmul(fn, matmul, repeats: int) -> dict:
    """Time ``fn`` ``repeats`` times after a warm-up, each call preceded by a timed matmul.

    Returns medians: ``seconds`` (wall) and ``cpu`` (process CPU seconds) of ``fn``, ``matmul`` flop/s.
    """
    call, matmul_flops = matmul
    fn()  # warm-up (compilation)
    walls, cpus, rates = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        rates.append(matmul_flops / (time.perf_counter() - start))
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return {"seconds": statistics.median(walls), "cpu": statistics.median(cpus), "matmul": statistics.median(rates)}


def real_batch(counts, lattice, seed=0):
    """Jittered grid positions (no overlapping atoms) in the cell, (B, N, 3) fractional."""
    rng = np.random.default_rng(seed)
    n = sum(counts)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] / side
    return ((grid[None] + rng.normal(0, 0.02, (BATCH, n, 3))) % 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- dismax
def time_dismax(problem, repeats, matmul):
    """{step: alternate_with_matmul timings} and {step: XLA flop count} of the critic and generator steps."""
    setup = GanSetup(counts=problem["counts"], lattice=tuple(map(tuple, problem["lattice"].tolist())))
    state = init_state(setup, jax.random.PRNGKey(0), problem["w_dist"])
    real = jnp.asarray(real_batch(problem["counts"], problem["lattice"]))
    dists = jax.jit(setup.distances)(real)
    critic = jax.jit(lambda s, r, d: critic_update(setup, s, r, d, 1.0))
    generator = jax.jit(lambda s: generator_update(setup, s, BATCH, 1.0))
    flops = {"critic": _flops(critic, state, real, dists), "generator": _flops(generator, state)}
    timings = {
        "critic": alternate_with_matmul(lambda: jax.block_until_ready(critic(state, real, dists)), matmul, repeats),
        "generator": alternate_with_matmul(lambda: jax.block_until_ready(generator(state)), matmul, repeats),
    }
    return timings, flops


def _flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


# ------------------------------------------------------------------------------------------ PyTorch
def time_torch(problem, repeats, threads, conv):
    """Critic and generator step times of dismax.gan.reference_torch (conv or dense layout)."""
    import torch  # optional dependency: the comparison runs only where torch is installed

    from dismax.gan.reference_torch import ReferenceGan

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reference = ReferenceGan(problem["counts"], problem["lattice"], problem["w_dist"],
                             layout="conv" if conv else "dense")
    real = torch.tensor(real_batch(problem["counts"], problem["lattice"]))
    real_dists = reference.distances(real)

    def critic_step():
        reference.critic_step(real, real_dists, torch.randn(BATCH, 64), torch.rand(BATCH), torch.rand(BATCH))

    def generator_step():
        reference.generator_step(torch.randn(BATCH, 64))

    return {"critic": median_seconds(critic_step, repeats), "generator": median_seconds(generator_step, repeats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    parser.add_argument("--matmul", type=int, default=4096, help="size of the reference float32 matmul")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
        print("torch is not installed: timing dismax only (pip install -e .[dev] for the comparison)")
    matmul = matmul_fn(args.matmul)
    print(f"matmul = jax float32 {args.matmul}^3 matmul timed before every dismax step (median GFLOP/s); "
          "% matmul = the step's GFLOP/s over it; cpu s = process CPU seconds of the dismax step")
    print("torch conv = the reference's layout (Conv2d / ConvTranspose2d / BatchNorm2d on NCHW tensors); "
          "torch dense = the same maths with Linear layers; ratio = torch time / dismax time")
    print(f"{'problem':<18}{'step':<11}{'dismax ms':>11}{'cpu s':>7}{'GFLOP':>8}{'GFLOP/s':>9}{'matmul':>8}"
          f"{'% matmul':>10}{'conv ms':>10}{'ratio':>8}{'dense ms':>10}{'ratio':>8}")
    for name, problem in PROBLEMS.items():
        timings, flops = time_dismax(problem, args.repeats, matmul)
        torch_seconds = {layout: time_torch(problem, args.repeats, args.threads, layout == "conv")
                         for layout in ("conv", "dense")} if have_torch else {}
        for step in ("critic", "generator"):
            seconds, machine = timings[step]["seconds"], timings[step]["matmul"] / 1e9
            rate = flops[step] / seconds / 1e9
            line = (f"{name:<18}{step:<11}{1e3 * seconds:11.0f}{timings[step]['cpu']:7.1f}{flops[step] / 1e9:8.1f}"
                    f"{rate:9.1f}{machine:8.1f}{100 * rate / machine:9.0f}%")
            for layout in ("conv", "dense"):
                if layout in torch_seconds:
                    other = torch_seconds[layout][step]
                    line += f"{1e3 * other:10.0f}{other / seconds:8.2f}"
                else:
                    line += f"{'-':>10}{'-':>8}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
