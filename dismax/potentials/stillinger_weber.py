"""Stillinger–Weber silicon (PRB 31, 5262 (1985)) and the scaled three-body variant for amorphous Si.

``three_body_strength=1.5`` is the a-Si variant of the dataset spec (Vink et al. 2001). The potential
follows the protocol of :mod:`dismax.potentials`: ``cutoff``, ``check_species``,
``energy_from_displacements(dR, mask)`` and ``potential(crystals) -> (B,)`` energies in eV.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError
from dismax.potentials.evaluate import energies_and_forces
from dismax.structures import Crystals


@dataclass(frozen=True)
class StillingerWeber:
    """Stillinger–Weber silicon in eV and Å; ``three_body_strength`` multiplies λ.

    Energy: E = ½ Σ_i Σ_j φ2(r_ij) + ½ Σ_i Σ_{j≠k} φ3(r_ij, r_ik, θ_jik) with
    φ2 = εA(B(σ/r)^p − 1) exp(σ/(r − aσ)) and
    φ3 = ελ s (cos θ + 1/3)² exp(γσ/(r_ij − aσ)) exp(γσ/(r_ik − aσ)), both zero beyond r = aσ.
    """

    epsilon: float = 2.16826
    sigma: float = 2.0951
    A: float = 7.049556277
    B: float = 0.6022245584
    p: float = 4.0
    a: float = 1.8
    lam: float = 21.0
    gamma: float = 1.2
    three_body_strength: float = 1.0
    species: tuple[int, ...] = (14,)

    @property
    def cutoff(self) -> float:
        """Interaction range aσ in Å."""
        return self.a * self.sigma

    @property
    def name(self) -> str:
        return "sw" if self.three_body_strength == 1.0 else f"sw(three_body_strength={self.three_body_strength})"

    def check_species(self, species: np.ndarray) -> None:
        """Raise DismaxInputError naming the first structure with an unsupported element."""
        species = np.asarray(species)
        bad = ~np.isin(species, self.species)
        if bad.any():
            b = int(np.argwhere(bad.any(axis=-1)).ravel()[0]) if species.ndim == 2 else 0
            raise DismaxInputError(
                f"structure {b} contains element Z={int(species[bad][0])}; the {self.name} potential "
                f"supports only Z in {list(self.species)}"
            )

    def energy_from_displacements(self, dR: jax.Array, mask: jax.Array) -> jax.Array:
        """Total energy (eV) of one structure.

        dR (N, K, 3): Cartesian vectors from atom i to its K neighbour slots (r_j − r_i, Å);
        mask (N, K): True where the slot holds a real neighbour. Slots beyond the cutoff contribute 0.
        """
        return self.energy_from_components(dR[..., 0], dR[..., 1], dR[..., 2], mask)

    def energy_from_components(self, dx: jax.Array, dy: jax.Array, dz: jax.Array, mask: jax.Array) -> jax.Array:
        """:meth:`energy_from_displacements` from the Cartesian components (N, K) of dR: arrays contiguous
        over the slots, whose gradients XLA computes several times faster on CPU than through (N, K, 3)."""
        rc = self.cutoff
        r2 = dx * dx + dy * dy + dz * dz
        valid = mask & (r2 > 0.0)
        # Double-where keeps gradients finite for empty or out-of-range slots; the test is on r itself
        # because sqrt can round r2 < rc² up to exactly rc, where exp(σ/(r − rc)) has an infinite slope.
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        inside = valid & (r < rc)
        r = jnp.where(inside, r, 0.5 * rc)
        inv_gap = 1.0 / (r - rc)
        power = int(self.p) if float(self.p).is_integer() else self.p  # integer powers are multiplications
        pair = self.A * (self.B * (self.sigma / r) ** power - 1.0) * jnp.exp(self.sigma * inv_gap)
        pair_energy = 0.5 * jnp.sum(jnp.where(inside, pair, 0.0))

        radial = jnp.where(inside, jnp.exp(self.gamma * self.sigma * inv_gap), 0.0)  # (N, K)
        inv_r = 1.0 / r
        triple_energy = 0.5 * jnp.sum(_three_body_sums(radial, dx * inv_r, dy * inv_r, dz * inv_r))
        return self.epsilon * (pair_energy + self.lam * self.three_body_strength * triple_energy)

    def __call__(self, crystals: Crystals) -> jax.Array:
        """Total energies (B,) in eV of a batch of structures."""
        return energies_and_forces(self, crystals)[0]


def three_body_sums(radial: jax.Array, unit: jax.Array) -> jax.Array:
    """Σ_{j≠k} g_j g_k (cos θ_jik + 1/3)² per atom (N,) from per-pair terms, in O(N·K) instead of O(N·K²).

    radial (N, K): g_j (zero on empty slots); unit (N, K, 3): unit vectors u_j from atom i to its slots.
    With the 4-vectors w_j = (u_j, 1/√3), cos θ_jk + 1/3 = w_j·w_k, so the sum over all (j, k) factorises:
    Σ g_j g_k (w_j·w_k)² = ‖M‖²_F with the per-atom moment M = Σ_j g_j w_j w_jᵀ (4×4); the j = k terms
    g_j² |w_j|⁴ are subtracted.
    """
    return _three_body_sums(radial, unit[..., 0], unit[..., 1], unit[..., 2])


def _three_body_sums(g: jax.Array, ux: jax.Array, uy: jax.Array, uz: jax.Array) -> jax.Array:
    """:func:`three_body_sums` from the components (N, K) of the unit vectors: M is assembled from its
    blocks Σ g u uᵀ, Σ g u / √3 and Σ g / 3, each a sum over the slots of elementwise products (a batched
    4×4 matmul, or arrays with a trailing axis of 3, are several times slower on CPU)."""
    gx, gy, gz = g * ux, g * uy, g * uz

    def total(values):
        return jnp.sum(values, axis=-1)

    outer = (total(gx * ux) ** 2 + total(gy * uy) ** 2 + total(gz * uz) ** 2
             + 2.0 * (total(gx * uy) ** 2 + total(gx * uz) ** 2 + total(gy * uz) ** 2))
    vector = total(gx) ** 2 + total(gy) ** 2 + total(gz) ** 2
    moment_squared = outer + (2.0 / 3.0) * vector + total(g) ** 2 / 9.0
    return moment_squared - total((g * (ux * ux + uy * uy + uz * uz + 1.0 / 3.0)) ** 2)


def original_sw() -> StillingerWeber:
    """Stillinger–Weber with the published parameters (diamond Si: −4.33652 eV/atom)."""
    return StillingerWeber()


def amorphous_sw() -> StillingerWeber:
    """Stillinger–Weber with the three-body term × 1.5 (λ_eff = 31.5), which gives tetrahedral a-Si."""
    return StillingerWeber(three_body_strength=1.5)
