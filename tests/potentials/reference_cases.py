"""Fixed inputs whose relaxation and MD results were saved before the potentials layer moved.

``python -m tests.potentials.reference_cases`` rewrites ``reference_results.npz`` next to this file;
it was run once on the code before the move, and the tests compare today's results against it.
"""

import numpy as np
from ase.build import bulk

from dismax.structures import Crystals

REFERENCE_FILE = "reference_results.npz"
MD_STEPS = 40


def relax_inputs() -> Crystals:
    """Three 64-atom Si cells: perturbed diamond, a sheared (triclinic) one, and a compressed one."""
    rng = np.random.default_rng(2026)
    shear = np.array([[1.0, 0.05, 0.02], [0.0, 1.0, 0.03], [0.01, 0.0, 1.0]])
    cells = []
    for lattice_constant, deform in ((5.431, np.eye(3)), (5.431, shear), (5.35, np.eye(3))):
        atoms = bulk("Si", "diamond", a=lattice_constant, cubic=True) * (2, 2, 2)
        atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
        atoms.set_cell(atoms.cell.array @ deform, scale_atoms=True)
        cells.append(atoms)
    return Crystals.from_ase(cells)


def md_protocol():
    """Two 64-atom cells, 40 MD steps of 1 fs at 3000 K (melt plateau only)."""
    from dismax.data.a_si import tiny_protocol

    return tiny_protocol(n_structures=2, n_atoms=64, melt_ps=MD_STEPS / 1000.0, quench_ps=1e-9,
                         block_steps=25)


def md_start() -> np.ndarray:
    from dismax.data.a_si import random_start

    rng = np.random.default_rng(7)
    protocol = md_protocol()
    return np.stack([random_start(protocol, rng) for _ in range(protocol.n_structures)])


def compute() -> dict:
    """Today's results for the fixed inputs (relaxations with SW and SW x1.5, a short melt MD)."""
    from dismax.data.a_si import melt_quench
    from dismax.potentials import amorphous_sw, original_sw
    from dismax.potentials.fire import relax

    out = {}
    for name, potential in (("sw", original_sw()), ("sw_a_si", amorphous_sw())):
        result = relax(relax_inputs(), potential, fmax=0.05, chunk_size=4)
        out[f"{name}_frac"] = np.asarray(result.crystals.frac)
        out[f"{name}_e_final"] = result.e_final
        out[f"{name}_e_initial"] = result.e_initial
        out[f"{name}_steps"] = result.steps
    out["md_frac"] = melt_quench(md_protocol(), md_start(), seed=3, progress=False)
    return out


if __name__ == "__main__":
    from pathlib import Path

    from dismax.runs import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **compute())
    atomic_write_bytes(Path(__file__).with_name(REFERENCE_FILE), buffer.getvalue())
