"""Fe–Ni–Cr FCC alloy datasets by cluster-expansion Monte Carlo (Dismai-Bench §2.1.1, §4.1.1).

The published chemical cluster expansion (46 ECIs: empty cluster, 3 points, 7 pair shells × 6 species
pairs in the pair-count basis) on a 4×4×4 conventional FCC cell (a = 3.6 Å, 256 sites, Fe 154 Ni 51 Cr 51),
sampled by canonical Metropolis Monte Carlo with Kawasaki (swap) moves. Per-swap work runs in JAX: a
``lax.scan`` over swap attempts, ``vmap``-ed over independent chains, with explicit PRNG keys. Snapshots are
reduced to exact integer pair counts, from which energies, cluster vectors and Warren–Cowley SRO are
computed on the host in float64.

Conventions: species index 0 = Cr, 1 = Fe, 2 = Ni (alphabetical, the ECI order); energies in eV
(per atom where the name says so); temperatures in K. A *pass* is N = 256 swap attempts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError

SPECIES = ("Cr", "Fe", "Ni")
ATOMIC_NUMBERS = (24, 26, 28)
COMPOSITION = (51, 154, 51)  # Cr, Fe, Ni on 256 sites (Fe60Ni20Cr20)
LATTICE_CONSTANT = 3.6  # Å
REPEATS = 4  # conventional cells per axis
K_BOLTZMANN = 8.617333262e-5  # eV/K

PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # Cr-Cr, Cr-Fe, Cr-Ni, Fe-Fe, Fe-Ni, Ni-Ni
PAIR_LABELS = tuple(f"{SPECIES[a]}-{SPECIES[b]}" for a, b in PAIRS)
# Squared shell radii in units of (a/2)^2 and coordination numbers z of the 7 pair shells.
SHELL_RADIUS_SQUARED = (2, 4, 6, 8, 10, 12, 14)
SHELL_Z = (12, 6, 24, 12, 24, 8, 48)
N_SHELLS = len(SHELL_Z)
CLUSTER_LABELS = tuple(f"0NN_{s}" for s in SPECIES) + tuple(
    f"{s + 1}NN_{p}" for s in range(N_SHELLS) for p in PAIR_LABELS
)
# Warren–Cowley columns of Dismai-Bench's cluster_sro.csv (1NN then 2NN).
SRO_PAIRS = ((1, 2), (0, 1), (0, 2), (1, 1), (0, 0), (2, 2))  # Fe-Ni, Cr-Fe, Cr-Ni, Fe-Fe, Cr-Cr, Ni-Ni
SRO_LABELS = tuple(
    f"{s + 1}NN_{SPECIES[a]}-{SPECIES[b]}" for s in range(2) for a, b in SRO_PAIRS
)

# The 46 published chemical ECIs (eV/atom): J0, points Cr/Fe/Ni, then shells 1..7 × PAIRS.
PUBLISHED_ECI = np.array([
    -0.00932958469464057, 0.0, 0.0, 0.0,
    0.0003376140261270978, -0.006093130106866821, -0.017503750379865866, 0.0, 0.0, 0.0022227714241077777,
    -0.03477817417403486, 0.0, 0.005939741713420254, -0.0006455514901675906, 0.016358092689283846, 0.0,
    0.0015984460745564193, -0.005292076441853677, -0.003021082122451338, 0.0, 0.0, 0.0,
    0.0, 0.0018668024945124595, -0.0038807821841662124, 0.0, -0.0036085744161752594, 0.0012250045279512465,
    -0.0007252972937068049, 0.0005925701791865664, 0.0028510208730949406, -0.0005707393430416303,
    0.0018947957869953978, -0.001669283899958865,
    0.0, -0.005562649078917254, 0.00172340842194012, 0.0, 0.00015073769660058886, -0.003134770684447135,
    0.001983244154690138, -0.0018490697130025958, -0.002680779582402635, 0.0003351340012252481,
    -0.0021377444095509075, 0.0010601861757962314,
])


# ---------------------------------------------------------------------------------------------- lattice
@dataclass(frozen=True)
class FCCLattice:
    """FCC supercell of ``repeats``³ conventional cells with static neighbour tables (numpy, host side).

    ``frac`` (N, 3) site fractional coordinates; ``lattice`` (3, 3) rows in Å; ``neighbours`` (N, C) site
    indices of all C = Σ z_s shell neighbours of each site (C = 134); ``shell_of_column`` (C,) the shell
    (0..6) of each column. Sites are ordered cell by cell, 4 basis sites per cell.
    """

    repeats: int
    lattice_constant: float
    frac: np.ndarray
    lattice: np.ndarray
    neighbours: np.ndarray
    shell_of_column: np.ndarray

    @property
    def n_sites(self) -> int:
        return self.frac.shape[0]


def shell_vectors(shell: int) -> np.ndarray:
    """(z_s, 3) integer FCC vectors of pair shell ``shell`` (0-based) in units of a/2, sorted."""
    r = range(-3, 4)
    vectors = [
        (x, y, z) for x in r for y in r for z in r
        if (x + y + z) % 2 == 0 and x * x + y * y + z * z == SHELL_RADIUS_SQUARED[shell]
    ]
    return np.array(sorted(vectors), dtype=np.int64)


def fcc_lattice(repeats: int = REPEATS, lattice_constant: float = LATTICE_CONSTANT) -> FCCLattice:
    """The FCC supercell and its 7 neighbour shells as index tables.

    Neighbours are found by integer site arithmetic (exact). In cells smaller than 4×4×4 distinct shell
    vectors can reach the same site (the table then lists it more than once, which the energy counts
    correctly); a shell vector that maps a site onto itself is rejected.
    """
    if repeats < 2:
        raise DismaxInputError(f"FCC supercell needs at least 2 conventional cells per axis, got {repeats}")
    period = 2 * repeats
    basis = np.array([(0, 0, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1)])
    cells = np.array([(i, j, k) for i in range(repeats) for j in range(repeats) for k in range(repeats)])
    half = (2 * cells[:, None, :] + basis[None, :, :]).reshape(-1, 3)
    index = -np.ones((period,) * 3, dtype=np.int64)
    index[half[:, 0], half[:, 1], half[:, 2]] = np.arange(len(half))
    columns, shells = [], []
    for s in range(N_SHELLS):
        for v in shell_vectors(s):
            target = (half + v) % period
            columns.append(index[target[:, 0], target[:, 1], target[:, 2]])
            shells.append(s)
    neighbours = np.stack(columns, axis=1)
    if (neighbours < 0).any() or (neighbours == np.arange(len(half))[:, None]).any():
        raise DismaxInputError(f"a {repeats}×{repeats}×{repeats} FCC cell maps a shell vector onto itself")
    return FCCLattice(
        repeats=repeats,
        lattice_constant=float(lattice_constant),
        frac=half / period,
        lattice=np.eye(3) * lattice_constant * repeats,
        neighbours=neighbours.astype(np.int32),
        shell_of_column=np.array(shells, dtype=np.int32),
    )


# ---------------------------------------------------------------------------------------------- energy
@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ClusterExpansion:
    """Chemical pair cluster expansion: E/N = j0 + Σ_X point_X x_X + Σ_s Σ_{A≤B} pair[s,A,B] · n_{s,AB}.

    ``j0`` () eV/atom; ``point`` (3,) eV/atom; ``pair`` (7, 3, 3) symmetric, eV per unordered pair
    (n_{s,AB} = unordered A–B pairs in shell s / N).
    """

    j0: jax.Array
    point: jax.Array
    pair: jax.Array

    @classmethod
    def from_eci(cls, eci=PUBLISHED_ECI, dtype=None) -> "ClusterExpansion":
        """From the 46-value ECI vector (ordering of ``CLUSTER_LABELS`` after J0); dtype default float."""
        eci = np.asarray(eci, dtype=np.float64)
        if eci.shape != (1 + len(CLUSTER_LABELS),):
            raise DismaxInputError(f"expected {1 + len(CLUSTER_LABELS)} ECIs, got shape {eci.shape}")
        pair = np.zeros((N_SHELLS, 3, 3))
        for s in range(N_SHELLS):
            for p, (a, b) in enumerate(PAIRS):
                pair[s, a, b] = pair[s, b, a] = eci[4 + 6 * s + p]
        dtype = dtype or jnp.result_type(float)
        return cls(jnp.asarray(eci[0], dtype), jnp.asarray(eci[1:4], dtype), jnp.asarray(pair, dtype))


def pair_counts(occupation: jax.Array, lattice: FCCLattice) -> jax.Array:
    """Ordered pair counts (7, 3, 3) int32: C[s, A, B] = #(i, j) with σ_i = A, σ_j = B, j in shell s of i.

    ``occupation`` (N,) species indices. Unordered A–B pairs are C[s,A,B] for A ≠ B and C[s,A,A]/2.
    """
    onehot = jax.nn.one_hot(occupation, 3, dtype=jnp.int32)
    per_column = jnp.einsum("ia,icb->cab", onehot, onehot[jnp.asarray(lattice.neighbours)])
    return jax.ops.segment_sum(per_column, jnp.asarray(lattice.shell_of_column), num_segments=N_SHELLS)


def total_energy(occupation: jax.Array, lattice: FCCLattice, ce: ClusterExpansion) -> jax.Array:
    """Total CE energy (eV) of one configuration ``occupation`` (N,)."""
    n = occupation.shape[0]
    x = jnp.bincount(occupation, length=3).astype(ce.pair.dtype) / n
    counts = pair_counts(occupation, lattice).astype(ce.pair.dtype)
    return n * (ce.j0 + x @ ce.point) + 0.5 * jnp.sum(counts * ce.pair)


def swap_energy_change(occupation: jax.Array, i, j, lattice: FCCLattice, ce: ClusterExpansion) -> jax.Array:
    """Change of the total energy (eV) when the species of sites ``i`` and ``j`` are exchanged.

    Local: only the shell neighbours of the two sites are read, with the correction for i and j being
    neighbours of each other (counted with multiplicity).
    """
    neighbours = jnp.asarray(lattice.neighbours)
    column_pair = ce.pair[jnp.asarray(lattice.shell_of_column)]  # (C, 3, 3)
    return _swap_delta(occupation, i, j, neighbours, column_pair)


def _swap_delta(occupation, i, j, neighbours, column_pair):
    a, b = occupation[i], occupation[j]
    around_i, around_j = neighbours[i], neighbours[j]
    species_i, species_j = occupation[around_i], occupation[around_j]
    columns = jnp.arange(neighbours.shape[1])
    field_i = column_pair[columns, b, species_i] - column_pair[columns, a, species_i]
    field_j = column_pair[columns, a, species_j] - column_pair[columns, b, species_j]
    bond = column_pair[:, a, a] + column_pair[:, b, b] - 2.0 * column_pair[:, a, b]
    return jnp.sum(field_i + field_j - jnp.where(around_i == j, bond, 0.0))


# ------------------------------------------------------------------------------------ host-side analysis
def cluster_vectors(counts: np.ndarray, composition=COMPOSITION) -> np.ndarray:
    """(..., 45) cluster vectors (x_X, then n_{s,AB} per shell) from ordered counts (..., 7, 3, 3)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = float(sum(composition))
    x = np.broadcast_to(np.asarray(composition, np.float64) / n, counts.shape[:-3] + (3,))
    pairs = np.stack(
        [counts[..., a, b] / n if a != b else counts[..., a, a] / (2.0 * n) for a, b in PAIRS], axis=-1
    )
    return np.concatenate([x, pairs.reshape(counts.shape[:-3] + (6 * N_SHELLS,))], axis=-1)


