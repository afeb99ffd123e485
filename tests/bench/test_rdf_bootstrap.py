import numpy as np
import pytest

from dismax.bench import bootstrap as B
from dismax.bench.rdf import bin_centres, rdf


def test_rdf_equals_vasppy_on_supercell():
    vasppy_rdf = pytest.importorskip("vasppy.rdf")
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(0)
    lattice = np.array([[11.2, 0, 0], [0.6, 11.0, 0], [0.3, -0.4, 11.4]])
    frac = rng.random((40, 3))
    numbers = np.where(np.arange(40) < 25, 14, 8)
    structure = Structure(Lattice(lattice), numbers.tolist(), frac)
    structure.make_supercell(2)
    si = [i for i, site in enumerate(structure) if site.species_string == "Si"]
    o = [i for i, site in enumerate(structure) if site.species_string == "O"]
    for species_i, species_j, indices_i, indices_j in ((14, 14, si, si), (14, 8, si, o)):
        reference = vasppy_rdf.RadialDistributionFunction([structure], indices_i=indices_i, indices_j=indices_j,
                                                          r_max=5.0, nbins=250)
        ours = rdf(frac, lattice, numbers, species_i, species_j, r_max=5.0, n_bins=250)[0]
        np.testing.assert_allclose(ours, reference.rdf, atol=1e-6, rtol=0)
        np.testing.assert_allclose(bin_centres(5.0, 250), reference.r)


def test_diamond_rdf_peaks_at_analytic_distances():
    a = 5.431
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    frac = np.concatenate([base, base + 0.25]) / 2
    frac = np.concatenate([frac + np.array(s) / 2 for s in np.ndindex(2, 2, 2)])
    g = rdf(frac, np.eye(3) * 2 * a, r_max=6.0, n_bins=300)[0]
    r = bin_centres(6.0, 300)
    peaks = r[g > 0]
    expected = [a * np.sqrt(3) / 4, a / np.sqrt(2), a * np.sqrt(11) / 4]
    for distance in expected:
        assert np.min(np.abs(peaks - distance)) < 0.01
    assert peaks.min() == pytest.approx(expected[0], abs=0.01)
    # 4 first neighbours: h = 4 per atom -> g = 4 V / (N V_k)
    first = np.argmax(g > 0)
    shell = 4 / 3 * np.pi * ((r[first] + 0.01) ** 3 - (r[first] - 0.01) ** 3)
    assert g[first] == pytest.approx(4 * (2 * a) ** 3 / (len(frac) * shell))


def _published_bootstrap(train, generated, seed=7, n_reps=200):
    """The published loop: pandas means, scipy Euclidean distance, NumPy percentiles."""
    import pandas as pd
    from scipy.spatial.distance import euclidean

    df_gen = pd.DataFrame(generated)
    train_avg = pd.DataFrame(train).mean(axis=0).to_numpy()
    rng = np.random.default_rng(seed)
    indices = np.arange(len(df_gen))
    boots = []
    for _ in range(n_reps):
        sample = rng.choice(indices, size=len(df_gen), replace=True)
        boots.append(euclidean(train_avg, df_gen.iloc[sample].mean(axis=0).to_numpy()))
    value = euclidean(train_avg, df_gen.mean(axis=0).to_numpy())
    low, high = np.percentile(boots, 2.5), np.percentile(boots, 97.5)
    return value, high - value, value - low


def test_bootstrap_matches_published_loop():
    rng = np.random.default_rng(1)
    train = rng.random((50, 7))
    generated = rng.random((40, 7)) + 0.05
    value, lower_error, upper_error = _published_bootstrap(train, generated)
    indices = B.bootstrap_indices(40, n_replicates=200)
    estimate = B.distance_estimate(train.mean(axis=0), generated, indices)
    assert estimate.value == pytest.approx(value, abs=1e-12)
    assert estimate.lower_error == pytest.approx(lower_error, abs=1e-12)
    assert estimate.upper_error == pytest.approx(upper_error, abs=1e-12)
    assert estimate.ci_low == pytest.approx(2 * value - (value + lower_error), abs=1e-12)


def test_cosine_distance_and_mean_estimate():
    from scipy.spatial.distance import cosine

    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.3, 2.5, 1.0])
    assert B.cosine_distance(a, b) == pytest.approx(cosine(a, b))
    flags = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 1], float) * 100
    estimate = B.mean_estimate(flags, B.bootstrap_indices(10, 300))
    assert estimate.value == pytest.approx(50.0)
    assert estimate.ci_low < 50 < estimate.ci_high
