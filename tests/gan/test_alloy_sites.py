"""The FCC nearest-site statistic (dismax.diffusion.quality; the quality check of the alloy GAN)."""

import numpy as np

from dismax.diffusion.quality import aligned_site_fraction, neighbour_statistics, site_statistics
from tests.gan.helpers import fcc_sites

LATTICE = np.diag([14.4, 14.4, 14.4])


def test_reference_sites_and_globally_shifted_lattices_count_as_on_site():
    rng = np.random.default_rng(1)
    sites = fcc_sites((4, 4, 4))
    shifted = (sites + rng.random(3)) % 1.0
    noisy = (shifted + rng.normal(0, 0.05, sites.shape) / 14.4) % 1.0
    frac = np.stack([sites, shifted, noisy])
    fixed, _ = site_statistics(frac, LATTICE, align=False)
    aligned, distinct = site_statistics(frac, LATTICE, align=True)
    assert fixed[0].max() < 1e-9 and fixed[1].mean() > 0.3  # the shift is seen without alignment
    assert aligned[:2].max() < 1e-6
    assert np.all(distinct[:2] == 1.0)
    # Gaussian noise of 0.05 Å per axis: mean distance 0.05·sqrt(8/π) ≈ 0.080 Å
    assert abs(aligned[2].mean() - 0.05 * np.sqrt(8 / np.pi)) < 0.01


def test_alignment_never_worsens_and_random_positions_stay_off_site():
    frac = np.random.default_rng(2).random((3, 256, 3))
    fixed, _ = site_statistics(frac, LATTICE, align=False)
    aligned, distinct = site_statistics(frac, LATTICE, align=True)
    assert np.all(aligned.mean(axis=1) <= fixed.mean(axis=1) + 1e-12)
    assert aligned.mean() > 0.9 and distinct.mean() < 0.7


def test_neighbour_statistics_of_a_perfect_lattice():
    close, knn = neighbour_statistics(fcc_sites((4, 4, 4))[None], LATTICE)
    assert close == 0 and abs(knn - 3.6 / np.sqrt(2)) < 1e-9
    close, _ = neighbour_statistics(np.full((1, 5, 3), 0.5), LATTICE)
    assert close == 10


def test_aligned_site_fraction_counts_each_site_once():
    """A lattice scores 1 twice; a generator that piles every atom onto one point scores 1 on atoms but
    1/N on distinct sites; 0.5 Å of noise keeps most atoms but not all within 0.8 Å."""
    sites = fcc_sites((2, 2, 2))
    lattice = np.diag([7.2, 7.2, 7.2])
    assert aligned_site_fraction(sites[None], lattice, 2) == (1.0, 1.0)
    atoms, distinct = aligned_site_fraction(np.full((2, 32, 3), 0.37), lattice, 2)
    assert atoms == 1.0 and distinct == 1 / 32
    noisy = (sites + np.random.default_rng(3).normal(0, 0.3, (20, 32, 3)) / 7.2) % 1.0
    atoms, distinct = aligned_site_fraction(noisy, lattice, 2)
    # |noise| < 0.8 Å for a 3-D Gaussian with σ = 0.3 Å: P(χ₃ < 2.67) ≈ 0.93
    assert 0.85 < atoms < 0.99 and distinct <= atoms
