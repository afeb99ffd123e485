"""CrysTens and UniMat converters: exact round trips and the averaging reconstruction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice

from dismax.diffusion.crystens import (HEADER, crystens_ranges, from_crystens, from_model_space, space_groups,
                                       to_crystens, to_model_space)
from dismax.diffusion.unimat import coordinate_ranges, from_unimat, to_unimat
from dismax.geometry import coordinate_rms, pairwise_minimum_image_distances
from tests.diffusion.unet_cells import a_si_cells, alloy_cells, interface_cells

FAMILIES = {"alloy": alloy_cells, "a_si": a_si_cells, "interface": interface_cells}


def first_appearance(species):
    return tuple(dict.fromkeys(np.asarray(species).ravel().tolist()))


@pytest.mark.parametrize("family", FAMILIES)
def test_crystens_round_trip_is_exact(family):
    cells = FAMILIES[family](2)
    tensor = to_crystens(cells.frac, cells.lattice, cells.species, jnp.ones(2, jnp.int32))
    n = cells.n_atoms
    assert tensor.shape == (2, n + HEADER, n + HEADER, 4)
    frac, species = from_crystens(tensor, sorted(set(np.asarray(cells.species).ravel().tolist())))
    assert np.array_equal(np.asarray(species), np.asarray(cells.species))
    assert coordinate_rms(frac, cells.frac, cells.lattice).max() < 1e-5
    assert np.all((np.asarray(frac) >= 0) & (np.asarray(frac) < 1))
    # the min-max map puts every entry into [-1, 1] and inverts exactly
    ranges = crystens_ranges(tensor)
    x = np.asarray(to_model_space(tensor, ranges))
    assert np.abs(x).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(np.asarray(from_model_space(jnp.asarray(x), ranges)), np.asarray(tensor), atol=1e-5)


def test_crystens_min_max_scaling_spreads_the_atomic_numbers():
    """As Dismai-Bench's scaler: each quantity spans [-1, 1] over the data (Li 3 → -1, O 8 → +1; the x
    coordinates' extremes → ±1), a fixed lattice length maps to -1."""
    cells = interface_cells(2, blocks=((3, 3), (8, 3)))
    tensor = to_crystens(cells.frac, cells.lattice, cells.species, jnp.ones(2, jnp.int32))
    ranges = crystens_ranges(tensor)
    assert ranges[0] == (3.0, 8.0) and ranges[4][0] == ranges[4][1]
    x = np.asarray(to_model_space(tensor, ranges))
    assert x[0, 0, HEADER:, 0].tolist() == [-1, -1, -1, 1, 1, 1]
    assert x[0, HEADER:, 0, 3].tolist() == [-1, -1, -1, 1, 1, 1]
    frac_x = x[:, 1, HEADER:, 0]
    assert frac_x.min() == pytest.approx(-1) and frac_x.max() == pytest.approx(1)
    assert np.all(x[:, 4, HEADER:] == -1)
    assert crystens_ranges(tensor[:1]) != ranges


def test_crystens_layout_against_pymatgen():
    cells = interface_cells(1, blocks=((3, 3), (27, 2), (8, 3)))
    tensor = np.asarray(to_crystens(cells.frac, cells.lattice, cells.species, jnp.array([7])))[0]
    lattice = Lattice(np.asarray(cells.lattice[0], np.float64))
    header = np.array([*lattice.abc, *lattice.angles, 7.0])
    for channel in range(4):
        top = tensor[:HEADER, HEADER:, channel]
        assert np.array_equal(top, tensor[HEADER:, :HEADER, channel].T)
        assert np.array_equal(top[0], cells.species[0])
        np.testing.assert_allclose(top[1:4].T, cells.frac[0])
        np.testing.assert_allclose(top[4:11], np.broadcast_to(header[:, None], (7, 8)), rtol=1e-5)
        assert np.all(top[11] == 0) and np.all(tensor[:HEADER, :HEADER] == 0)
    from pymatgen.core import Structure
    structure = Structure(lattice, np.asarray(cells.species[0]), np.asarray(cells.frac[0], np.float64))
    np.testing.assert_allclose(tensor[HEADER:, HEADER:, 0], structure.distance_matrix, atol=1e-4)
    np.testing.assert_allclose(tensor[HEADER:, HEADER:, 1:],
                               cells.frac[0][:, None] - cells.frac[0][None], atol=1e-7)


def test_space_groups_of_fcc_and_random_cells():
    fcc = alloy_cells(1)
    pure = np.full_like(fcc.species, 26)
    assert space_groups(fcc.frac, fcc.lattice, pure).tolist() == [225]
    cells = a_si_cells(1)
    assert space_groups(cells.frac, cells.lattice, cells.species).tolist() == [1]


