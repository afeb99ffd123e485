"""Ingest a folder, tar or zip of CIF files into Wyckoff genes, with the Dis-GEN filters.

Per file: parse with pymatgen (occupancy tolerance 1.05), reject charge-disordered sites, strip
oxidation states, round occupancies so symmetry-equivalent sites agree, find the symmetry with spglib
typing every distinct occupancy dictionary as its own atom type (refine at symprec 0.1, then analyse
the refined cell at symprec 0.01) in the Wyckoff table's setting (origin choice 2), and keep one record
per Wyckoff orbit. Every rejected file gets a reason in the report.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import tarfile
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from dismax.errors import DismaxInputError
from dismax.vae import wyckoff
from dismax.vae.genes import WyckoffGene, WyckoffSite


@dataclass(frozen=True)
class IngestOptions:
    """Parsing tolerances and the Dis-GEN exclusion filters.

    `max_disordered_sites` is the paper's reading (orbits with > 1 species counting the vacancy);
    `max_multi_site_orbits` the reference code's (orbits with multiplicity > 1), off when None.
    """

    occupancy_tolerance: float = 1.05
    occupancy_decimals: int = 3
    symprec_refine: float = 0.1
    symprec: float = 0.01
    max_sites: int = 9
    max_multiplicity: int = 50
    max_disordered_sites: Optional[int] = 6
    max_multi_site_orbits: Optional[int] = None
    max_species_per_site: int = 6
    max_atomic_number: int = 100
    excluded_elements: tuple[str, ...] = ()
    reject_p1: bool = True
    check_declared_spacegroup: bool = True
    split_site_distance: Optional[float] = 1.5


class Rejected(Exception):
    """A structure excluded by a filter; the message is the reason written to the report."""


def analyse_structure(structure, options: IngestOptions = IngestOptions(), declared_group: int | None = None):
    """Wyckoff gene of a pymatgen Structure (possibly disordered, possibly with oxidation states).

    Raises Rejected with the reason when a filter excludes it.
    """
    import spglib
    from pymatgen.core import Element, Lattice

    site_occupancies = []
    for index, site in enumerate(structure):
        by_element: dict[str, float] = {}
        charges: dict[str, set] = {}
        for species, amount in site.species.items():
            symbol = species.symbol if hasattr(species, "symbol") else str(species)
            by_element[symbol] = by_element.get(symbol, 0.0) + float(amount)
            charges.setdefault(symbol, set()).add(getattr(species, "oxi_state", None))
        mixed = [symbol for symbol, states in charges.items() if len(states) > 1]
        if mixed:
            raise Rejected(f"charge disorder: {mixed[0]} with several oxidation states on site {index}")
        for symbol in by_element:
            if symbol in options.excluded_elements:
                raise Rejected(f"excluded element {symbol}")
            if Element(symbol).Z > options.max_atomic_number:
                raise Rejected(f"element {symbol} has Z > {options.max_atomic_number}")
        rounded = {s: round(v, options.occupancy_decimals) for s, v in sorted(by_element.items())}
        rounded = {s: v for s, v in rounded.items() if v > 0}
        total = sum(rounded.values())
        if total > 1.0:
            rounded = {s: v / total for s, v in rounded.items()}
        site_occupancies.append(tuple(sorted(rounded.items())))

    if options.split_site_distance is not None:
        _check_split_sites(structure, site_occupancies, options.split_site_distance)

    type_of: dict[tuple, int] = {}
    types = [type_of.setdefault(occ, len(type_of) + 1) for occ in site_occupancies]
    occupancy_of_type = {t: occ for occ, t in type_of.items()}
    cell = (structure.lattice.matrix, structure.frac_coords, types)
    first = spglib.get_symmetry_dataset(cell, symprec=options.symprec_refine)
    if first is None:
        raise Rejected("spglib symmetry search failed")
    hall = wyckoff.hall_number(first.number)
    refined = spglib.get_symmetry_dataset(cell, symprec=options.symprec_refine, hall_number=hall)
    std_cell = (refined.std_lattice, refined.std_positions, refined.std_types)
    final = spglib.get_symmetry_dataset(std_cell, symprec=options.symprec, hall_number=hall)
    if final is None or final.number != first.number:
        raise Rejected("space group changes between symprec 0.1 and 0.01")
    group = int(final.number)
    if options.check_declared_spacegroup and declared_group is not None and declared_group != group:
        raise Rejected(f"space group found ({group}) differs from the declared one ({declared_group})")
    if options.reject_p1 and group == 1:
        raise Rejected("space group P1")

    if not np.allclose(final.transformation_matrix, np.eye(3), atol=1e-6):
        raise Rejected("refined cell is not in the standard setting at symprec 0.01")
    positions = np.mod(refined.std_positions + final.origin_shift, 1.0)
    representatives = list(dict.fromkeys(int(i) for i in final.equivalent_atoms))
    if len(representatives) > options.max_sites:
        raise Rejected(f"{len(representatives)} Wyckoff sites > {options.max_sites}")
    sites = []
    for rep in representatives:
        multiplicity = int(np.sum(final.equivalent_atoms == rep))
        letter = final.wyckoffs[rep]
        if multiplicity > options.max_multiplicity:
            raise Rejected(f"Wyckoff multiplicity {multiplicity} > {options.max_multiplicity}")
        if wyckoff.multiplicity_of(group, letter) != multiplicity:
            raise Rejected(f"orbit {multiplicity}{letter} does not match the Wyckoff table of group {group}")
        if letter not in wyckoff.LETTERS[:26]:
            raise Rejected(f"Wyckoff letter {letter} has no slot in the 27-way letter encoding")
        occupancy = occupancy_of_type[int(refined.std_types[rep])]
        if len(occupancy) > options.max_species_per_site:
            raise Rejected(f"{len(occupancy)} species on one site > {options.max_species_per_site}")
        frac = tuple(float(x) for x in np.round(np.mod(positions[rep], 1.0), 6) % 1.0)
        sites.append(WyckoffSite(letter=letter, multiplicity=multiplicity, occupancy=occupancy, frac=frac))

    n_disordered = sum(site.disordered for site in sites)
    if options.max_disordered_sites is not None and n_disordered > options.max_disordered_sites:
        raise Rejected(f"{n_disordered} disordered Wyckoff sites > {options.max_disordered_sites}")
    n_multi = sum(site.multiplicity > 1 for site in sites)
    if options.max_multi_site_orbits is not None and n_multi > options.max_multi_site_orbits:
        raise Rejected(f"{n_multi} Wyckoff orbits with multiplicity > 1 > {options.max_multi_site_orbits}")
    lattice = tuple(float(x) for x in Lattice(final.std_lattice).parameters)
    return WyckoffGene(spacegroup=group, lattice=lattice, sites=tuple(sites))


def _check_split_sites(structure, site_occupancies, distance: float) -> None:
    """Reject positional (split-site) disorder: two partially occupied sites closer than `distance` Å."""
    partial = [i for i, occ in enumerate(site_occupancies) if sum(v for _, v in occ) < 1.0 - 1e-6]
    if len(partial) < 1:
        return
    sub = structure.copy()
    sub.remove_sites([i for i in range(len(structure)) if i not in set(partial)])
    centers, neighbors, _, dists = sub.get_neighbor_list(distance)
    if len(dists) and np.min(dists) < distance:
        raise Rejected(f"split-site disorder: partially occupied sites {np.min(dists):.2f} Å apart")


def declared_spacegroup(cif_text: str) -> int | None:
    """The space-group number a CIF declares (`_space_group_IT_number` or `_symmetry_Int_Tables_number`)."""
    from pymatgen.io.cif import CifFile

    block = next(iter(CifFile.from_str(cif_text).data.values()))
    for key in ("_space_group_IT_number", "_symmetry_Int_Tables_number"):
        value = block.data.get(key)
        if value not in (None, "?", "."):
            try:
                return int(str(value).split("(")[0])
            except ValueError:
                return None
    return None


def analyse_cif_text(cif_text: str, options: IngestOptions = IngestOptions()) -> WyckoffGene:
    """Parse one CIF (first data block) and analyse it; raises Rejected with the reason."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser(io.StringIO(cif_text), occupancy_tolerance=options.occupancy_tolerance)
            structures = parser.parse_structures(primitive=False)
        except Exception as error:  # pymatgen raises ValueError, KeyError, ... on bad CIFs
            raise Rejected(f"unreadable by pymatgen: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    if not structures:
        raise Rejected("unreadable by pymatgen: no structure in the file")
    try:
        declared = declared_spacegroup(cif_text)
    except Exception:
        declared = None
    return analyse_structure(structures[0], options, declared)


def _analyse_entry(args: tuple[str, str, dict]) -> tuple[str, dict | None, str | None]:
    name, text, option_dict = args
    options = IngestOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in option_dict.items()})
    try:
        return name, analyse_cif_text(text, options).to_dict(), None
    except Rejected as reason:
        return name, None, str(reason)
    except Exception as error:  # any other failure is reported per file, never fatal for the whole folder
        return name, None, f"analysis failed: {type(error).__name__}: {error}"


