"""Wyckoff genes to disordered pymatgen Structures and symmetrised CIFs, and the symmetry checks.

Decoded coordinates are projected onto their Wyckoff position (least squares over all orbit
operations and neighbouring cells, Cartesian distance) and expanded with the group's general
position in the Wyckoff table's setting (origin choice 2).
"""

from __future__ import annotations

import numpy as np

from dismax.vae import wyckoff
from dismax.vae.genes import WyckoffGene


def lattice_matrix(parameters) -> np.ndarray:
    """(3, 3) lattice (rows = vectors, Å) from (a, b, c, alpha, beta, gamma), pymatgen's orientation."""
    from pymatgen.core import Lattice

    return Lattice.from_parameters(*parameters).matrix


def symmetry_matches(gene: WyckoffGene) -> bool:
    """True when every site's letter exists in the gene's space group with the site's multiplicity."""
    return all(wyckoff.multiplicity_of(gene.spacegroup, site.letter) == site.multiplicity for site in gene.sites)


OVERLAP_DISTANCE = 0.5  # Å: the CDVAE/Dis-GEN validity distance
SYMPREC = 0.01  # SpacegroupAnalyzer tolerance (pymatgen's default) for the declared-group check


class Rejection(Exception):
    """A Wyckoff gene that cannot be written as a valid CIF: `stage` (collapse, overlap, parse, symmetry) and
    the reason as message."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage


def snapped_sites(gene: WyckoffGene) -> list[tuple[dict, np.ndarray]]:
    """Per site: (species -> occupancy, orbit fractional coordinates (multiplicity, 3)) after projection.

    Requires `symmetry_matches(gene)`. Raises Rejection('collapse') when a projected point lies on a
    more special position, so that its orbit has fewer copies than the site's multiplicity.
    """
    matrix = lattice_matrix(gene.lattice)
    result = []
    for index, site in enumerate(gene.sites):
        position = wyckoff.find_position(gene.spacegroup, site.letter)
        point = wyckoff.project_onto_position(np.asarray(site.frac), position, matrix)
        orbit = wyckoff.expand_orbit(point, gene.spacegroup)
        if len(orbit) != site.multiplicity:
            raise Rejection("collapse", f"site {index + 1} ({site.multiplicity}{site.letter}) lies on a special "
                                        f"position: {len(orbit)} copies instead of {site.multiplicity}")
        result.append((dict(site.occupancy), orbit))
    return result


def _structure(lattice, sites: list[tuple[dict, np.ndarray]]):
    from pymatgen.core import Lattice, Structure

    species = [occupancy for occupancy, orbit in sites for _ in orbit]
    coords = np.concatenate([orbit for _, orbit in sites])
    return Structure(Lattice.from_parameters(*lattice), species, coords)


def _close_orbit_pairs(gene: WyckoffGene, sites, distance: float) -> set[tuple[int, int]]:
    """(orbit i, orbit j), i <= j, with two copies closer than `distance` Å (pymatgen neighbour list)."""
    owner = np.concatenate([np.full(len(orbit), k) for k, (_, orbit) in enumerate(sites)])
    centres, neighbours, _, _ = _structure(gene.lattice, sites).get_neighbor_list(distance)
    return {(int(min(owner[i], owner[j])), int(max(owner[i], owner[j]))) for i, j in zip(centres, neighbours)}


def placed_sites(gene: WyckoffGene, overlap_distance: float = OVERLAP_DISTANCE) -> list[tuple[str, int, dict, np.ndarray]]:
    """Sites of a gene ready to write: (letter, multiplicity, species -> occupancy, orbit (K, 3)).

    Coordinates are projected onto their Wyckoff position (`snapped_sites`). Orbits with copies closer than
    `overlap_distance` Å are resolved by one rule: two orbits of the same Wyckoff position are merged into the
    first one (occupancies added species by species) when their combined occupancy is at most 1; any other
    close pair (different positions, combined occupancy above 1, or copies of one orbit) raises
    Rejection('overlap'). After merging, no two sites are closer than `overlap_distance`.
    """
    sites = snapped_sites(gene)
    pairs = _close_orbit_pairs(gene, sites, overlap_distance)
    merged_into: dict[int, int] = {}
    occupancies = [dict(occupancy) for occupancy, _ in sites]
    for i, j in sorted(pairs):
        first, second = gene.sites[i], gene.sites[j]
        where = f"sites {i + 1} ({first.multiplicity}{first.letter}) and {j + 1} ({second.multiplicity}{second.letter})"
        if i == j:
            raise Rejection("overlap", f"copies of site {i + 1} ({first.multiplicity}{first.letter}) are closer "
                                       f"than {overlap_distance} Å")
        if first.letter != second.letter:
            raise Rejection("overlap", f"{where} are closer than {overlap_distance} Å")
        target = merged_into.get(i, i)
        combined = sum(occupancies[target].values()) + sum(occupancies[j].values())
        if j in merged_into or combined > 1.0 + 1e-6:
            raise Rejection("overlap", f"{where} coincide with combined occupancy {combined:.3f} > 1")
        for symbol, value in occupancies[j].items():
            occupancies[target][symbol] = round(occupancies[target].get(symbol, 0.0) + value, 6)
        occupancies[j] = {}
        merged_into[j] = target
    result = [(site.letter, site.multiplicity, occupancies[k], sites[k][1])
              for k, site in enumerate(gene.sites) if k not in merged_into]
    if merged_into and _close_orbit_pairs(gene, [(occ, orbit) for _, _, occ, orbit in result], overlap_distance):
        raise Rejection("overlap", f"sites are closer than {overlap_distance} Å after merging")
    return result


def gene_to_structure(gene: WyckoffGene):
    """Disordered pymatgen Structure (conventional cell) of a gene whose symmetry matches (no overlap
    resolution; see `realise_gene` for the checked path)."""
    if not symmetry_matches(gene):
        raise ValueError(f"Wyckoff sites do not match space group {gene.spacegroup}")
    return _structure(gene.lattice, snapped_sites(gene))


def gene_to_cif(gene: WyckoffGene, name: str = "dismax", sites=None) -> str:
    """Symmetrised CIF text: space group, general-position operations, one row per (site, species) with
    Wyckoff symbol, multiplicity and occupancy. `sites` defaults to `placed_sites(gene)`."""
    if not symmetry_matches(gene):
        raise ValueError(f"Wyckoff sites do not match space group {gene.spacegroup}")
    sites = placed_sites(gene) if sites is None else sites
    a, b, c, alpha, beta, gamma = gene.lattice
    lines = [
        f"data_{name}",
        f"_symmetry_space_group_name_H-M   '{wyckoff.group_symbol(gene.spacegroup)}'",
        f"_space_group_IT_number   {gene.spacegroup}",
        f"_cell_length_a   {a:.6f}",
        f"_cell_length_b   {b:.6f}",
        f"_cell_length_c   {c:.6f}",
        f"_cell_angle_alpha   {alpha:.6f}",
        f"_cell_angle_beta   {beta:.6f}",
        f"_cell_angle_gamma   {gamma:.6f}",
        "loop_",
        " _symmetry_equiv_pos_site_id",
        " _symmetry_equiv_pos_as_xyz",
    ]
    lines += [f"  {i + 1}  '{op}'" for i, op in enumerate(wyckoff.operations_as_strings(gene.spacegroup))]
    lines += [
        "loop_",
        " _atom_site_label",
        " _atom_site_type_symbol",
        " _atom_site_symmetry_multiplicity",
        " _atom_site_Wyckoff_symbol",
        " _atom_site_fract_x",
        " _atom_site_fract_y",
        " _atom_site_fract_z",
        " _atom_site_occupancy",
    ]
    for index, (letter, multiplicity, occupancy, orbit) in enumerate(sites):
        x, y, z = orbit[0]
        for symbol, value in occupancy.items():
            lines.append(
                f"  {symbol}{index + 1}  {symbol}  {multiplicity}  {letter}"
                f"  {x:.6f}  {y:.6f}  {z:.6f}  {value:.4f}"
            )
    return "\n".join(lines) + "\n"


def read_cif_text(text: str):
    """Structure of a CIF read exactly as a user would (`Structure.from_str(text, fmt="cif")`, pymatgen's
    default tolerances), or None when pymatgen cannot read it."""
    import warnings

    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Structure.from_str(text, fmt="cif")
        except Exception:  # any read failure means the CIF is not usable
            return None


def found_spacegroup(structure, symprec: float = SYMPREC) -> int:
    """Space-group number SpacegroupAnalyzer finds (each distinct occupancy dictionary is its own type)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())


