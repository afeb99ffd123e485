"""Published Dismai-Bench results (Yong, Su, Ertekin, Digital Discovery 3, 1889 (2024)), for the report.

Values are the mean over three separately trained models with (min, max), 1,000 generated structures per
model, scored on the published data with the published scripts and potentials (Tables 1–3; relaxation
statistics from SI Tables S2–S3 as mean and standard deviation). They are for qualitative comparison:
dismax numbers come from other potentials, seeds and post-processing defaults.
"""

from __future__ import annotations

# family -> dataset key -> model -> metric -> (mean, min, max)
TABLES: dict[str, dict[str, dict[str, dict[str, tuple[float, float, float]]]]] = {
    "interface": {"interface": {
        "CDVAE": {"d_Li": (0.0664, 0.0601, 0.0697), "d_Co": (0.0427, 0.0372, 0.0504),
                  "d_Sc": (0.201, 0.186, 0.214), "d_all": (0.0547, 0.0508, 0.0589), "pct_failed": (0.0, 0.0, 0.0)},
        "DiffCSP": {"d_Li": (0.0439, 0.0414, 0.0474), "d_Co": (0.0272, 0.0240, 0.0298),
                    "d_Sc": (0.0954, 0.0909, 0.102), "d_all": (0.0370, 0.0353, 0.0388),
                    "pct_failed": (7.17, 6.00, 8.90)},
        "CrysTens": {"d_Li": (0.0202, 0.0160, 0.0244), "d_Co": (0.0141, 0.00707, 0.0239),
                     "d_Sc": (0.0972, 0.0888, 0.106), "d_all": (0.0213, 0.0164, 0.0257),
                     "pct_failed": (55.3, 50.6, 61.7)},
        "UniMat": {"d_Li": (0.131, 0.0966, 0.154), "d_Co": (0.235, 0.165, 0.292), "d_Sc": (0.101, 0.0891, 0.111),
                   "d_all": (0.151, 0.111, 0.181), "pct_failed": (64.6, 60.6, 68.3)},
        "CryinGAN": {"d_Li": (0.0538, 0.0466, 0.0600), "d_Co": (0.0274, 0.0210, 0.0359),
                     "d_Sc": (0.0888, 0.0838, 0.0963), "d_all": (0.0426, 0.0379, 0.0451),
                     "pct_failed": (9.00, 7.20, 10.2)},
    }},
    "a_si": {"a_si": {
        "CDVAE": {"d_motif": (0.0402, 0.0396, 0.0412), "d_rdf": (0.392, 0.381, 0.408),
                  "d_angle": (0.00332, 0.00312, 0.00353), "pct_failed": (0.0, 0.0, 0.0)},
        "DiffCSP": {"d_motif": (0.0647, 0.0462, 0.0908), "d_rdf": (1.39, 1.03, 1.69),
                    "d_angle": (0.0103, 0.00797, 0.0133), "pct_failed": (0.0, 0.0, 0.0)},
    }},
    "alloy": {
        "alloy_300K_narrow": {
            "CDVAE": {"d_cluster": (0.0604, 0.0540, 0.0675), "pct_vacancy": (35.8, 32.0, 41.2),
                      "pct_failed": (0.13, 0.00, 0.40)},
            "DiffCSP": {"d_cluster": (0.0645, 0.0566, 0.0792), "pct_vacancy": (94.3, 91.8, 96.5),
                        "pct_failed": (0.0, 0.0, 0.0)},
            "CryinGAN": {"d_cluster": (0.117, 0.106, 0.126), "pct_vacancy": (100.0, 100.0, 100.0),
                         "pct_failed": (0.0, 0.0, 0.0)}},
        "alloy_300K_wide": {
            "CDVAE": {"d_cluster": (0.0658, 0.0598, 0.0742), "pct_vacancy": (37.4, 34.0, 43.4),
                      "pct_failed": (0.07, 0.00, 0.10)},
            "DiffCSP": {"d_cluster": (0.103, 0.0831, 0.121), "pct_vacancy": (95.8, 95.4, 96.2),
                        "pct_failed": (0.0, 0.0, 0.0)},
            "CryinGAN": {"d_cluster": (0.125, 0.119, 0.129), "pct_vacancy": (100.0, 100.0, 100.0),
                         "pct_failed": (0.0, 0.0, 0.0)}},
        "alloy_1500K_narrow": {
            "CDVAE": {"d_cluster": (0.0621, 0.0589, 0.0665), "pct_vacancy": (54.8, 51.9, 56.8),
                      "pct_failed": (0.37, 0.20, 0.50)},
            "DiffCSP": {"d_cluster": (0.0308, 0.0304, 0.0313), "pct_vacancy": (91.7, 91.5, 91.8),
                        "pct_failed": (0.0, 0.0, 0.0)},
            "CryinGAN": {"d_cluster": (0.0643, 0.0629, 0.0659), "pct_vacancy": (100.0, 100.0, 100.0),
                         "pct_failed": (0.0, 0.0, 0.0)}},
        "alloy_1500K_wide": {
            "CDVAE": {"d_cluster": (0.0618, 0.0549, 0.0694), "pct_vacancy": (61.3, 55.9, 68.2),
                      "pct_failed": (0.27, 0.20, 0.30)},
            "DiffCSP": {"d_cluster": (0.0338, 0.0332, 0.0342), "pct_vacancy": (92.3, 89.2, 94.4),
                        "pct_failed": (0.0, 0.0, 0.0)},
            "CryinGAN": {"d_cluster": (0.0650, 0.0609, 0.0691), "pct_vacancy": (100.0, 100.0, 100.0),
                         "pct_failed": (0.0, 0.0, 0.0)}},
    },
}

# family -> model -> (n_steps mean, n_steps std, ΔE mean meV/atom, ΔE std meV/atom), ΔE = E_initial - E_final
RELAXATION: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "interface": {"CDVAE": (10.3, 8.71, 3.30, 1.46), "DiffCSP": (68.2, 53.9, 12.3, 9.68),
                  "CrysTens": (171, 74.3, 640, 137), "UniMat": (257, 116, 989, 70.0),
                  "CryinGAN": (147, 72.4, 234, 67.3)},
    "a_si": {"CDVAE": (22.5, 16.3, 8.64, 45.3), "DiffCSP": (140, 39.0, 275, 21.6)},
}

SOURCES = {"interface": "Table 1", "a_si": "Table 2", "alloy": "Table 3"}
RELAXATION_SOURCES = {"interface": "SI Table S2 (M3GNet)", "a_si": "SI Table S3 (SOAP-GAP)"}


def published_table(family: str, dataset: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Published model -> metric -> (mean, min, max) for a family and dataset name ({} if not published).

    Alloy datasets are looked up by their dismax name (``alloy_300K_wide``, ...); the interface and a-Si
    families have one published dataset each.
    """
    tables = TABLES.get(family, {})
    if family == "alloy":
        return tables.get(dataset, {})
    return next(iter(tables.values()), {})