def iter_cif_texts(source: str | Path) -> Iterator[tuple[str, str]]:
    """(name, text) of every .cif in a folder (recursive), a tar(.gz) or a zip archive, sorted by name."""
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*.cif")):
            yield str(path.relative_to(source)), path.read_text(errors="replace")
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in sorted(n for n in archive.namelist() if n.lower().endswith(".cif")):
                yield name, archive.read(name).decode(errors="replace")
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.lower().endswith(".cif")),
                             key=lambda m: m.name)
            for member in members:
                yield member.name, archive.extractfile(member).read().decode(errors="replace")
    else:
        raise DismaxInputError(f"{source}: not a folder, tar or zip archive of CIF files")


@dataclass
class IngestResult:
    """Accepted genes with their file names, and (file name, reason) for every rejected file."""

    names: list[str]
    genes: list[WyckoffGene]
    rejections: list[tuple[str, str]]


def ingest_cifs(
    source: str | Path,
    options: IngestOptions = IngestOptions(),
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    report_path: str | Path | None = None,
) -> IngestResult:
    """Analyse every CIF of `source` in parallel; results are cached per (file content, options) in
    `cache_dir`; the rejection report (CSV: file, reason) goes to `report_path`."""
    from dismax.runs import progress as progress_bar

    option_dict = asdict(options)
    option_key = json.dumps(option_dict, sort_keys=True)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    results: dict[str, tuple[dict | None, str | None]] = {}
    pending = []
    for name, text in iter_cif_texts(source):
        key = hashlib.sha256((option_key + "\n" + text).encode()).hexdigest()
        cached = cache / f"{key}.json" if cache is not None else None
        if cached is not None and cached.exists():
            entry = json.loads(cached.read_text())
            results[name] = (entry["gene"], entry["reason"])
        else:
            pending.append((name, text, option_dict, key))

    def store(name, gene, reason, key):
        results[name] = (gene, reason)
        if cache is not None:
            target = cache / f"{key}.json"
            temporary = target.with_suffix(".tmp")
            temporary.write_text(json.dumps({"gene": gene, "reason": reason}))
            os.replace(temporary, target)

    keys = {name: key for name, _, _, key in pending}
    jobs = [(name, text, option_dict) for name, text, _, _ in pending]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    progress = progress_bar(total=len(jobs), desc="ingest CIFs")
    if workers > 1 and len(jobs) > 1:
        # forkserver: workers are not forked from a process whose JAX threads may already run
        context = multiprocessing.get_context("forkserver")
        with context.Pool(workers) as pool:
            for name, gene, reason in pool.imap_unordered(_analyse_entry, jobs, chunksize=8):
                store(name, gene, reason, keys[name])
                progress.update()
    else:
        for job in jobs:
            name, gene, reason = _analyse_entry(job)
            store(name, gene, reason, keys[name])
            progress.update()
    progress.close()

    names, genes, rejections = [], [], []
    for name in sorted(results):
        gene, reason = results[name]
        if gene is not None:
            names.append(name)
            genes.append(WyckoffGene.from_dict(gene))
        else:
            rejections.append((name, reason))
    if report_path is not None:
        write_report(report_path, rejections)
    return IngestResult(names=names, genes=genes, rejections=rejections)


def write_report(path: str | Path, rejections: list[tuple[str, str]]) -> None:
    """CSV with one row per rejected file: file, reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reason"])
        writer.writerows(rejections)


def save_genes(path: str | Path, names: list[str], genes: list[WyckoffGene]) -> None:
    """Write genes as JSON lines ({"name": ..., "gene": {...}})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w") as handle:
        for name, gene in zip(names, genes):
            handle.write(json.dumps({"name": name, "gene": gene.to_dict()}) + "\n")
    os.replace(temporary, path)


def load_genes(path: str | Path) -> tuple[list[str], list[WyckoffGene]]:
    """Read genes written by `save_genes`."""
    names, genes = [], []
    with Path(path).open() as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                entry = json.loads(line)
                names.append(entry["name"])
                genes.append(WyckoffGene.from_dict(entry["gene"]))
            except (KeyError, ValueError) as error:
                raise DismaxInputError(f"{path}: line {line_number} is not a Wyckoff gene ({error})") from None
    return names, genes
