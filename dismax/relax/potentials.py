"""Interatomic potentials for relaxation: a potential maps a batch of Crystals to energies.

A potential object provides

* ``potential(crystals) -> (B,)`` total energies in eV (host-level: builds exact neighbour tables),
* :func:`energies_and_forces` for energies and Cartesian forces (eV/Å) via ``jax.grad``,
* ``potential.energy_from_displacements(dR, mask)``: the pure-JAX energy of one structure from its
  neighbour displacement vectors, which the relaxation driver and the MD code call with jax-md
  neighbour lists.

Only the Stillinger–Weber potential for silicon is provided (PRB 31, 5262 (1985)), with the scaled
three-body strength used for amorphous Si (``three_body_strength=1.5``, Vink et al. 2001).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError
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
        rc = self.cutoff
        r2 = jnp.sum(dR**2, axis=-1)
        valid = mask & (r2 > 0.0)
        # Double-where keeps gradients finite for empty or out-of-range slots; the test is on r itself
        # because sqrt can round r2 < rc² up to exactly rc, where exp(σ/(r − rc)) has an infinite slope.
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        inside = valid & (r < rc)
        r = jnp.where(inside, r, 0.5 * rc)
        inv_gap = 1.0 / (r - rc)
        pair = self.A * (self.B * (self.sigma / r) ** self.p - 1.0) * jnp.exp(self.sigma * inv_gap)
        pair_energy = 0.5 * jnp.sum(jnp.where(inside, pair, 0.0))

        radial = jnp.where(inside, jnp.exp(self.gamma * self.sigma * inv_gap), 0.0)  # (N, K)
        unit = dR / r[..., None]
        cos = jnp.einsum("nja,nka->njk", unit, unit)
        k = dR.shape[1]
        distinct = ~jnp.eye(k, dtype=bool)
        angular = (cos + 1.0 / 3.0) ** 2 * radial[:, :, None] * radial[:, None, :]
        triple_energy = 0.5 * jnp.sum(jnp.where(distinct, angular, 0.0))
        return self.epsilon * (pair_energy + self.lam * self.three_body_strength * triple_energy)

    def __call__(self, crystals: Crystals) -> jax.Array:
        """Total energies (B,) in eV of a batch of structures."""
        return energies_and_forces(self, crystals)[0]


def original_sw() -> StillingerWeber:
    """Stillinger–Weber with the published parameters (diamond Si: −4.33652 eV/atom)."""
    return StillingerWeber()


def amorphous_sw() -> StillingerWeber:
    """Stillinger–Weber with the three-body term × 1.5 (λ_eff = 31.5), which gives tetrahedral a-Si."""
    return StillingerWeber(three_body_strength=1.5)


POTENTIALS = {"sw": original_sw, "sw_a_si": amorphous_sw}


def get_potential(name: str):
    """Potential by its CLI name (``sw``, ``sw_a_si``)."""
    if name not in POTENTIALS:
        raise DismaxInputError(f"unknown potential {name!r}; choose one of {sorted(POTENTIALS)}")
    return POTENTIALS[name]()


# ---------------------------------------------------------------------- host-level evaluation
def minimum_image_cutoff_check(lattice: np.ndarray, cutoff: float, what: str = "structure") -> None:
    """Raise if a cell is narrower than 2 × cutoff in some direction (minimum image would be wrong)."""
    lattice = np.asarray(lattice, float).reshape(-1, 3, 3)
    volume = np.abs(np.linalg.det(lattice))
    for b in range(lattice.shape[0]):
        cross = np.cross(lattice[b][[1, 2, 0]], lattice[b][[2, 0, 1]])
        widths = volume[b] / np.maximum(np.linalg.norm(cross, axis=-1), 1e-30)
        if not np.all(widths > 2.0 * cutoff):
            raise DismaxInputError(
                f"{what} {b}: cell width {widths.min():.3f} Å is below twice the interaction range "
                f"({2 * cutoff:.3f} Å); use a supercell"
            )


def neighbor_table(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> np.ndarray:
    """Minimum-image neighbour indices (N, K) within ``cutoff`` Å, padded with N (numpy)."""
    d = frac[None, :, :] - frac[:, None, :]
    d -= np.round(d)
    r = np.linalg.norm(d @ lattice, axis=-1)
    within = (r < cutoff) & ~np.eye(len(frac), dtype=bool)
    k = max(int(within.sum(axis=1).max()), 1)
    order = np.argsort(~within, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(within, order, axis=1), order, len(frac))


@partial(jax.jit, static_argnums=0)
def _energy_and_forces_one(potential, cart, lattice, idx):
    def energy(cart):
        inv = jnp.linalg.inv(lattice)
        frac = cart @ inv
        d = jnp.take(frac, idx, axis=0, mode="clip") - frac[:, None, :]  # padding slots masked below
        d = d - jnp.round(d)
        return potential.energy_from_displacements(d @ lattice, idx < cart.shape[0])

    e, g = jax.value_and_grad(energy)(cart)
    return e, -g


def energies_and_forces(potential, crystals: Crystals) -> tuple[jax.Array, jax.Array]:
    """Energies (B,) in eV and Cartesian forces (B, N, 3) in eV/Å (forces = −∂E/∂r by ``jax.grad``)."""
    c = crystals.to_numpy()
    potential.check_species(c.species)
    minimum_image_cutoff_check(c.lattice, potential.cutoff)
    energies, forces = [], []
    for b in range(c.batch_size):
        idx = neighbor_table(c.frac[b], c.lattice[b], potential.cutoff)
        cart = c.frac[b] @ c.lattice[b]
        # float32 unless x64 is enabled (then float64, e.g. for finite-difference checks)
        e, f = _energy_and_forces_one(potential, jnp.asarray(cart), jnp.asarray(c.lattice[b]), jnp.asarray(idx))
        energies.append(e)
        forces.append(f)
    return jnp.stack(energies), jnp.stack(forces)
