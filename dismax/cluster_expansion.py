"""The Fe–Ni–Cr FCC chemical cluster expansion of Dismai-Bench: the one home of its constants and formulas.

Used by the dataset builder (:mod:`dismax.data.alloy`, Monte Carlo) and by the alloy metrics
(:mod:`dismax.bench.alloy`). Clusters are the empty cluster, 3 points and 7 pair shells × 6 unordered species
pairs; the 46 published ECIs are in eV/atom.

Conventions: species index 0 = Cr, 1 = Fe, 2 = Ni (alphabetical, the ECI and CSV column order).
*Ordered pair counts* ``C[s, A, B]`` (7, 3, 3) count (centre i of species A, neighbour j of species B, j in
shell s of i); the *cluster vector* (45,) (``CLUSTER_LABELS``) holds the point fractions x_X followed by
n_{s,AB} = (C[s,A,B] + C[s,B,A]) / (2N) for A ≠ B and C[s,A,A] / (2N), i.e. unordered pairs per atom (the
"un-divided normalised counts" of the published cluster counting). Energies and Warren–Cowley SRO are
computed from cluster vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dismax.errors import DismaxInputError

SPECIES = ("Cr", "Fe", "Ni")
ATOMIC_NUMBERS = (24, 26, 28)
COMPOSITION = (51, 154, 51)  # Cr, Fe, Ni on 256 sites (Fe60Ni20Cr20)
LATTICE_CONSTANT = 3.6  # Å, conventional FCC cell
REPEATS = 4  # conventional cells per axis of the 256-site supercell

PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # Cr-Cr, Cr-Fe, Cr-Ni, Fe-Fe, Fe-Ni, Ni-Ni
PAIR_LABELS = tuple(f"{SPECIES[a]}-{SPECIES[b]}" for a, b in PAIRS)
PAIR_INDEX = np.zeros((3, 3), dtype=np.int32)  # (A, B) -> index into PAIRS
for _index, (_a, _b) in enumerate(PAIRS):
    PAIR_INDEX[_a, _b] = PAIR_INDEX[_b, _a] = _index

# Squared shell radii in units of (a/2)^2, coordination numbers z and the published nominal lengths (Å)
# of the 7 pair shells.
SHELL_RADIUS_SQUARED = (2, 4, 6, 8, 10, 12, 14)
SHELL_Z = (12, 6, 24, 12, 24, 8, 48)
SHELL_LENGTHS = (2.545584, 3.6, 4.409082, 5.091169, 5.6921, 6.235383, 6.734983)
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




def scaled_composition(n_sites: int) -> tuple[int, int, int]:
    """Atoms (Cr, Fe, Ni) of the published Fe154 Ni51 Cr51 composition scaled to ``n_sites`` sites.

    Rounded to the closest integer composition with as many Cr as Ni atoms (the published cell has equal
    counts): the Cr/Ni count minimising the largest deviation of any species from its exact share. 256
    sites give the published (51, 154, 51); 32 sites (2×2×2) give (6, 20, 6), Fe20Ni6Cr6 = 62.5/18.75/18.75
    at.% against the exact 19.25 Fe and 6.375 Cr/Ni.
    """
    exact = np.asarray(COMPOSITION, np.float64) * n_sites / sum(COMPOSITION)

    def worst_deviation(minor: int) -> float:
        return float(np.abs(np.array([minor, n_sites - 2 * minor, minor]) - exact).max())

    minor = min(range(n_sites // 2 + 1), key=worst_deviation)
    return minor, n_sites - 2 * minor, minor


# ------------------------------------------------------------------------------------ shells and tables
def shell_vectors(shell: int) -> np.ndarray:
    """(z_s, 3) integer FCC vectors of pair shell ``shell`` (0-based) in units of a/2, sorted."""
    r = range(-3, 4)
    vectors = [
        (x, y, z) for x in r for y in r for z in r
        if (x + y + z) % 2 == 0 and x * x + y * y + z * z == SHELL_RADIUS_SQUARED[shell]
    ]
    return np.array(sorted(vectors), dtype=np.int64)


def cluster_offsets() -> tuple[np.ndarray, np.ndarray]:
    """All pair-cluster orientations as the published counting uses them: offsets (134, 3) in Å and their
    shell index (134,) in 0..6.

    Each shell's FCC vectors scaled to the published nominal length and rounded to 3 decimals (+v and -v
    both listed): 12, 6, 24, 12, 24, 8, 48 orientations, sorted within a shell.
    """
    offsets, shells = [], []
    for shell, length in enumerate(SHELL_LENGTHS):
        vectors = shell_vectors(shell).astype(np.float64)
        offsets.append(np.round(vectors * (length / np.linalg.norm(vectors[0])), 3) + 0.0)
        shells.append(np.full(len(vectors), shell, dtype=np.int32))
    return np.concatenate(offsets), np.concatenate(shells)


def offset_lookup_table() -> np.ndarray:
    """(7, 7, 7) int32 lookup from an FCC vector in units of a/2 (components -3..3, index + 3) to its row in
    :func:`cluster_offsets`, or -1 when the vector is in none of the 7 shells."""
    table = np.full((7, 7, 7), -1, dtype=np.int32)
    row = 0
    for shell in range(N_SHELLS):
        integers = shell_vectors(shell) + 3
        table[integers[:, 0], integers[:, 1], integers[:, 2]] = np.arange(row, row + len(integers))
        row += len(integers)
    return table


@dataclass(frozen=True)
class FCCLattice:
    """FCC supercell of ``repeats``³ conventional cells with static neighbour tables (numpy, host side).

    ``frac`` (N, 3) site fractional coordinates; ``lattice`` (3, 3) rows in Å; ``neighbours`` (N, C) site
    indices of all C = Σ z_s shell neighbours of each site (C = 134), listed shell by shell; ``shell_of_column`` (C,) the shell
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


