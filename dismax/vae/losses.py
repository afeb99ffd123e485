"""Dis-GEN losses: KL (normalised by the latent size) + seven weighted reconstruction terms.

Each term is computed per structure (summed over the 9 site rows for site terms) and averaged over
the batch. Default weights are the paper's Table 4 (element 2000); the released run used element 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from dismax.geometry import wrap_centered
from dismax.vae import representation as rep


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; `lattice_loss` 'mse' (released code) or 'mae' (paper's wording);
    `periodic_xyz` uses the minimum-image coordinate difference (off = reference behaviour)."""

    kl: float = 1.0
    element: float = 2000.0
    letter: float = 1.0
    multiplicity: float = 1.0
    xyz: float = 1.0
    spacegroup: float = 10.0
    lattice: float = 3.0
    disorder: float = 0.1
    lattice_loss: str = "mse"
    periodic_xyz: bool = False


TERMS = ("kl", "element", "letter", "multiplicity", "xyz", "spacegroup", "lattice", "disorder")


def loss_terms(outputs: dict, sites, lattice_scaled, spacegroup, weights: LossWeights, mask=None) -> dict:
    """Unweighted per-term losses (scalars), batch-averaged.

    sites (B, 9, 183) targets, lattice_scaled (B, 6) standardised, spacegroup (B,) 1-230; optional mask (B,)
    (1 = real structure, 0 = padding of a fixed-size evaluation batch).
    """
    mean, log_var = outputs["mean"], outputs["log_var"]
    kl = -0.5 * jnp.mean(1.0 + log_var - mean**2 - jnp.exp(log_var), axis=-1)
    probs = jax.nn.softmax(outputs["element_logits"], axis=-1)
    element = jnp.sum(jnp.mean((probs - sites[..., rep.ELEMENTS]) ** 2, axis=-1), axis=-1)
    letter = jnp.sum(optax.softmax_cross_entropy(outputs["letter_logits"], sites[..., rep.LETTER]), axis=-1)
    multiplicity = jnp.sum(
        optax.softmax_cross_entropy(outputs["multiplicity_logits"], sites[..., rep.MULTIPLICITY]), axis=-1)
    difference = outputs["xyz"] - sites[..., rep.XYZ]
    if weights.periodic_xyz:
        difference = wrap_centered(difference)
    xyz = jnp.sum(jnp.mean(difference**2, axis=-1), axis=-1)
    disorder = jnp.sum(optax.sigmoid_binary_cross_entropy(outputs["disorder_logits"], sites[..., rep.DISORDER]),
                       axis=-1)
    spacegroup_loss = optax.softmax_cross_entropy_with_integer_labels(outputs["spacegroup_logits"], spacegroup - 1)
    lattice_error = outputs["lattice"] - lattice_scaled
    if weights.lattice_loss == "mae":
        lattice = jnp.sum(jnp.abs(lattice_error), axis=-1)
    elif weights.lattice_loss == "mse":
        lattice = jnp.sum(lattice_error**2, axis=-1)
    else:
        raise ValueError(f"lattice_loss must be 'mse' or 'mae', got {weights.lattice_loss!r}")
    terms = dict(kl=kl, element=element, letter=letter, multiplicity=multiplicity, xyz=xyz,
                 spacegroup=spacegroup_loss, lattice=lattice, disorder=disorder)
    if mask is None:
        return {name: jnp.mean(value) for name, value in terms.items()}
    mask = mask.astype(kl.dtype)
    return {name: jnp.sum(value * mask) / jnp.maximum(jnp.sum(mask), 1.0) for name, value in terms.items()}


def total_loss(terms: dict, weights: LossWeights):
    """Weighted sum of the terms."""
    return sum(getattr(weights, name) * terms[name] for name in TERMS)
