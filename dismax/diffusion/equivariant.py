"""E(3)-equivariant periodic denoiser (NequIP-style, e3nn-jax linen) on a fixed-K neighbour graph.

Each atom sees its K nearest periodic images (``dismax.geometry.knn``; static shapes, no neighbour-list
reallocation at high noise). Edge features are spherical harmonics of the bond direction up to ``l_max``
(bond angles enter through their tensor products) and a Bessel radial basis times a smooth cutoff
envelope. Node features start as scalars from the species and time embeddings. The output is one
Cartesian vector per atom, v (Å-like, rotates with the cell), converted to a normalised fractional score
s = v L⁻¹ V^{1/3}: a Cartesian displacement maps to a fractional one through L⁻¹, and V^{1/3} keeps the
output O(1) for any cell size. The fractional score is therefore invariant to rotating the cell.

Optional global context (``global_frequencies`` F > 0, the hybrid of spec §5.4 C): every atom also gets
the mean over all atoms of the CSPNet pair Fourier features, computed in O(N·F) from per-axis structure
factors (:func:`dismax.nn.periodic.mean_fourier_context`), as extra input scalars, and a linear head on the
final scalars adds a fractional score. Both are functions of fractional coordinates only, hence invariant to
rotating the cell, so the network stays rotation-equivariant. A local K-neighbour graph cannot tell where
the cell-wide lattice lies at intermediate noise; the Bragg phases relative to each atom can.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax.numpy as jnp

from dismax.geometry import knn
from dismax.nn.equivariant import Interaction
from dismax.nn.periodic import mean_fourier_context, sinusoidal_time_embedding
from dismax.nn.radial import bessel_basis, polynomial_envelope


class EquivariantDenoiser(nn.Module):
    """(frac (N,3), lattice (3,3), species (N,), t ()) → normalised fractional score (N, 3). Built by
    ``denoisers.build_denoiser``; the hyperparameters' defaults live in ``DenoiserConfig`` only."""

    hidden_irreps: str
    n_layers: int
    l_max: int
    n_neighbors: int
    n_images: int
    cutoff: float
    n_radial: int
    radial_hidden: int
    time_dim: int
    max_atomic_num: int
    global_frequencies: int

    @nn.compact
    def __call__(self, frac, lattice, species, t):
        n_atoms = frac.shape[0]
        neighbors = knn(frac[None], lattice[None], self.n_neighbors, self.n_images)
        vectors, indices, distances = neighbors.vectors[0], neighbors.indices[0], neighbors.distances[0]
        sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(self.l_max), vectors, normalize=True,
                                      normalization="component")
        radial = bessel_basis(distances, self.n_radial, self.cutoff) * polynomial_envelope(
            distances, self.cutoff)[..., None]

        n_scalars = e3nn.Irreps(self.hidden_irreps).filter(keep=["0e"]).num_irreps
        node = nn.Embed(self.max_atomic_num + 1, n_scalars, name="species_embedding")(species)
        time = jnp.broadcast_to(sinusoidal_time_embedding(t, self.time_dim), (n_atoms, self.time_dim))
        inputs = [node, time]
        if self.global_frequencies:
            inputs.append(mean_fourier_context(frac, self.global_frequencies))
        scalars = nn.Dense(n_scalars, name="node_time_mix")(jnp.concatenate(inputs, axis=-1))
        h = e3nn.IrrepsArray(f"{n_scalars}x0e", scalars)
        for i in range(self.n_layers):
            h = Interaction(self.hidden_irreps, self.radial_hidden, name=f"interaction_{i}")(h, sh, radial, indices)
        cartesian = e3nn.flax.Linear("1x1o", name="vector_head")(h).array
        volume = jnp.abs(jnp.linalg.det(lattice))
        score = cartesian @ jnp.linalg.inv(lattice) * jnp.cbrt(volume)
        if self.global_frequencies:
            score = score + nn.Dense(3, use_bias=False, name="fractional_head")(h.filter(keep="0e").array)
        return score