def test_crystens_averaging_shrinks_the_error_of_a_perturbed_tensor():
    """Independent noise σ on every entry: one copy of a coordinate is off by σ, the 8 header copies by
    σ/√8, and the full reconstruction (the mean of x̂ over all atoms plus the mean of N − 1 two-copy
    averages of Δ) by σ·√(1/(8N) + (N − 1)/(2N²)) ≈ σ/√(2N)."""
    cells = a_si_cells(4, seed=3)
    n, sigma = cells.n_atoms, 1e-3
    tensor = to_crystens(cells.frac, cells.lattice, cells.species, jnp.ones(4, jnp.int32))
    noisy = tensor + sigma * jax.random.normal(jax.random.PRNGKey(0), tensor.shape)
    frac, species = from_crystens(noisy, [14])
    assert np.all(np.asarray(species) == 14)
    delta = np.asarray(frac, np.float64) - np.asarray(cells.frac, np.float64)
    delta -= np.round(delta)
    error = np.sqrt(np.mean(delta ** 2))
    expected = sigma * np.sqrt(1 / (8 * n) + (n - 1) / (2 * n ** 2))
    assert 0.85 * expected < error < 1.15 * expected
    header_only = np.asarray(noisy)[:, :HEADER, HEADER:, 0][:, 1:4]
    single_copy = np.sqrt(np.mean((header_only - np.swapaxes(np.asarray(cells.frac), 1, 2)) ** 2))
    assert error < single_copy / 10


@pytest.mark.parametrize("family", FAMILIES)
def test_unimat_round_trip_is_exact(family):
    cells = FAMILIES[family](2, seed=1)
    order = first_appearance(cells.species[0])
    composition = [int(np.sum(np.asarray(cells.species[0]) == z)) for z in order]
    ranges = coordinate_ranges(cells.frac)
    video = to_unimat(cells.frac, cells.species, order, ranges)
    assert video.shape == (2, cells.n_atoms, 4, 4, 3)
    assert float(jnp.min(video)) == -1.0 and float(jnp.max(video)) <= 1.0 + 2e-6
    assert float(jnp.min(jnp.where(video == -1.0, 1.0, video))) >= -1e-6  # atoms in [0, 1]
    frac, species, valid = from_unimat(video, order, composition, ranges)
    assert np.array_equal(np.asarray(species), np.asarray(cells.species))
    assert np.all(np.asarray(valid))
    assert coordinate_rms(frac, cells.frac, cells.lattice).max() < 1e-5


def test_unimat_frame_layout_and_origin_atoms():
    frac = jnp.array([[[0.0, 0.0, 0.0], [0.25, 0.5, 0.75]]])
    video = np.asarray(to_unimat(frac, jnp.array([[8, 3]]), (3, 8)))
    assert np.all(video[0, 0, 0, 1] == 0.0)                            # O owns pixel (0, 1); the origin is 0
    np.testing.assert_allclose(video[0, 1, 0, 0], [0.25, 0.5, 0.75])   # Li owns pixel (0, 0)
    assert np.sum(video != -1.0) == 6
    frac_back, species, _ = from_unimat(jnp.asarray(video), (3, 8), (1, 1))
    assert species.tolist() == [[8, 3]] and np.array_equal(np.asarray(frac_back), np.asarray(frac))
    # the coordinate ranges stretch each axis to [0, 1]
    ranges = ((0.0, 0.5), (0.0, 0.5), (0.0, 0.75))
    np.testing.assert_allclose(np.asarray(to_unimat(frac, jnp.array([[8, 3]]), (3, 8), ranges))[0, 1, 0, 0],
                               [0.5, 1.0, 1.0])


def test_unimat_wrong_composition_is_failed():
    cells = interface_cells(3, blocks=((3, 4), (8, 4)))
    order, composition = (3, 8), (4, 4)
    video = np.array(to_unimat(cells.frac, cells.species, order))
    video[1, 0] = video[1, 5]          # frame 0 (Li) now shows an O atom
    video[2, 2] = -1.0                 # an empty frame decodes to pixel 0 unless another pixel is brighter
    video[2, 2, 3, 3] = 0.5            # ... here an unused pixel: no element
    frac, species, valid = from_unimat(jnp.asarray(video), order, composition)
    assert np.asarray(valid).tolist() == [True, False, False]
    assert int(species[1, 0]) == 8 and int(species[2, 2]) == 0