def shell_multiplicity(lattice: FCCLattice) -> np.ndarray:
    """(N, N, 7) int8 table M[i, j, s]: how often site j appears in shell s of site i (0 or 1 in the
    4×4×4 cell, up to z_s in smaller cells where shell vectors alias). Symmetric in i and j."""
    n, columns = lattice.neighbours.shape
    table = np.zeros((n, n, N_SHELLS), np.int8)
    rows = np.repeat(np.arange(n), columns)
    np.add.at(table, (rows, lattice.neighbours.ravel(), np.tile(lattice.shell_of_column, n)), 1)
    return table


def environment_counts(occupation: jax.Array, lattice: FCCLattice) -> jax.Array:
    """(N, 7, 3) int32 environments n[i, s, B]: the number of shell-s neighbours of site i holding species B
    (with multiplicity), for a configuration ``occupation`` (N,) of species indices."""
    around = jax.nn.one_hot(occupation, 3, dtype=jnp.int32)[jnp.asarray(lattice.neighbours)]  # (N, C, 3)
    # fcc_lattice lists the columns shell by shell, so each shell is a static slice: sums, no scatter.
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lattice.shell_of_column, minlength=N_SHELLS))])
    return jnp.stack([around[:, start:end].sum(axis=1) for start, end in zip(bounds[:-1], bounds[1:])], axis=1)


def pair_counts(occupation: jax.Array, lattice: FCCLattice) -> jax.Array:
    """Ordered pair counts (7, 3, 3) int32 of a configuration ``occupation`` (N,) species indices on
    ``lattice``: C[s, A, B] = #(i, j) with σ_i = A, σ_j = B, j in shell s of i."""
    onehot = jax.nn.one_hot(occupation, 3, dtype=jnp.int32)
    return jnp.einsum("ia,isb->sab", onehot, environment_counts(occupation, lattice))


def total_energy(occupation: jax.Array, lattice: FCCLattice, ce: ClusterExpansion) -> jax.Array:
    """Total CE energy (eV) of one configuration ``occupation`` (N,)."""
    n = occupation.shape[0]
    x = jnp.bincount(occupation, length=3).astype(ce.pair.dtype) / n
    counts = pair_counts(occupation, lattice).astype(ce.pair.dtype)
    return n * (ce.j0 + x @ ce.point) + 0.5 * jnp.sum(counts * ce.pair)


def environment_swap_delta(environment_i, environment_j, shared, a, b, pair: jax.Array) -> jax.Array:
    """Total-energy change (eV) of exchanging species ``a`` on site i and ``b`` on site j.

    From the two environments (7, 3) of :func:`environment_counts`, ``shared`` (7,) = M[i, j] of
    :func:`shell_multiplicity` and the pair ECIs ``pair`` (7, 3, 3):
    ΔE = Σ_{s,B} (J_s[b,B] − J_s[a,B]) (n_i[s,B] − n_j[s,B]) − Σ_s M_ij[s] (J_s[a,a] + J_s[b,b] − 2 J_s[a,b]),
    the second term correcting for i and j being neighbours of each other. Exact integer environments make
    ΔE a function of the configuration alone (no accumulated round-off).
    """
    field = pair[:, b, :] - pair[:, a, :]
    difference = (environment_i.astype(pair.dtype) - environment_j.astype(pair.dtype))
    bond = pair[:, a, a] + pair[:, b, b] - 2.0 * pair[:, a, b]
    return jnp.sum(field * difference) - jnp.sum(shared.astype(pair.dtype) * bond)


