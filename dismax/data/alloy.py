"""Fe–Ni–Cr FCC alloy datasets by cluster-expansion Monte Carlo (Dismai-Bench §2.1.1, §4.1.1).

The published chemical cluster expansion (:mod:`dismax.cluster_expansion`) on a 4×4×4 conventional FCC
cell (a = 3.6 Å, 256 sites, Fe 154 Ni 51 Cr 51), sampled by canonical Metropolis Monte Carlo with Kawasaki
(swap) moves. Reduced cells (``repeats`` < 4, the ``alloy_2x2x2_*`` datasets: 32 sites, Fe20 Ni6 Cr6 from
:func:`scaled_composition`) use the same expansion; their pair shells 2–7 are at least half the 7.2 Å cell
long, so a shell vector and its periodic alias can reach the same site, which the neighbour tables count
with multiplicity: the energy and SRO are those of the infinite crystal that repeats the reduced cell. Per-swap work runs in JAX: a ``lax.scan`` over swap attempts, ``vmap``-ed over independent
chains, with explicit PRNG keys. Snapshots are reduced to exact integer pair counts, from which energies,
cluster vectors and Warren–Cowley SRO are computed on the host in float64.

Conventions: species index 0 = Cr, 1 = Fe, 2 = Ni (alphabetical, the ECI order); energies in eV
(per atom where the name says so); temperatures in K. A *pass* is N swap attempts (N sites;
256 in the published cell).

Performance (``python benchmarks/alloy_mc.py``: 50 passes at 1500 K, same-run icet 4.0 CanonicalEnsemble,
2 shared CPU cores). Before the environment scheme (each attempt gathered the species of 2 × 134 shell
neighbours), load average 0.1–0.4: 10 vmapped chains 413,767 attempts/s = 21.1× icet (1 chain 23.2×).
With the exact int8 environments, load average 1.0–1.1: 10 chains 1,934,218 attempts/s wall-clock
(1,751,747 per CPU second) = 73.1× icet wall-clock, 66.2× per CPU second (1 chain 20.7× / 20.0×); XLA
counts 128,090 flop per vmapped attempt of 10 chains, 24.8 GFLOP/s = 17.3 % of a same-run 143 GFLOP/s
matmul probe. Trace of 512 attempts: the environment update 7.9 % of the operation time, the two
multiplicity-row gathers 6.1 % + 5.2 %, the ΔE reductions 4.3 % + 3.4 %, the occupation/slot scatters
4.1 % + 3.7 %; the rest is spread over ~10 smaller kernels per attempt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dismax.cluster_expansion import (ATOMIC_NUMBERS, CLUSTER_LABELS, COMPOSITION, N_SHELLS, PUBLISHED_ECI,
                                      REPEATS, SPECIES, SRO_LABELS, ClusterExpansion, FCCLattice,
                                      cluster_vectors, energy_per_atom, environment_counts,
                                      environment_swap_delta, fcc_lattice, pair_counts, scaled_composition,
                                      shell_multiplicity, warren_cowley)
from dismax.devices import gather_rows, process_share
from dismax.errors import DismaxInputError
from dismax.io import write_extxyz
from dismax.runs import atomic_write_text, progress
from dismax.structures import Crystals

K_BOLTZMANN = 8.617333262e-5  # eV/K


# ---------------------------------------------------------------------------------------- Monte Carlo
@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ChainState:
    """State of one Kawasaki chain: ``occupation`` (N,) species per site; ``slots`` (N,) sites listed in
    species blocks (slot u holds a site of species ``block_of_slot[u]``); ``key``; swap counters."""

    occupation: jax.Array
    slots: jax.Array
    key: jax.Array
    attempted: jax.Array
    accepted: jax.Array


@dataclass(frozen=True)
class KawasakiSampler:
    """Canonical Metropolis MC with Kawasaki moves on a fixed composition (``composition`` per species).

    Proposal: a uniformly random site-slot u (species A) and a uniformly random slot of any other species
    (site of species B ≠ A); the proposal probability of a pair depends only on (A, B), so it is symmetric.
    Acceptance min(1, exp(−ΔE_tot / k_B T)) on the total energy change.
    """

    lattice: FCCLattice
    ce: ClusterExpansion
    composition: tuple[int, ...] = COMPOSITION

    def __post_init__(self):
        if sum(self.composition) != self.lattice.n_sites or len(self.composition) != 3:
            raise DismaxInputError(
                f"composition {self.composition} does not fill the {self.lattice.n_sites}-site cell"
            )

    @property
    def block_of_slot(self) -> np.ndarray:
        return np.repeat(np.arange(3), self.composition).astype(np.int32)

    def init(self, key: jax.Array) -> ChainState:
        """A random configuration of the fixed composition (one chain; vmap over keys for many)."""
        key, sub = jax.random.split(key)
        slots = jax.random.permutation(sub, self.lattice.n_sites).astype(jnp.int32)
        occupation = jnp.zeros(self.lattice.n_sites, jnp.int32).at[slots].set(jnp.asarray(self.block_of_slot))
        zero = jnp.zeros((), jnp.int32)
        return ChainState(occupation, slots, key, zero, zero)

    @cached_property
    def _multiplicity_rows(self) -> np.ndarray:
        """(N, N·7) int8: row i is M[i] of :func:`shell_multiplicity` flattened (site-major, shell-minor)."""
        return shell_multiplicity(self.lattice).reshape(self.lattice.n_sites, -1)

    def proposals(self, key: jax.Array, n_attempts: int):
        """The random draws of ``n_attempts`` swap attempts: (next key, slot u (n,), slot v (n,), log r (n,)).

        Slot u is uniform over all N slots, slot v uniform over the slots of the other species, log r the
        log of the uniform number the Metropolis test compares with −ΔE / k_B T.
        """
        n = self.lattice.n_sites
        block_of_slot = jnp.asarray(self.block_of_slot)
        counts = jnp.asarray(self.composition, jnp.int32)
        starts = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts)[:-1]])
        key, k_slot, k_other, k_accept = jax.random.split(key, 4)
        slot_u = jax.random.randint(k_slot, (n_attempts,), 0, n)
        block_u = block_of_slot[slot_u]
        other = jax.random.randint(k_other, (n_attempts,), 0, n - counts[block_u])
        slot_v = jnp.where(other >= starts[block_u], other + counts[block_u], other)
        log_uniform = jnp.log(jax.random.uniform(k_accept, (n_attempts,), self.ce.pair.dtype))
        return key, slot_u, slot_v, log_uniform

    def carry(self, state: ChainState):
        """The scan carry of :meth:`attempt` for a chain: (occupation, slots, environment, accepted), the
        environment n[B, i, s] (:func:`environment_counts`) as int8, species-major (3, N·7)."""
        environment = environment_counts(state.occupation, self.lattice).astype(jnp.int8)
        return state.occupation, state.slots, environment.transpose(2, 0, 1).reshape(3, -1), state.accepted

    def attempt(self, carry, draw, temperature):
        """One swap attempt (a ``lax.scan`` step): ``draw`` = (slot u, slot v, log r) of :meth:`proposals`.

        Reads the two sites' (3, 7) environment blocks for ΔE (:func:`environment_swap_delta`) and, weighted
        by the accept flag, adds ±(M[j] − M[i]) to the environment rows of species a and b: a dense,
        vectorised update of 3 × N × 7 bytes instead of gathers scattered over 2 × 134 neighbour columns.
        Under ``vmap`` every chain does the same work, so there is no branch.
        """
        occupation, slots, environment, accepted = carry
        u, v, log_r = draw
        rows = jnp.asarray(self._multiplicity_rows)
        pair = self.ce.pair
        beta = 1.0 / (K_BOLTZMANN * jnp.asarray(temperature, pair.dtype))
        i, j = slots[u], slots[v]
        a, b = occupation[i], occupation[j]
        row_i = jax.lax.dynamic_index_in_dim(rows, i, keepdims=False)
        row_j = jax.lax.dynamic_index_in_dim(rows, j, keepdims=False)
        environment_i = jax.lax.dynamic_slice_in_dim(environment, i * N_SHELLS, N_SHELLS, axis=1).T
        environment_j = jax.lax.dynamic_slice_in_dim(environment, j * N_SHELLS, N_SHELLS, axis=1).T
        shared = jax.lax.dynamic_slice_in_dim(row_i, j * N_SHELLS, N_SHELLS)
        delta = environment_swap_delta(environment_i, environment_j, shared, a, b, pair)
        accept = log_r < -beta * delta
        occupation = occupation.at[i].set(jnp.where(accept, b, a)).at[j].set(jnp.where(accept, a, b))
        slots = slots.at[u].set(jnp.where(accept, j, i)).at[v].set(jnp.where(accept, i, j))
        species = jnp.arange(3)
        change = (accept & (species == a)).astype(jnp.int8) - (accept & (species == b)).astype(jnp.int8)
        environment = environment + change[:, None] * (row_j - row_i)[None, :]
        return (occupation, slots, environment, accepted + accept.astype(jnp.int32)), None

    def sweep(self, state: ChainState, temperature, n_attempts: int) -> ChainState:
        """``n_attempts`` swap attempts (:meth:`attempt`) as one ``lax.scan``, random numbers drawn in bulk
        up front; the environments are rebuilt exactly from the occupation at the start."""
        key, slot_u, slot_v, log_uniform = self.proposals(state.key, n_attempts)
        (occupation, slots, _, accepted), _ = jax.lax.scan(
            partial(self.attempt, temperature=temperature), self.carry(state), (slot_u, slot_v, log_uniform)
        )
        return ChainState(occupation, slots, key, state.attempted + n_attempts, accepted)

    @partial(jax.jit, static_argnums=(0, 3, 4))
    def run(self, states: ChainState, temperature, n_snapshots: int, attempts_per_snapshot: int):
        """Advance a batch of chains (leading axis) by ``n_snapshots`` × ``attempts_per_snapshot`` attempts.

        Returns (states, occupations (chains, n_snapshots, N) int8, counts (chains, n_snapshots, 7, 3, 3)
        int32), a snapshot taken after every ``attempts_per_snapshot`` attempts.
        """

        def one_chain(state):
            def segment(state, _):
                state = self.sweep(state, temperature, attempts_per_snapshot)
                return state, (state.occupation.astype(jnp.int8), pair_counts(state.occupation, self.lattice))

            return jax.lax.scan(segment, state, None, length=n_snapshots)

        states, (occupations, counts) = jax.vmap(one_chain)(states)
        return states, occupations, counts

    def __hash__(self):  # static argument of jit: identity of the sampler object
        return id(self)

    def __eq__(self, other):
        return self is other


# ------------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class AlloyProtocol:
    """Generation parameters of one alloy dataset size (Dismai-Bench §4.1.1 for ``full``).

    Not stated in the paper, dismax choices: chains start from random configurations; during the burn-in
    (first ``burn_in_fraction`` of each chain, discarded) the temperature ramps linearly from
    ``anneal_from`` K down to the target, so that 300 K chains do not freeze into metastable states
    (from a random start at 300 K about 1 chain in 5 ends in a different, higher-energy ordering); the
    wide set is drawn uniformly from the pool after burn-in.
    """

    chains: int
    passes: int
    snapshot_every: int  # passes
    n_structures: int
    burn_in_fraction: float = 0.1
    anneal_from: float = 1500.0  # K; no annealing when the target is at or above it
    narrow_width: float = 0.1
    max_extension: float = 3.0  # extra passes allowed (× passes) to fill a narrow dataset
    segments: int = 100  # jit calls per chain run (progress-bar and annealing-ramp granularity)


PROTOCOLS = {
    # Published size: 10 chains × 50,000 passes, snapshot every 10 passes, 1,500 structures.
    "full": AlloyProtocol(chains=10, passes=50_000, snapshot_every=10, n_structures=1500),
    # CPU-friendly reduction: 10 chains × 5,000 passes (a tenth), 500 structures (400 train / 100 val).
    "small": AlloyProtocol(chains=10, passes=5_000, snapshot_every=10, n_structures=500),
}


@lru_cache(maxsize=4)
def published_sampler(repeats: int = REPEATS) -> KawasakiSampler:
    """The Dismai-Bench sampler (published ECIs, float32) on a ``repeats``³ FCC supercell with the published
    composition (Fe154 Ni51 Cr51 for 4×4×4, else :func:`scaled_composition`); cached so that its jit
    compilations are reused across datasets."""
    lattice = fcc_lattice(repeats)
    composition = COMPOSITION if repeats == REPEATS else scaled_composition(lattice.n_sites)
    return KawasakiSampler(lattice, ClusterExpansion.from_eci(dtype=jnp.float32), composition)


class _ChainRunner:
    """Runs the chains of one temperature in equal segments and accumulates snapshots (host numpy). In a
    multi-process run each process runs its share of the chains (each chain keyed by its index, so a chain
    is the same on any process) and :meth:`pool` gathers them all."""

    def __init__(self, sampler: KawasakiSampler, temperature: float, protocol: AlloyProtocol, key: jax.Array,
                 bar):
        self.sampler, self.temperature, self.protocol, self.bar = sampler, float(temperature), protocol, bar
        mine = process_share(protocol.chains)
        self.states = jax.vmap(sampler.init)(jax.random.split(key, protocol.chains)[mine.start:mine.stop])
        self.nominal = protocol.passes // protocol.snapshot_every
        self.burn_in = int(round(protocol.burn_in_fraction * self.nominal))
        self.per_segment = max(1, math.ceil(self.nominal / protocol.segments))
        self.done = 0  # snapshots per chain so far
        self.occupations: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []

    def segment_temperature(self) -> float:
        """Temperature of the next segment: linear ramp from ``anneal_from`` to the target over burn-in."""
        hot = max(self.protocol.anneal_from, self.temperature)
        progress = min(1.0, (self.done + self.per_segment) / max(self.burn_in, 1))
        return hot + (self.temperature - hot) * progress

    def advance_to(self, n_snapshots: int) -> None:
        attempts = self.protocol.snapshot_every * self.sampler.lattice.n_sites
        while self.done < n_snapshots:
            self.states, occupations, counts = self.sampler.run(
                self.states, self.segment_temperature(), self.per_segment, attempts
            )
            self.occupations.append(np.asarray(occupations))
            self.counts.append(np.asarray(counts))
            self.done += self.per_segment
            self.bar.update(self.per_segment * self.protocol.snapshot_every)

    def pool(self):
        """(occupations (P, N), counts (P, 7, 3, 3), chain (P,), snapshot (P,)) after burn-in, chain-major."""
        occupations = gather_rows(np.concatenate(self.occupations, axis=1)[:, self.burn_in:], self.protocol.chains)
        counts = gather_rows(np.concatenate(self.counts, axis=1)[:, self.burn_in:], self.protocol.chains)
        chains, snaps = occupations.shape[:2]
        chain = np.repeat(np.arange(chains), snaps)
        snapshot = np.tile(np.arange(self.burn_in, self.burn_in + snaps), chains)
        return occupations.reshape(chains * snaps, -1), counts.reshape((chains * snaps,) + counts.shape[2:]), \
            chain, snapshot

    @property
    def acceptance(self) -> list[float]:
        rates = np.asarray(self.states.accepted) / np.maximum(np.asarray(self.states.attempted), 1)
        return gather_rows(rates, self.protocol.chains).tolist()


def narrow_mask(sro: np.ndarray, width: float = 0.1, mean: np.ndarray | None = None) -> np.ndarray:
    """(P,) True where every SRO column of ``sro`` (P, 12) lies within ±``width`` of its pool mean."""
    mean = sro.mean(axis=0) if mean is None else mean
    return np.all(np.abs(sro - mean) <= width, axis=1)


def generate_alloy_dataset(temperature: float, selection: str, protocol: AlloyProtocol, seed: int,
                           repeats: int = REPEATS) -> dict:
    """Run the MC protocol on a ``repeats``³ FCC supercell and select structures; returns arrays and metadata
    (no files written).

    ``selection`` is ``"wide"`` (uniform draw from the pool after burn-in) or ``"narrow"`` (uniform draw
    among pool structures whose 12 first/second-shell α lie within ±``narrow_width`` of the mean of the
    whole pool, excluding the structures of the wide draw; chains are extended if too few pass).
    """
    if selection not in ("wide", "narrow"):
        raise DismaxInputError(f"selection must be 'wide' or 'narrow', got {selection!r}")
    sampler = published_sampler(repeats)
    lattice, composition = sampler.lattice, sampler.composition
    key = jax.random.fold_in(jax.random.PRNGKey(seed), int(round(temperature)))
    bar = progress(total=protocol.passes, unit="pass", desc=f"MC {temperature:g} K, {protocol.chains} chains")
    runner = _ChainRunner(sampler, temperature, protocol, key, bar)
    runner.advance_to(runner.nominal)

    rng = np.random.default_rng([seed, int(round(temperature)), 7])
    occupations, counts, chain, snapshot = runner.pool()
    if len(occupations) < protocol.n_structures:
        raise DismaxInputError(
            f"pool of {len(occupations)} snapshots is smaller than {protocol.n_structures} requested structures"
        )
    wide = rng.choice(len(occupations), size=protocol.n_structures, replace=False)
    chosen, sro_mean = wide, None
    if selection == "narrow":
        max_snapshots = runner.nominal + int(protocol.max_extension * runner.nominal)
        while True:
            occupations, counts, chain, snapshot = runner.pool()
            sro = warren_cowley(cluster_vectors(counts, composition))
            sro_mean = sro.mean(axis=0)
            ok = narrow_mask(sro, protocol.narrow_width, sro_mean)
            ok[wide] = False
            if ok.sum() >= protocol.n_structures or runner.done >= max_snapshots:
                break
            bar.total += runner.per_segment * protocol.snapshot_every  # extension beyond the nominal length
            runner.advance_to(runner.done + runner.per_segment)
        candidates = np.flatnonzero(ok)
        if len(candidates) < protocol.n_structures:
            raise DismaxInputError(
                f"only {len(candidates)} of {len(occupations)} snapshots at {temperature:g} K pass the "
                f"±{protocol.narrow_width} SRO filter; {protocol.n_structures} are needed"
            )
        chosen = rng.choice(candidates, size=protocol.n_structures, replace=False)
    bar.close()

    counts = counts[chosen]
    vectors = cluster_vectors(counts, composition)
    return {
        "lattice": lattice,
        "composition": composition,
        "occupations": occupations[chosen].astype(np.int32),
        "counts": counts,
        "cluster_vectors": vectors,
        "energy_per_atom": energy_per_atom(vectors),
        "sro": warren_cowley(vectors),
        "chain": chain[chosen],
        "mc_pass": (snapshot[chosen] + 1) * protocol.snapshot_every,
        "sro_filter_mean": sro_mean,
        "pool_size": len(occupations),
        "passes_run": runner.done * protocol.snapshot_every,
        "acceptance": runner.acceptance,
        "protocol": protocol,
    }


def write_alloy_dataset(name: str, temperature: float, selection: str, size: str, seed: int,
                        out_dir: Path, protocol: AlloyProtocol | None = None, repeats: int = REPEATS) -> None:
    """Build one alloy dataset on a ``repeats``³ FCC supercell into ``out_dir``: ``train.extxyz``,
    ``val.extxyz`` (80/20), ``params.json``.

    Atoms are written in species blocks Cr, Fe, Ni (sites in lattice order within a block); each frame
    carries ``formation_energy`` (CE energy, eV/atom), ``chain`` and ``mc_pass``. ``protocol``
    overrides the parameters of ``size``.
    """
    if protocol is None:
        if size not in PROTOCOLS:
            raise DismaxInputError(f"size must be one of {sorted(PROTOCOLS)}, got {size!r}")
        protocol = PROTOCOLS[size]
    data = generate_alloy_dataset(temperature, selection, protocol, seed, repeats)
    lattice: FCCLattice = data["lattice"]
    out_dir = Path(out_dir)
    n = len(data["occupations"])
    n_train = int(round(0.8 * n))
    order = np.argsort(data["occupations"], axis=1, kind="stable")
    crystals = Crystals(
        frac=lattice.frac[order],
        lattice=np.broadcast_to(lattice.lattice, (n, 3, 3)).copy(),
        species=np.asarray(ATOMIC_NUMBERS, np.int32)[np.take_along_axis(data["occupations"], order, axis=1)],
    )
    info = [
        {"formation_energy": float(data["energy_per_atom"][k]), "chain": int(data["chain"][k]),
         "mc_pass": int(data["mc_pass"][k])}
        for k in range(n)
    ]
    write_extxyz(crystals[:n_train], out_dir / "train.extxyz", info[:n_train])
    write_extxyz(crystals[n_train:], out_dir / "val.extxyz", info[n_train:])

    protocol: AlloyProtocol = data["protocol"]
    per_structure = [
        {
            "split": "train" if k < n_train else "val",
            "index": k if k < n_train else k - n_train,
            "chain": int(data["chain"][k]),
            "mc_pass": int(data["mc_pass"][k]),
            "formation_energy": float(data["energy_per_atom"][k]),
            "sro": dict(zip(SRO_LABELS, map(float, data["sro"][k]))),
        }
        for k in range(n)
    ]
    params = {
        "dataset": name,
        "size": size,
        "seed": seed,
        "system": "Fe-Ni-Cr FCC, chemical cluster expansion (Dismai-Bench)",
        "temperature_K": temperature,
        "selection": selection,
        "composition": dict(zip(SPECIES, data["composition"])),
        "repeats": lattice.repeats,
        "lattice_constant_A": lattice.lattice_constant,
        "chains": protocol.chains,
        "passes_nominal": protocol.passes,
        "passes_run": int(data["passes_run"]),
        "attempts_per_pass": lattice.n_sites,
        "snapshot_every_passes": protocol.snapshot_every,
        "burn_in_fraction": protocol.burn_in_fraction,
        "anneal_from_K": max(protocol.anneal_from, temperature),
        "pool_size": int(data["pool_size"]),
        "narrow_width": protocol.narrow_width if selection == "narrow" else None,
        "sro_filter_mean": None if data["sro_filter_mean"] is None
        else dict(zip(SRO_LABELS, map(float, data["sro_filter_mean"]))),
        "acceptance_per_chain": [float(a) for a in data["acceptance"]],  # per unlike-pair swap attempt
        "n_train": n_train,
        "n_val": n - n_train,
        "mean_sro": dict(zip(SRO_LABELS, map(float, data["sro"].mean(axis=0)))),
        "mean_formation_energy": float(data["energy_per_atom"].mean()),
        "eci": PUBLISHED_ECI.tolist(),
        "cluster_labels": list(CLUSTER_LABELS),
        "structures": per_structure,
    }
    atomic_write_text(out_dir / "params.json", json.dumps(params, indent=1) + "\n")


def _builder(temperature: float, selection: str, repeats: int = REPEATS):
    cell = "" if repeats == REPEATS else f"{repeats}x{repeats}x{repeats}_"
    name = f"alloy_{cell}{temperature:g}K_{selection}"

    def build(size: str, seed: int, out_dir: Path) -> None:
        write_alloy_dataset(name, temperature, selection, size, seed, out_dir, repeats=repeats)

    build.__name__ = f"build_{cell}{temperature:g}K_{selection}"
    build.__doc__ = f"Build {name} (T = {temperature:g} K, {selection} SRO, {repeats}³ FCC cells) into out_dir."
    return build


build_300K_wide = _builder(300.0, "wide")
build_300K_narrow = _builder(300.0, "narrow")
build_1500K_wide = _builder(1500.0, "wide")
build_1500K_narrow = _builder(1500.0, "narrow")
# The reduced 2×2×2 cell (32 sites, Fe20 Ni6 Cr6): a CryinGAN problem small enough to train on a CPU. Wide
# selection only: with 6 Cr and 6 Ni atoms the α values are coarsely quantised and no snapshot has all 12
# within ±0.1 of the pool mean (0 of 19,500 at 300 K), so a narrow set cannot be drawn.
build_2x2x2_300K_wide = _builder(300.0, "wide", repeats=2)
build_2x2x2_1500K_wide = _builder(1500.0, "wide", repeats=2)
