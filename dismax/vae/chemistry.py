"""Structural validity and charge neutrality of (disordered) generated crystals.

Charge neutrality re-implements the SMACT test on integerised compositions (SMACT's own
`smact_validity` truncates fractional amounts with int()): each amount becomes a fraction with
denominator <= 100, all are multiplied by the LCM of the denominators and divided by their GCD;
then some product of per-element oxidation states must sum to zero, optionally passing the Pauling
electronegativity test. All-metal compositions are valid (CDVAE convention). Oxidation states are
SMACT's ICSD-24 set when smact is installed (`pip install -e .[vae]`), otherwise pymatgen's
ICSD-derived `icsd_oxidation_states`; `oxidation_state_source()` says which.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction


def structurally_valid(structure, min_distance: float = 0.5, min_volume: float = 0.1) -> bool:
    """No two sites (including periodic images of one site) closer than `min_distance` Å and volume
    >= `min_volume` Å^3 (the CDVAE criterion used by Dis-GEN)."""
    if structure.volume < min_volume:
        return False
    _, _, _, distances = structure.get_neighbor_list(min_distance)
    return not (len(distances) and float(distances.min()) < min_distance)


def integer_composition(amounts: dict[str, float], max_denominator: int = 100) -> dict[str, int]:
    """{'Li': 1, 'Co': 0.333, ...} -> smallest integer counts with the same ratios (denominators <= 100)."""
    fractions = {el: Fraction(v).limit_denominator(max_denominator) for el, v in amounts.items() if v > 0}
    if not fractions:
        return {}
    lcm = functools.reduce(math.lcm, (f.denominator for f in fractions.values()), 1)
    counts = {el: int(f * lcm) for el, f in fractions.items()}
    gcd = functools.reduce(math.gcd, counts.values())
    return {el: c // gcd for el, c in counts.items()}


@functools.lru_cache(maxsize=1)
def oxidation_state_source() -> str:
    try:
        import smact  # noqa: F401
    except ImportError:
        return "pymatgen icsd_oxidation_states"
    return "smact oxidation_states_icsd24"


@functools.lru_cache(maxsize=None)
def oxidation_states(symbol: str) -> tuple[int, ...]:
    """Allowed oxidation states of an element (see the module docstring for the source)."""
    if oxidation_state_source().startswith("smact"):
        from smact import Element as SmactElement

        states = SmactElement(symbol).oxidation_states_icsd24 or []
    else:
        from pymatgen.core import Element

        states = Element(symbol).icsd_oxidation_states or ()
    return tuple(int(s) for s in states)


@functools.lru_cache(maxsize=None)
def _electronegativity(symbol: str) -> float:
    from pymatgen.core import Element

    value = Element(symbol).X
    return float(value) if value == value else float("nan")


@functools.lru_cache(maxsize=None)
def _is_metal(symbol: str) -> bool:
    from pymatgen.core import Element

    return bool(Element(symbol).is_metal)


def charge_neutral(amounts: dict[str, float], pauling_test: bool = True, threshold: float = 0.0,
                   max_combinations: int = 200_000) -> bool:
    """True when the integerised composition admits a neutral combination of oxidation states (and, with
    `pauling_test`, every cation is less electronegative than every anion, within `threshold`).

    Equivalent to testing every product of oxidation states, but searched as reachable charge sums: for
    each candidate lowest anion electronegativity v, elements below v must be cations, above v + threshold
    anions, the rest either. Compositions with more than `max_combinations` oxidation-state combinations
    (e.g. 10+ elements on decoded sites) count as not neutral, as in the exhaustive search they replace."""
    counts = integer_composition(amounts)
    symbols = sorted(counts)
    if not symbols:
        return False
    if all(_is_metal(s) for s in symbols):
        return True
    if len(symbols) == 1:
        return False
    choices = {s: oxidation_states(s) for s in symbols}
    if any(not c for c in choices.values()) or math.prod(len(c) for c in choices.values()) > max_combinations:
        return False
    if not pauling_test:
        return 0 in _reachable_sums([[q * counts[s] for q in choices[s]] for s in symbols])
    electronegativity = {s: _electronegativity(s) for s in symbols}
    for lowest_anion in sorted({x for x in electronegativity.values() if x == x}):
        options = []
        for s in symbols:
            x = electronegativity[s]
            cation_allowed = x == x and x <= lowest_anion + threshold
            anion_allowed = x == x and x >= lowest_anion
            options.append([(q * counts[s], q > 0, q < 0) for q in choices[s]
                            if (q > 0 and cation_allowed) or (q < 0 and anion_allowed)])
        if any(not option for option in options):
            continue
        if _neutral_with_both_signs(options):
            return True
    return False


def _reachable_sums(per_element: list[list[int]]) -> set[int]:
    sums = {0}
    for charges in per_element:
        sums = {total + charge for total in sums for charge in charges}
    return sums


def _neutral_with_both_signs(options: list[list[tuple[int, bool, bool]]]) -> bool:
    """Some choice of one (charge, is_cation, is_anion) per element sums to zero with at least one cation and
    one anion (states track (sum, has cation, has anion))."""
    states = {(0, False, False)}
    for option in options:
        states = {(total + charge, has_cation or cation, has_anion or anion)
                  for total, has_cation, has_anion in states for charge, cation, anion in option}
    return (0, True, True) in states


def composition_of(structure) -> dict[str, float]:
    """Element -> total amount of a (disordered) pymatgen Structure."""
    return {el.symbol: float(v) for el, v in structure.composition.element_composition.items()}
