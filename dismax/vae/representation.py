"""The Dis-GEN arrays: site matrix A (9 sites x 183 features) and crystal vector c (6 + 230), and back.

A columns: 0-100 occupancy over elements Z = 1..100 plus vacancy (index 100); 101-151 multiplicity
one-hot 0..50; 152 disorder flag; 153-155 fractional x, y, z; 156-182 Wyckoff letter one-hot
(0 = padding, a = 1, ..., z = 26). Padding rows: vacancy = 1, multiplicity 0, letter 0.
c: 6 standardised lattice parameters + space-group one-hot (group n at index n - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dismax.vae import wyckoff
from dismax.vae.genes import WyckoffGene, WyckoffSite

N_SITES = 9
N_ELEMENTS = 101  # Z = 1..100 and the vacancy
VACANCY_INDEX = 100
N_MULTIPLICITIES = 51
N_LETTERS = 27
N_FEATURES = N_ELEMENTS + N_MULTIPLICITIES + 1 + 3 + N_LETTERS  # 183
N_LATTICE = 6
N_SPACEGROUPS = 230
N_CRYSTAL = N_LATTICE + N_SPACEGROUPS  # 236

ELEMENTS = slice(0, N_ELEMENTS)
MULTIPLICITY = slice(101, 152)
DISORDER = 152
XYZ = slice(153, 156)
LETTER = slice(156, 183)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _symbols() -> list[str]:
    from pymatgen.core.periodic_table import Element

    return [Element.from_Z(z).symbol for z in range(1, 101)]


_SYMBOLS: list[str] = []


def element_symbols() -> list[str]:
    """Element symbols for Z = 1..100 (index Z - 1)."""
    if not _SYMBOLS:
        _SYMBOLS.extend(_symbols())
    return _SYMBOLS


def padding_row() -> np.ndarray:
    row = np.zeros(N_FEATURES, np.float32)
    row[VACANCY_INDEX] = 1.0
    row[MULTIPLICITY.start] = 1.0
    row[LETTER.start] = 1.0
    return row


def encode_site(site: WyckoffSite) -> np.ndarray:
    """(183,) feature row of one Wyckoff site."""
    symbols = element_symbols()
    row = np.zeros(N_FEATURES, np.float32)
    for symbol, value in site.occupancy:
        row[symbols.index(symbol)] += value
    row[VACANCY_INDEX] = site.vacancy
    row[MULTIPLICITY.start + site.multiplicity] = 1.0
    row[DISORDER] = float(site.disordered)
    row[XYZ] = site.frac
    row[LETTER.start + 1 + LETTERS.index(site.letter)] = 1.0
    return row


@dataclass(frozen=True)
class WyckoffArrays:
    """A batch of genes as arrays: sites (B, 9, 183), lattice (B, 6) raw (Å, degrees), spacegroup (B,) 1-230,
    site_mask (B, 9) true for real sites."""

    sites: np.ndarray
    lattice: np.ndarray
    spacegroup: np.ndarray
    site_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.spacegroup)


def encode_genes(genes: list[WyckoffGene]) -> WyckoffArrays:
    """Stack genes (each with at most 9 sites, multiplicities <= 50) into WyckoffArrays."""
    sites = np.tile(padding_row(), (len(genes), N_SITES, 1))
    mask = np.zeros((len(genes), N_SITES), bool)
    for i, gene in enumerate(genes):
        if len(gene.sites) > N_SITES:
            raise ValueError(f"gene {i} has {len(gene.sites)} sites > {N_SITES}")
        for j, site in enumerate(gene.sites):
            sites[i, j] = encode_site(site)
            mask[i, j] = True
    lattice = np.array([gene.lattice for gene in genes], np.float32).reshape(len(genes), N_LATTICE)
    spacegroup = np.array([gene.spacegroup for gene in genes], np.int32)
    return WyckoffArrays(sites=sites, lattice=lattice, spacegroup=spacegroup, site_mask=mask)


@dataclass(frozen=True)
class LatticeScaler:
    """StandardScaler for the 6 lattice parameters, fitted on the training set."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, lattice: np.ndarray) -> "LatticeScaler":
        lattice = np.asarray(lattice, np.float64)
        std = lattice.std(axis=0)
        return cls(mean=lattice.mean(axis=0), std=np.where(std > 1e-8, std, 1.0))

    def transform(self, lattice: np.ndarray) -> np.ndarray:
        return ((np.asarray(lattice) - self.mean) / self.std).astype(np.float32)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return np.asarray(scaled) * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "LatticeScaler":
        return cls(mean=np.asarray(data["mean"], float), std=np.asarray(data["std"], float))


