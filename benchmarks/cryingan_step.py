"""Time one CryinGAN critic step and one generator step: dismax (JAX) vs PyTorch, same run.

Sizes of the paper: B = 32; the interface composition Li72 Sc12 Co36 Cl72 O72 (N = 264, λ = 0.05) and
the Fe–Ni–Cr alloy (N = 256, λ = 0.1). The PyTorch side is the same architecture written here, twice: with
the reference's convolution layout and with dense per-atom layers (both with a brute-force kNN over the
27-image cloud, autograd gradient penalties, Adam); it runs only when torch is installed (``pip install -e .[bench]``). Prints medians in milliseconds, the
torch/dismax ratio, and achieved GFLOP/s (XLA's flop count of the dismax step) next to a float32 matmul
measured in the same run.

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


def real_batch(counts, lattice, seed=0):
    """Jittered grid positions (no overlapping atoms) in the cell, (B, N, 3) fractional."""
    rng = np.random.default_rng(seed)
    n = sum(counts)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] / side
    return ((grid[None] + rng.normal(0, 0.02, (BATCH, n, 3))) % 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- dismax
def time_dismax(problem, repeats):
    setup = GanSetup(counts=problem["counts"], lattice=tuple(map(tuple, problem["lattice"].tolist())))
    state = init_state(setup, jax.random.PRNGKey(0), problem["w_dist"])
    real = jnp.asarray(real_batch(problem["counts"], problem["lattice"]))
    dists = jax.jit(setup.distances)(real)
    critic = jax.jit(lambda s, r, d: critic_update(setup, s, r, d, 1.0))
    generator = jax.jit(lambda s: generator_update(setup, s, BATCH, 1.0))
    flops = {"critic": _flops(critic, state, real, dists), "generator": _flops(generator, state)}
    seconds = {
        "critic": median_seconds(lambda: jax.block_until_ready(critic(state, real, dists)), repeats),
        "generator": median_seconds(lambda: jax.block_until_ready(generator(state)), repeats),
    }
    return seconds, flops


def _flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def time_matmul(size: int, repeats: int) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    seconds = median_seconds(lambda: jax.block_until_ready(f(a)), repeats)
    return 2 * size ** 3 / seconds / 1e9


# ------------------------------------------------------------------------------------------ PyTorch
def time_torch(problem, repeats, threads, conv):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    counts, n = problem["counts"], sum(problem["counts"])
    lattice = torch.tensor(problem["lattice"], dtype=torch.float32)
    w_dist = problem["w_dist"]

    class Generator(nn.Module):
        """Dense layout (B, N, 3, C); with ``conv`` the reference's NCHW ConvTranspose2d/BatchNorm2d layout."""

        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(64, 128 * n)
            if conv:
                self.maps = nn.ModuleList([nn.ConvTranspose2d(128, 256, (1, 3)), nn.ConvTranspose2d(256, 512, 1),
                                           nn.ConvTranspose2d(512, 256, 1)])
                self.norms = nn.ModuleList([nn.BatchNorm2d(c, eps=0.8) for c in (256, 512, 256)])
                self.out = nn.ConvTranspose2d(256, 1, 1)
            else:
                self.maps = nn.ModuleList([nn.Linear(128, 256 * 3), nn.Linear(256, 512), nn.Linear(512, 256)])
                self.norms = nn.ModuleList([nn.BatchNorm1d(c, eps=0.8) for c in (256, 512, 256)])
                self.out = nn.Linear(256, 1)

        def forward(self, z):
            h = torch.relu(self.l1(z)).view(z.shape[0], 128, n)
            if conv:
                h = h[..., None]
                for layer, norm in zip(self.maps, self.norms):
                    h = torch.relu(norm(layer(h)))
                return torch.sigmoid(self.out(h))[:, 0]
            h = self.maps[0](h.transpose(1, 2)).view(z.shape[0], n, 3, 256)
            for i, norm in enumerate(self.norms):
                if i:
                    h = self.maps[i](h)
                shape = h.shape  # BN per channel over (B, N, 3)
                h = torch.relu(norm(h.reshape(-1, shape[-1])).reshape(shape))
            return torch.sigmoid(self.out(h)[..., 0])

    class Critic(nn.Module):
        def __init__(self, width):
            super().__init__()
            if conv:
                self.atoms = nn.Sequential(nn.Conv2d(1, 512, (1, width)), nn.LeakyReLU(0.2), nn.Conv2d(512, 512, 1),
                                           nn.LeakyReLU(0.2), nn.Conv2d(512, 256, 1), nn.LeakyReLU(0.2))
            else:
                self.atoms = nn.Sequential(nn.Linear(width, 512), nn.LeakyReLU(0.2), nn.Linear(512, 512),
                                           nn.LeakyReLU(0.2), nn.Linear(512, 256), nn.LeakyReLU(0.2))
            self.head = nn.Sequential(nn.Linear(256 * len(counts), 1000), nn.LeakyReLU(0.2),
                                      nn.Linear(1000, 200), nn.LeakyReLU(0.2), nn.Linear(200, 10))

        def forward(self, x):
            if conv:  # (B, 1, N, F) → (B, 256, N, 1) → per-element mean over atoms
                h = self.atoms(x[:, None])[..., 0]
                pooled = torch.stack([part.mean(2) for part in torch.split(h, list(counts), dim=2)], -1)
            else:
                h = self.atoms(x)
                pooled = torch.stack([part.mean(1) for part in torch.split(h, list(counts), dim=1)], -1)
            return self.head(pooled.flatten(1))

    images = torch.tensor([[i, j, k] for i in (0, -1, 1) for j in (0, -1, 1) for k in (0, -1, 1)],
                          dtype=torch.float32)

    def distances(frac):
        cart = frac @ lattice
        cloud = ((frac[:, None] + images[None, :, None]).reshape(frac.shape[0], -1, 3)) @ lattice
        squared = torch.cdist(cart, cloud) ** 2
        return torch.sqrt(torch.topk(squared, 7, dim=-1, largest=False).values[..., 1:])

    def penalty(critic, real, fake):
        alpha = torch.rand(real.shape[0], 1, 1)
        x = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
        grad, = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        return 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    gen, coord, dist = Generator(), Critic(3), Critic(6)
    opt_g = torch.optim.Adam(gen.parameters(), 5e-5, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam(list(coord.parameters()) + list(dist.parameters()), 5e-5, betas=(0.5, 0.999))
    real = torch.tensor(real_batch(counts, problem["lattice"]))
    real_d = distances(real)

    def critic_step():
        fake = gen(torch.randn(BATCH, 64)).detach()
        fake_d = distances(fake)
        loss = (coord(fake).mean() - coord(real).mean() + penalty(coord, real, fake)
                + w_dist * (dist(fake_d).mean() - dist(real_d).mean() + penalty(dist, real_d, fake_d)))
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()

    def generator_step():
        fake = gen(torch.randn(BATCH, 64))
        loss = -coord(fake).mean() - w_dist * dist(distances(fake)).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

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
        print("torch is not installed: timing dismax only (pip install -e .[bench] for the comparison)")
    matmul = time_matmul(args.matmul, args.repeats)
    print(f"jax float32 matmul {args.matmul}^3: {matmul:.1f} GFLOP/s")
    print("torch conv = the reference's layout (Conv2d / ConvTranspose2d / BatchNorm2d on NCHW tensors); "
          "torch dense = the same maths with Linear layers; ratio = torch time / dismax time")
    print(f"{'problem':<18}{'step':<11}{'dismax ms':>11}{'GFLOP':>8}{'GFLOP/s':>9}{'% matmul':>10}"
          f"{'conv ms':>10}{'ratio':>8}{'dense ms':>10}{'ratio':>8}")
    for name, problem in PROBLEMS.items():
        seconds, flops = time_dismax(problem, args.repeats)
        torch_seconds = {layout: time_torch(problem, args.repeats, args.threads, layout == "conv")
                         for layout in ("conv", "dense")} if have_torch else {}
        for step in ("critic", "generator"):
            rate = flops[step] / seconds[step] / 1e9
            line = (f"{name:<18}{step:<11}{1e3 * seconds[step]:11.0f}{flops[step] / 1e9:8.1f}{rate:9.1f}"
                    f"{100 * rate / matmul:9.0f}%")
            for layout in ("conv", "dense"):
                if layout in torch_seconds:
                    other = torch_seconds[layout][step]
                    line += f"{1e3 * other:10.0f}{other / seconds[step]:8.2f}"
                else:
                    line += f"{'-':>10}{'-':>8}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
