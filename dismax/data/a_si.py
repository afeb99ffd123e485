"""Amorphous-silicon dataset by melt–quench molecular dynamics in jax-md (route A of the dataset spec).

Protocol per 256-atom cubic cell at the a-Si density (2.28 g/cm³): random start with a minimum
separation, short FIRE pre-relaxation, Nosé–Hoover NVT melt at 3000 K, linear quench to 300 K, final FIRE
relaxation to 0.05 eV/Å with :mod:`dismax.potentials.fire`. The potential is Stillinger–Weber with the three-body
term × 1.5, which gives tetrahedral a-Si (the original SW gives over-coordinated a-Si). Cells are
propagated together (``lax.map`` on CPU, ``vmap`` on accelerators).

Sizes: ``small`` (8 cells, 1 ps melt + 4 ps quench, a few minutes on a 2-core CPU) and ``full``
(1,500 cells, 5 ps melt + 20 ps quench, ≈1.35 × 10¹⁴ K/s; meant for a GPU). Split 80 % / 20 %.
"""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dismax.geometry import minimum_image, pair_distance_histogram, wrap_centered
from dismax.potentials import StillingerWeber
from dismax.potentials.fire import relax
from dismax.potentials.jaxmd import default_batching, neighbor_energy, over_batch
from dismax.structures import Crystals

SI_Z = 14
SI_MASS = 28.0855  # amu
AVOGADRO = 6.02214076e23
K_BOLTZMANN = 8.617333262e-5  # eV/K
TIME_UNIT_FS = 10.1805055  # sqrt(amu Å² / eV) in fs: jax-md time unit with eV, Å, amu
BOND_CUTOFF = 2.85  # Å, coordination cutoff of the dataset spec


@dataclass(frozen=True)
class MeltQuench:
    """Melt–quench protocol (temperatures K, times ps, lengths Å, densities g/cm³)."""

    n_structures: int = 8
    n_atoms: int = 256
    density: float = 2.28
    three_body_strength: float = 1.5
    t_melt: float = 3000.0
    t_final: float = 300.0
    melt_ps: float = 1.0
    quench_ps: float = 4.0
    dt_fs: float = 1.0
    tau_fs: float = 100.0
    min_separation: float = 1.9
    pre_relax_steps: int = 100
    final_fmax: float = 0.05
    final_max_steps: int = 5000
    block_steps: int = 500
    val_fraction: float = 0.2

    @property
    def box_length(self) -> float:
        volume_cm3 = self.n_atoms * SI_MASS / AVOGADRO / self.density
        return (volume_cm3 * 1e24) ** (1.0 / 3.0)

    @property
    def quench_rate(self) -> float:
        """Cooling rate in K/s."""
        return (self.t_melt - self.t_final) / (self.quench_ps * 1e-12)

    @property
    def n_md_steps(self) -> int:
        return int(round((self.melt_ps + self.quench_ps) * 1000.0 / self.dt_fs))

    def temperature(self, step: jax.Array) -> jax.Array:
        """Target temperature (K) at MD step ``step``: melt plateau, then a linear ramp."""
        melt_steps = self.melt_ps * 1000.0 / self.dt_fs
        ramp = jnp.clip((step - melt_steps) / (self.quench_ps * 1000.0 / self.dt_fs), 0.0, 1.0)
        return self.t_melt + (self.t_final - self.t_melt) * ramp


SIZES = {
    "small": MeltQuench(),
    "full": MeltQuench(n_structures=1500, melt_ps=5.0, quench_ps=20.0),
}


def random_start(protocol: MeltQuench, rng: np.random.Generator) -> np.ndarray:
    """Fractional positions (N, 3) placed at random with pairwise distances ≥ ``min_separation``."""
    length = protocol.box_length
    frac = np.empty((protocol.n_atoms, 3))
    placed = 0
    for _ in range(1000 * protocol.n_atoms):
        trial = rng.random(3)
        d = wrap_centered(frac[:placed] - trial)
        if placed == 0 or np.min(np.sum(d**2, axis=1)) * length**2 >= protocol.min_separation**2:
            frac[placed] = trial
            placed += 1
            if placed == protocol.n_atoms:
                return frac
    raise RuntimeError(f"could not place {protocol.n_atoms} atoms {protocol.min_separation} Å apart")


