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


def snapped_sites(gene: WyckoffGene) -> list[tuple[dict, np.ndarray]]:
    """Per site: (species -> occupancy, orbit fractional coordinates (K, 3)) after projection.

    Requires `symmetry_matches(gene)`.
    """
    matrix = lattice_matrix(gene.lattice)
    result = []
    for site in gene.sites:
        position = wyckoff.find_position(gene.spacegroup, site.letter)
        point = wyckoff.project_onto_position(np.asarray(site.frac), position, matrix)
        result.append((dict(site.occupancy), wyckoff.expand_orbit(point, gene.spacegroup)))
    return result


def gene_to_structure(gene: WyckoffGene):
    """Disordered pymatgen Structure (conventional cell) of a gene whose symmetry matches."""
    from pymatgen.core import Lattice, Structure

    if not symmetry_matches(gene):
        raise ValueError(f"Wyckoff sites do not match space group {gene.spacegroup}")
    species, coords = [], []
    for occupancy, orbit in snapped_sites(gene):
        for point in orbit:
            species.append(occupancy)
            coords.append(point)
    return Structure(Lattice.from_parameters(*gene.lattice), species, coords)


def gene_to_cif(gene: WyckoffGene, name: str = "dismax") -> str:
    """Symmetrised CIF text: space group, general-position operations, one row per (site, species) with
    Wyckoff symbol, multiplicity and occupancy."""
    if not symmetry_matches(gene):
        raise ValueError(f"Wyckoff sites do not match space group {gene.spacegroup}")
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
    for index, (site, (occupancy, orbit)) in enumerate(zip(gene.sites, snapped_sites(gene))):
        x, y, z = orbit[0]
        for symbol, value in occupancy.items():
            lines.append(
                f"  {symbol}{index + 1}  {symbol}  {site.multiplicity}  {site.letter}"
                f"  {x:.6f}  {y:.6f}  {z:.6f}  {value:.4f}"
            )
    return "\n".join(lines) + "\n"


def parse_generated_cif(text: str):
    """Re-parse a generated CIF with the reference tolerances; returns the Structure or None on failure."""
    import io
    import warnings

    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser(io.StringIO(text), frac_tolerance=5e-2, occupancy_tolerance=2,
                               site_tolerance=5e-2)
            structures = parser.parse_structures(primitive=False)
        except Exception:  # any parse failure counts as a failed CIF
            return None
    return structures[0] if structures else None
