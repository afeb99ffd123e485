"""Direct re-statements of published Dismai-Bench computations: the independent references of the bench tests
(and of ``benchmarks/metrics_speed.py``, which times them)."""

import itertools

import numpy as np
from pymatgen.analysis.local_env import CrystalNN


def published_crystalnn_angles(struc) -> np.ndarray:
    """The published bond-angle computation (degrees): every pair of CrystalNN neighbours of every site of a
    pymatgen Structure, with the published fallback of rounding the cosine to 5 decimals when arccos is NaN."""
    crystalnn = CrystalNN(distance_cutoffs=None, x_diff_weight=0, porous_adjustment=False)
    angles = []
    for j in range(len(struc)):
        coords = [nn["site"].coords for nn in crystalnn.get_nn_info(struc, j)]
        for a, b in itertools.combinations(range(len(coords)), 2):
            u, v = coords[a] - struc[j].coords, coords[b] - struc[j].coords
            cosine = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
            angle = np.arccos(cosine)
            if np.isnan(angle):
                angle = np.arccos(round(cosine, 5))
            angles.append(angle * 180 / np.pi)
    return np.array(angles)
