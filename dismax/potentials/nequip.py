"""A NequIP-class E(3)-equivariant interatomic potential (Flax + e3nn-jax) and its evaluation on Crystals.

Architecture (Batzner et al., Nat. Commun. 13, 2453 (2022)): every atom i sees the atoms j of a dense
neighbour table (N, K) (index j and integer image, from :func:`dismax.geometry.knn`); an edge carries
spherical harmonics Y^l (l ≤ ``l_max``) of the bond direction and a Bessel radial basis (``n_radial``
functions) whose MLP weights are multiplied by the smooth polynomial cutoff envelope, so every edge fades
to exactly zero (with zero slope) at ``cutoff``. Node features start as a species embedding; each of the
``n_layers`` interactions is a tensor-product convolution (aggregated by a plain sum over the K slots,
divided by sqrt(``avg_neighbors``) — a constant, so the energy does not depend on K), a linear mixing,
a species-indexed linear self-connection and a gated nonlinearity. A linear head gives one scalar per
atom; the atomic energy is ``scale · output + shift[species]`` where the per-species reference energies
``shift`` come from a least-squares fit of the training energies to the composition and ``scale`` is
the training forces' RMS. E = Σ atomic energies, forces F = −∂E/∂r computed through the fractional
coordinates (as in the relaxation engine): F = −(∂E/∂s) L⁻ᵀ for s = r L⁻¹ at a fixed lattice L.

Neighbour tables have a fixed capacity K; a table whose farthest slot is still inside the cutoff may have
dropped atoms (an *overflow*) and is rebuilt with a larger K, so no result uses a truncated table. Cells
narrower than twice the cutoff use explicit periodic images (``n_images`` from
:func:`dismax.geometry.images_needed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError
from dismax.geometry import images_needed, knn
from dismax.nn.equivariant import RadialMLP, gated_irreps
from dismax.nn.radial import bessel_basis, polynomial_envelope
from dismax.structures import Crystals

MAX_ATOMIC_NUMBER = 118


@dataclass(frozen=True)
class NetworkConfig:
    """Hyperparameters of :class:`PotentialNetwork` (lengths in Å).

    cutoff: interaction range; n_layers: interaction blocks (2–4); hidden_irreps: node features;
    l_max: spherical harmonics order of the edges; n_radial: Bessel functions; radial_hidden: width of the
    radial MLP; envelope_p: polynomial envelope exponent; avg_neighbors: normalisation of the neighbour
    sum (set from the training data when None).
    """

    cutoff: float = 5.0
    n_layers: int = 3
    hidden_irreps: str = "32x0e+16x1o+16x1e+8x2e+8x2o"
    l_max: int = 2
    n_radial: int = 8
    radial_hidden: int = 64
    envelope_p: int = 6
    avg_neighbors: float | None = None


class Convolution(nn.Module):
    """One NequIP interaction: h (N, ·) → h' (N, hidden_irreps) on a dense (N, K) neighbour table.

    sh: IrrepsArray (N, K, ·) edge spherical harmonics; radial: (N, K, n_radial) Bessel basis;
    envelope: (N, K) smooth cutoff times the edge mask (0 on padding slots); species_index: (N,) int.
    """

    hidden_irreps: str
    radial_hidden: int
    avg_neighbors: float
    n_species: int

    @nn.compact
    def __call__(self, h, sh, radial, envelope, neighbours, species_index):
        pre_gate = gated_irreps(self.hidden_irreps)
        h_in = e3nn.flax.Linear(h.irreps, name="linear_in")(h)
        messages = e3nn.tensor_product(h_in[neighbours], sh, filter_ir_out=pre_gate)
        weights = RadialMLP(self.radial_hidden, messages.irreps.num_irreps)(radial) * envelope[..., None]
        aggregated = e3nn.sum(messages * weights, axis=1) / jnp.sqrt(self.avg_neighbors)
        update = e3nn.flax.Linear(pre_gate, force_irreps_out=True, name="linear_out")(aggregated)
        skip = e3nn.flax.Linear(pre_gate, num_indexed_weights=self.n_species, force_irreps_out=True,
                                name="self_connection")(species_index, h)
        return e3nn.gate(update + skip)


class PotentialNetwork(nn.Module):
    """Dense-table NequIP: (vectors (N, K, 3) Å, neighbours (N, K), edge_mask (N, K), species_index (N,))
    → one unscaled scalar per atom (N,). Masked slots (padding, beyond the cutoff) contribute nothing."""

    config: NetworkConfig
    n_species: int

    @nn.compact
    def __call__(self, vectors, neighbours, edge_mask, species_index):
        c = self.config
        r2 = jnp.sum(vectors**2, axis=-1)
        edge_mask = edge_mask & (r2 < c.cutoff**2) & (r2 > 0.0)
        # masked slots get a unit vector so the norm and the harmonics keep finite gradients
        safe = jnp.where(edge_mask[..., None], vectors, jnp.array([1.0, 0.0, 0.0], vectors.dtype))
        r = jnp.sqrt(jnp.sum(safe**2, axis=-1))
        sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(c.l_max), safe, normalize=True,
                                      normalization="component")
        radial = bessel_basis(r, c.n_radial, c.cutoff)
        envelope = jnp.where(edge_mask, polynomial_envelope(r, c.cutoff, c.envelope_p), 0.0)
        n_scalars = e3nn.Irreps(c.hidden_irreps).filter(keep=["0e"]).num_irreps
        embedding = nn.Embed(self.n_species, n_scalars, name="species_embedding")(species_index)
        h = e3nn.IrrepsArray(f"{n_scalars}x0e", embedding)
        for i in range(c.n_layers):
            h = Convolution(c.hidden_irreps, c.radial_hidden, c.avg_neighbors or 1.0, self.n_species,
                            name=f"interaction_{i}")(h, sh, radial, envelope, neighbours, species_index)
        h = e3nn.flax.Linear(f"{max(n_scalars // 2, 1)}x0e", name="head_hidden")(h.filter(keep=["0e"]))
        h = e3nn.IrrepsArray(h.irreps, nn.silu(h.array))
        return e3nn.flax.Linear("0e", name="head")(h).array[..., 0]


# --------------------------------------------------------------------------------- neighbour tables
def table_vectors(frac, lattice, indices, images):
    """Cartesian vectors (N, K, 3) in Å from atom i to slot (j, image) of one structure: differentiable in
    ``frac`` (N, 3) and ``lattice`` (3, 3); padding slots (index N) give the vector to atom N−1 (masked)."""
    neighbour_frac = jnp.take(frac, indices, axis=0, mode="clip") + images.astype(frac.dtype)
    return (neighbour_frac - frac[:, None, :]) @ lattice


class Tables(NamedTuple):
    """Neighbour tables holding every atom within the cutoff of every atom of a batch (host arrays):
    indices (B, N, K) and integer images (B, N, K, 3); built by :func:`neighbour_tables`."""

    indices: np.ndarray
    images: np.ndarray


def table_size_estimate(crystals: Crystals, cutoff: float, margin: float = 1.2,
                        atom_mask: np.ndarray | None = None) -> int:
    """A first capacity K from the densest structure: atoms expected in the cutoff sphere × ``margin``
    (only the real atoms of ``atom_mask`` (B, N) count)."""
    c = crystals.to_numpy()
    volume = np.abs(np.linalg.det(np.asarray(c.lattice, float)))
    counts = c.n_atoms if atom_mask is None else np.asarray(atom_mask).sum(axis=1)
    density = np.max(counts / volume)
    expected = density * 4.0 / 3.0 * np.pi * cutoff**3
    return int(np.ceil(expected * margin / 8.0) * 8) + 8


def neighbour_tables(crystals: Crystals, cutoff: float, capacity: int | None = None,
                     atom_mask: np.ndarray | None = None) -> Tables:
    """Tables of all atoms within ``cutoff`` Å of every atom (self excluded, own images included).

    Starts from ``capacity`` slots (default :func:`table_size_estimate`) and grows it by 1.5× while the
    farthest slot of some atom is still inside the cutoff (the table may have dropped atoms), so the result
    is never truncated. Narrow cells get the image range that makes the search complete. ``atom_mask``
    (B, N) marks the real atoms of padded structures (:meth:`StructureSet.padded`): padding atoms are
    nobody's neighbour and have no neighbours (their slots hold the padding index N), so a padded
    structure's real rows list the same (j, image) pairs as the unpadded structure.
    """
    c = crystals.to_numpy()
    real = np.ones(c.species.shape, bool) if atom_mask is None else np.asarray(atom_mask, bool)
    lattice = np.asarray(c.lattice, np.float64)
    n_images = images_needed(lattice, cutoff)
    candidates = c.n_atoms * int(np.prod([2 * n + 1 for n in n_images])) - 1
    capacity = min(capacity or table_size_estimate(c, cutoff, atom_mask=real), candidates)
    frac, lattice_j = jnp.asarray(c.frac, jnp.float32), jnp.asarray(lattice, jnp.float32)
    while True:
        found = knn(frac, lattice_j, capacity, n_images, atom_mask=jnp.asarray(real))
        indices = np.asarray(found.indices)
        real_slot = np.take_along_axis(real[:, None, :], indices, axis=-1) & real[:, :, None]
        # knn fills a row with padding atoms only once its real candidates are used up: such a row is complete
        farthest = np.asarray(found.distances[..., -1])
        complete = (farthest > cutoff) | ~real_slot.all(axis=-1) | (capacity == candidates)
        if np.all(complete):
            return Tables(np.where(real_slot, indices, c.n_atoms),
                          np.where(real_slot[..., None], np.asarray(found.images), 0))
        capacity = min(candidates, -(-int(capacity * 1.5) // 8) * 8)


def initial_params(network: PotentialNetwork, key: jax.Array):
    """Fresh parameters of ``network`` (their shapes do not depend on the atom count or the table size)."""
    return _initial_params(network, key)


@partial(jax.jit, static_argnums=0)
def _initial_params(network: PotentialNetwork, key: jax.Array):
    """One compiled initialisation per network configuration (equal modules share it: initialising the
    equivariant layers compiles for seconds)."""
    vectors = jax.random.normal(key, (2, 3, 3))
    neighbours = jnp.array([[1, 2, 2], [0, 2, 2]])
    return network.init(key, vectors, neighbours, jnp.ones((2, 3), bool), jnp.zeros(2, jnp.int32))


# --------------------------------------------------------------------------------------- the potential
def real_atoms(species):
    """(..., N) True for real atoms: padded structures (:meth:`StructureSet.padded`) use species 0."""
    return species > 0


class LearnedPotential:
    """A trained :class:`PotentialNetwork` with its species, reference energies and scale.

    Follows the potential protocol of :mod:`dismax.potentials` (``cutoff``, ``name``, ``check_species``)
    with ``energy_from_table(dR (N, K, 3), indices (N, K), species (N,))`` in place of SW's
    ``energy_from_displacements``, because message passing needs the identity of each neighbour. Hashes by
    identity, so jitted programs keyed on it compile once per loaded potential.
    """

    def __init__(self, config: NetworkConfig, species: tuple[int, ...], params, shift, scale: float,
                 name: str = "potential"):
        self.config = config
        self.species = tuple(int(z) for z in species)
        self.network = PotentialNetwork(config, len(self.species))
        self.params = params
        self.shift = jnp.asarray(shift, jnp.float32)
        self.scale = float(scale)
        self.name = name
        lookup = np.zeros(MAX_ATOMIC_NUMBER + 1, np.int32)
        lookup[list(self.species)] = np.arange(len(self.species))
        self.species_lookup = jnp.asarray(lookup)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    def check_species(self, species: np.ndarray, what: str = "structure", atom_mask: np.ndarray | None = None) -> None:
        """Raise DismaxInputError naming the first structure with an element the potential was not fitted on
        (only the real atoms of ``atom_mask`` (B, N) are checked)."""
        species = np.atleast_2d(np.asarray(species))
        unseen = ~np.isin(species, self.species)
        if atom_mask is not None:
            unseen &= np.atleast_2d(np.asarray(atom_mask, bool))
        if unseen.any():
            b = int(np.argwhere(unseen.any(axis=-1)).ravel()[0])
            z = int(species[b][unseen[b]][0])
            raise DismaxInputError(f"{what} {b} contains element Z={z}, which the potential '{self.name}' was not "
                                   f"trained on (it knows Z in {list(self.species)})")

    def atomic_energies(self, params, dR, indices, species):
        """Energies (N,) in eV of the atoms of one structure from its table vectors dR (N, K, 3) in Å,
        table indices (N, K) (index N = padding slot) and atomic numbers (N,). Padding atoms (species 0,
        :meth:`StructureSet.padded`) have zero energy and are nobody's neighbour."""
        index = self.species_lookup[species]
        real = real_atoms(species)
        mask = (indices < species.shape[0]) & jnp.take(real, indices, mode="fill", fill_value=False)
        out = self.network.apply(params, dR, indices, mask, index)
        return jnp.where(real, self.scale * out + self.shift[index], 0.0)

    def energy_from_table(self, dR, indices, species):
        """Total energy (eV) of one structure (see :meth:`atomic_energies`)."""
        return jnp.sum(self.atomic_energies(self.params, dR, indices, species))

    def energies_and_forces(self, crystals: Crystals, tables: Tables | None = None):
        """Energies (B,) in eV and Cartesian forces (B, N, 3) in eV/Å of a batch (NumPy float64 out)."""
        c = crystals.to_numpy()
        self.check_species(c.species)
        tables = tables or neighbour_tables(c, self.cutoff)
        e, f = _energies_forces(self, self.params, jnp.asarray(c.frac, jnp.float32),
                                jnp.asarray(c.lattice, jnp.float32), jnp.asarray(c.species, jnp.int32),
                                jnp.asarray(tables.indices), jnp.asarray(tables.images))
        return np.asarray(e, np.float64), np.asarray(f, np.float64)


def energy_and_forces_one(potential: LearnedPotential, params, frac, lattice, species, indices, images):
    """(E, F (N, 3)) of one structure by the fractional route: F = −(∂E/∂s) L⁻ᵀ at fixed lattice L."""

    def energy(frac):
        dR = table_vectors(frac, lattice, indices, images)
        return jnp.sum(potential.atomic_energies(params, dR, indices, species))

    e, gradient = jax.value_and_grad(energy)(frac)
    return e, -gradient @ jnp.linalg.inv(lattice).T


@partial(jax.jit, static_argnums=0)
def _energies_forces(potential, params, frac, lattice, species, indices, images):
    return jax.vmap(partial(energy_and_forces_one, potential, params))(frac, lattice, species, indices, images)
