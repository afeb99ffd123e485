"""The E(3)-equivariant backbone of the masked-denoising models (Liu et al.; spec ``ssl_gan.md`` §2).

One structure per call (vmap over a batch): fractional coordinates (N, 3), lattice rows (3, 3) in Å,
species (N,) atomic numbers with 0 = the mask token (or (N, 119) species probabilities, the soft species
of the GAN's differentiable path), and an atom mask (N,) for padded structures. Every atom sees its
``n_neighbors`` nearest periodic neighbours (:func:`dismax.geometry.knn`, padding never chosen before a
real atom); edges beyond ``cutoff`` or touching padding carry a zero envelope. The interaction blocks are
the NequIP convolutions of :mod:`dismax.potentials.nequip` (spherical harmonics ⊗ features, Bessel radial
MLP × polynomial envelope, gated nonlinearity), so padding atoms never send messages to real ones.

Heads (the reference's EquiformerV2 node block and force head):
- atom heads (``n_outputs = 0``): 118 species logits per atom (class c ↔ Z = c + 1) from the invariant
  scalars, and one Cartesian vector per atom in Å (the predicted positional noise) from the 1o features,
  so the vector rotates with the structure and the logits do not;
- a structure head (``n_outputs > 0``): the mean over real atoms of per-atom scalars, then a linear map to
  ``n_outputs`` values (the discriminator's 2 classes or critic score, a property, a stability class).

With ``composition_context`` the scalar heads also see the structure's visible composition (the fraction of
each species among the real, unmasked atoms; masked atoms and padding count for nothing) through a linear map
added to the head's hidden layer: a masked atom's local environment alone cannot tell which of the species
present it is when the message passing has a short range, the composition can. It is invariant, so the
logits stay invariant and the noise head is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from dismax.geometry import knn
from dismax.nn.radial import bessel_basis, polynomial_envelope
from dismax.potentials.nequip import MAX_ATOMIC_NUMBER, Convolution

N_SPECIES_CLASSES = MAX_ATOMIC_NUMBER  # 118 logits: class c is atomic number c + 1
N_EMBEDDINGS = MAX_ATOMIC_NUMBER + 1   # 119 embeddings: index 0 is the mask token
MASK_TOKEN = 0


@dataclass(frozen=True)
class BackboneConfig:
    """Hyperparameters (lengths in Å). n_neighbors: fixed neighbour slots per atom; n_images: periodic image
    range of the neighbour search (2 for cells narrower than about the cutoff); avg_neighbors: constant
    normalisation of the neighbour sum; head_hidden: width of the scalar heads; composition_context: the
    heads see the visible composition (module docstring)."""

    cutoff: float = 5.0
    n_neighbors: int = 24
    n_images: int = 1
    n_layers: int = 3
    hidden_irreps: str = "32x0e+16x1o+8x2e"
    l_max: int = 2
    n_radial: int = 8
    radial_hidden: int = 32
    avg_neighbors: float = 12.0
    head_hidden: int = 64
    composition_context: bool = False


def visible_composition(species, atom_mask):
    """(118,) fraction of each species (class c ↔ Z = c + 1) among the real atoms that are not masked;
    ``species`` ints (N,) or probabilities (N, 119) whose column 0 is the mask token. Zeros if none is visible."""
    probabilities = species if species.ndim == 2 else jax.nn.one_hot(species, N_EMBEDDINGS)
    counts = jnp.sum(probabilities[:, 1:] * atom_mask[:, None], axis=0)
    return counts / jnp.maximum(jnp.sum(counts), 1.0)


class Backbone(nn.Module):
    """(frac (N,3), lattice (3,3), species (N,) int or (N,119) probabilities, atom_mask (N,) bool) →
    (logits (N,118), noise (N,3) Å) with ``n_outputs = 0``, else (n_outputs,) per structure."""

    config: BackboneConfig
    n_outputs: int = 0

    @nn.compact
    def __call__(self, frac, lattice, species, atom_mask):
        c = self.config
        found = knn(frac[None], lattice[None], c.n_neighbors, c.n_images, atom_mask[None])
        vectors, indices, distances = found.vectors[0], found.indices[0], found.distances[0]
        edge_mask = atom_mask[:, None] & atom_mask[indices] & (distances < c.cutoff)
        sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(c.l_max), vectors, normalize=True,
                                      normalization="component")
        radial = bessel_basis(distances, c.n_radial, c.cutoff)
        envelope = jnp.where(edge_mask, polynomial_envelope(distances, c.cutoff), 0.0)

        n_scalars = e3nn.Irreps(c.hidden_irreps).filter(keep=["0e"]).num_irreps
        embed = nn.Embed(N_EMBEDDINGS, n_scalars, name="species_embedding")
        node = species @ embed.embedding if species.ndim == 2 else embed(species)
        h = e3nn.IrrepsArray(f"{n_scalars}x0e", node)
        # one self-connection for every species: the mask token must not get weights of its own
        self_index = jnp.zeros(frac.shape[0], jnp.int32)
        for i in range(c.n_layers):
            h = Convolution(c.hidden_irreps, c.radial_hidden, c.avg_neighbors, 1, name=f"interaction_{i}")(
                h, sh, radial, envelope, indices, self_index)
        hidden = nn.Dense(c.head_hidden, name="head_hidden")(h.filter(keep=["0e"]).array)
        if c.composition_context:
            hidden = hidden + nn.Dense(c.head_hidden, use_bias=False, name="composition_context")(
                visible_composition(species, atom_mask))
        scalars = nn.silu(hidden)
        if self.n_outputs:
            weights = atom_mask.astype(scalars.dtype)[:, None]
            pooled = jnp.sum(scalars * weights, axis=0) / jnp.maximum(jnp.sum(weights), 1.0)
            return nn.Dense(self.n_outputs, name="structure_head")(pooled)
        logits = nn.Dense(N_SPECIES_CLASSES, name="species_head")(scalars)
        noise = e3nn.flax.Linear("1x1o", name="noise_head")(h).array
        return logits, noise * atom_mask[:, None]
