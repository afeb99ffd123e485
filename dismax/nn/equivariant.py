"""e3nn-jax (linen) blocks for message passing on a dense fixed-K neighbour graph.

Neighbour arrays have static shapes: ``neighbours`` (N, K) indices and ``vectors`` (N, K, 3) Cartesian
displacements r_j + image - r_i in Å, so aggregation is a plain sum over the K axis (no scatter).
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp


def gated_irreps(hidden: e3nn.Irreps) -> e3nn.Irreps:
    """Irreps before an ``e3nn.gate``: the hidden irreps plus one extra scalar gate per non-scalar irrep."""
    hidden = e3nn.Irreps(hidden)
    n_gates = sum(mul for mul, ir in hidden if ir.l > 0)
    scalars = hidden.filter(keep=["0e"])
    return (scalars + e3nn.Irreps(f"{n_gates}x0e") + hidden.filter(drop=["0e"])).simplify() \
        if n_gates else scalars


class RadialMLP(nn.Module):
    """Small MLP from radial basis values (..., n_basis) to per-path weights (..., n_out)."""

    hidden: int
    n_out: int

    @nn.compact
    def __call__(self, radial):
        x = nn.silu(nn.Dense(self.hidden)(radial))
        x = nn.silu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.n_out, use_bias=False)(x)


class Interaction(nn.Module):
    """NequIP-style convolution + gated nonlinearity with a linear self-connection.

    h: IrrepsArray (N, ·); sh: IrrepsArray (N, K, ·) spherical harmonics of edge directions;
    radial: (N, K, n_basis) radial features already multiplied by a cutoff envelope;
    neighbours: (N, K) int. Returns IrrepsArray (N, hidden_irreps).
    """

    hidden_irreps: str
    radial_hidden: int = 64

    @nn.compact
    def __call__(self, h, sh, radial, neighbours):
        target = e3nn.Irreps(self.hidden_irreps)
        pre_gate = gated_irreps(target)
        neighbour_h = h[neighbours]
        messages = e3nn.tensor_product(neighbour_h, sh, filter_ir_out=pre_gate)
        weights = RadialMLP(self.radial_hidden, messages.irreps.num_irreps)(radial)
        messages = messages * weights
        aggregated = e3nn.sum(messages, axis=1) / jnp.sqrt(neighbours.shape[1])
        update = e3nn.flax.Linear(pre_gate, force_irreps_out=True, name="message_linear")(aggregated)
        skip = e3nn.flax.Linear(pre_gate, force_irreps_out=True, name="self_connection")(h)
        return e3nn.gate(update + skip)

