"""The Li3ScCl6(100) | LiCoO2(110) interface dataset (Dismai-Bench §2.1.3, §4.1.3; 264 atoms).

Construction (spec ``interface.md`` §1–2, all in NumPy, no pymatgen):

* Bulk LiCoO2: R-3m, hexagonal axes, Co 3a, Li 3b, O 6c (0, 0, z_O), on the lattice back-solved from
  the paper's in-plane cell (a = 2.829651, c = 14.133136 Å). Bulk Li3ScCl6: the ordered C2/m model on the
  experimental lattice (``vac4g``: Sc 2a, Li 4h + 2d, Cl 4i + 8j; ``li4g`` puts the 4h Li on 4g instead).
* In-plane match: primitive surface bases u = [1 −1 0], v = [⅓ −⅓ −⅓] (LCO(110), hexagonal indices) and
  u = [0 0 1], v = [0 1 0] (LSC(100)) times the hard-coded supercell matrices M_LCO = [[1, 2], [−3, 3]] and
  M_LSC = [[1, 1], [−2, 1]] (the smallest Zur–McGill match; a test checks it against pymatgen's ZSL search).
  The cell is LCO's: 12.46997 × 17.19967 Å, 75.6674°.
* Slabs: 4 stoichiometric LCO(110) planes (Li9 Co9 O18 each) at the bottom; the LSC(100) Tasker-2b slab
  Cl9 | Sc3Li9 | Cl18 | Sc3Li9 | Cl18 | Sc3Li9 | Cl9 on top (cut from the unstrained bulk, in-plane
  fractions mapped onto the LCO cell, heights kept; the two Cl9 half-planes are the best-spread of 4,000
  random 9-of-18 picks of a fixed generator, so the slabs are the same in every structure).
* Random interface region (stand-in for CALYPSO): gap t ~ U(4, 6) Å between the top LCO plane and the
  bottom LSC Cl9 plane, a uniform random lateral shift of the LSC slab, then 3 Sc, 18 Cl and 9 Li placed
  uniformly in the gap by vectorised rejection sampling (minimum distances cation–cation 2.4, cation–anion
  1.9, anion–anion 3.0 Å; after 5,000 failed draws for one atom the region restarts, every 10 restarts all
  minimum distances shrink by 5 %); 14 Å of vacuum.
* Atom order (the published convention): element blocks Li, Sc, Co, Cl, O; in each block the interface
  atoms first, then the LCO planes from the interface down, then the LSC planes from the interface up.
* Relaxation (:func:`build`): positions only, cell fixed, FIRE to fmax; first the 30 interface-region atoms alone
  (both slabs fixed), then every atom, as the paper's DFT relaxations of random interfaces (interface atoms first).

Structure ``i`` of seed ``s`` depends only on (s, i), so generation is reproducible and resumable.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from dismax.data.interface_layout import CATIONS, CL, CO, ELEMENT_ORDER, LI, O, REGION_COUNTS, REGION_ORDER, SC
from dismax.errors import DismaxError
from dismax.geometry import displacements, pairwise_minimum_image_distances
from dismax.io import read_structure_set, write_extxyz
from dismax.potentials import SHIPPED, get_potential
from dismax.potentials.fire import DEFAULT_FMAX, relax
from dismax.runs import atomic_write_bytes, atomic_write_text, progress, write_in_parts
from dismax.structures import Crystals, leading_atoms

LCO_A, LCO_C, LCO_Z_O = 2.829651, 14.133136, 0.2604  # Å, Å, fractional (Co 3a / Li 3b setting)
LSC_LATTICE = (6.398, 11.040, 6.391, 109.89)  # a, b, c (Å), beta (deg): Bohnsack et al. (1997)
LCO_SURFACE_BASIS = np.array([[1.0, -1.0, 0.0], [1 / 3, -1 / 3, -1 / 3]])  # hexagonal lattice coordinates
LSC_SURFACE_BASIS = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
M_LCO = np.array([[1, 2], [-3, 3]])
M_LSC = np.array([[1, 1], [-2, 1]])
PLANE_TOLERANCE = 0.45  # Å: atoms within this height belong to one plane
HALF_PLANE_PICKS = 4000
HALF_PLANE_SEED = 20200  # fixed: the Tasker-2b half-planes are the same in every structure


@dataclass(frozen=True)
class InterfaceRecipe:
    """Settings of the random interfaces (lengths in Å)."""

    lco_a: float = LCO_A
    lco_c: float = LCO_C
    lco_z_o: float = LCO_Z_O
    lsc_order: str = "vac4g"
    lco_planes: int = 4
    thickness_min: float = 4.0
    thickness_max: float = 6.0
    vacuum: float = 14.0
    cation_cation: float = 2.4
    cation_anion: float = 1.9
    anion_anion: float = 3.0
    draws_per_atom: int = 5000
    draw_batch: int = 500
    restarts_per_shrink: int = 10
    shrink: float = 0.95


# ---------------------------------------------------------------------------------------------- bulk
def hexagonal_lattice(a: float, c: float) -> np.ndarray:
    return np.array([[a, 0.0, 0.0], [-a / 2, a * np.sqrt(3) / 2, 0.0], [0.0, 0.0, c]])


def monoclinic_lattice(a: float, b: float, c: float, beta_deg: float) -> np.ndarray:
    """Rows a, b, c with the unique axis b (pymatgen's ``Lattice.monoclinic`` convention)."""
    beta = np.radians(beta_deg)
    return np.array([[a, 0.0, 0.0], [0.0, b, 0.0], [c * np.cos(beta), 0.0, c * np.sin(beta)]])


def _orbits(sites, operations, centerings) -> tuple[np.ndarray, np.ndarray]:
    """Fractional positions and atomic numbers of the symmetry orbits of ``sites`` [(Z, (x, y, z))]."""
    frac, species = [], []
    for z, xyz in sites:
        images = [np.mod(np.asarray(op(*xyz), float) + t, 1.0) for op in operations for t in centerings]
        unique = []
        for p in images:
            if all(np.abs((p - q + 0.5) % 1.0 - 0.5).max() > 1e-6 for q in unique):
                unique.append(p)
        frac += unique
        species += [z] * len(unique)
    return np.mod(np.round(np.array(frac), 12), 1.0), np.array(species)


def lco_bulk(recipe: InterfaceRecipe = InterfaceRecipe()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LiCoO2 (R-3m, hexagonal axes, 12 atoms): (fractional (12, 3), species (12,), lattice (3, 3))."""
    z = recipe.lco_z_o
    operations = [lambda x, y, w: (x, y, w), lambda x, y, w: (-x, -y, -w)]
    centerings = [np.zeros(3), np.array([2 / 3, 1 / 3, 1 / 3]), np.array([1 / 3, 2 / 3, 2 / 3])]
    frac, species = _orbits([(CO, (0, 0, 0)), (LI, (0, 0, 0.5)), (O, (0, 0, z))], operations, centerings)
    return frac, species, hexagonal_lattice(recipe.lco_a, recipe.lco_c)


def lsc_bulk(order: str = "vac4g") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Li3ScCl6 (C2/m, Z = 2, 20 atoms), the ordered ccp model of the spec: (frac, species, lattice).

    ``vac4g``: Sc 2a, Li 4h + 2d, 4g empty (the literature sites, default); ``li4g``: Li on 4g instead of 4h.
    """
    if order not in ("vac4g", "li4g"):
        raise ValueError(f"unknown Li3ScCl6 ordering {order!r}; choose vac4g or li4g")
    li_site = (0, 1 / 6, 0.5) if order == "vac4g" else (0, 1 / 3, 0)
    operations = [lambda x, y, z: (x, y, z), lambda x, y, z: (-x, y, -z),
                  lambda x, y, z: (-x, -y, -z), lambda x, y, z: (x, -y, z)]
    centerings = [np.zeros(3), np.array([0.5, 0.5, 0.0])]
    sites = [(SC, (0, 0, 0)), (LI, li_site), (LI, (0, 0.5, 0.5)), (CL, (0.75, 0, 0.25)), (CL, (0.25, 1 / 6, 0.25))]
    frac, species = _orbits(sites, operations, centerings)
    return frac, species, monoclinic_lattice(*LSC_LATTICE)


# ---------------------------------------------------------------------------------------------- surfaces
def supercell_vectors(bulk_lattice: np.ndarray, surface_basis: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Cartesian in-plane supercell vectors (2, 3): rows of ``matrix @ surface_basis @ bulk_lattice``."""
    return matrix @ surface_basis @ bulk_lattice


def in_plane_cell(vectors: np.ndarray) -> tuple[float, float, float, float]:
    """(|u| Å, |v| Å, angle deg, area Å²) of in-plane vectors (2, 3)."""
    u, v = vectors
    lu, lv = np.linalg.norm(u), np.linalg.norm(v)
    return float(lu), float(lv), float(np.degrees(np.arccos(u @ v / (lu * lv)))), float(np.linalg.norm(np.cross(u, v)))


def interface_in_plane_lattice(recipe: InterfaceRecipe = InterfaceRecipe()) -> np.ndarray:
    """The LCO in-plane cell (2, 3) in the interface frame: u along x, v in the xy plane."""
    lu, lv, angle, _ = in_plane_cell(supercell_vectors(lco_bulk(recipe)[2], LCO_SURFACE_BASIS, M_LCO))
    gamma = np.radians(angle)
    return np.array([[lu, 0.0, 0.0], [lv * np.cos(gamma), lv * np.sin(gamma), 0.0]])


def _slab_coordinates(frac, lattice, vectors, h_min, h_max, reach=8):
    """Atoms of the bulk (frac, lattice) inside the prism spanned by ``vectors`` (2, 3) and heights
    [h_min, h_max] along their unit normal: (in-plane fractions (M, 2) in [0, 1), heights (M,), index)."""
    normal = np.cross(vectors[0], vectors[1])
    normal /= np.linalg.norm(normal)
    basis = np.stack([vectors[0], vectors[1], normal])
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), float)
    cart = ((frac[None, :, :] + shifts[:, None, :]) @ lattice).reshape(-1, 3)
    index = np.tile(np.arange(len(frac)), len(shifts))
    coords = cart @ np.linalg.inv(basis)
    eps = 1e-6
    inside = np.all((coords[:, :2] >= -eps) & (coords[:, :2] < 1 - eps), axis=1)
    inside &= (coords[:, 2] >= h_min) & (coords[:, 2] <= h_max)
    return np.mod(coords[inside, :2] + eps, 1.0) - eps, coords[inside, 2], index[inside]


def _planes(heights: np.ndarray) -> np.ndarray:
    """Plane index (M,) of every height, planes numbered upwards (gaps > PLANE_TOLERANCE separate them)."""
    order = np.argsort(heights)
    starts = np.concatenate([[True], np.diff(heights[order]) > PLANE_TOLERANCE])
    plane = np.empty(len(heights), int)
    plane[order] = np.cumsum(starts) - 1
    return plane


def _sorted(s, h, species, plane):
    """Fixed atom order inside a slab: plane, then the in-plane fractions (rounded against jitter)."""
    order = np.lexsort((np.round(s[:, 1], 6), np.round(s[:, 0], 6), plane))
    return s[order], h[order], species[order], plane[order]


@dataclass(frozen=True)
class Slab:
    """Slab atoms: in-plane fractions (M, 2) of the interface cell, heights (M,) Å from the slab's bottom
    plane, atomic numbers (M,) and the plane index (M,) counted upwards."""

    frac2d: np.ndarray
    heights: np.ndarray
    species: np.ndarray
    plane: np.ndarray

    @property
    def top(self) -> float:
        return float(self.heights.max())


def lco_slab(recipe: InterfaceRecipe = InterfaceRecipe()) -> Slab:
    """``recipe.lco_planes`` stoichiometric LCO(110) planes (d = a/2), bottom plane at height 0."""
    frac, species, lattice = lco_bulk(recipe)
    vectors = supercell_vectors(lattice, LCO_SURFACE_BASIS, M_LCO)
    spacing = recipe.lco_a / 2
    s, h, index = _slab_coordinates(frac, lattice, vectors, -0.2, (recipe.lco_planes - 1) * spacing + 0.2)
    h = h - h.min()
    return Slab(*_sorted(s, h, species[index], _planes(h)))


def _best_spread_half(points2d: np.ndarray, cell2d: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``keep`` of the in-plane fractional ``points2d`` (M, 2) whose smallest minimum-image
    distance is largest among ``HALF_PLANE_PICKS`` random subsets (vectorised over the subsets)."""
    cell = np.zeros((3, 3))
    cell[:2] = cell2d
    cell[2, 2] = 100.0  # in-plane distances only
    points = np.concatenate([points2d, np.zeros((len(points2d), 1))], axis=1) @ cell
    distance = np.linalg.norm(displacements(points, points, cell), axis=-1)
    np.fill_diagonal(distance, np.inf)
    picks = np.argsort(rng.random((HALF_PLANE_PICKS, len(points2d))), axis=1)[:, :keep]
    spread = distance[picks[:, :, None], picks[:, None, :]].min(axis=(1, 2))
    return np.sort(picks[np.argmax(spread)])


def lsc_slab(recipe: InterfaceRecipe = InterfaceRecipe()) -> Slab:
    """The LSC(100) Tasker-2b slab Cl9 | (Sc3Li9 | Cl18) × 2 | Sc3Li9 | Cl9, bottom Cl plane at height 0.

    Cut from the unstrained bulk; its in-plane fractions are those of the LSC supercell, which the
    interface maps onto the LCO cell (lateral strain, heights kept). Half of the bottom Cl plane moves to
    bulk sites of the Cl plane above the top cation plane.
    """
    frac, species, lattice = lsc_bulk(recipe.lsc_order)
    vectors = supercell_vectors(lattice, LSC_SURFACE_BASIS, M_LSC)
    d200 = abs(np.linalg.det(lattice)) / np.linalg.norm(np.cross(lattice[1], lattice[2])) / 2
    s, h, index = _slab_coordinates(frac, lattice, vectors, -0.2, 4 * d200 + 0.2)
    z = species[index]
    # Planes of the bulk cut: alternating Cl and cation planes d200/2 apart; start on the lowest Cl plane.
    bottom = h[z == CL].min()
    s, h, z = s[h >= bottom - 0.2], h[h >= bottom - 0.2] - bottom, z[h >= bottom - 0.2]
    plane = _planes(h)
    cl_planes = sorted(set(plane[z == CL]))
    cation_planes = sorted(set(plane[z != CL]))
    # Cl18 | cat | Cl18 | cat | Cl18 | cat | Cl18: the three lowest cation planes and the Cl planes around them
    top_cation = cation_planes[2]
    keep = plane <= top_cation + 1
    s, h, z, plane = s[keep], h[keep], z[keep], plane[keep]
    rng = np.random.default_rng(HALF_PLANE_SEED)
    cell2d = interface_in_plane_lattice(recipe)
    lowest, highest = cl_planes[0], top_cation + 1
    lower_half = np.flatnonzero(plane == lowest)[_best_spread_half(s[plane == lowest], cell2d, 9, rng)]
    upper_half = np.flatnonzero(plane == highest)[_best_spread_half(s[plane == highest], cell2d, 9, rng)]
    keep = (plane != lowest) & (plane != highest)
    keep[lower_half] = True
    keep[upper_half] = True
    return Slab(*_sorted(s[keep], h[keep], z[keep], plane[keep]))


# ---------------------------------------------------------------------------------------------- interface
@dataclass(frozen=True)
class Interface:
    """One random interface: the structure (atoms in the published order) and how it was drawn."""

    frac: np.ndarray  # (264, 3)
    lattice: np.ndarray  # (3, 3)
    species: np.ndarray  # (264,)
    thickness: float  # Å
    shift: tuple[float, float]  # fractional lateral shift of the LSC slab
    restarts: int
    distance_scale: float

    def info(self) -> dict:
        return {"thickness": round(self.thickness, 6), "shift": np.round(np.asarray(self.shift), 6),
                "restarts": self.restarts, "distance_scale": round(self.distance_scale, 6)}


def _minimum_distances(recipe: InterfaceRecipe, candidate_species: int, placed_species: np.ndarray) -> np.ndarray:
    """Required distances (N,) in Å between an atom of ``candidate_species`` and each placed atom."""
    candidate_cation = candidate_species in CATIONS
    placed_cation = np.isin(placed_species, CATIONS)
    if candidate_cation:
        return np.where(placed_cation, recipe.cation_cation, recipe.cation_anion)
    return np.where(placed_cation, recipe.cation_anion, recipe.anion_anion)


def _fill_region(slab_cart, slab_species, cell, z_low, z_high, recipe, rng):
    """Cartesian positions (30, 3) and species of the interface atoms (Sc, then Cl, then Li), the number
    of restarts and the final distance scale. Each atom takes the first of up to ``draws_per_atom``
    uniform draws (``draw_batch`` at a time, checked together) that respects every minimum distance."""
    region_species = np.concatenate([[z] * REGION_COUNTS[z] for z in REGION_ORDER])
    # Only slab atoms within the largest minimum distance of the gap can reject a draw.
    reach = max(recipe.cation_cation, recipe.cation_anion, recipe.anion_anion)
    near = (slab_cart[:, 2] > z_low - reach) & (slab_cart[:, 2] < z_high + reach)
    slab_cart, slab_species = slab_cart[near], slab_species[near]
    # Required distances of each region atom to every slab atom and to every earlier region atom.
    required = np.stack([np.concatenate([_minimum_distances(recipe, z, slab_species),
                                         _minimum_distances(recipe, z, region_species)])
                         for z in region_species])
    restarts, scale = 0, 1.0
    n_slab = len(slab_cart)
    while True:
        placed = np.concatenate([slab_cart, np.zeros((len(region_species), 3))])
        complete = True
        for k in range(len(region_species)):
            limit = scale * required[k, : n_slab + k]
            for _ in range(recipe.draws_per_atom // recipe.draw_batch):
                draws = rng.random((recipe.draw_batch, 3))
                points = draws[:, :1] * cell[0] + draws[:, 1:2] * cell[1]
                points[:, 2] = z_low + draws[:, 2] * (z_high - z_low)
                distance = np.linalg.norm(displacements(points, placed[: n_slab + k], cell), axis=-1)
                ok = np.flatnonzero(np.all(distance >= limit, axis=1))
                if len(ok):
                    placed[n_slab + k] = points[ok[0]]
                    break
            else:
                complete = False
                break
        if complete:
            return placed[n_slab:], region_species, restarts, scale
        restarts += 1
        if restarts % recipe.restarts_per_shrink == 0:
            scale *= recipe.shrink


def random_interface(seed: int, index: int, recipe: InterfaceRecipe = InterfaceRecipe(),
                     slabs: tuple[Slab, Slab] | None = None) -> Interface:
    """Random interface ``index`` of ``seed`` (a pure function of both)."""
    rng = np.random.default_rng([seed, index])
    lco, lsc = slabs or (lco_slab(recipe), lsc_slab(recipe))
    in_plane = interface_in_plane_lattice(recipe)
    thickness = float(rng.uniform(recipe.thickness_min, recipe.thickness_max))
    shift = rng.random(2)
    z0 = recipe.vacuum / 2
    z_lco_top = z0 + lco.top
    z_lsc = z_lco_top + thickness
    height = z_lsc + lsc.top + recipe.vacuum / 2
    cell = np.zeros((3, 3))
    cell[:2] = in_plane
    cell[2, 2] = height

    def cartesian(frac2d, heights, base):
        xyz = np.concatenate([frac2d, np.zeros((len(frac2d), 1))], axis=1) @ cell
        xyz[:, 2] = base + heights
        return xyz

    lco_cart = cartesian(lco.frac2d, lco.heights, z0)
    lsc_cart = cartesian(np.mod(lsc.frac2d + shift, 1.0), lsc.heights, z_lsc)
    slab_cart = np.concatenate([lco_cart, lsc_cart])
    slab_species = np.concatenate([lco.species, lsc.species])
    region_cart, region_species, restarts, scale = _fill_region(slab_cart, slab_species, cell, z_lco_top, z_lsc,
                                                                recipe, rng)
    # Published order: element blocks; interface atoms, then LCO planes from the top down, then LSC upwards.
    lco_rank = np.lexsort((np.arange(len(lco.plane)), -lco.plane))
    cart = np.concatenate([region_cart, lco_cart[lco_rank], lsc_cart])
    species = np.concatenate([region_species, lco.species[lco_rank], lsc.species])
    group = np.concatenate([np.zeros(len(region_species)), np.ones(len(lco_cart)), np.full(len(lsc_cart), 2)])
    element = np.array([ELEMENT_ORDER.index(z) for z in species])
    order = np.lexsort((np.arange(len(species)), group, element))
    frac = np.mod(cart[order] @ np.linalg.inv(cell), 1.0)
    frac[frac >= 1.0] = 0.0
    return Interface(frac, cell, species[order].astype(np.int32), thickness, (float(shift[0]), float(shift[1])),
                     restarts, scale)


def interface_region_mask(species: np.ndarray) -> np.ndarray:
    """Which atoms (B, N) bool of interfaces in the published order (species (B, N)) form the random interface
    region: the first 9 Li, 3 Sc and 18 Cl of their element blocks."""
    return leading_atoms(species, REGION_COUNTS)


def random_interfaces(seed: int, indices, recipe: InterfaceRecipe = InterfaceRecipe()) -> tuple[Crystals, list[dict]]:
    """Random interfaces ``indices`` of ``seed`` as one batch, with one info dict each (seed, index, draw)."""
    slabs = (lco_slab(recipe), lsc_slab(recipe))
    made = [random_interface(seed, int(i), recipe, slabs) for i in indices]
    crystals = Crystals(np.stack([m.frac for m in made]), np.stack([m.lattice for m in made]),
                        np.stack([m.species for m in made]))
    return crystals, [dict(seed=seed, index=int(i), **m.info()) for i, m in zip(indices, made)]


# ---------------------------------------------------------------------------------------------- dataset
EV_PER_A2_TO_J_PER_M2 = 16.0218
ENERGY_WINDOW = 0.4  # J/m²: "low interface energy" = at most this above the lowest structure (paper §2.1.3)
MIN_PAIR_DISTANCE = 1.5  # Å: relaxed structures with a closer pair are discarded (the paper's threshold)
DEFAULT_POTENTIAL = "interface_chgnet"
GENERATION_PART = 8  # structures per resumable part of the generation stage
RELAX_CHUNK = 8  # structures per resumable relaxation chunk


@dataclass(frozen=True)
class BuildSettings:
    """Size of a build: random interfaces relaxed, relaxation limits and the validation fraction.

    ``interface_first``: relax the interface-region atoms alone (slabs fixed) to ``fmax`` first, then all atoms,
    as the paper's DFT relaxations of random interfaces did (interface atoms only for the first ionic steps).
    Relaxing every atom at once lets the random region's first large forces pull O out of the LCO slab: with the
    shipped potential, 307 of 324 interior Co of 18 interfaces (seeds 0, 4, 5) stay six-fold at once, 320 of 324
    interface first (README, interface potential)."""

    n_candidates: int = 32
    max_steps: int = 2000
    fmax: float = DEFAULT_FMAX
    val_fraction: float = 0.2
    interface_first: bool = True


SIZES = {"small": BuildSettings(), "full": BuildSettings(n_candidates=3100)}


def interface_area(lattice: np.ndarray) -> float:
    """In-plane area (Å²) of interface cells (..., 3, 3)."""
    return float(np.linalg.norm(np.cross(lattice[..., 0, :], lattice[..., 1, :]), axis=-1).max())


def interface_energies(energy_per_atom: np.ndarray, n_atoms: int, area: float) -> tuple[np.ndarray, float]:
    """Normalised interface energies γ̃ (J/m², Dismai-Bench eq. 6) of relaxed energies (eV/atom) and the
    reference E_ref (eV/atom) that puts the lowest structure 0.4 J/m² below zero, so that γ̃ ≤ 0 is the
    paper's window (its −4.78 eV/atom belongs to its M3GNet; dismax sets E_ref per potential)."""
    e_ref = float(np.min(energy_per_atom)) + ENERGY_WINDOW * area / (EV_PER_A2_TO_J_PER_M2 * n_atoms)
    return (energy_per_atom - e_ref) * n_atoms / area * EV_PER_A2_TO_J_PER_M2, e_ref


def minimum_pair_distances(crystals: Crystals) -> np.ndarray:
    """Smallest interatomic distance (B,) in Å of each structure (minimum image)."""
    out = []
    for b in range(len(crystals)):
        c = crystals[b : b + 1].to_numpy()
        d = np.array(pairwise_minimum_image_distances(jnp.asarray(c.frac), jnp.asarray(c.lattice)))[0]
        np.fill_diagonal(d, np.inf)
        out.append(d.min())
    return np.array(out)


CO_O_BOND = 2.3  # Å: Co-O neighbour cutoff of the coordination check (spec §2.4)


def _interior_cobalt_bonds(frac, lattice, species, recipe: InterfaceRecipe):
    """(interior Co indices (C,), O indices (M,), Co→O minimum-image vectors (C, M, 3) in Å) of one structure.
    The interior LCO planes (touching neither the interface nor the vacuum) are found by the atom order (Co block
    from the interface plane down, the same number per plane), so they follow the same atoms through a relaxation."""
    cart = frac @ lattice
    cobalt = np.flatnonzero(species == CO)
    per_plane = len(cobalt) // recipe.lco_planes
    interior = cobalt[per_plane : len(cobalt) - per_plane]
    oxygen = np.flatnonzero(species == O)
    return interior, oxygen, np.asarray(displacements(cart[interior], cart[oxygen], lattice))


def interior_co_oxygen_counts(crystals: Crystals, recipe: InterfaceRecipe = InterfaceRecipe()) -> list[np.ndarray]:
    """O neighbours within 2.3 Å (minimum image) of every Co of the interior LCO planes, one array per
    structure; bulk LCO has six O around each Co (an octahedron)."""
    counts = []
    for b in range(len(crystals)):
        c = crystals[b : b + 1].to_numpy()
        _, _, bonds = _interior_cobalt_bonds(c.frac[0], c.lattice[0], c.species[0], recipe)
        counts.append((np.linalg.norm(bonds, axis=-1) < CO_O_BOND).sum(axis=1))
    return counts


def displaced_shell_oxygen(crystals: Crystals, copies: int, n_oxygen: int, distance: tuple[float, float], seed: int,
                           recipe: InterfaceRecipe = InterfaceRecipe()) -> tuple[Crystals, list[dict]]:
    """``copies`` frames of each structure in which ``n_oxygen`` first-shell O of distinct interior Co are moved
    away from their Co, each by a distance drawn uniformly from ``distance`` (Å) in a random direction of the
    half-space pointing away from the Co; every other atom stays. Labelled by a teacher, such frames show a fitted
    potential the restoring force of an octahedron losing an O (the student's failure mode in a relaxation from a
    random interface). Returns the frames (B·copies, N) and per frame its source index, copy, the moved O, their
    distances (Å) and the Co each was moved off."""
    rng = np.random.default_rng(seed)
    c = crystals.to_numpy()
    frac_out, infos = [], []
    for b in range(len(crystals)):
        interior, oxygen, bonds = _interior_cobalt_bonds(c.frac[b], c.lattice[b], c.species[b], recipe)
        lengths = np.linalg.norm(bonds, axis=-1)
        start = c.frac[b] @ c.lattice[b]
        for copy in range(copies):
            cart = start.copy()
            moved, moved_by, moved_off = [], [], []
            for i in rng.permutation(len(interior)):
                if len(moved) == n_oxygen:
                    break
                shell = np.flatnonzero((lengths[i] < CO_O_BOND) & ~np.isin(oxygen, moved))
                if len(shell) == 0:
                    continue
                j = rng.choice(shell)
                outward = bonds[i, j] / lengths[i, j]
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                direction -= 2.0 * min(float(direction @ outward), 0.0) * outward  # mirrored into the outer half
                step = rng.uniform(*distance)
                cart[oxygen[j]] += step * direction
                moved.append(int(oxygen[j]))
                moved_by.append(round(float(step), 4))
                moved_off.append(int(interior[i]))
            if len(moved) < n_oxygen:
                raise DismaxError(f"structure {b}: only {len(moved)} interior Co have an O within {CO_O_BOND} Å to "
                                  f"move ({n_oxygen} asked)")
            frac = cart @ np.linalg.inv(c.lattice[b])
            frac_out.append(frac - np.floor(frac))
            infos.append({"source_frame": b, "copy": copy, "moved": moved, "moved_by": moved_by,
                          "moved_off_cobalt": moved_off})
    index = np.repeat(np.arange(len(crystals)), copies)
    return Crystals(np.array(frac_out), c.lattice[index], c.species[index]), infos


def _generate(work: Path, seed: int, n: int, recipe: InterfaceRecipe) -> Path:
    """Stage 1: the random interfaces (``generated.extxyz``), written in resumable parts."""
    out = work / "generated.extxyz"
    if out.exists():
        return out
    n_parts = -(-n // GENERATION_PART)

    def write_part(part: int, path: Path) -> None:
        crystals, infos = random_interfaces(seed, range(part * GENERATION_PART, min(n, (part + 1) * GENERATION_PART)),
                                            recipe)
        write_extxyz(crystals, path, infos)

    return write_in_parts(out, n_parts, write_part, desc="random interfaces")


def _relax_stage(work: Path, crystals: Crystals, potential, settings: BuildSettings) -> dict:
    """Stage 2: relaxation in resumable chunks (``relaxed-interface-first-KKKK.npz``, or ``relaxed-KKKK.npz``
    when all atoms are relaxed at once); the per-structure results."""
    n = len(crystals)
    chunks = range(-(-n // RELAX_CHUNK))
    name = "relaxed-interface-first" if settings.interface_first else "relaxed"
    for k in progress(chunks, desc=f"relax ({potential.name})", unit="chunk"):
        path = work / f"{name}-{k:04d}.npz"
        if path.exists():
            continue
        part = crystals[k * RELAX_CHUNK : min(n, (k + 1) * RELAX_CHUNK)]
        interface_steps = np.zeros(len(part), np.int64)
        if settings.interface_first:
            first = relax(part, potential, fmax=settings.fmax, max_steps=settings.max_steps, chunk_size=RELAX_CHUNK,
                          free=interface_region_mask(np.asarray(part.species)))
            part, interface_steps = first.crystals, first.steps
        result = relax(part, potential, fmax=settings.fmax, max_steps=settings.max_steps, chunk_size=RELAX_CHUNK)
        buffer = io.BytesIO()
        np.savez(buffer, frac=np.asarray(result.crystals.frac), status=result.status, steps=result.steps,
                 e_final=result.e_final, fmax=result.fmax, interface_steps=interface_steps)
        atomic_write_bytes(path, buffer.getvalue())
    parts = [np.load(work / f"{name}-{k:04d}.npz") for k in chunks]
    return {key: np.concatenate([p[key] for p in parts])
            for key in ("frac", "status", "steps", "e_final", "fmax", "interface_steps")}


def build(size: str, seed: int, out_dir: Path, potential: str = DEFAULT_POTENTIAL,
          settings: BuildSettings | None = None, recipe: InterfaceRecipe = InterfaceRecipe(),
          work_dir: Path | None = None) -> None:
    """Write ``train.extxyz``, ``val.extxyz`` and ``params.json`` of the interface dataset into ``out_dir``.

    Stages (each resumable from ``work_dir``, default ``$DISMAX_CACHE/work/interface/SIZE-seedSEED-POTENTIAL``,
    removed after a successful build): random interfaces, relaxation with ``potential`` (any name of
    :func:`dismax.potentials.get_potential`; ``none`` keeps the random structures unrelaxed and unfiltered),
    the low-energy filter, the 80/20 split.
    """
    from dismax.data.registry import cache_root

    settings = settings or SIZES[size]
    out_dir = Path(out_dir)
    tag = potential.replace(":", "_").replace("/", "_")
    work = Path(work_dir) if work_dir else cache_root() / "work" / "interface" / f"{size}-seed{seed}-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    crystals, infos = read_structure_set(_generate(work, seed, settings.n_candidates, recipe), with_info=True)
    crystals = crystals.as_crystals()
    n, area = crystals.n_atoms, interface_area(np.asarray(crystals.lattice))
    records = [dict(info) for info in infos]
    if potential == "none":
        kept = np.arange(len(crystals))
        structures = crystals
        summary = {"relaxed": False}
    else:
        model = get_potential(potential)
        version = _shipped_version(potential) if potential in SHIPPED else ""
        result = _relax_stage(work, crystals, model, settings)
        structures = Crystals(result["frac"], np.asarray(crystals.lattice), np.asarray(crystals.species))
        closest = minimum_pair_distances(structures)
        usable = (result["status"] == "converged") & (closest >= MIN_PAIR_DISTANCE)
        if not usable.any():
            raise DismaxError(f"no relaxation with '{potential}' converged to fmax {settings.fmax} eV/Å without "
                              f"atoms closer than {MIN_PAIR_DISTANCE} Å (relaxation results in {work}); build with "
                              f"--potential none --out DIR, or with another potential (README: interface potential)")
        gamma = np.full(len(crystals), np.nan)
        gamma[usable], e_ref = interface_energies(result["e_final"][usable], n, area)
        kept = np.flatnonzero(usable & (gamma <= 1e-9))
        for i, record in enumerate(records):
            record.update(energy_per_atom=float(result["e_final"][i]), interface_energy=float(gamma[i]),
                          relax_status=str(result["status"][i]), relax_steps=int(result["steps"][i]),
                          interface_relax_steps=int(result["interface_steps"][i]),
                          relax_fmax=float(result["fmax"][i]), min_distance=float(closest[i]), potential=model.name,
                          potential_version=version)
        summary = {"relaxed": True, "potential": model.name, "potential_sha256": version, "e_ref_eV_per_atom": e_ref,
                   "n_converged": int(np.sum(result["status"] == "converged")), "n_usable": int(usable.sum()),
                   "n_kept": len(kept), "acceptance_fraction": len(kept) / len(crystals)}
    if len(kept) < 2:
        raise DismaxError(f"{len(kept)} of {len(crystals)} interfaces kept, and the train/validation split needs "
                          f"at least 2: build more candidates (BuildSettings.n_candidates, now "
                          f"{settings.n_candidates}); finished stages stay in {work}")
    n_val = max(1, int(round(settings.val_fraction * len(kept))))
    order = np.random.default_rng(seed + 1).permutation(len(kept))
    splits = {"train": np.sort(kept[order[n_val:]]), "val": np.sort(kept[order[:n_val]])}
    header_types = (int, float, str, np.ndarray, np.generic)
    for split, members in splits.items():
        write_extxyz(structures[members], out_dir / f"{split}.extxyz",
                     info=[{k: v for k, v in records[i].items() if isinstance(v, header_types)} for i in members])
        for i in members:
            records[i]["split"] = split
    params = {"name": "interface", "size": size, "seed": seed, "description": DESCRIPTION,
              "potential": potential, "recipe": asdict(recipe), "settings": asdict(settings),
              "cell": {"in_plane": in_plane_cell(np.asarray(crystals.lattice[0, :2])), "n_atoms": n},
              "summary": summary,
              "structures": records}
    atomic_write_text(out_dir / "params.json", json.dumps(params, indent=2, default=_plain) + "\n")
    shutil.rmtree(work)


def stale_reason(out_dir: Path, size: str) -> str | None:
    """Why the build in ``out_dir`` differs from what :func:`build` of ``size`` writes now (other build settings,
    recipe or weights of its shipped potential), or None when it does not."""
    path = Path(out_dir) / "params.json"
    if not path.is_file():
        return "it has no params.json"
    params = json.loads(path.read_text())
    current = json.loads(json.dumps({"settings": asdict(SIZES[size]), "recipe": asdict(InterfaceRecipe())},
                                    default=_plain))
    reasons = [f"{key} {params.get(key)} != {value}" for key, value in current.items() if params.get(key) != value]
    potential = params.get("potential")
    if potential in SHIPPED:
        built = params.get("summary", {}).get("potential_sha256")
        now = _shipped_version(potential)
        if built != now:
            reasons.append(f"weights of '{potential}' {built} != {now}")
    return "; ".join(reasons) or None


def _shipped_version(potential: str) -> str:
    """First 12 hex digits of the SHA-256 of a shipped potential's weights file."""
    return hashlib.sha256(SHIPPED[potential].read_bytes()).hexdigest()[:12]


def _plain(value):
    """JSON form of the NumPy values read back from extxyz headers."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)


DESCRIPTION = (
    "Interfaces are built following Dismai-Bench §4.1.3 (LCO(110) 4 layers, LSC(100) Tasker-2b 7 layers, "
    "M_LCO = [[1,2],[-3,3]], M_LSC = [[1,1],[-2,1]], 9 Li + 3 Sc + 18 Cl in a 4-6 Å region, random lateral shift, "
    "14 Å vacuum, 264 atoms). The paper relaxed them with an M3GNet trained on its own PBE+U (U = 4 eV) interface "
    "DFT data. dismax instead relaxes them (the interface-region atoms alone first, then all atoms) with the "
    "potential named in 'potential' (by default a JAX NequIP "
    "distilled from CHGNet 0.3.0, a universal potential trained on Materials Project data (MPtrj)): a stand-in for "
    "the paper's M3GNet/DFT. The random interface region is sampled by rejection sampling instead of CALYPSO, and "
    "the LSC bulk is an ordered C2/m model built from the experimental lattice. Interface energies are relative to "
    "the lowest structure for the same potential; they are not comparable with the paper's values, and the "
    "dataset is Dismai-Bench-like, not the published dataset."
)
