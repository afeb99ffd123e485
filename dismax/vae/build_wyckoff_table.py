"""Regenerate the static Wyckoff-position table `data/wyckoff_positions.json.gz` from pyxtal.

Run once (needs the `vae-tables` extra): `python -m dismax.vae.build_wyckoff_table`.
The table holds, for each of the 230 space groups in the settings pyxtal uses (origin choice 2,
hexagonal axes for R groups, unique axis b for monoclinic groups): the Hermann-Mauguin symbol and,
per Wyckoff position in letter order a, b, ..., z, A: multiplicity, number of free parameters and
all orbit operations as 'x,y,z' strings (the first is the representative).
"""

import gzip
import json
from pathlib import Path

TABLE_PATH = Path(__file__).parent / "data" / "wyckoff_positions.json.gz"


def build_table() -> dict:
    """Read every group's Wyckoff positions from pyxtal into plain JSON data."""
    try:
        from pyxtal.symmetry import Group
    except ImportError as error:
        raise SystemExit("pyxtal is needed to rebuild the table: pip install -e .[vae-tables]") from error
    groups = {}
    for number in range(1, 231):
        group = Group(number)
        positions = sorted(group.Wyckoff_positions, key=lambda wp: (wp.letter.isupper(), wp.letter))
        groups[str(number)] = {
            "symbol": group.symbol,
            "positions": [
                {
                    "letter": wp.letter,
                    "multiplicity": int(wp.multiplicity),
                    "dof": int(wp.get_dof()),
                    "ops": [op.as_xyz_str().replace(" ", "") for op in wp.ops],
                }
                for wp in positions
            ],
        }
    return {"source": "pyxtal 1.1.5 Group(n).Wyckoff_positions", "groups": groups}


def main() -> None:
    table = build_table()
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(TABLE_PATH, "wt", encoding="utf-8") as handle:
        json.dump(table, handle, separators=(",", ":"))
    n_positions = sum(len(g["positions"]) for g in table["groups"].values())
    print(f"wrote {TABLE_PATH.name}: {n_positions} Wyckoff positions in 230 groups")


if __name__ == "__main__":
    main()
