"""Batched fixed-cell FIRE relaxation in jax-md with per-structure convergence.

Positions live in fractional coordinates of ``space.periodic_general`` (the box is passed per structure
as a keyword, ``box = lattice.T``); neighbours come from a dense jax-md neighbour list whose capacity is
chosen per structure on the host. Each structure is relaxed inside one ``lax.while_loop`` until its
largest per-atom force norm drops below ``fmax`` (eV/Å), ``max_steps`` is reached, or its energy/forces
become non-finite (then it is frozen at its last finite state and marked ``failed``). A neighbour-list
overflow stops that structure, which is then rerun from its start with a larger capacity, so no result
is ever computed with a truncated list.

Structures of a chunk are relaxed with ``lax.map`` (CPU: sequential, each structure stops on its own)
or ``vmap`` (accelerators: one batched while loop, finished structures frozen). The two give the same
results; on CPU ``vmap`` is slower because jax-md's conditional neighbour rebuild becomes a select.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dismax.potentials.evaluate import cell_width_problem, neighbor_table
from dismax.potentials.jaxmd import default_batching, neighbor_energy, over_batch
from dismax.structures import Crystals

RUNNING, CONVERGED, MAX_STEPS, FAILED, OVERFLOW = 0, 1, 2, 3, 4
DEFAULT_FMAX = 0.05  # eV/Å: stop when every atomic force is below this (the dataset spec's criterion)
DEFAULT_MAX_STEPS = 1000
DEFAULT_CHUNK_SIZE = 32
STATUS_NAMES = {CONVERGED: "converged", MAX_STEPS: "max_steps", FAILED: "failed"}


@dataclass(frozen=True)
class FireSettings:
    """FIRE and neighbour-list settings (time in units of Å·sqrt(amu/eV) with unit mass, lengths in Å).

    ``max_step`` caps the largest atomic displacement of one step (as ASE's FIRE ``maxstep`` does),
    which keeps the default time steps stable for stiff starting structures.
    """

    dt_start: float = 0.1
    dt_max: float = 0.4
    max_step: float = 0.2
    dr_threshold: float = 0.5
    capacity_multiplier: float = 1.25


@dataclass
class RelaxResult:
    """Per-structure outcome; energies in eV/atom, ``fmax`` in eV/Å (largest per-atom force norm)."""

    crystals: Crystals
    status: np.ndarray  # (B,) str: converged | max_steps | failed
    steps: np.ndarray  # (B,) int
    e_initial: np.ndarray  # (B,) eV/atom
    e_final: np.ndarray  # (B,) eV/atom
    fmax: np.ndarray  # (B,) eV/Å

    def __len__(self) -> int:
        return len(self.status)


# ---------------------------------------------------------------------- compiled relaxation
@lru_cache(maxsize=None)
def _relax_program(potential, settings: FireSettings, n_atoms: int, capacity: int, batching: str):
    """Jitted function (frac (C,N,3), box (C,3,3), max_steps (C,), fmax) -> per-structure results."""
    from jax_md import minimize  # jax_md takes ~6 s to import; only a relaxation needs it

    plumbing = neighbor_energy(potential, n_atoms, capacity, settings.dr_threshold)
    energy_with_list, shift = plumbing.energy, plumbing.shift

    def energy(R, neighbor, box, **unused):
        # Refresh the list at R first so the force of every step sees every pair within the cutoff.
        return energy_with_list(R, neighbor.update(R, box=box), box)

    def capped_shift(R, dR, box, **unused):
        longest = jnp.max(jnp.sqrt(jnp.sum(dR**2, axis=-1)))
        dR = dR * jnp.minimum(1.0, settings.max_step / jnp.maximum(longest, 1e-12))
        return shift(R, dR, box=box)

    def force(R, neighbor, box, **unused):
        # A non-finite energy makes the whole force non-finite, so the step is detected and discarded.
        e, gradient = jax.value_and_grad(energy)(R, neighbor, box)
        return jnp.where(jnp.isfinite(e), -gradient, jnp.nan)

    fire_init, fire_apply = minimize.fire_descent(
        force, capped_shift, dt_start=settings.dt_start, dt_max=settings.dt_max
    )

    def largest_force(force):
        return jnp.max(jnp.sqrt(jnp.sum(force**2, axis=-1)))

    def relax_one(frac, box, max_steps, fmax):
        nbrs = plumbing.fresh(frac, box)
        e_initial = energy_with_list(frac, nbrs, box)
        state = fire_init(frac, neighbor=nbrs, box=box)
        f0 = largest_force(state.force)
        finite = jnp.all(jnp.isfinite(state.force)) & jnp.isfinite(e_initial)
        status = jnp.where(
            ~finite, FAILED,
            jnp.where(nbrs.did_buffer_overflow, OVERFLOW,
                      jnp.where(f0 < fmax, CONVERGED, jnp.where(max_steps <= 0, MAX_STEPS, RUNNING))),
        )

        def keep_going(carry):
            return carry[3] == RUNNING

        def fire_step(carry):
            state, nbrs, step, _, f_old = carry
            new_state = fire_apply(state, neighbor=nbrs, box=box)
            new_nbrs = nbrs.update(new_state.position, box=box)
            f = largest_force(new_state.force)
            ok = jnp.all(jnp.isfinite(new_state.force)) & jnp.all(jnp.isfinite(new_state.position))
            step = step + 1
            status = jnp.where(
                ~ok, FAILED,
                jnp.where(new_nbrs.did_buffer_overflow, OVERFLOW,
                          jnp.where(f < fmax, CONVERGED, jnp.where(step >= max_steps, MAX_STEPS, RUNNING))),
            )
            # A non-finite step is discarded: the structure stays frozen at its last finite state.
            state = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new_state, state)
            nbrs = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new_nbrs, nbrs)
            return state, nbrs, step, status, jnp.where(ok, f, f_old)

        carry = (state, nbrs, jnp.zeros((), jnp.int32), status.astype(jnp.int32), f0)
        state, nbrs, steps, status, f = jax.lax.while_loop(keep_going, fire_step, carry)
        e_final = energy_with_list(state.position, nbrs.update(state.position, box=box), box)
        return state.position, status, steps, e_initial, e_final, f

    relax_batch = over_batch(relax_one, batching, (0, 0, 0, None))
    return jax.jit(relax_batch)


# ---------------------------------------------------------------------- host side
def _capacity(frac: np.ndarray, lattice: np.ndarray, reach: float, multiplier: float) -> int:
    """Neighbour slots for one structure: the densest atom's count within ``reach`` × multiplier, /8."""
    n = frac.shape[0]
    counts = (neighbor_table(frac, lattice, reach) < n).sum(axis=1)
    want = int(np.ceil(counts.max() * multiplier)) + 2
    return int(min(n - 1, -(-want // 8) * 8))


def _invalid_reason(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> str | None:
    if not np.all(np.isfinite(frac)):
        return "non-finite coordinates"
    return cell_width_problem(lattice, cutoff)


def relax_chunks(
    crystals: Crystals,
    potential,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    settings: FireSettings = FireSettings(),
    batching: str | None = None,
    ids: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, RelaxResult]]:
    """Relax ``crystals`` chunk by chunk, yielding ``(ids, RelaxResult)`` for each chunk in order.

    ``ids`` (default 0..B−1) label the structures in the yielded results. Memory is bounded by the
    chunk size; every chunk is padded to ``chunk_size`` so one compiled program serves all chunks.
    """
    batching = batching or default_batching()
    c = crystals.to_numpy()
    potential.check_species(c.species)
    ids = np.arange(c.batch_size) if ids is None else np.asarray(ids)
    for start in range(0, c.batch_size, chunk_size):
        part = slice(start, start + chunk_size)
        yield ids[part], _relax_chunk(c[part], potential, fmax, max_steps, chunk_size, settings, batching,
                                      ids[part])


def _relax_chunk(c: Crystals, potential, fmax, max_steps, chunk_size, settings, batching, ids) -> RelaxResult:
    b, n = c.batch_size, c.n_atoms
    frac_out = np.array(c.frac, np.float64)
    status = np.full(b, OVERFLOW, np.int32)
    steps = np.zeros(b, np.int64)
    e0 = np.full(b, np.nan)
    e1 = np.full(b, np.nan)
    fmax_out = np.full(b, np.nan)

    capacity = np.zeros(b, int)
    reach = potential.cutoff + settings.dr_threshold
    for i in range(b):
        reason = _invalid_reason(c.frac[i], c.lattice[i], potential.cutoff)
        if reason:
            print(f"structure {ids[i]}: {reason}; marked failed", file=sys.stderr)
            status[i] = FAILED
        else:
            capacity[i] = _capacity(np.asarray(c.frac[i], float), np.asarray(c.lattice[i], float), reach,
                                    settings.capacity_multiplier)

    while np.any(status == OVERFLOW):
        for k in sorted(set(capacity[status == OVERFLOW].tolist())):
            members = np.flatnonzero((status == OVERFLOW) & (capacity == k))
            program = _relax_program(potential, settings, n, int(k), batching)
            pad = np.concatenate([members, np.full(chunk_size - len(members), members[0])])
            limit = np.where(np.arange(chunk_size) < len(members), max_steps, 0).astype(np.int32)
            out = program(jnp.asarray(c.frac[pad], jnp.float32),
                          jnp.asarray(np.swapaxes(c.lattice[pad], 1, 2), jnp.float32),
                          jnp.asarray(limit), jnp.float32(fmax))
            pos, st, sp, ei, ef, f = (np.asarray(x)[: len(members)] for x in out)
            frac_out[members] = pos
            status[members] = st
            steps[members] = sp
            e0[members], e1[members], fmax_out[members] = ei / n, ef / n, f
            grown = members[st == OVERFLOW]
            capacity[grown] = np.minimum(n - 1, -(-(capacity[grown] * 3 // 2) // 8) * 8)
    relaxed = Crystals(np.mod(frac_out, 1.0), np.asarray(c.lattice), np.asarray(c.species))
    return RelaxResult(relaxed, np.array([STATUS_NAMES[s] for s in status]), steps, e0, e1, fmax_out)


def relax(crystals: Crystals, potential, fmax: float = DEFAULT_FMAX, max_steps: int = DEFAULT_MAX_STEPS,
          chunk_size: int = DEFAULT_CHUNK_SIZE,
          settings: FireSettings = FireSettings(), batching: str | None = None,
          progress: bool = False) -> RelaxResult:
    """Relax every structure of ``crystals`` (fixed cells) and return all results in input order."""
    chunks = relax_chunks(crystals, potential, fmax, max_steps, chunk_size, settings, batching)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, total=-(-len(crystals) // chunk_size), desc="relax", unit="chunk",
                      file=sys.stderr)
    parts = [r for _, r in chunks]
    return RelaxResult(
        Crystals.concatenate([p.crystals for p in parts]),
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("status", "steps", "e_initial", "e_final",
                                                                   "fmax")),
    )
