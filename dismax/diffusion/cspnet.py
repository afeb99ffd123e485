"""CSPNet (DiffCSP's periodic denoiser) for one crystal, written densely over all N × N atom pairs.

Edge input for the pair (i, j), self-pairs included, is [h_i, h_j, Gram(L Lᵀ) (9), Fourier(d_ij) (6F)]
with d_ij = (f_j - f_i) mod 1. The first edge linear layer is evaluated in factorised form
W_i h_i + W_j h_j + W_g g + W_f φ(d_ij) + b — the same function as the concatenated layer, but the node
parts are computed per node and broadcast, so no (N, N, 2H + 9 + 6F) tensor is built. φ(d) is built once
(N, N, 6F) and projected in each layer. Aggregation is the mean over all j (DiffCSP `fc` graph).
The coordinate head (no bias) returns the normalised fractional score (N, 3). With ``lattice_head`` (lattice
diffusion only) the network also returns DiffCSP's lattice output M·L, M = Linear(H → 9, no bias) of the
mean-pooled node features reshaped to (3, 3) and L the (noisy) input lattice: the predicted lattice noise ε.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dismax.nn.periodic import fractional_fourier_features, sinusoidal_time_embedding


class CSPLayer(nn.Module):
    """One pre-LayerNorm CSPNet layer: edge MLP, mean aggregation, node MLP, residual."""

    hidden: int

    @nn.compact
    def __call__(self, h, fourier, gram):
        """h (N, H), fourier (N, N, 6F), gram (9,) → (N, H)."""
        x = nn.LayerNorm(name="norm")(h)
        edge = (nn.Dense(self.hidden, name="edge_in_i")(x)[:, None, :]
                + nn.Dense(self.hidden, use_bias=False, name="edge_in_j")(x)[None, :, :]
                + nn.Dense(self.hidden, use_bias=False, name="edge_in_gram")(gram)
                + nn.Dense(self.hidden, use_bias=False, name="edge_in_fourier")(fourier))
        edge = nn.silu(edge)
        edge = nn.silu(nn.Dense(self.hidden, name="edge_out")(edge))
        aggregated = jnp.mean(edge, axis=1)
        node = nn.silu(nn.Dense(self.hidden, name="node_in")(jnp.concatenate([x, aggregated], axis=-1)))
        node = nn.silu(nn.Dense(self.hidden, name="node_out")(node))
        return h + node


class CSPNet(nn.Module):
    """DiffCSP denoiser: (frac (N,3), lattice (3,3), species (N,), t ()) → normalised score (N, 3), or
    (score (N, 3), lattice noise (3, 3)) with ``lattice_head``. Built by ``denoisers.build_denoiser``; the
    hyperparameters' defaults live in ``DenoiserConfig`` only."""

    hidden: int
    n_layers: int
    n_freq: int
    time_dim: int
    max_atomic_num: int
    remat: bool
    lattice_head: bool = False

    @nn.compact
    def __call__(self, frac, lattice, species, t):
        n_atoms = frac.shape[0]
        node = nn.Embed(self.max_atomic_num + 1, self.hidden, name="species_embedding")(species)
        time = jnp.broadcast_to(sinusoidal_time_embedding(t, self.time_dim), (n_atoms, self.time_dim))
        h = nn.Dense(self.hidden, name="node_time_mix")(jnp.concatenate([node, time], axis=-1))
        diff = jnp.mod(frac[None, :, :] - frac[:, None, :], 1.0)
        fourier = fractional_fourier_features(diff, self.n_freq)
        gram = (lattice @ lattice.T).reshape(9)
        layer_cls = nn.remat(CSPLayer) if self.remat else CSPLayer
        for i in range(self.n_layers):
            h = layer_cls(self.hidden, name=f"layer_{i}")(h, fourier, gram)
        h = nn.LayerNorm(name="final_norm")(h)
        coord = nn.Dense(3, use_bias=False, name="coord_head")(h)
        if not self.lattice_head:
            return coord
        matrix = nn.Dense(9, use_bias=False, name="lattice_head")(jnp.mean(h, axis=0)).reshape(3, 3)
        return coord, matrix @ lattice
