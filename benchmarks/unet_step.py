"""Step time and XLA-reported memory of one CrysTens / UniMat training step at paper size.

    python benchmarks/unet_step.py [--n-atoms 264] [--batch 8] [--time-batch 8] [--models crystens unimat]

For each model (the paper-size configs: 64 base channels, dim_mults (1, 2, 4); CrysTens as the base U-Net at
64² plus the super-resolution U-Net at (N + 12)²) the jitted train step is compiled at ``--batch``; the
script prints XLA's memory analysis (arguments, outputs, temporaries) and FLOP count, then times
``--repeats`` steps at ``--time-batch`` (a smaller batch keeps the CPU run short; time scales ~linearly). The
GPU estimate divides the compiled FLOPs by an assumed sustained 10 TFLOP/s (fp32, ~50 % of an A100's peak).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from dismax.diffusion.crystens import N_QUANTITIES
from dismax.diffusion.unet_diffusion import init_state, train_step
from dismax.diffusion.unet_trainer import Config, ModelConfig, Representation, build_cascade, make_optimizer

GPU_FLOPS = 10e12
PAPER = {"crystens": ModelConfig(name="crystens", num_resnet_blocks=2, layer_attns=(False, False, True)),
         "unimat": ModelConfig(name="unimat")}


def measure(name: str, n_atoms: int, batch: int, time_batch: int, repeats: int) -> None:
    model = PAPER[name]
    ranges = ((0.0, 1.0),) * (N_QUANTITIES if name == "crystens" else 3)  # timing does not depend on them
    rep = Representation(name, n_atoms, (3, 21, 27, 17, 8), (72, 12, 36, 72, 72), ranges)
    cascade = build_cascade(model, rep)
    t = Config().train
    optimizer = make_optimizer(t.lr, t.beta1, t.beta2)
    state = init_state(jnp.zeros((1, *rep.shape)), jax.random.PRNGKey(0), cascade=cascade, optimizer=optimizer)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    started = time.perf_counter()
    compiled = train_step.lower(state, jnp.zeros((batch, *rep.shape)), cascade, optimizer, t.ema_decay).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    gib = 1024 ** 3
    print(f"{name}: N={n_atoms}, data {'x'.join(map(str, rep.shape))}, {n_params / 1e6:.2f} M parameters, "
          f"compile {time.perf_counter() - started:.0f} s at batch {batch}", flush=True)
    print(f"  XLA memory at batch {batch}: arguments {memory.argument_size_in_bytes / gib:.2f} GiB, outputs "
          f"{memory.output_size_in_bytes / gib:.2f} GiB, temporaries {memory.temp_size_in_bytes / gib:.2f} GiB; "
          f"{flops / 1e12:.2f} TFLOP per step -> GPU estimate {flops / GPU_FLOPS * 1e3:.0f} ms/step "
          f"(at {GPU_FLOPS / 1e12:.0f} TFLOP/s), 150,000 steps {flops / GPU_FLOPS * 150_000 / 3600:.1f} h", flush=True)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (time_batch, *rep.shape), minval=-1, maxval=1)
    state, losses = train_step(state, x0, cascade, optimizer, t.ema_decay)  # compile at the timing batch
    jax.block_until_ready(losses)
    started = time.perf_counter()
    for _ in range(repeats):
        state, losses = train_step(state, x0, cascade, optimizer, t.ema_decay)
    jax.block_until_ready(losses)
    seconds = (time.perf_counter() - started) / repeats
    print(f"  CPU step time at batch {time_batch}: {seconds:.2f} s ({seconds * batch / time_batch:.1f} s "
          f"scaled to batch {batch}; {jax.device_count()} device(s), {jax.devices()[0].platform})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-atoms", type=int, default=264)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--time-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["crystens", "unimat"], choices=sorted(PAPER))
    args = parser.parse_args()
    for name in args.models:
        measure(name, args.n_atoms, args.batch, args.time_batch, args.repeats)


if __name__ == "__main__":
    main()