def energy_per_atom(cluster_vector: np.ndarray, eci=PUBLISHED_ECI) -> np.ndarray:
    """CE energy (eV/atom) from cluster vectors (..., 45): J0 + ECI · vector (float64)."""
    eci = np.asarray(eci, np.float64)
    return eci[0] + np.asarray(cluster_vector, np.float64) @ eci[1:]


def warren_cowley(counts: np.ndarray, composition=COMPOSITION) -> np.ndarray:
    """(..., 12) Warren–Cowley α of the 1NN and 2NN shells in ``SRO_LABELS`` order.

    α_s^{AB} = 1 − P(B|A)/x_B with P(B|A) = C[s,A,B] / (z_s n_A) (Dismai-Bench eq. 1; symmetric without
    vacancies).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_species = np.asarray(composition, np.float64)
    x = n_species / n_species.sum()
    columns = []
    for s in range(2):
        for a, b in SRO_PAIRS:
            columns.append(1.0 - counts[..., s, a, b] / (SHELL_Z[s] * n_species[a]) / x[b])
    return np.stack(columns, axis=-1)


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

    def sweep(self, state: ChainState, temperature, n_attempts: int) -> ChainState:
        """``n_attempts`` swap attempts as one ``lax.scan`` (random numbers drawn in bulk up front)."""
        n = self.lattice.n_sites
        block_of_slot = jnp.asarray(self.block_of_slot)
        counts = jnp.asarray(self.composition, jnp.int32)
        starts = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts)[:-1]])
        neighbours = jnp.asarray(self.lattice.neighbours)
        column_pair = self.ce.pair[jnp.asarray(self.lattice.shell_of_column)]
        beta = 1.0 / (K_BOLTZMANN * jnp.asarray(temperature, column_pair.dtype))

        key, k_slot, k_other, k_accept = jax.random.split(state.key, 4)
        slot_u = jax.random.randint(k_slot, (n_attempts,), 0, n)
        block_u = block_of_slot[slot_u]
        other = jax.random.randint(k_other, (n_attempts,), 0, n - counts[block_u])
        slot_v = jnp.where(other >= starts[block_u], other + counts[block_u], other)
        log_uniform = jnp.log(jax.random.uniform(k_accept, (n_attempts,), column_pair.dtype))

        def attempt(carry, draw):
            occupation, slots, accepted = carry
            u, v, log_r = draw
            i, j = slots[u], slots[v]
            delta = _swap_delta(occupation, i, j, neighbours, column_pair)
            accept = log_r < -beta * delta
            a, b = occupation[i], occupation[j]
            occupation = occupation.at[i].set(jnp.where(accept, b, a)).at[j].set(jnp.where(accept, a, b))
            slots = slots.at[u].set(jnp.where(accept, j, i)).at[v].set(jnp.where(accept, i, j))
            return (occupation, slots, accepted + accept.astype(jnp.int32)), None

        (occupation, slots, accepted), _ = jax.lax.scan(
            attempt, (state.occupation, state.slots, state.accepted), (slot_u, slot_v, log_uniform)
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


@lru_cache(maxsize=1)
def published_sampler() -> KawasakiSampler:
    """The Dismai-Bench sampler (4×4×4 cell, Fe154 Ni51 Cr51, published ECIs, float32); cached so that its
    jit compilations are reused across datasets."""
    return KawasakiSampler(fcc_lattice(), ClusterExpansion.from_eci(dtype=jnp.float32))


class _ChainRunner:
    """Runs the chains of one temperature in equal segments and accumulates snapshots (host numpy)."""

    def __init__(self, sampler: KawasakiSampler, temperature: float, protocol: AlloyProtocol, key: jax.Array,
                 bar):
        self.sampler, self.temperature, self.protocol, self.bar = sampler, float(temperature), protocol, bar
        self.states = jax.vmap(sampler.init)(jax.random.split(key, protocol.chains))
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
        occupations = np.concatenate(self.occupations, axis=1)[:, self.burn_in:]
        counts = np.concatenate(self.counts, axis=1)[:, self.burn_in:]
        chains, snaps = occupations.shape[:2]
        chain = np.repeat(np.arange(chains), snaps)
        snapshot = np.tile(np.arange(self.burn_in, self.burn_in + snaps), chains)
        return occupations.reshape(chains * snaps, -1), counts.reshape((chains * snaps,) + counts.shape[2:]), \
            chain, snapshot

    @property
    def acceptance(self) -> list[float]:
        return (np.asarray(self.states.accepted) / np.maximum(np.asarray(self.states.attempted), 1)).tolist()


def narrow_mask(sro: np.ndarray, width: float = 0.1, mean: np.ndarray | None = None) -> np.ndarray:
    """(P,) True where every SRO column of ``sro`` (P, 12) lies within ±``width`` of its pool mean."""
    mean = sro.mean(axis=0) if mean is None else mean
    return np.all(np.abs(sro - mean) <= width, axis=1)


def generate_alloy_dataset(temperature: float, selection: str, protocol: AlloyProtocol, seed: int) -> dict:
    """Run the MC protocol and select structures; returns arrays and metadata (no files written).

    ``selection`` is ``"wide"`` (uniform draw from the pool after burn-in) or ``"narrow"`` (uniform draw
    among pool structures whose 12 first/second-shell α lie within ±``narrow_width`` of the mean of the
    whole pool, excluding the structures of the wide draw; chains are extended if too few pass).
    """
    if selection not in ("wide", "narrow"):
        raise DismaxInputError(f"selection must be 'wide' or 'narrow', got {selection!r}")
    from dismax.runs import progress as progress_bar

    sampler = published_sampler()
    lattice = sampler.lattice
    key = jax.random.fold_in(jax.random.PRNGKey(seed), int(round(temperature)))
    bar = progress_bar(total=protocol.passes, unit="pass", desc=f"MC {temperature:g} K, {protocol.chains} chains")
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
            sro = warren_cowley(counts)
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
    vectors = cluster_vectors(counts)
    return {
        "lattice": lattice,
        "occupations": occupations[chosen].astype(np.int32),
        "counts": counts,
        "cluster_vectors": vectors,
        "energy_per_atom": energy_per_atom(vectors),
        "sro": warren_cowley(counts),
        "chain": chain[chosen],
        "mc_pass": (snapshot[chosen] + 1) * protocol.snapshot_every,
        "sro_filter_mean": sro_mean,
        "pool_size": len(occupations),
        "passes_run": runner.done * protocol.snapshot_every,
        "acceptance": runner.acceptance,
        "protocol": protocol,
    }


def write_alloy_dataset(name: str, temperature: float, selection: str, size: str, seed: int,
                        out_dir: Path, protocol: AlloyProtocol | None = None) -> None:
    """Build one alloy dataset into ``out_dir``: ``train.extxyz``, ``val.extxyz`` (80/20), ``params.json``.

    Atoms are written in species blocks Cr, Fe, Ni (sites in lattice order within a block); each frame
    carries ``formation_energy`` (CE energy, eV/atom), ``chain`` and ``mc_pass``. ``protocol``
    overrides the parameters of ``size``.
    """
    from dismax.io import write_extxyz
    from dismax.runs import atomic_write_text
    from dismax.structures import Crystals

    if protocol is None:
        if size not in PROTOCOLS:
            raise DismaxInputError(f"size must be one of {sorted(PROTOCOLS)}, got {size!r}")
        protocol = PROTOCOLS[size]
    data = generate_alloy_dataset(temperature, selection, protocol, seed)
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
        "composition": dict(zip(SPECIES, COMPOSITION)),
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


def _builder(temperature: float, selection: str):
    name = f"alloy_{temperature:g}K_{selection}"

    def build(size: str, seed: int, out_dir: Path) -> None:
        write_alloy_dataset(name, temperature, selection, size, seed, out_dir)

    build.__name__ = f"build_{temperature:g}K_{selection}"
    build.__doc__ = f"Build {name} (T = {temperature:g} K, {selection} SRO) into out_dir."
    return build


build_300K_wide = _builder(300.0, "wide")
build_300K_narrow = _builder(300.0, "narrow")
build_1500K_wide = _builder(1500.0, "wide")
build_1500K_narrow = _builder(1500.0, "narrow")
