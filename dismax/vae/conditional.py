"""Conditional generation by gradient descent on latents through the frozen decoder (Dis-GEN §4.5).

Composition objective (the reference's `latent_space_optimization.py`), per latent:
(i) mean over the 9 decoded sites of sum_101 (softmax - m)^2, m = multi-hot over the target elements and
the vacancy; (ii) mean over the first k sites (k = number of target elements) of sum_101 (softmax - t_i)^2,
t_i = target element i times its occupancy (the last one also carries vacancy = 1); times 10.
Optional extra terms: space-group cross-entropy and the squared error of the expected number of
disordered sites. Adam on z; the decoder runs with its running BatchNorm statistics.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.vae import representation as rep
from dismax.vae.model import WyckoffVAE


def composition_targets(elements: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot m (101,), per-site targets t (k, 101)) for {'Zn': 1, 'V': 1, 'O': 1}."""
    symbols = rep.element_symbols()
    unknown = [s for s in elements if s not in symbols]
    if unknown:
        raise ValueError(f"unknown element symbol(s) {unknown}")
    multi_hot = np.zeros(rep.N_ELEMENTS, np.float32)
    per_site = np.zeros((len(elements), rep.N_ELEMENTS), np.float32)
    for i, (symbol, occupancy) in enumerate(elements.items()):
        multi_hot[symbols.index(symbol)] = 1.0
        per_site[i, symbols.index(symbol)] = occupancy
    multi_hot[rep.VACANCY_INDEX] = 1.0
    per_site[-1, rep.VACANCY_INDEX] = 1.0
    return multi_hot, per_site


def condition_loss(outputs: dict, multi_hot, per_site, spacegroup: int | None, n_disordered: float | None,
                   spacegroup_weight: float = 1.0, disorder_weight: float = 1.0):
    """Per-latent objective (B,) from decoder outputs (see the module docstring)."""
    probs = jax.nn.softmax(outputs["element_logits"], axis=-1)  # (B, 9, 101)
    allowed = jnp.mean(jnp.sum((probs - multi_hot) ** 2, axis=-1), axis=-1)
    k = per_site.shape[0]
    sites = jnp.mean(jnp.sum((probs[:, :k] - per_site) ** 2, axis=-1), axis=-1)
    loss = 10.0 * (allowed + sites)
    if spacegroup is not None:
        loss = loss + spacegroup_weight * optax.softmax_cross_entropy_with_integer_labels(
            outputs["spacegroup_logits"], jnp.full(probs.shape[0], spacegroup - 1))
    if n_disordered is not None:
        occupied = 1.0 - jax.nn.softmax(outputs["letter_logits"], axis=-1)[..., 0]
        expected = jnp.sum(occupied * jax.nn.sigmoid(outputs["disorder_logits"]), axis=-1)
        loss = loss + disorder_weight * (expected - n_disordered) ** 2
    return loss


@functools.partial(jax.jit, static_argnames=("model", "steps", "spacegroup", "n_disordered", "lr"))
def _optimise(model: WyckoffVAE, variables, z, multi_hot, per_site, steps: int, lr: float,
              spacegroup: int | None, n_disordered: float | None):
    optimizer = optax.adam(lr)

    def objective(latents):
        outputs = model.apply(variables, latents, train=False, method=WyckoffVAE.decode)
        return jnp.mean(condition_loss(outputs, multi_hot, per_site, spacegroup, n_disordered))

    def step(carry, _):
        latents, opt_state = carry
        loss, grad = jax.value_and_grad(objective)(latents)
        updates, opt_state = optimizer.update(grad, opt_state, latents)
        return (optax.apply_updates(latents, updates), opt_state), loss

    (z, _), losses = jax.lax.scan(step, (z, optimizer.init(z)), None, length=steps)
    return z, losses


def optimise_latents(model: WyckoffVAE, variables: dict, z, elements: dict[str, float], steps: int = 4000,
                     lr: float = 0.01, spacegroup: int | None = None, n_disordered: float | None = None,
                     return_losses: bool = False):
    """Move latents z (B, D) towards decoding the target composition (and optional space group /
    number of disordered sites). Returns the optimised latents (and the mean loss per step)."""
    multi_hot, per_site = composition_targets(elements)
    z, losses = _optimise(model, variables, jnp.asarray(z, jnp.float32), jnp.asarray(multi_hot),
                          jnp.asarray(per_site), int(steps), float(lr), spacegroup,
                          None if n_disordered is None else float(n_disordered))
    return (z, np.asarray(losses)) if return_losses else z