# ---------------------------------------------------------------------- molecular dynamics
@contextmanager
def _float32_kinetic_energy():
    """While the MD is traced, silence jax-md's request for a float64 kinetic-energy sum: without JAX's x64
    mode JAX sums in float32 (as every other quantity of the MD) and would warn at every trace."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Explicitly requested dtype float64", category=UserWarning)
        yield


@lru_cache(maxsize=None)
def _md_program(protocol: MeltQuench, capacity: int, batching: str):
    """Jitted (init, block) functions for Nosé–Hoover MD of a batch of cells in one cubic box."""
    from jax_md import simulate  # jax_md takes ~6 s to import; only the MD program needs it

    potential = StillingerWeber(three_body_strength=protocol.three_body_strength)
    plumbing = neighbor_energy(potential, protocol.n_atoms, capacity, 0.5, box=jnp.eye(3) * protocol.box_length)

    def energy(R, neighbor, **unused):
        # fresh list at R: every pair within the cutoff is seen
        return plumbing.energy(R, neighbor.update(R))

    dt = protocol.dt_fs / TIME_UNIT_FS
    init_fn, apply_fn = simulate.nvt_nose_hoover(
        energy, plumbing.shift, dt, K_BOLTZMANN * protocol.t_melt, tau=protocol.tau_fs / TIME_UNIT_FS
    )

    def init_one(key, R):
        nbrs = plumbing.fresh(R)
        with _float32_kinetic_energy():
            state = init_fn(key, R, mass=SI_MASS, neighbor=nbrs)
        return state, nbrs

    def block_one(state, nbrs, first_step, n_steps):
        def step(i, carry):
            state, nbrs = carry
            kT = K_BOLTZMANN * protocol.temperature(first_step + i)
            state = apply_fn(state, neighbor=nbrs, kT=kT)
            return state, nbrs.update(state.position)

        with _float32_kinetic_energy():
            return jax.lax.fori_loop(0, n_steps, step, (state, nbrs))

    init = over_batch(init_one, batching, (0, 0))
    block = over_batch(block_one, batching, (0, 0, None, None))
    return jax.jit(init), jax.jit(block, static_argnums=3)


def melt_quench(protocol: MeltQuench, frac: np.ndarray, seed: int, batching: str | None = None,
                progress: bool = True) -> np.ndarray:
    """Run the NVT melt and quench on cells ``frac`` (B, N, 3); returns the quenched fractions."""
    from dismax.runs import progress as progress_bar

    batching = batching or default_batching()
    capacity = 32
    keys = jax.random.split(jax.random.PRNGKey(seed), len(frac))
    init, block = _md_program(protocol, capacity, batching)
    states, nbrs = init(keys, jnp.asarray(frac, jnp.float32))
    total = protocol.n_md_steps
    bar = progress_bar(total=total, desc="melt-quench MD") if progress else None
    done = 0
    while done < total:
        n = min(protocol.block_steps, total - done)
        new_states, new_nbrs = block(states, nbrs, done, n)
        if bool(jnp.any(new_nbrs.did_buffer_overflow)):
            capacity += 16  # redo this block with a larger neighbour list
            init, block = _md_program(protocol, capacity, batching)
            _, nbrs = init(keys, states.position)
            continue
        states, nbrs = new_states, new_nbrs
        done += n
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return np.asarray(states.position, np.float64)


# ---------------------------------------------------------------------- analysis
def structure_statistics(crystals: Crystals, bond_cutoff: float = BOND_CUTOFF, r_max: float = 5.0,
                         bin_width: float = 0.01) -> dict:
    """Coordination, bond angles and g(r) of a batch (minimum image; needs cell widths > 2 r_max).

    Returns per-structure ``mean_coordination``, ``cn_fractions`` (3/4/5-fold), ``mean_angle``/``angle_sd``
    (degrees) and the batch's ``rdf_first_peak`` (Å) with ``rdf_r``/``rdf_g``.
    """
    c = crystals.to_numpy()
    edges = np.arange(0.0, r_max + bin_width, bin_width)
    histogram = np.zeros(len(edges) - 1)
    per_structure = []
    density_sum = 0.0
    for b in range(c.batch_size):
        lattice = np.asarray(c.lattice[b], float)
        frac = np.asarray(c.frac[b], float)
        vectors = minimum_image(frac[None] - frac[:, None], lattice, n_images=0)
        r = np.linalg.norm(vectors, axis=-1)
        n = len(r)
        np.fill_diagonal(r, np.inf)
        with jax.enable_x64(True):
            histogram += np.asarray(pair_distance_histogram(
                jnp.asarray(frac), jnp.asarray(lattice), jnp.zeros((1, 3)), r_max=float(edges[-1]),
                n_bins=len(edges) - 1))
        density_sum += n * n / abs(np.linalg.det(lattice))
        bonded = r < bond_cutoff
        cn = bonded.sum(axis=1)
        angles = []
        for i in range(n):
            nb = np.flatnonzero(bonded[i])
            if len(nb) < 2:
                continue
            u = vectors[i, nb] / r[i, nb, None]
            cos = np.clip(u @ u.T, -1.0, 1.0)[np.triu_indices(len(nb), 1)]
            angles.append(np.degrees(np.arccos(cos)))
        angles = np.concatenate(angles) if angles else np.array([np.nan])
        per_structure.append({
            "mean_coordination": float(cn.mean()),
            "cn_fractions": {str(k): float(np.mean(cn == k)) for k in (3, 4, 5)},
            "mean_angle": float(angles.mean()),
            "angle_sd": float(angles.std()),
        })
    centres = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 * np.pi * centres**2 * bin_width
    g = histogram / (density_sum * shell)
    window = (centres > 2.0) & (centres < 2.8)
    return {
        "structures": per_structure,
        "mean_coordination": float(np.mean([s["mean_coordination"] for s in per_structure])),
        "mean_angle": float(np.mean([s["mean_angle"] for s in per_structure])),
        "angle_sd": float(np.mean([s["angle_sd"] for s in per_structure])),
        "rdf_first_peak": float(centres[window][np.argmax(g[window])]),
        "rdf_r": centres,
        "rdf_g": g,
    }


# ---------------------------------------------------------------------- dataset builder
def generate(protocol: MeltQuench, seed: int, batching: str | None = None, progress: bool = True):
    """Melt-quench ``protocol.n_structures`` cells and relax them; returns (Crystals, RelaxResult)."""
    rng = np.random.default_rng(seed)
    n = protocol.n_structures
    lattice = np.tile(np.eye(3) * protocol.box_length, (n, 1, 1))
    species = np.full((n, protocol.n_atoms), SI_Z, np.int32)
    frac = np.stack([random_start(protocol, rng) for _ in range(n)])
    potential = StillingerWeber(three_body_strength=protocol.three_body_strength)
    start = relax(Crystals(frac, lattice, species), potential, fmax=0.5, max_steps=protocol.pre_relax_steps)
    quenched = melt_quench(protocol, np.asarray(start.crystals.frac), seed, batching, progress)
    result = relax(Crystals(np.mod(quenched, 1.0), lattice, species), potential, fmax=protocol.final_fmax,
                   max_steps=protocol.final_max_steps, progress=progress)
    return result.crystals, result


def build(size: str, seed: int, out_dir: Path, protocol: MeltQuench | None = None) -> None:
    """Write ``train.extxyz``, ``val.extxyz`` and ``params.json`` of the a-Si dataset into ``out_dir``."""
    from dismax.io import write_extxyz
    from dismax.runs import atomic_write_text

    protocol = protocol or SIZES[size]
    out_dir = Path(out_dir)
    crystals, result = generate(protocol, seed)
    stats = structure_statistics(crystals)
    n_val = max(1, int(round(protocol.val_fraction * protocol.n_structures)))
    order = np.random.default_rng(seed + 1).permutation(protocol.n_structures)
    splits = {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val])}
    records = []
    for split, members in splits.items():
        info = []
        for i in members:
            entry = {"id": int(i), "energy_per_atom": float(result.e_final[i]),
                     "mean_coordination": stats["structures"][i]["mean_coordination"],
                     "relax_status": str(result.status[i]), "relax_fmax": float(result.fmax[i])}
            info.append(entry)
            records.append(dict(entry, split=split, relax_steps=int(result.steps[i]), **{
                k: v for k, v in stats["structures"][i].items() if k != "mean_coordination"}))
        write_extxyz(crystals[members], out_dir / f"{split}.extxyz", info=info)
    not_converged = int(np.sum(result.status != "converged"))
    if not_converged:
        print(f"a_si: {not_converged} structures did not reach fmax {protocol.final_fmax} eV/Å",
              file=sys.stderr)
    params = {
        "name": "a_si", "size": size, "seed": seed,
        "protocol": dict(asdict(protocol), box_length=protocol.box_length, quench_rate_K_per_s=protocol.quench_rate,
                         potential="Stillinger-Weber", thermostat="Nose-Hoover NVT",
                         coordination_cutoff=BOND_CUTOFF),
        "summary": {k: stats[k] for k in ("mean_coordination", "mean_angle", "angle_sd", "rdf_first_peak")},
        "structures": sorted(records, key=lambda r: r["id"]),
    }
    atomic_write_text(out_dir / "params.json", json.dumps(params, indent=2) + "\n")


def tiny_protocol(**changes) -> MeltQuench:
    """A small, fast protocol for tests (64 atoms, short melt and quench)."""
    base = MeltQuench(n_structures=2, n_atoms=64, melt_ps=1.0, quench_ps=3.0, final_max_steps=2000)
    return replace(base, **changes)
