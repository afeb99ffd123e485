"""Time one CryinGAN critic step and one generator step: dismax (JAX) vs PyTorch, same run.

Sizes of the paper: B = 32; the interface composition Li72 Sc12 Co36 Cl72 O72 (N = 264, λ = 0.05) and
the Fe–Ni–Cr alloy (N = 256, λ = 0.1). The PyTorch side is dismax.gan.reference_torch (the implementation
the parity test checks against dismax), with the reference's convolution layout and with dense per-atom
layers (brute-force kNN over the 27-image cloud, autograd gradient penalties, Adam); it runs only when
torch is installed (``pip install -e .[dev]``). The float32 matmul, the dismax step and the torch steps
are timed in turn, round after round, so all see the same machine load. Prints medians in milliseconds,
the dismax step's process CPU seconds, its achieved GFLOP/s (XLA's flop count of the step) as a fraction
of the matmul's from wall times and from CPU seconds, and the torch/dismax ratios.

    python benchmarks/cryingan_step.py [--repeats 3] [--threads 2] [--matmul 4096] [--profile] [--compare-options]

On CPU the dismax steps are compiled with ``dismax.gan.steps.CPU_PRODUCT_OPTIONS`` (the matrix products on
XLA's Eigen kernels, not YNNPACK fusions, as the trainer compiles them; see the README);
the matmul probe keeps XLA's defaults. ``--compare-options`` instead times the dismax steps with and without
those options, in turn round after round.

``--profile`` first prints, for each problem, where each step spends its time: the traced XLA operation
time summed per JAX operation and the top operations (plain ``dot`` products, which with these options are
all the matrix products, run asynchronously and the trace misses their work, so the trace times everything
else); then the CPU seconds of the step and of a program doing only its matrix products (same shapes, same
options), the difference being the time of everything else.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dismax.gan.steps import GanSetup, critic_update, generator_update, init_state, step_compiler_options
from roofline import UNTIMED_DOT, Trace, products_only  # benchmarks/roofline.py

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
PRODUCT_OPTIONS = step_compiler_options()  # the trainer's: CPU_PRODUCT_OPTIONS on CPU


def matmul_fn(size: int):
    """(call, flop count) of a jitted float32 size × size matmul."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return (lambda: jax.block_until_ready(f(a))), 2.0 * size ** 3


def interleaved(calls: dict, repeats: int) -> dict:
    """Time every call of ``calls`` ({name: fn}) once per round, ``repeats`` rounds after a warm-up, so all
    see the same machine load. Returns {name: (median wall seconds, median process CPU seconds)}."""
    for fn in calls.values():
        fn()  # warm-up (compilation)
    walls, cpus = {name: [] for name in calls}, {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in calls}


