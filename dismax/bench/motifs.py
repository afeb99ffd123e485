"""CrystalNN-based site fingerprints and bond angles (a-Si and interface metrics), plus a JAX cutoff-angle variant.

- ``motif_fingerprints``: per site, for CN = 1..24 the CrystalNN weight w_CN followed by w_CN x order
  parameter for each motif of that CN (61 values, matminer's ``CrystalNNFingerprint`` "ops" preset with
  ``wt`` first); with ``species_fractions`` (interface) 48 more values: the fractions of the neighbours of
  each CN that are each of the given anions (0 when w_CN = 0) -> 109 values.
- ``crystalnn_bond_angles``: all neighbour-pair angles around every site with the published bond-angle
  CrystalNN settings (neighbour set of the most probable CN).
- ``cutoff_bond_angles``: the same angles from a plain distance cutoff, in JAX (fast variant).
- ``per_structure``: runs one of these over structures in a process pool with a per-structure disk cache.

The motif parameter table is shipped here as data (values of pymatgen's ``cn_opt_params.yaml``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dismax.bench.periodic import float64
from dismax.devices import gather_arrays, process_count, process_share
from dismax.geometry import minimum_image

MAX_CN = 24
# CN -> list of (label, pymatgen order-parameter type, parameters or None), in fingerprint order after "wt"
MOTIFS: dict[int, list[tuple[str, str, dict | None]]] = {
    1: [("sgl_bd", "sgl_bd", None)],
    2: [("L-shaped", "bent", {"TA": 0.5, "IGW_TA": 15.15}),
        ("water-like", "bent", {"TA": 0.5802777777777778, "IGW_TA": 13.95}),
        ("bent 120 degrees", "bent", {"TA": 0.666666666667, "IGW_TA": 13.25}),
        ("bent 150 degrees", "bent", {"TA": 0.833333333333333, "IGW_TA": 12.45}),
        ("linear", "bent", {"TA": 1, "IGW_TA": 8.667})],
    3: [("trigonal planar", "tri_plan_max", None),
        ("trigonal non-coplanar", "tet_max",
         {"TA": 0.6081734479693927, "IGW_TA": 18.33, "fac_AA": 1.5, "exp_cos_AA": 2}),
        ("T-shaped", "T", None)],
    4: [("square co-planar", "sq_plan_max", None), ("tetrahedral", "tet_max", None),
        ("rectangular see-saw-like", "see_saw_rect", None),
        ("see-saw-like", "tri_bipyr", {"min_SPP": 2.356194490192345, "IGW_EP": 15.75, "IGW_SPP": 12.75,
                                       "fac_AA": 1.5, "exp_cos_AA": 2, "w_SPP": 1}),
        ("trigonal pyramidal", "tri_pyr", None)],
    5: [("pentagonal planar", "pent_plan_max", None), ("square pyramidal", "sq_pyr", None),
        ("trigonal bipyramidal", "tri_bipyr", None)],
    6: [("hexagonal planar", "hex_plan_max", None), ("octahedral", "oct_max", None),
        ("pentagonal pyramidal", "pent_pyr", None)],
    7: [("hexagonal pyramidal", "hex_pyr", None), ("pentagonal bipyramidal", "pent_bipyr", None)],
    8: [("body-centered cubic", "bcc", None), ("hexagonal bipyramidal", "hex_bipyr", None)],
    9: [("q2", "q2", None), ("q4", "q4", None), ("q6", "q6", None)],
    10: [("q2", "q2", None), ("q4", "q4", None), ("q6", "q6", None)],
    11: [("q2", "q2", None), ("q4", "q4", None), ("q6", "q6", None)],
    12: [("cuboctahedral", "cuboct_max", None), ("q2", "q2", None), ("q4", "q4", None), ("q6", "q6", None)],
}
INTERFACE_OXIDATION = {"Li": 1, "Sc": 3, "Co": 3, "Cl": -1, "O": -2}
INTERFACE_ANIONS = ("Cl", "O")
BOND_ANGLE_CRYSTALNN = {"distance_cutoffs": None, "x_diff_weight": 0, "porous_adjustment": False}
ANGLE_BIN_WIDTH = 0.5   # degrees


def motif_labels(species_fractions: Sequence[str] = ()) -> list[str]:
    """Column names: ``wt CN_k`` / ``<motif> CN_k`` (61), then ``<anion> fraction coord num k``."""
    labels = []
    for cn in range(1, MAX_CN + 1):
        labels.append(f"wt CN_{cn}")
        labels += [f"{label} CN_{cn}" for label, _, _ in MOTIFS.get(cn, [])]
    for cn in range(1, MAX_CN + 1):
        labels += [f"{anion} fraction coord num {cn}" for anion in species_fractions]
    return labels


class MotifFingerprinter:
    """Computes the per-site fingerprint from CrystalNN neighbour data (order-parameter objects built once)."""

    def __init__(self, cation_anion: bool = False, species_fractions: Sequence[str] = (), **crystalnn_settings):
        from pymatgen.analysis.local_env import CrystalNN, LocalStructOrderParams  # heavy; CrystalNN paths only

        self.crystalnn = CrystalNN(cation_anion=cation_anion, **crystalnn_settings)
        self.species_fractions = tuple(species_fractions)
        self.order_parameters = {cn: [LocalStructOrderParams([kind], parameters=[params])
                                      for _, kind, params in motifs] for cn, motifs in MOTIFS.items()}

    def site(self, structure, index: int) -> list[float]:
        nn_data = self.crystalnn.get_nn_data(structure, index)
        values, fractions = [], []
        for cn in range(1, MAX_CN + 1):
            weight = nn_data.cn_weights.get(cn, 0)
            values.append(weight)
            neighbours = [entry["site"] for entry in nn_data.cn_nninfo[cn]] if weight != 0 else []
            for order_parameter in self.order_parameters.get(cn, []):
                if weight == 0:
                    values.append(weight)
                    continue
                value = order_parameter.get_order_parameters([structure[index]] + neighbours, 0,
                                                             indices_neighs=list(range(1, len(neighbours) + 1)))[0]
                values.append(weight * (value or 0))
            for anion in self.species_fractions:
                count = sum(neighbour.specie.symbol == anion for neighbour in neighbours)
                fractions.append(count / cn if weight != 0 else 0)
        return values + fractions


def _to_structure(frac, lattice, numbers, oxidation: dict | None = None):
    from pymatgen.core import Lattice, Structure  # heavy optional dependency; CrystalNN paths only

    structure = Structure(Lattice(np.asarray(lattice, float)), [int(z) for z in numbers], np.asarray(frac, float))
    if oxidation:
        structure.add_oxidation_state_by_element(oxidation)
    return structure


def motif_fingerprints(frac, lattice, numbers, site_numbers: Sequence[int] | None = None,
                       cation_anion: bool = False, oxidation: dict | None = None,
                       species_fractions: Sequence[str] = ()) -> np.ndarray:
    """Fingerprints (n_sites, 61 or 61 + 24 x len(species_fractions)) of one structure's sites whose atomic
    number is in ``site_numbers`` (all if None), in atom order."""
    structure = _to_structure(frac, lattice, numbers, oxidation)
    fingerprinter = MotifFingerprinter(cation_anion=cation_anion, species_fractions=species_fractions)
    numbers = np.asarray(numbers)
    sites = np.arange(len(numbers)) if site_numbers is None else np.flatnonzero(np.isin(numbers, site_numbers))
    return np.array([fingerprinter.site(structure, int(i)) for i in sites]).reshape(len(sites), -1)


def crystalnn_bond_angles(frac, lattice, numbers) -> np.ndarray:
    """All bond angles (degrees) of one structure, pooled over sites, published bond-angle CrystalNN settings."""
    from pymatgen.analysis.local_env import CrystalNN  # heavy optional dependency; CrystalNN paths only

    structure = _to_structure(frac, lattice, numbers)
    crystalnn = CrystalNN(**BOND_ANGLE_CRYSTALNN)
    angles = []
    for index in range(len(structure)):
        neighbours = np.array([entry["site"].coords for entry in crystalnn.get_nn_info(structure, index)])
        if len(neighbours) < 2:
            continue
        vectors = neighbours - structure[index].coords
        first, second = np.triu_indices(len(vectors), k=1)
        cosines = np.sum(vectors[first] * vectors[second], axis=1) / (
            np.linalg.norm(vectors[first], axis=1) * np.linalg.norm(vectors[second], axis=1))
        angles.append(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))))
    return np.concatenate(angles) if angles else np.zeros(0)


def angle_distribution(angles: np.ndarray, bin_width: float = ANGLE_BIN_WIDTH) -> np.ndarray:
    """Fractions (360,) of angles in right-closed bins (e_k, e_k+1] of 0.5° on [0, 180] (0 in the first)."""
    edges = np.arange(0.0, 180.0 + bin_width, bin_width)
    angles = np.asarray(angles, float)
    index = np.clip(np.searchsorted(edges, angles, side="left") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1).astype(float)
    return counts / max(len(angles), 1)


def angle_bin_centres(bin_width: float = ANGLE_BIN_WIDTH) -> np.ndarray:
    edges = np.arange(0.0, 180.0 + bin_width, bin_width)
    return (edges[1:] + edges[:-1]) / 2


@functools.partial(jax.jit, static_argnames=("max_neighbours",))
def _cutoff_angle_histogram(frac, lattice, cutoff, edges, max_neighbours):
    """Angle-bin counts (n_bins,) of one structure from all pairs of neighbours closer than ``cutoff``, and a
    flag set when some atom has more than ``max_neighbours`` such neighbours."""
    n_atoms, n_bins = frac.shape[0], edges.shape[0] - 1
    vectors = minimum_image(frac[None, :, :] - frac[:, None, :], lattice, n_images=0)   # (N, N, 3) r_j - r_i
    distance = jnp.linalg.norm(vectors, axis=-1) + jnp.where(jnp.eye(n_atoms, dtype=bool), jnp.inf, 0.0)
    negative, neighbours = jax.lax.top_k(-distance, max_neighbours)
    bonded = -negative < cutoff                                                # (N, K)
    chosen = vectors[jnp.arange(n_atoms)[:, None], neighbours]               # (N, K, 3)
    unit = chosen / jnp.linalg.norm(chosen, axis=-1, keepdims=True)
    cosines = jnp.einsum("ijk,ilk->ijl", unit, unit)                          # (N, K, K)
    upper = jnp.arange(max_neighbours)[:, None] < jnp.arange(max_neighbours)[None, :]
    pair = bonded[:, :, None] & bonded[:, None, :] & upper[None]
    angles = jnp.degrees(jnp.arccos(jnp.clip(cosines, -1.0, 1.0)))
    index = jnp.clip(jnp.searchsorted(edges, angles, side="left") - 1, 0, n_bins - 1)
    counts = jnp.zeros(n_bins, edges.dtype).at[index.ravel()].add(pair.ravel().astype(edges.dtype))
    return counts, jnp.any(bonded[:, -1])


@float64
def cutoff_angle_distributions(frac: np.ndarray, lattice: np.ndarray, cutoff: float = 2.85,
                               bin_width: float = ANGLE_BIN_WIDTH, max_neighbours: int = 12) -> np.ndarray:
    """Per-structure bond-angle fractions (B, 360) with neighbours = atoms closer than ``cutoff`` Å (JAX).

    ``max_neighbours`` is the first neighbour-table width tried; a structure with a more crowded atom (e.g.
    random positions) is recomputed with the width doubled until every neighbour fits, so the result does not
    depend on it. The cutoff must be below half of every cell plane spacing (minimum image)."""
    edges = jnp.asarray(np.arange(0.0, 180.0 + bin_width, bin_width))
    rows = []
    for f, l in zip(np.asarray(frac, float), np.asarray(lattice, float)):
        k = min(max_neighbours, len(f) - 1)
        counts, overflow = _cutoff_angle_histogram(jnp.asarray(f), jnp.asarray(l), cutoff, edges, k)
        while bool(overflow) and k < len(f) - 1:
            k = min(2 * k, len(f) - 1)
            counts, overflow = _cutoff_angle_histogram(jnp.asarray(f), jnp.asarray(l), cutoff, edges, k)
        counts = np.asarray(counts)
        rows.append(counts / max(counts.sum(), 1.0))
    return np.array(rows)


# --------------------------------------------------------------------------- process pool with disk cache
def structure_key(kind: str, settings: dict, frac, lattice, numbers) -> str:
    """Cache key of one structure's result: hash of the computation, its settings and the structure."""
    digest = hashlib.sha1()
    digest.update(json.dumps([kind, settings], sort_keys=True, default=str).encode())
    for array in (np.asarray(frac, np.float64), np.asarray(lattice, np.float64), np.asarray(numbers, np.int64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _run_one(function, kind, settings, frac, lattice, numbers, cache_path):
    result = np.asarray(function(frac, lattice, numbers, **settings))
    if cache_path is not None:
        temporary = f"{cache_path}.{os.getpid()}.tmp.npy"
        np.save(temporary, result)
        os.replace(temporary, cache_path)
    return result


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ProcessPoolExecutor:
    """One process pool per worker count for the life of the process, so its workers import pymatgen and
    matminer once rather than at every call (scoring a-Si makes four calls, each ~5 s of imports per worker)."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    atexit.register(pool.shutdown, cancel_futures=True)
    return pool


def per_structure(function: Callable, kind: str, structures: Sequence[tuple], settings: dict | None = None,
                  cache_dir: str | Path | None = None, workers: int | None = None, progress=None) -> list[np.ndarray]:
    """``function(frac, lattice, numbers, **settings)`` for every (frac, lattice, numbers) structure.

    Runs in a process pool kept between calls (``workers`` default: all cores; 1 = in process). Each result
    is written to ``cache_dir/<kind>/<key>.npy`` as soon as it is done and reused on the next call, so an
    interrupted run loses nothing already computed. In a multi-process run each process computes its share of the
    structures (:func:`dismax.devices.process_share`) and every process gets all results.
    """
    if process_count() > 1:
        mine = process_share(len(structures))
        return gather_arrays(_per_structure_local(function, kind, [structures[i] for i in mine], settings,
                                                  cache_dir, workers, progress))
    return _per_structure_local(function, kind, structures, settings, cache_dir, workers, progress)


def _per_structure_local(function, kind, structures, settings, cache_dir, workers, progress) -> list[np.ndarray]:
    settings = settings or {}
    workers = workers or os.cpu_count() or 1
    results: list[np.ndarray | None] = [None] * len(structures)
    paths: list[str | None] = [None] * len(structures)
    if cache_dir is not None:
        folder = Path(cache_dir) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index, (frac, lattice, numbers) in enumerate(structures):
            paths[index] = str(folder / f"{structure_key(kind, settings, frac, lattice, numbers)}.npy")
            if os.path.exists(paths[index]):
                results[index] = np.load(paths[index])
    todo = [i for i, r in enumerate(results) if r is None]
    bar = progress(total=len(todo), desc=kind) if progress else None
    if workers == 1 or len(todo) <= 1:
        for index in todo:
            results[index] = _run_one(function, kind, settings, *structures[index], paths[index])
            if bar:
                bar.update(1)
    else:
        pool = _pool(workers)
        futures = {pool.submit(_run_one, function, kind, settings, *structures[index], paths[index]): index
                   for index in todo}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if bar:
                    bar.update(1)
        except BrokenProcessPool:
            _pool.cache_clear()            # a worker died: the next call starts a fresh pool
            raise
    if bar:
        bar.close()
    return results