def realise_gene(gene: WyckoffGene, name: str = "dismax", overlap_distance: float = OVERLAP_DISTANCE,
                 symprec: float = SYMPREC):
    """(CIF text, pymatgen Structure) of a gene whose symmetry matches, after every check a written CIF must
    pass: orbits placed without overlap (`placed_sites`), the text read back by pymatgen with default
    tolerances into the full orbit count, per-site occupancies <= 1, and SpacegroupAnalyzer at `symprec`
    finding the declared space group. Raises Rejection with the stage and reason otherwise."""
    sites = placed_sites(gene, overlap_distance)
    text = gene_to_cif(gene, name, sites)
    structure = read_cif_text(text)
    if structure is None:
        raise Rejection("parse", "pymatgen cannot read the CIF")
    expected = sum(len(orbit) for *_, orbit in sites)
    if len(structure) != expected:
        raise Rejection("parse", f"pymatgen reads {len(structure)} sites instead of {expected}")
    if any(site.species.num_atoms > 1.0 + 1e-6 for site in structure):
        raise Rejection("parse", "a site has total occupancy above 1")
    found = found_spacegroup(structure, symprec)
    if found != gene.spacegroup:
        raise Rejection("symmetry", f"SpacegroupAnalyzer (symprec {symprec}) finds group {found}, the CIF "
                                    f"declares {gene.spacegroup}")
    return text, structure
