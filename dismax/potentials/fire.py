"""Batched fixed-cell FIRE relaxation with per-structure convergence and skin neighbour tables (the
relaxation engine behind ``dismax.bench relax`` and the a-Si builder).

Positions are Cartesian (Å) and unwrapped during a run. Each structure carries a neighbour table of
``capacity`` slots (atom index and the Cartesian shift of its periodic image, from
:func:`dismax.geometry.knn`) holding every atom within ``cutoff + skin``; it is rebuilt only when some
atom of that structure has moved more than ``skin / 2`` since the last build, so in between no pair can
enter the cutoff unseen. The potential sees the whole (N, capacity) table every step (slots beyond the
cutoff contribute nothing; Stillinger–Weber's three-body sum is linear in the slots). A table that misses
atoms within the reach is an *overflow*: that structure stops and the host reruns it from its start with a
larger table, so no result is ever computed with a truncated table.

The FIRE step is ASE's (``ase.optimize.FIRE``, :func:`fire_update`): the P = F·v test and the velocity
mixing on whole-structure norms, semi-implicit Euler (v += dt·F, dr = dt·v), ASE's time-step and mixing
schedule, and ``maxstep`` on the norm of the whole displacement vector, so that with the same forces the
positions, steps and minima are ASE's (float64 equal to rounding; float32, the default, follows ASE until
rounding tips a decision).

The whole chunk advances in one ``lax.while_loop`` over the vmapped step; finished structures are frozen
by masks, and once at most half of the batch is running, the running structures continue in a batch of half the size
(down to ``SMALLEST_BATCH``), so the stragglers of a chunk do not pay for the finished ones. A step that
leaves some structures' tables stale rebuilds those tables only (a ``lax.map`` over the batch with a
per-structure ``lax.cond``). Forces of pair-slot potentials (``energy_from_displacements``) are per-slot
gradients summed over each atom's row minus the same gradients read from the other end of every pair
through :func:`dismax.geometry.reverse_slots`: a gather, where differentiating through the table gather
would give a scatter-add, which is slow on CPU; Stillinger–Weber is differentiated per Cartesian
component (``energy_from_components``).
A non-finite energy or force freezes that structure at its last finite state and marks it ``failed``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError
from dismax.geometry import gather_reverse, knn, pairwise_minimum_image_distances, reverse_slots
from dismax.potentials.evaluate import cell_width_problem
from dismax.runs import progress as runs_progress
from dismax.structures import Crystals

RUNNING, CONVERGED, MAX_STEPS, FAILED, OVERFLOW = 0, 1, 2, 3, 4
STATUS_NAMES = {CONVERGED: "converged", MAX_STEPS: "max_steps", FAILED: "failed"}
DEFAULT_FMAX = 0.05  # eV/Å: stop when every atomic force is below this (the dataset spec's criterion)
DEFAULT_MAX_STEPS = 1000
SMALLEST_BATCH = 4  # structures: the running ones of a chunk move to ever smaller batches down to this size
DEFAULT_CHUNK_SIZE = 32  # structures per compiled chunk in bench configs (relax() alone picks default_chunk_size)


@dataclass(frozen=True)
class FireSettings:
    """FIRE and neighbour-table settings (time in units of Å·sqrt(amu/eV) with unit mass, lengths in Å).

    The FIRE parameters and their defaults are ASE's (``ase.optimize.FIRE``): initial and largest time
    step ``dt_start``/``dt_max``, growth by ``f_inc`` after more than ``n_min`` downhill steps, shrinking by
    ``f_dec`` on an uphill step, velocity mixing ``a_start`` decaying by ``f_a``; ``max_step`` caps the norm
    of each step's whole (N·3) displacement vector, as ASE's ``maxstep`` does. ``dtype`` is the float type
    of positions and forces; ``"float64"`` needs JAX's x64 mode.
    ``skin`` is the extra reach of the neighbour tables; ``capacity_multiplier`` the head room of the table
    size over the start.
    """

    dt_start: float = 0.1
    dt_max: float = 1.0
    max_step: float = 0.2
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    a_start: float = 0.1
    f_a: float = 0.99
    dtype: str = "float32"
    skin: float = 0.6
    capacity_multiplier: float = 1.25

    def __post_init__(self):
        if self.dtype not in ("float32", "float64"):
            raise DismaxInputError(f"FireSettings.dtype must be 'float32' or 'float64', not {self.dtype!r}")


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


def default_chunk_size(n_structures: int, n_atoms: int) -> int:
    """Structures per compiled chunk: the whole batch up to ~16k atoms on CPU (~256k on accelerators),
    where the per-step work is large enough to keep the device busy and memory stays bounded."""
    atoms_per_chunk = 16_384 if jax.default_backend() == "cpu" else 262_144
    return int(max(1, min(n_structures, atoms_per_chunk // max(n_atoms, 1))))


# ---------------------------------------------------------------------- one structure, traced
def _displacements(R, indices, shifts):
    """Cartesian vectors (N, K, 3) from each atom to its table slots: unwrapped positions R (N, 3) in Å,
    slot atoms ``indices`` (N, K) and the Cartesian shifts (N, K, 3) of their periodic images."""
    return jnp.take(R, indices, axis=0) - R[:, None, :] + shifts


class Tables(NamedTuple):
    """Neighbour tables of a batch (C structures of N atoms, K slots): slot atoms ``indices`` (C, N, K),
    Cartesian image ``shifts`` (C, N, K, 3) in Å, the ``reverse`` slots of each pair
    (:func:`dismax.geometry.reverse_slots`, (C, N, K)) and the ``reference`` positions (C, N, 3) in Å
    they were built at."""

    indices: jax.Array
    shifts: jax.Array
    reverse: jax.Array
    reference: jax.Array

    def slots(self) -> dict:
        """The per-slot arrays as keyword arguments of the force."""
        return {"indices": self.indices, "shifts": self.shifts, "reverse": self.reverse}


class Program(NamedTuple):
    """Compiled pieces for one (potential, settings, table size): ``run`` relaxes a chunk,
    ``force(R, indices, shifts, reverse, species)`` and ``build(R, lattice) -> (Tables, overflow)`` are
    its per-step parts."""

    run: Callable
    force: Callable
    build: Callable


class FireState(NamedTuple):
    """One structure's FIRE state, ASE's variables: positions (N, 3) in Å, velocity (N, 3) in Å per time
    unit, force (N, 3) in eV/Å at the positions, time step ``dt``, mixing ``a``, ``downhill`` steps since the
    last uphill one (ASE's ``Nsteps``) and ``started`` (False before the first step, which has no P test)."""

    position: jax.Array
    velocity: jax.Array
    force: jax.Array
    dt: jax.Array
    a: jax.Array
    downhill: jax.Array
    started: jax.Array


def fire_update(state: FireState, settings: FireSettings) -> tuple[FireState, jax.Array]:
    """ASE's FIRE step for one structure: (state with the new velocity, dt, a, downhill count; the capped
    displacement (N, 3) in Å). P = F·v over the whole structure decides: downhill, the velocity is mixed
    towards the force, v = (1 − a)·v + a·|v|·F/|F|, and after more than ``n_min`` downhill steps dt grows
    and a decays; uphill, v = 0, a = a_start and dt shrinks. Then semi-implicit Euler, v += dt·F and
    dr = dt·v, and dr is scaled down to a norm of at most ``max_step``."""
    F, v = state.force, state.velocity
    power = jnp.vdot(F, v)
    force_norm = jnp.sqrt(jnp.vdot(F, F))
    mixed = (1.0 - state.a) * v + state.a * F / jnp.maximum(force_norm, 1e-30) * jnp.sqrt(jnp.vdot(v, v))
    downhill = power > 0.0
    grow = downhill & (state.downhill > settings.n_min)
    dt = jnp.where(downhill, jnp.where(grow, jnp.minimum(state.dt * settings.f_inc, settings.dt_max), state.dt),
                   state.dt * settings.f_dec)
    a = jnp.where(downhill, jnp.where(grow, state.a * settings.f_a, state.a), settings.a_start)
    count = jnp.where(downhill, state.downhill + 1, 0)
    v = jnp.where(downhill, mixed, jnp.zeros_like(v))
    # The first step starts from rest with the initial dt and a (ASE has no velocity to test yet).
    first = ~state.started
    v, dt, a, count = (jnp.where(first, old, new) for old, new in
                       ((state.velocity, v), (state.dt, dt), (state.a, a), (state.downhill, count)))
    v = v + dt * F
    dr = dt * v
    length = jnp.sqrt(jnp.vdot(dr, dr))
    dr = jnp.where(length > settings.max_step, settings.max_step * dr / jnp.maximum(length, 1e-30), dr)
    return FireState(state.position, v, F, dt.astype(F.dtype), a.astype(F.dtype), count, jnp.array(True)), dr


def _relax_program(potential, settings: FireSettings, capacity: int):
    """The compiled relaxation for ``settings``, shared by all settings that differ only in the host-side
    table head room (``capacity_multiplier``), which the program never reads."""
    return _compiled_relax_program(potential, replace(settings, capacity_multiplier=1.0), capacity)


@lru_cache(maxsize=None)
def _compiled_relax_program(potential, settings: FireSettings, capacity: int):
    """``run``: (R (C,N,3) Å, lattice (C,3,3), species (C,N), free (C,N) bool, max_steps (C,), fmax) ->
    per-structure (positions, status, steps, initial and final energy in eV, largest force on a free atom, table
    rebuilds); atoms with ``free`` False stay where they are."""
    reach = potential.cutoff + settings.skin

    message_passing = hasattr(potential, "energy_from_table")  # needs each neighbour's identity
    by_components = hasattr(potential, "energy_from_components")

    def energy_one(R, indices, shifts, species):
        dR = _displacements(R, indices, shifts)
        if message_passing:
            return potential.energy_from_table(dR, indices, species)
        return potential.energy_from_displacements(dR, jnp.ones(dR.shape[:2], bool))

    def force_one(R, indices, shifts, reverse, species, **unused):
        # A non-finite energy makes the whole force non-finite, so the step is detected and discarded.
        if message_passing:
            e, gradient = jax.value_and_grad(energy_one)(R, indices, shifts, species)
            return jnp.where(jnp.isfinite(e), -gradient, jnp.nan)
        # A pair potential of the slots: F_m = Σ_k ∂E/∂dR[m, k] − Σ over the slots pointing at m, read
        # from m's own row through the reverse slots (a gather, where the gradient of the table gather
        # would be a much slower scatter-add). Exact because every pair within the cutoff is in both rows.
        if by_components:  # per Cartesian component (N, K): a trailing axis of 3 is slow in XLA's CPU code
            components = [jnp.take(R[:, a], indices) - R[:, a, None] + shifts[..., a] for a in range(3)]
            e, slot_gradients = jax.value_and_grad(potential.energy_from_components, argnums=(0, 1, 2))(
                *components, jnp.ones(indices.shape, bool))
        else:
            e, slot_gradient = jax.value_and_grad(potential.energy_from_displacements)(
                _displacements(R, indices, shifts), jnp.ones(indices.shape, bool))
            slot_gradients = [slot_gradient[..., a] for a in range(3)]
        force = jnp.stack([jnp.sum(g - gather_reverse(g, indices, reverse), axis=1) for g in slot_gradients], -1)
        return jnp.where(jnp.isfinite(e), force, jnp.nan)

    def moving_force(R, indices, shifts, reverse, species, free):
        # Fixed atoms (free False) feel no force: they never move and never count towards fmax.
        return jnp.where(free[:, None], force_one(R, indices, shifts, reverse, species), 0.0)

    def fire_init(R, indices, shifts, reverse, species, free):
        dtype = R.dtype
        return FireState(R, jnp.zeros_like(R), moving_force(R, indices, shifts, reverse, species, free),
                         jnp.asarray(settings.dt_start, dtype), jnp.asarray(settings.a_start, dtype),
                         jnp.array(0, jnp.int32), jnp.array(False))

    def fire_apply(state, indices, shifts, reverse, species, free):
        state, dr = fire_update(state, settings)
        R = state.position + dr
        return state._replace(position=R, force=moving_force(R, indices, shifts, reverse, species, free))

    batch_energy = jax.vmap(energy_one)
    batch_force = jax.vmap(force_one)

    def build(R, lattice):
        """Tables at R for the batch and overflow (C,) where the reach holds more than ``capacity`` atoms."""
        frac = jnp.einsum("bni,bij->bnj", R, jnp.linalg.inv(lattice))
        found = knn(frac, lattice, capacity)
        shifts = jnp.einsum("bnki,bij->bnkj", found.images.astype(R.dtype), lattice)
        tables = Tables(found.indices, shifts, reverse_slots(found.indices, found.images), R)
        return tables, jnp.any(found.distances[..., -1] <= reach, axis=-1)

    def largest_force(force):
        return jnp.max(jnp.sqrt(jnp.sum(force**2, axis=-1)), axis=-1)

    def step_status(ok, overflow, f, steps, max_steps, fmax):
        return jnp.where(~ok, FAILED, jnp.where(overflow, OVERFLOW, jnp.where(
            f < fmax, CONVERGED, jnp.where(steps >= max_steps, MAX_STEPS, RUNNING)))).astype(jnp.int32)

    def select(mask, new, old):
        return jax.tree_util.tree_map(
            lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old)

    def relax_until(carry, lattice, species, free, max_steps, fmax, leave_at):
        """FIRE steps of the batch in ``carry`` until at most ``leave_at`` of its structures are running."""

        def keep_going(carry):
            return jnp.sum(carry[3] == RUNNING) > leave_at

        def fire_step(carry):
            state, tables, steps, status, f_old, rebuilds = carry
            running = status == RUNNING
            new = jax.vmap(fire_apply)(state, **tables.slots(), species=species, free=free)
            moved = jnp.max(jnp.sum((new.position - tables.reference) ** 2, axis=-1), axis=-1)
            stale = running & (moved > (0.5 * settings.skin) ** 2)

            def rebuild(new):
                # New tables at the new positions and the force there, only for the stale structures (one
                # at a time: a batched build would cost the whole batch for every structure that crossed).
                def one(inputs):
                    R, cell, kinds, mobile, old_tables, old_force, is_stale = inputs

                    def fresh(_):
                        built, overflow = build(R[None], cell[None])
                        built = jax.tree_util.tree_map(lambda x: x[0], built)
                        return built, moving_force(R, **built.slots(), species=kinds, free=mobile), overflow[0]

                    return jax.lax.cond(is_stale, fresh, lambda _: (old_tables, old_force, jnp.array(False)), None)

                fresh, force, overflow = jax.lax.map(one, (new.position, lattice, species, free, tables, new.force,
                                                           stale))
                return new._replace(force=force), fresh, overflow

            new, new_tables, build_overflow = jax.lax.cond(
                jnp.any(stale), rebuild, lambda new: (new, tables, jnp.zeros_like(stale)), new)
            f = largest_force(new.force)
            ok = jnp.all(jnp.isfinite(new.force), axis=(1, 2)) & jnp.all(jnp.isfinite(new.position), axis=(1, 2))
            new_steps = steps + 1
            new_status = step_status(ok, build_overflow, f, new_steps, max_steps, fmax)
            # A non-finite step is discarded: the structure stays frozen at its last finite state.
            accept = running & ok
            return (select(accept, new, state), select(accept, new_tables, tables),
                    jnp.where(running, new_steps, steps), jnp.where(running, new_status, status),
                    jnp.where(accept, f, f_old), rebuilds + (accept & stale))

        return jax.lax.while_loop(keep_going, fire_step, carry)

    def run(R, lattice, species, free, max_steps, fmax):
        tables, build_overflow = build(R, lattice)
        e_initial = batch_energy(R, tables.indices, tables.shifts, species)
        state = jax.vmap(fire_init)(R, **tables.slots(), species=species, free=free)
        f0 = largest_force(state.force)
        finite = jnp.all(jnp.isfinite(state.force), axis=(1, 2)) & jnp.isfinite(e_initial)
        status = step_status(finite, build_overflow, f0, jnp.zeros_like(max_steps), max_steps, fmax)
        carry = (state, tables, jnp.zeros_like(max_steps), status, f0, jnp.zeros_like(max_steps))
        inputs = (lattice, species, free, max_steps)
        # The whole chunk runs until at most half of it is still running; then those structures move to a
        # batch of half the size, and so on down to SMALLEST_BATCH: finished structures stop costing steps
        # (a masked structure costs as much as a running one), at the price of one compiled loop per size.
        sizes = [R.shape[0]]
        while sizes[-1] // 2 >= SMALLEST_BATCH:
            sizes.append(sizes[-1] // 2)
        for level, size in enumerate(sizes):
            leave_at = sizes[level + 1] if level + 1 < len(sizes) else 0
            if level == 0:
                carry = relax_until(carry, *inputs, fmax, leave_at)
                continue
            chosen = jnp.argsort(jnp.where(carry[3] == RUNNING, 0, 1), stable=True)[:size]  # running first
            part = relax_until(jax.tree_util.tree_map(lambda x: x[chosen], carry), *(x[chosen] for x in inputs),
                               fmax, leave_at)
            carry = jax.tree_util.tree_map(lambda whole, x: whole.at[chosen].set(x), carry, part)
        state, tables, steps, status, f, rebuilds = carry
        e_final = batch_energy(state.position, tables.indices, tables.shifts, species)
        return state.position, status, steps, e_initial, e_final, f, rebuilds

    return Program(jax.jit(run), jax.jit(batch_force), jax.jit(build))


# ---------------------------------------------------------------------- host side
def _capacities(frac: np.ndarray, lattice: np.ndarray, cutoff: float, settings: FireSettings) -> np.ndarray:
    """Table sizes (B,) from each structure's densest atom within the reach (cutoff + skin), with head room;
    minimum-image distances of a few structures per call (B·N² ≤ ~16M), not one call per structure."""
    b, n = frac.shape[:2]
    group = max(1, 2**24 // (n * n))
    most = np.zeros(b, int)
    for start in range(0, b, group):
        part = slice(start, start + group)
        r = np.asarray(pairwise_minimum_image_distances(jnp.asarray(frac[part]), jnp.asarray(lattice[part])))
        within = (r < cutoff + settings.skin) & ~np.eye(n, dtype=bool)
        most[part] = within.sum(axis=2).max(axis=1)
    return np.minimum(n - 1, -(-(np.ceil(most * settings.capacity_multiplier).astype(int) + 2) // 4) * 4)


def _grown(capacity: int, n_atoms: int) -> int:
    return min(n_atoms - 1, -(-(capacity * 3 // 2) // 4) * 4)


def _invalid_reason(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> str | None:
    if not np.all(np.isfinite(frac)):
        return "non-finite coordinates"
    return cell_width_problem(lattice, cutoff)


def relax_chunks(
    crystals: Crystals,
    potential,
    fmax: float = DEFAULT_FMAX,
    max_steps: int = DEFAULT_MAX_STEPS,
    chunk_size: int | None = None,
    settings: FireSettings = FireSettings(),
    ids: np.ndarray | None = None,
    free: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, RelaxResult]]:
    """Relax ``crystals`` chunk by chunk, yielding ``(ids, RelaxResult)`` for each chunk in order.

    ``ids`` (default 0..B−1) label the structures in the yielded results. ``free`` (B, N) bool, default all,
    says which atoms may move: the others stay fixed and their forces do not count towards ``fmax``. Memory is
    bounded by the chunk size (default :func:`default_chunk_size`); every chunk is padded to ``chunk_size`` so one
    compiled program serves all chunks.
    """
    c = crystals.to_numpy()
    potential.check_species(c.species)
    chunk_size = chunk_size or default_chunk_size(c.batch_size, c.n_atoms)
    ids = np.arange(c.batch_size) if ids is None else np.asarray(ids)
    free = np.ones(c.species.shape, bool) if free is None else np.asarray(free, bool)
    if free.shape != c.species.shape:
        raise DismaxInputError(f"free has shape {free.shape}; expected (structures, atoms) = {c.species.shape}")
    for start in range(0, c.batch_size, chunk_size):
        part = slice(start, start + chunk_size)
        yield ids[part], _relax_chunk(c[part], potential, fmax, max_steps, chunk_size, settings, ids[part],
                                      free[part])


def _relax_chunk(c: Crystals, potential, fmax, max_steps, chunk_size, settings, ids, free) -> RelaxResult:
    b, n = c.batch_size, c.n_atoms
    dtype = _float_type(settings)
    frac_out = np.array(c.frac, np.float64)
    status = np.full(b, OVERFLOW, np.int32)
    steps = np.zeros(b, np.int64)
    e0 = np.full(b, np.nan)
    e1 = np.full(b, np.nan)
    fmax_out = np.full(b, np.nan)

    for i in range(b):
        reason = _invalid_reason(c.frac[i], c.lattice[i], potential.cutoff)
        if reason:
            print(f"structure {ids[i]}: {reason}; marked failed", file=sys.stderr)
            status[i] = FAILED
    valid = np.flatnonzero(status != FAILED)
    sizes = np.zeros(b, int)
    if len(valid):
        sizes[valid] = _capacities(np.asarray(c.frac[valid], float), np.asarray(c.lattice[valid], float),
                                   potential.cutoff, settings)

    while np.any(status == OVERFLOW):
        # One program for the chunk: the largest table any pending structure needs.
        pending = np.flatnonzero(status == OVERFLOW)
        program = _relax_program(potential, settings, int(sizes[pending].max())).run
        pad = np.concatenate([pending, np.full(chunk_size - len(pending), pending[0])])
        limit = np.where(np.arange(chunk_size) < len(pending), max_steps, 0).astype(np.int32)
        lattice = jnp.asarray(c.lattice[pad], dtype)
        cart = np.einsum("bni,bij->bnj", np.asarray(c.frac[pad], np.float64), c.lattice[pad])
        out = program(jnp.asarray(cart, dtype), lattice, jnp.asarray(c.species[pad], jnp.int32),
                      jnp.asarray(free[pad]), jnp.asarray(limit), jnp.asarray(fmax, dtype))
        pos, st, sp, ei, ef, f, _ = (np.asarray(x)[: len(pending)] for x in out)
        frac_out[pending] = np.einsum("bnj,bji->bni", pos.astype(np.float64), np.linalg.inv(c.lattice[pending]))
        status[pending] = st
        steps[pending] = sp
        e0[pending], e1[pending], fmax_out[pending] = ei / n, ef / n, f
        for i in pending[st == OVERFLOW]:
            sizes[i] = _grown(sizes[i], n)
    relaxed = Crystals(np.mod(frac_out, 1.0), np.asarray(c.lattice), np.asarray(c.species))
    return RelaxResult(relaxed, np.array([STATUS_NAMES[s] for s in status]), steps, e0, e1, fmax_out)


def _float_type(settings: FireSettings):
    """The JAX float type of ``settings.dtype``; float64 only when JAX's x64 mode is on (else JAX would
    silently compute in float32)."""
    if settings.dtype == "float64" and not jax.config.jax_enable_x64:
        raise DismaxInputError("FireSettings(dtype='float64') needs JAX's x64 mode (jax.config.update("
                               "'jax_enable_x64', True) or a jax.enable_x64(True) block)")
    return jnp.dtype(settings.dtype)


def _chunk_program(c: Crystals, potential, settings: FireSettings):
    """The program for one chunk ``c`` (table size from its densest structure) and its Cartesian positions
    (B, N, 3) and lattices (B, 3, 3) in ``settings.dtype``, int32 species (B, N) and the table size."""
    capacity = int(_capacities(np.asarray(c.frac, float), np.asarray(c.lattice, float), potential.cutoff,
                               settings).max())
    dtype = _float_type(settings)
    lattice = jnp.asarray(c.lattice, dtype)
    R = jnp.asarray(np.einsum("bni,bij->bnj", c.frac, c.lattice), dtype)
    species = jnp.asarray(c.species, jnp.int32)
    return _relax_program(potential, settings, capacity), R, lattice, species, capacity


def step_cost(crystals: Crystals, potential, settings: FireSettings = FireSettings(), repeats: int = 20) -> dict:
    """XLA-counted flops and bytes of one batched force evaluation on ``crystals`` and the measured time of
    the pieces of a FIRE step (force, table rebuild), for roofline and profile reports."""
    program, R, lattice, species, capacity = _chunk_program(crystals.to_numpy(), potential, settings)
    tables, _ = program.build(R, lattice)
    slots = (tables.indices, tables.shifts, tables.reverse)
    cost = program.force.lower(R, *slots, species).compile().cost_analysis()
    timings = {}
    for piece, call in (("force evaluation", lambda: program.force(R, *slots, species)),
                        ("neighbour-table rebuild", lambda: program.build(R, lattice))):
        jax.block_until_ready(call())
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(call())
        timings[piece] = (time.perf_counter() - start) / repeats
    return {"flops": float(cost["flops"]), "bytes": float(cost["bytes accessed"]), "capacity": capacity,
            "timings": timings}


def compiled_relaxation(crystals: Crystals, potential, fmax: float = DEFAULT_FMAX,
                        max_steps: int = DEFAULT_MAX_STEPS, settings: FireSettings = FireSettings()):
    """(compiled program, arguments) relaxing all of ``crystals`` as one chunk: ``compiled(*arguments)``
    runs exactly the loop :func:`relax` runs, for cost analyses and profiler traces."""
    program, R, lattice, species, _ = _chunk_program(crystals.to_numpy(), potential, settings)
    arguments = (R, lattice, species, jnp.ones(species.shape, bool), jnp.full(len(crystals), max_steps, jnp.int32),
                 jnp.asarray(fmax, R.dtype))
    return program.run.lower(*arguments).compile(), arguments


def relax(crystals: Crystals, potential, fmax: float = DEFAULT_FMAX, max_steps: int = DEFAULT_MAX_STEPS,
          chunk_size: int | None = None, settings: FireSettings = FireSettings(),
          progress: bool = False, free: np.ndarray | None = None) -> RelaxResult:
    """Relax every structure of ``crystals`` (fixed cells) and return all results in input order; only the
    atoms of ``free`` (B, N) bool move, if given (see :func:`relax_chunks`)."""
    c = crystals.to_numpy()
    chunk_size = chunk_size or default_chunk_size(c.batch_size, c.n_atoms)
    chunks = relax_chunks(c, potential, fmax, max_steps, chunk_size, settings, free=free)
    if progress:
        chunks = runs_progress(chunks, total=-(-len(c) // chunk_size), desc="relax", unit="chunk")
    parts = [r for _, r in chunks]
    return RelaxResult(
        Crystals.concatenate([p.crystals for p in parts]),
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("status", "steps", "e_initial", "e_final",
                                                                   "fmax")),
    )
