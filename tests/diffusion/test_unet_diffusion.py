"""U-Net baselines: noise schedule, augmentation, representation and config checks (no U-Net compiled)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.config import load_config
from dismax.diffusion.unet_diffusion import alpha_sigma, ancestral_sample, log_snr, noise_to
from dismax.diffusion.unet_trainer import (AugmentConfig, Config, ModelConfig, check, permutable_atoms,
                                           permutation_copies, representation)
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import write_extxyz
from tests.diffusion.unet_cells import alloy_cells, cartesian_rms, interface_cells


def test_cosine_log_snr_schedule():
    t = jnp.linspace(0.0, 1.0, 11)
    lam = np.asarray(log_snr(t))
    assert np.all(np.diff(lam) < 0)
    alpha, sigma = alpha_sigma(log_snr(t))
    np.testing.assert_allclose(np.asarray(alpha ** 2 + sigma ** 2), 1.0, atol=1e-6)
    # imagen's cosine schedule: α(t) = cos((t + s)/(1 + s) · π/2) away from the clamp
    s = 0.008
    np.testing.assert_allclose(np.asarray(alpha)[1:-1], np.cos((np.asarray(t)[1:-1] + s) / (1 + s) * np.pi / 2),
                               rtol=1e-4)
    x0, noise = jnp.ones((2, 1, 2, 2, 1)), jnp.zeros((2, 1, 2, 2, 1))
    np.testing.assert_allclose(np.asarray(noise_to(x0, jnp.array([0.0, 1.0]), noise))[:, 0, 0, 0, 0],
                               [float(alpha[0]), float(alpha[-1])], rtol=1e-6)


def test_interface_region_permutation_keeps_the_rest():
    cells = interface_cells(2)
    config = AugmentConfig(permute="interface", copies=3)
    movable = permutable_atoms(np.asarray(cells.species[0]), config)
    species = np.asarray(cells.species[0])
    assert movable.sum() == 30
    assert np.flatnonzero(movable & (species == 3)).tolist() == list(range(9))
    assert (movable & (species == 21)).sum() == 3 and (movable & (species == 17)).sum() == 18
    augmented, source = permutation_copies(cells, config, seed=0)
    assert len(augmented) == 8 and source.tolist() == [0, 1] * 4
    assert np.array_equal(augmented.frac[:2], cells.frac)
    for row in range(2, 8):
        original = np.asarray(cells.frac[source[row]])
        frac = np.asarray(augmented.frac[row])
        assert np.array_equal(frac[~movable], original[~movable])
        assert not np.array_equal(frac[movable], original[movable])
        for z in (3, 21, 17):  # a permutation within each element
            chosen = movable & (species == z)
            assert sorted(map(tuple, frac[chosen])) == sorted(map(tuple, original[chosen]))
    everything = permutation_copies(cells, AugmentConfig(permute="all", copies=1), seed=0)[0]
    assert np.mean(np.all(everything.frac[2] == cells.frac[0], -1)) < 0.1
    assert len(permutation_copies(cells, AugmentConfig(permute="none"), seed=0)[0]) == 2
    with pytest.raises(DismaxInputError, match="asks for 9 atoms of element 3"):
        permutable_atoms(np.full(5, 3), config)


@pytest.mark.parametrize("kind", ["crystens", "unimat"])
def test_representation_round_trip_in_model_space(kind):
    cells = alloy_cells(2)
    rep = representation(Config(model=ModelConfig(name=kind)), cells, np.ones(2, np.int32))
    assert rep.species_order == tuple(dict.fromkeys(np.asarray(cells.species[0]).tolist()))
    x = rep.encode(cells.frac, cells.lattice, cells.species, jnp.ones(2, jnp.int32))
    assert x.shape == (2, *rep.shape) and float(jnp.max(jnp.abs(x))) <= 1.0 + 2e-6
    frac, species, valid = rep.decode(x)
    assert np.array_equal(np.asarray(species), np.asarray(cells.species)) and np.all(np.asarray(valid))
    assert cartesian_rms(frac, cells.frac, cells.lattice).max() < 1e-5
    # a swapped species changes the composition: failed
    broken = np.array(species)
    broken[0, 0] = 28 if broken[0, 0] != 28 else 26
    from dismax.diffusion.unimat import composition_matches
    assert np.asarray(composition_matches(jnp.asarray(broken), rep.species_order, rep.composition)).tolist() == \
        [False, True]


def test_shipped_configs_load_and_check(tmp_path):
    data = tmp_path / "cells.extxyz"
    write_extxyz(alloy_cells(1), data)
    files = [f"data.train_file={data}", f"data.val_file={data}"]
    for name in ("crystens", "unimat"):
        for family in ("alloy", "a_si", "interface", "alloy_small"):
            config = load_config(f"configs/{name}_{family}.yaml", files)
            assert config.model.name == name
            check(config)
    assert load_config("configs/unimat_interface.yaml").augment.permute == "interface"
    assert load_config("configs/unimat_interface.yaml").model.layer_attns == (False, True, True)
    with pytest.raises(DismaxConfigError, match="one entry per level"):
        check(load_config("configs/unimat_alloy.yaml", ["model.layer_attns=[true]"]))
    with pytest.raises(DismaxConfigError, match="low_size"):
        check(load_config("configs/crystens_alloy.yaml", ["model.low_size=30"]))


class _OracleNoise:
    """A stand-in denoiser that knows the single clean sample x*: ε̂ = (x_t − α x*)/σ (exact for a point mass)."""

    def __init__(self, target):
        self.target = target

    def apply(self, params, x, t, **cond):
        alpha, sigma = alpha_sigma(log_snr(t))
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - alpha.reshape(shape) * self.target) / sigma.reshape(shape)


def test_ancestral_sampler_recovers_the_point_mass_of_an_exact_denoiser():
    target = jnp.asarray(np.random.default_rng(0).uniform(-0.9, 0.9, (3, 5, 4, 4, 3)), jnp.float32)
    sample = ancestral_sample(_OracleNoise(target), None, jax.random.PRNGKey(0), target.shape, 100)
    np.testing.assert_allclose(np.asarray(sample), np.asarray(target), atol=1e-4)