def crystal_vector(lattice_scaled: np.ndarray, spacegroup: np.ndarray) -> np.ndarray:
    """c (B, 236): standardised lattice (B, 6) and space-group one-hot (B, 230)."""
    onehot = np.eye(N_SPACEGROUPS, dtype=np.float32)[np.asarray(spacegroup) - 1]
    return np.concatenate([np.asarray(lattice_scaled, np.float32), onehot], axis=-1)


class GenerationFailure(Exception):
    """A decoded representation that cannot form a Wyckoff gene (message = reason)."""


def _rounded_occupancies(values: np.ndarray, decimals: int = 3) -> list[float]:
    """Occupancies rounded to `decimals` whose sum never exceeds 1 (an excess from rounding is taken from
    the largest one)."""
    rounded = [round(float(v), decimals) for v in values]
    excess = round(sum(rounded) - 1.0, decimals)
    if excess > 0:
        largest = int(np.argmax(rounded))
        rounded[largest] = round(rounded[largest] - excess, decimals)
    return rounded


def decode_gene(
    element_probs: np.ndarray,
    letter_scores: np.ndarray,
    multiplicity_scores: np.ndarray,
    disorder_prob: np.ndarray,
    xyz: np.ndarray,
    lattice: np.ndarray,
    spacegroup: int,
    element_acc: float = 0.05,
    disorder_acc: float = 0.5,
    lattice_decimals: int = 1,
) -> WyckoffGene:
    """One gene from decoded site arrays: element_probs (9, 101), letter_scores (9, 27),
    multiplicity_scores (9, 51), disorder_prob (9,), xyz (9, 3), raw lattice (6,), space group 1-230.

    The lattice is projected onto the space group's crystal system (`wyckoff.constrain_lattice`) before
    rounding. A site is empty when its letter argmax is padding; disordered when disorder_prob > disorder_acc,
    then keeping species with occupancy > element_acc (vacancy dropped), else the argmax element.
    Raises GenerationFailure for a zero lattice length or a letter/multiplicity padding mismatch.
    """
    symbols = element_symbols()
    lattice = np.round(wyckoff.constrain_lattice(spacegroup, lattice), lattice_decimals)
    if np.any(lattice[:3] <= 0):
        raise GenerationFailure("zero or negative lattice length")
    letters = np.argmax(letter_scores, axis=-1)
    multiplicities = np.argmax(multiplicity_scores, axis=-1)
    if np.any((letters == 0) != (multiplicities == 0)):
        raise GenerationFailure("letter and multiplicity disagree on which sites are empty")
    sites = []
    for j in np.nonzero(letters)[0]:
        probs = np.asarray(element_probs[j], float)
        if disorder_prob[j] > disorder_acc:
            keep = [k for k in range(VACANCY_INDEX) if probs[k] > element_acc]
            occupancy = tuple(zip((symbols[k] for k in keep), _rounded_occupancies(probs[keep])))
        else:
            k = int(np.argmax(probs))
            occupancy = () if k == VACANCY_INDEX else ((symbols[k], 1.0),)
        if not occupancy:
            continue  # a vacancy-only site is dropped
        frac = tuple(float(x) for x in np.mod(xyz[j], 1.0))
        sites.append(WyckoffSite(letter=LETTERS[letters[j] - 1], multiplicity=int(multiplicities[j]),
                                 occupancy=occupancy, frac=frac))
    if not sites:
        raise GenerationFailure("no occupied site")
    return WyckoffGene(spacegroup=int(spacegroup), lattice=tuple(float(x) for x in lattice), sites=tuple(sites))


def decode_arrays(sites: np.ndarray, lattice: np.ndarray, spacegroup: int, **options) -> WyckoffGene:
    """Gene back from one ground-truth row: sites (9, 183), raw lattice (6,), space group."""
    return decode_gene(
        sites[:, ELEMENTS], sites[:, LETTER], sites[:, MULTIPLICITY], sites[:, DISORDER], sites[:, XYZ],
        lattice, spacegroup, **options,
    )