def swap_energy_change(occupation: jax.Array, i, j, lattice: FCCLattice, ce: ClusterExpansion) -> jax.Array:
    """Change of the total energy (eV) when the species of sites ``i`` and ``j`` are exchanged."""
    environment = environment_counts(occupation, lattice)
    shared = jnp.asarray(shell_multiplicity(lattice))[i, j]
    return environment_swap_delta(environment[i], environment[j], shared, occupation[i], occupation[j], ce.pair)


# ------------------------------------------------------------------------ cluster vectors, energy, SRO
def cluster_vectors(counts: np.ndarray, species_counts) -> np.ndarray:
    """(..., 45) cluster vectors from ordered pair counts (..., 7, 3, 3) and atoms per species (..., 3).

    Points x_X = n_X / N; pairs (C[s,A,B] + C[s,B,A]) / 2N for A ≠ B and C[s,A,A] / 2N (float64).
    """
    counts = np.asarray(counts, dtype=np.float64)
    species_counts = np.asarray(species_counts, dtype=np.float64)
    n = species_counts.sum(axis=-1, keepdims=True)
    x = np.broadcast_to(species_counts / n, counts.shape[:-3] + (3,))
    pair_values = np.stack(
        [(counts[..., a, b] + counts[..., b, a] if a != b else counts[..., a, a]) for a, b in PAIRS], axis=-1
    )
    pairs = pair_values / (2.0 * n[..., None])
    return np.concatenate([x, pairs.reshape(counts.shape[:-3] + (6 * N_SHELLS,))], axis=-1)


def energy_per_atom(cluster_vector: np.ndarray, eci=PUBLISHED_ECI) -> np.ndarray:
    """CE energy (eV/atom) from cluster vectors (..., 45): J0 + ECI · vector (float64)."""
    eci = np.asarray(eci, np.float64)
    return eci[0] + np.asarray(cluster_vector, np.float64) @ eci[1:]


def cluster_probabilities(cluster_vector: np.ndarray) -> np.ndarray:
    """(..., 45) conditional-probability fingerprint: pair columns divided by half the coordination z_s/2."""
    divisors = np.concatenate([np.ones(3), np.repeat(np.asarray(SHELL_Z) // 2, 6)])
    return np.asarray(cluster_vector) / divisors


def warren_cowley(cluster_vector: np.ndarray) -> np.ndarray:
    """Warren–Cowley SRO (..., 12) of the 1NN and 2NN shells, columns ``SRO_LABELS``, from cluster vectors.

    With c_XY the unordered-pair value and x_X the point fraction of a shell: D_X = 2 c_XX + Σ_{Z≠X} c_XZ,
    α_XX = 1 − 2 c_XX / D_X / x_X and, symmetrised, α_XY = 1 − ½ [c_XY / D_X / x_Y + c_XY / D_Y / x_X]
    (spec dismai_bench.md §5.8). Without vacancies D_X = z_s x_X and this is Dismai-Bench eq. 1,
    α = 1 − P(B|A) / x_B. Undefined values (a species absent) are NaN.
    """
    vector = np.asarray(cluster_vector, dtype=np.float64)
    fractions = vector[..., :3]
    columns = []
    for shell in (0, 1):
        values = vector[..., 3 + 6 * shell: 9 + 6 * shell]
        pair = values[..., PAIR_INDEX]                                 # (..., 3, 3) symmetric
        diagonal = np.arange(3)
        denominators = pair.sum(axis=-1) + pair[..., diagonal, diagonal]
        with np.errstate(divide="ignore", invalid="ignore"):
            for a, b in SRO_PAIRS:
                if a == b:
                    columns.append(1 - 2 * pair[..., a, a] / denominators[..., a] / fractions[..., a])
                else:
                    columns.append(1 - 0.5 * (pair[..., a, b] / denominators[..., a] / fractions[..., b]
                                              + pair[..., a, b] / denominators[..., b] / fractions[..., a]))
    return np.stack(columns, axis=-1)
