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


PUBLISHED_OP_TYPES = {1: ["wt", "sgl_bd"], 2: ["wt", "L-shaped", "water-like", "bent 120 degrees", "bent 150 degrees",
                                               "linear"],
                      3: ["wt", "trigonal planar", "trigonal non-coplanar", "T-shaped"],
                      4: ["wt", "square co-planar", "tetrahedral", "rectangular see-saw-like", "see-saw-like",
                          "trigonal pyramidal"],
                      5: ["wt", "pentagonal planar", "square pyramidal", "trigonal bipyramidal"],
                      6: ["wt", "hexagonal planar", "octahedral", "pentagonal pyramidal"],
                      7: ["wt", "hexagonal pyramidal", "pentagonal bipyramidal"],
                      8: ["wt", "body-centered cubic", "hexagonal bipyramidal"],
                      9: ["wt", "q2", "q4", "q6"], 10: ["wt", "q2", "q4", "q6"], 11: ["wt", "q2", "q4", "q6"],
                      12: ["wt", "cuboctahedral", "q2", "q4", "q6"],
                      **{cn: ["wt"] for cn in range(13, 25)}}


def published_interface_fingerprint(struc, idx: int) -> tuple[list[float], list[str]]:
    """The published interface motif fingerprint of site ``idx`` (values, labels): matminer's CrystalNN
    fingerprint with the published order-parameter list and ``cation_anion=True`` (61 values), then for every
    CN 1..24 the fractions of the CN's neighbours that are Cl and O (0 when the CN's weight is 0). ``struc``
    carries oxidation states (Li+ Sc3+ Co3+ Cl− O2−) so that CrystalNN tells cations from anions."""
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    fingerprint = CrystalNNFingerprint(op_types=PUBLISHED_OP_TYPES, cation_anion=True)
    nn_data = CrystalNN(cation_anion=True).get_nn_data(struc, idx)
    fractions, labels = [], []
    for cn in range(1, 25):
        weight = nn_data.cn_weights.get(cn, 0)
        neighbours = [entry["site"].specie.symbol for entry in nn_data.cn_nninfo[cn]] if weight != 0 else []
        fractions += [neighbours.count("Cl") / cn, neighbours.count("O") / cn] if weight != 0 else [0, 0]
        labels += [f"Cl fraction coord num {cn}", f"O fraction coord num {cn}"]
    return fingerprint.featurize(struc, idx) + fractions, fingerprint.feature_labels() + labels
