"""Host-level evaluation of any potential on a batch of Crystals: exact neighbour tables, energies, forces.

A potential provides ``cutoff`` (Å), ``check_species(species)`` and the pure-JAX
``energy_from_displacements(dR (N, K, 3), mask (N, K)) -> eV`` of one structure, where slots beyond the
cutoff contribute nothing. Minimum images come from :mod:`dismax.geometry`; cells narrower than twice the
cutoff are rejected (:func:`cell_width_problem`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError
from dismax.geometry import minimum_image, pairwise_minimum_image_distances, perpendicular_widths
from dismax.structures import Crystals


def cell_width_problem(lattice: np.ndarray, cutoff: float) -> str | None:
    """Why one cell (3, 3) cannot be used with minimum image at ``cutoff`` Å, or None if it can."""
    lattice = np.asarray(lattice, float)
    if not np.all(np.isfinite(lattice)):
        return "non-finite lattice"
    if abs(np.linalg.det(lattice)) < 1e-6:
        return "singular lattice"
    width = float(np.min(np.asarray(perpendicular_widths(lattice))))
    if width <= 2.0 * cutoff:
        return f"cell width {width:.3f} Å is below twice the interaction range ({2 * cutoff:.3f} Å)"
    return None


def minimum_image_cutoff_check(lattice: np.ndarray, cutoff: float, what: str = "structure") -> None:
    """Raise DismaxInputError naming the first cell narrower than 2 × cutoff (minimum image would be wrong)."""
    for b, cell in enumerate(np.asarray(lattice, float).reshape(-1, 3, 3)):
        problem = cell_width_problem(cell, cutoff)
        if problem:
            raise DismaxInputError(f"{what} {b}: {problem}; use a supercell")


def neighbor_table(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> np.ndarray:
    """Minimum-image neighbour indices (N, K) within ``cutoff`` Å of one structure, padded with N."""
    r = np.asarray(pairwise_minimum_image_distances(jnp.asarray(frac)[None], jnp.asarray(lattice)[None]))[0]
    within = (r < cutoff) & ~np.eye(len(frac), dtype=bool)
    k = max(int(within.sum(axis=1).max()), 1)
    order = np.argsort(~within, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(within, order, axis=1), order, len(frac))


@partial(jax.jit, static_argnums=0)
def _energy_and_forces_one(potential, cart, lattice, idx):
    def energy(cart):
        frac = cart @ jnp.linalg.inv(lattice)
        dfrac = jnp.take(frac, idx, axis=0, mode="clip") - frac[:, None, :]  # padding slots masked below
        return potential.energy_from_displacements(minimum_image(dfrac, lattice), idx < cart.shape[0])

    e, g = jax.value_and_grad(energy)(cart)
    return e, -g


def energies_and_forces(potential, crystals: Crystals) -> tuple[jax.Array, jax.Array]:
    """Energies (B,) in eV and Cartesian forces (B, N, 3) in eV/Å (forces = −∂E/∂r by ``jax.grad``).
    A potential with its own evaluation (a fitted one: neighbour tables with images) uses it."""
    if hasattr(potential, "energies_and_forces"):
        return potential.energies_and_forces(crystals)
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
