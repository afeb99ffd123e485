"""An independent PyTorch implementation of CryinGAN in the reference's layout, for parity and speed checks.

The networks follow the published code's tensor layout: the generator's per-atom maps are
``ConvTranspose2d`` layers with ``BatchNorm2d`` on (B, C, N, 3) tensors, the critics' per-atom layers are
``Conv2d`` layers on (B, 1, N, F) inputs (``layout="conv"``); ``layout="dense"`` is the same maths with
``Linear`` layers on (..., N, F) tensors. Bond distances come from a brute-force kNN over the 27-image
cloud (top-7, self dropped), gradient penalties from autograd double backward, updates from
``torch.optim.Adam`` — none of dismax's JAX code is used, so agreement with :mod:`dismax.gan.steps` is
evidence that both implement the same step. Weights move between the two with
:meth:`ReferenceGan.load_dismax` and :meth:`ReferenceGan.dismax_layout`.

torch is imported lazily (an optional dependency, ``pip install -e .[dev]``): importing this module never
needs it, constructing :class:`ReferenceGan` does.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

LAYOUTS = ("conv", "dense")
CRITIC_NAMES = ("coord", "dist")


def _torch():
    import torch  # optional dependency, only needed for the reference implementation

    return torch


def _build_generator(n_atoms: int, latent_dim: int, channels: int, bn_eps: float, layout: str):
    torch = _torch()
    nn = torch.nn

    class Generator(nn.Module):
        """z (B, latent) → fractional coordinates (B, N, 3); BatchNorm per channel over (B, N, 3)."""

        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(latent_dim, channels * n_atoms)
            if layout == "conv":
                self.maps = nn.ModuleList([nn.ConvTranspose2d(channels, 256, (1, 3)),
                                           nn.ConvTranspose2d(256, 512, 1), nn.ConvTranspose2d(512, 256, 1)])
                self.norms = nn.ModuleList([nn.BatchNorm2d(c, eps=bn_eps) for c in (256, 512, 256)])
                self.out = nn.ConvTranspose2d(256, 1, 1)
            else:
                self.maps = nn.ModuleList([nn.Linear(channels, 256 * 3), nn.Linear(256, 512), nn.Linear(512, 256)])
                self.norms = nn.ModuleList([nn.BatchNorm1d(c, eps=bn_eps) for c in (256, 512, 256)])
                self.out = nn.Linear(256, 1)

        def forward(self, z):
            h = torch.relu(self.l1(z)).view(z.shape[0], channels, n_atoms)
            if layout == "conv":
                h = h[..., None]  # (B, C, N, 1)
                for layer, norm in zip(self.maps, self.norms):
                    h = torch.relu(norm(layer(h)))
                return torch.sigmoid(self.out(h))[:, 0]
            # dense: (B, N, C) → (B, N, 3, 256) with the conv's (w, o) output order
            h = self.maps[0](h.transpose(1, 2)).view(z.shape[0], n_atoms, 256, 3).transpose(2, 3)
            for i, norm in enumerate(self.norms):
                if i:
                    h = self.maps[i](h)
                shape = h.shape
                h = torch.relu(norm(h.reshape(-1, shape[-1])).reshape(shape))
            return torch.sigmoid(self.out(h)[..., 0])

    return Generator()


def _build_critic(counts: Sequence[int], width: int, layout: str):
    torch = _torch()
    nn = torch.nn

    class Critic(nn.Module):
        """(B, N, F) → (B, 10): per-atom 512 → 512 → 256, per-species mean, Linear 1000 → 200 → 10."""

        def __init__(self):
            super().__init__()
            act = nn.LeakyReLU(0.2)
            if layout == "conv":
                self.atoms = nn.Sequential(nn.Conv2d(1, 512, (1, width)), act, nn.Conv2d(512, 512, 1), act,
                                           nn.Conv2d(512, 256, 1), act)
            else:
                self.atoms = nn.Sequential(nn.Linear(width, 512), act, nn.Linear(512, 512), act,
                                           nn.Linear(512, 256), act)
            self.head = nn.Sequential(nn.Linear(256 * len(counts), 1000), act, nn.Linear(1000, 200), act,
                                      nn.Linear(200, 10))

        def forward(self, x):
            if layout == "conv":  # (B, 1, N, F) → (B, 256, N, 1) → per-element mean over atoms
                h = self.atoms(x[:, None])[..., 0]
                pooled = torch.stack([part.mean(2) for part in torch.split(h, list(counts), dim=2)], -1)
            else:
                h = self.atoms(x)
                pooled = torch.stack([part.mean(1) for part in torch.split(h, list(counts), dim=1)], -1)
            return self.head(pooled.flatten(1))  # channel-major: index c·n_el + e

    return Critic()


class ReferenceGan:
    """Generator, coordinate critic and bond-distance critic with one Adam optimiser each.

    counts: atoms per species block; lattice (3, 3) Å, rows are lattice vectors; w_dist: λ. Steps take
    their noise z (B, latent) and interpolation weights α (B,) explicitly, so a run can replay the random
    numbers of another implementation.
    """

    def __init__(self, counts: Sequence[int], lattice, w_dist: float, layout: str = "conv", latent_dim: int = 64,
                 gen_channels: int = 128, bn_eps: float = 0.8, n_neighbors: int = 6, gp_weight: float = 10.0,
                 lr: float = 5e-5, betas=(0.5, 0.999)):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        torch = _torch()
        self.counts, self.layout, self.w_dist = tuple(int(c) for c in counts), layout, float(w_dist)
        self.n_atoms, self.latent_dim, self.channels = sum(self.counts), latent_dim, gen_channels
        self.n_neighbors, self.gp_weight = n_neighbors, gp_weight
        self.lattice = torch.tensor(np.asarray(lattice), dtype=torch.float32)
        self.images = torch.tensor(list(itertools.product((0, -1, 1), repeat=3)), dtype=torch.float32)
        self.generator = _build_generator(self.n_atoms, latent_dim, gen_channels, bn_eps, layout)
        self.critics = {"coord": _build_critic(self.counts, 3, layout),
                        "dist": _build_critic(self.counts, n_neighbors, layout)}
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr, betas=betas)
        self.critic_opts = {name: torch.optim.Adam(net.parameters(), lr, betas=betas)
                            for name, net in self.critics.items()}

    # ------------------------------------------------------------------------------------ features
    def distances(self, frac):
        """(B, N, 3) fractional → (B, N, K) Å: K nearest of the 27-image cloud, ascending, self dropped."""
        torch = _torch()
        cart = frac @ self.lattice
        cloud = (frac[:, None] + self.images[None, :, None]).reshape(frac.shape[0], -1, 3) @ self.lattice
        # direct differences, not the |x|² + |y|² − 2x·y expansion (which leaves ~1e-3 Å self distances
        # and inaccurate short distances when the generator puts atoms close together)
        squared = torch.cdist(cart, cloud, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        return torch.sqrt(torch.topk(squared, self.n_neighbors + 1, dim=-1, largest=False).values[..., 1:])

    def penalty(self, name: str, real, fake, alpha):
        """λ_GP · mean_b (‖∇ Σ outputs‖₂ − 1)² at α·real + (1 − α)·fake (α (B,), detached interpolates)."""
        torch = _torch()
        alpha = alpha.view(-1, 1, 1)
        x = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
        grad, = torch.autograd.grad(self.critics[name](x).sum(), x, create_graph=True)
        return self.gp_weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    # --------------------------------------------------------------------------------------- steps
    def critic_terms(self, real, real_dists, fake, alpha_coord, alpha_dist) -> dict:
        """Scores, penalties, loss L_D and the Wasserstein estimate for one batch (torch scalars)."""
        fake_dists = self.distances(fake)
        terms = {}
        for name, r, f, alpha in (("coord", real, fake, alpha_coord), ("dist", real_dists, fake_dists, alpha_dist)):
            terms[f"{name}_real"] = self.critics[name](r).mean()
            terms[f"{name}_fake"] = self.critics[name](f).mean()
            terms[f"{name}_penalty"] = self.penalty(name, r, f, alpha)
        terms["loss"] = (terms["coord_fake"] - terms["coord_real"] + terms["coord_penalty"]
                         + self.w_dist * (terms["dist_fake"] - terms["dist_real"] + terms["dist_penalty"]))
        terms["wasserstein"] = (terms["coord_real"] - terms["coord_fake"]
                                + self.w_dist * (terms["dist_real"] - terms["dist_fake"]))
        return terms

    def generator_loss(self, z):
        """L_G = −CD(G(z)) − λ·DD(dist(G(z))), generator in its current (train or eval) mode."""
        fake = self.generator(z)
        return -self.critics["coord"](fake).mean() - self.w_dist * self.critics["dist"](self.distances(fake)).mean()

    def critic_step(self, real, real_dists, z, alpha_coord, alpha_dist) -> dict:
        """One joint critic update on a real batch; the fake batch from G(z) in train mode (BN stats update)."""
        self.generator.train()
        fake = self.generator(z).detach()
        terms = self.critic_terms(real, real_dists, fake, alpha_coord, alpha_dist)
        for opt in self.critic_opts.values():
            opt.zero_grad()
        terms["loss"].backward()
        for opt in self.critic_opts.values():
            opt.step()
        return terms

    def generator_step(self, z):
        """One generator update against the current critics (train mode)."""
        self.generator.train()
        loss = self.generator_loss(z)
        self.gen_opt.zero_grad()
        loss.backward()
        self.gen_opt.step()
        return loss

    # ------------------------------------------------------------------------------ weight exchange
    def _pairs(self):
        """(net, dismax path, torch tensor, torch → dismax layout, dismax → torch layout) of every array."""
        g, conv = self.generator, self.layout == "conv"
        c = self.channels

        def linear(path, layer, net):
            return [(net, path + ("kernel",), layer.weight, lambda t: t.T, lambda a: a.T),
                    (net, path + ("bias",), layer.bias, lambda t: t, lambda a: a)]

        def pointwise(path, layer, net, transposed):
            if not conv:
                return linear(path, layer, net)
            if transposed:  # ConvTranspose weight (in, out, 1, 1)
                to_dismax, to_torch = (lambda t: t[:, :, 0, 0]), (lambda a: a[:, :, None, None])
            else:  # Conv weight (out, in, 1, w) with in = 1 or w = 1: dense kernel (in·w, out)
                shape = tuple(layer.weight.shape)
                to_dismax = lambda t: t.reshape(t.shape[0], -1).T  # noqa: E731
                to_torch = lambda a: a.T.reshape(shape)  # noqa: E731
            return [(net, path + ("kernel",), layer.weight, to_dismax, to_torch),
                    (net, path + ("bias",), layer.bias, lambda t: t, lambda a: a)]

        pairs = linear(("l1",), g.l1, "gen")
        if conv:  # ConvTranspose2d (C, 256, 1, 3) ↔ dismax (C, 3, 256)
            pairs.append(("gen", ("map1_kernel",), g.maps[0].weight, lambda t: t[:, :, 0, :].permute(0, 2, 1),
                          lambda a: a.transpose(0, 2, 1)[:, :, None, :]))
        else:  # Linear (256·3 out in (o, w) order, C) ↔ dismax (C, 3, 256)
            pairs.append(("gen", ("map1_kernel",), g.maps[0].weight,
                          lambda t: t.T.reshape(c, 256, 3).permute(0, 2, 1),
                          lambda a: a.transpose(0, 2, 1).reshape(c, 256 * 3).T))
        pairs.append(("gen", ("map1_bias",), g.maps[0].bias,
                      (lambda t: t) if conv else (lambda t: t.reshape(256, 3)[:, 0]),
                      (lambda a: a) if conv else (lambda a: np.repeat(a, 3))))
        for i in (1, 2):
            pairs += pointwise((f"map{i + 1}",), g.maps[i], "gen", transposed=True)
        pairs += pointwise(("map4",), g.out, "gen", transposed=True)
        for i, norm in enumerate(g.norms):
            pairs += [("gen", (f"bn{i + 1}", "scale"), norm.weight, lambda t: t, lambda a: a),
                      ("gen", (f"bn{i + 1}", "bias"), norm.bias, lambda t: t, lambda a: a),
                      ("stats", (f"bn{i + 1}", "mean"), norm.running_mean, lambda t: t, lambda a: a)]
        for name, critic in self.critics.items():
            atoms = [m for m in critic.atoms if not isinstance(m, _torch().nn.LeakyReLU)]
            for i, layer in enumerate(atoms):
                pairs += pointwise((name, "atoms", f"layer_{i}"), layer, "critic", transposed=False)
            heads = [m for m in critic.head if isinstance(m, _torch().nn.Linear)]
            for path, layer in zip(("fc_0", "fc_1", "out"), heads):
                pairs += linear((name, "head", path), layer, "critic")
        return pairs

    def load_dismax(self, gen_params, gen_stats, critic_params) -> None:
        """Copy dismax parameters (and BatchNorm running means/variances) into the torch networks."""
        torch = _torch()
        trees = {"gen": gen_params, "stats": gen_stats, "critic": critic_params}
        with torch.no_grad():
            for net, path, tensor, _, to_torch in self._pairs():
                tensor.copy_(torch.as_tensor(np.array(to_torch(np.asarray(_get(trees[net], path))))))
            for i, norm in enumerate(self.generator.norms):
                norm.running_var.copy_(torch.as_tensor(np.array(gen_stats[f"bn{i + 1}"]["var"])))

    def dismax_layout(self, gradients: bool = False) -> dict:
        """{"gen", "stats", "critic"} trees of numpy arrays in dismax's layout: the parameters, or (with
        ``gradients``) their ``.grad`` (running statistics and tensors without a gradient are omitted). Running variances are
        not exported: PyTorch keeps the unbiased batch variance, Flax the biased one (spec C11)."""
        trees = {"gen": {}, "stats": {}, "critic": {}}
        for net, path, tensor, to_dismax, _ in self._pairs():
            if gradients and (net == "stats" or tensor.grad is None):
                continue
            value = tensor.grad if gradients else tensor
            _set(trees[net], path, to_dismax(value.detach()).numpy().copy())
        return trees


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