def real_batch(counts, lattice, seed=0):
    """Jittered grid positions (no overlapping atoms) in the cell, (B, N, 3) fractional."""
    rng = np.random.default_rng(seed)
    n = sum(counts)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] / side
    return ((grid[None] + rng.normal(0, 0.02, (BATCH, n, 3))) % 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- dismax
def dismax_steps(problem, options=PRODUCT_OPTIONS):
    """{step: (jitted function, its arguments)} of the critic and generator steps of ``problem``, compiled
    with the XLA ``options``."""
    setup = GanSetup(counts=problem["counts"], lattice=tuple(map(tuple, problem["lattice"].tolist())))
    state = init_state(setup, jax.random.PRNGKey(0), problem["w_dist"])
    real = jnp.asarray(real_batch(problem["counts"], problem["lattice"]))
    dists = jax.jit(setup.distances)(real)
    return {"critic": (jax.jit(lambda s, r, d: critic_update(setup, s, r, d, 1.0), compiler_options=options),
                       (state, real, dists)),
            "generator": (jax.jit(lambda s: generator_update(setup, s, BATCH, 1.0), compiler_options=options),
                          (state,))}


def profile_dismax(problem, top: int = 8, repeats: int = 3):
    """Print each step's traced time per JAX operation and its ``top`` XLA operations (one traced call
    each), then the CPU seconds of the step and of its matrix products alone (medians of ``repeats``)."""
    for step, (jitted, arguments) in dismax_steps(problem).items():
        compiled = jitted.lower(*arguments).compile()
        jax.block_until_ready(compiled(*arguments))  # warm-up
        trace = Trace(lambda: compiled(*arguments), compiled)
        print(f"{step} step, traced XLA operation time per JAX operation ({UNTIMED_DOT!r}: products whose "
              "work the trace misses):")
        for line in trace.by_source(top):
            print("   ", line)
        print(f"{step} step, top XLA operations:")
        for line in trace.operations(top):
            print("   ", line, flush=True)
        products, product_flops = products_only(compiled, PRODUCT_OPTIONS)
        times = interleaved({"step": lambda: jax.block_until_ready(compiled(*arguments)), "products": products},
                            repeats)
        (_, step_cpu), (_, products_cpu) = times["step"], times["products"]
        print(f"{step} step: {step_cpu:.2f} CPU s; its matrix products alone ({product_flops / 1e9:.1f} GFLOP, "
              f"one program): {products_cpu:.2f} CPU s; everything else: {step_cpu - products_cpu:.2f} CPU s "
              f"({100 * (step_cpu - products_cpu) / step_cpu:.0f} %)", flush=True)


def compare_options(problem, repeats: int):
    """Print each step's median wall and process CPU seconds compiled with XLA's defaults and with
    ``PRODUCT_OPTIONS``, the two timed in turn round after round (one process, the same load)."""
    variants = {"defaults": dismax_steps(problem, None), "options": dismax_steps(problem)}
    for step in ("critic", "generator"):
        calls = {name: (lambda jitted=steps[step][0], arguments=steps[step][1]:
                        jax.block_until_ready(jitted(*arguments))) for name, steps in variants.items()}
        times = interleaved(calls, repeats)
        (wall, cpu), (option_wall, option_cpu) = times["defaults"], times["options"]
        print(f"{step}: XLA defaults {wall:.3f} s wall, {cpu:.3f} CPU s; with the options {option_wall:.3f} s wall, "
              f"{option_cpu:.3f} CPU s ({100 * (option_cpu / cpu - 1):+.0f} % CPU s)", flush=True)


def dismax_calls(problem):
    """({step: blocking call} of the critic and generator steps, {step: XLA flop count})."""
    steps = dismax_steps(problem)
    calls = {step: (lambda jitted=jitted, arguments=arguments: jax.block_until_ready(jitted(*arguments)))
             for step, (jitted, arguments) in steps.items()}
    return calls, {step: _flops(jitted, *arguments) for step, (jitted, arguments) in steps.items()}


def _flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


# ------------------------------------------------------------------------------------------ PyTorch
def torch_calls(problem, threads, conv):
    """{step: call} of the critic and generator steps of dismax.gan.reference_torch (conv or dense layout)."""
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

    return {"critic": critic_step, "generator": generator_step}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    parser.add_argument("--matmul", type=int, default=4096, help="size of the reference float32 matmul")
    parser.add_argument("--profile", action="store_true", help="first print where the steps spend time")
    parser.add_argument("--compare-options", action="store_true",
                        help="only time the dismax steps compiled with XLA's defaults against the CPU product options")
    args = parser.parse_args()
    if args.compare_options:
        for name, problem in PROBLEMS.items():
            print(f"--- {name}")
            compare_options(problem, args.repeats)
        return
    if args.profile:
        for name, problem in PROBLEMS.items():
            print(f"--- {name}")
            profile_dismax(problem)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
        print("torch is not installed: timing dismax only (pip install -e .[dev] for the comparison)")
    matmul, matmul_flops = matmul_fn(args.matmul)
    print(f"Per step, one round times in turn: a jax float32 {args.matmul}^3 matmul, the dismax step, the torch "
          f"steps; medians of {args.repeats} rounds. % matmul = the dismax step's GFLOP/s (XLA's flop count) over "
          "the matmul's, from wall times (wall) and from process CPU seconds (cpu: flops per CPU-second, "
          "insensitive to how many cores the machine load left the process)")
    print("torch conv = the reference's layout (Conv2d / ConvTranspose2d / BatchNorm2d on NCHW tensors); "
          "torch dense = the same maths with Linear layers; ratio = torch time / dismax time (wall, and cpu)")
    print(f"{'problem':<18}{'step':<11}{'dismax ms':>10}{'cpu s':>7}{'GFLOP':>7}{'GFLOP/s':>8}{'matmul':>8}"
          f"{'%mm wall':>9}{'%mm cpu':>8}{'conv ms':>9}{'ratio':>7}{'cpu':>6}{'dense ms':>9}{'ratio':>7}{'cpu':>6}")
    for name, problem in PROBLEMS.items():
        dismax, flops = dismax_calls(problem)
        torch_steps = {layout: torch_calls(problem, args.threads, layout == "conv")
                       for layout in ("conv", "dense")} if have_torch else {}
        for step in ("critic", "generator"):
            calls = {"matmul": matmul, "dismax": dismax[step]}
            calls.update({layout: steps[step] for layout, steps in torch_steps.items()})
            times = interleaved(calls, args.repeats)
            (wall, cpu), (matmul_wall, matmul_cpu) = times["dismax"], times["matmul"]
            rate, machine = flops[step] / wall / 1e9, matmul_flops / matmul_wall / 1e9
            rate_cpu, machine_cpu = flops[step] / cpu, matmul_flops / matmul_cpu
            line = (f"{name:<18}{step:<11}{1e3 * wall:10.0f}{cpu:7.1f}{flops[step] / 1e9:7.1f}{rate:8.1f}"
                    f"{machine:8.1f}{100 * rate / machine:8.0f}%{100 * rate_cpu / machine_cpu:7.0f}%")
            for layout in ("conv", "dense"):
                if layout in times:
                    other_wall, other_cpu = times[layout]
                    line += f"{1e3 * other_wall:9.0f}{other_wall / wall:7.2f}{other_cpu / cpu:6.2f}"
                else:
                    line += f"{'-':>9}{'-':>7}{'-':>6}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
