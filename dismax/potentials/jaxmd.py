"""The jax-md plumbing of the melt-quench MD (:mod:`dismax.data.a_si`); relaxation has its own FIRE engine
(:mod:`dismax.potentials.fire`).

:func:`neighbor_energy` turns a potential (``cutoff``, ``energy_from_displacements``) into a jax-md
energy of fractional positions with a Dense neighbour list of fixed ``capacity`` slots;
:func:`over_batch` maps a per-structure function over a batch (``lax.map`` on CPU, where ``vmap`` turns
the list's rebuild ``cond`` into a select, ``vmap`` on accelerators). Boxes are jax-md boxes: lattice
vectors as **columns** (the transpose of ``Crystals.lattice``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def default_batching() -> str:
    """``map`` on CPU, ``vmap`` on GPU/TPU."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def over_batch(fn: Callable, batching: str, in_axes: tuple) -> Callable:
    """``fn`` applied to every structure: arguments with axis 0 in ``in_axes`` are batched, None shared."""
    if batching == "vmap":
        return jax.vmap(fn, in_axes)
    if batching != "map":
        raise ValueError(f"batching must be 'map' or 'vmap', not {batching!r}")

    def mapped(*args):
        batched = tuple(a for a, axis in zip(args, in_axes) if axis == 0)

        def one(xs):
            it = iter(xs)
            return fn(*(next(it) if axis == 0 else a for a, axis in zip(args, in_axes)))

        return jax.lax.map(one, batched)

    return mapped


class NeighborEnergy(NamedTuple):
    """jax-md pieces for one potential: fractional ``displacement``/``shift``, an empty list ``template``
    of the right static shape, and ``energy(R, neighbor, box)`` in eV from that list."""

    displacement: Callable
    shift: Callable
    template: object
    energy: Callable

    def fresh(self, R: jax.Array, box: jax.Array | None = None):
        """A list rebuilt at ``R``: the reference positions are put half a cell away (beyond any threshold)."""
        kwargs = {} if box is None else {"box": box}
        return self.template.set(reference_position=jnp.mod(R + 0.5, 1.0)).update(R, **kwargs)


def neighbor_energy(potential, n_atoms: int, capacity: int, dr_threshold: float,
                    box: jax.Array | None = None) -> NeighborEnergy:
    """Energy of a potential through a jax-md Dense neighbour list (fractional coordinates).

    With ``box`` None the box is a per-call argument (``energy(R, nbrs, box)``); otherwise it is fixed.
    Cells must be wider than 2 × (cutoff + dr_threshold / 2) (minimum image).
    """
    from jax_md import partition, space  # jax_md takes ~6 s to import; only programs that run MD/FIRE need it

    fixed_box = jnp.eye(3) if box is None else box
    displacement, shift = space.periodic_general(fixed_box, fractional_coordinates=True, wrapped=True)
    neighbor_fn = partition.neighbor_list(
        displacement, fixed_box, potential.cutoff, dr_threshold, capacity_multiplier=1.0,
        disable_cell_list=True, fractional_coordinates=True, format=partition.Dense,
    )
    start = jnp.asarray(np.random.default_rng(0).random((n_atoms, 3)), jnp.float32)
    template = neighbor_fn.allocate(start, **({"box": jnp.eye(3) * 100.0} if box is None else {}))
    template = template.set(idx=jnp.full((n_atoms, capacity), n_atoms, jnp.int32), max_occupancy=capacity)

    def energy(R, neighbor, box=None):
        kwargs = {} if box is None else {"box": box}
        mask = neighbor.idx < R.shape[0]
        neighbours = jnp.take(R, neighbor.idx, axis=0, mode="clip")
        to_neighbour = lambda Ra, Rb: displacement(Ra, Rb, **kwargs)
        dR = jax.vmap(jax.vmap(to_neighbour, (0, None)), (0, 0))(neighbours, R)
        return potential.energy_from_displacements(dR, mask)

    return NeighborEnergy(displacement, shift, template, energy)
