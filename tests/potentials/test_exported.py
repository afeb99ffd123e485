"""Shipped potentials: a fitted potential written to one file and read back gives the same energies and forces."""

import jax
import numpy as np
import pytest

from dismax.errors import DismaxInputError
from dismax.potentials import SHIPPED, get_potential
from dismax.potentials.fitted import export_potential, load_exported
from dismax.potentials.nequip import LearnedPotential, NetworkConfig, PotentialNetwork, initial_params
from dismax.structures import Crystals


def test_export_round_trip(tmp_path):
    config = NetworkConfig(cutoff=3.0, n_layers=1, hidden_irreps="4x0e+2x1o", l_max=1, n_radial=4, radial_hidden=8,
                           avg_neighbors=6.0)
    # random values of the parameters' shapes: the round trip holds for any values, and the compiled
    # initialisation costs more than the rest of the test
    shapes = jax.eval_shape(lambda: initial_params(PotentialNetwork(config, 2), jax.random.PRNGKey(3)))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda leaf: jax.numpy.asarray(rng.normal(size=leaf.shape), leaf.dtype), shapes)
    original = LearnedPotential(config, (3, 8), params, [-1.5, -4.0], 0.7)
    path = export_potential(original, tmp_path / "p.msgpack", description="test")
    loaded = load_exported(path)
    assert loaded.species == (3, 8) and loaded.config == config and loaded.name == "p"
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(loaded.params))  # traceable by relax()
    rng = np.random.default_rng(0)
    crystals = Crystals(rng.random((2, 16, 3)), np.tile(np.eye(3) * 6.5, (2, 1, 1)), np.tile([3] * 8 + [8] * 8, (2, 1)))
    want = original.energies_and_forces(crystals)
    assert all(np.all(np.isfinite(x)) for x in want) and np.abs(want[1]).max() > 1e-3  # a non-trivial comparison
    for a, b in zip(want, loaded.energies_and_forces(crystals)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_missing_potential_file_is_an_error(tmp_path):
    with pytest.raises(DismaxInputError, match="does not exist"):
        load_exported(tmp_path / "none.msgpack")


def test_shipped_potentials_load_when_present():
    for name, path in SHIPPED.items():
        if path.is_file():
            assert path.stat().st_size < 2_000_000
            assert get_potential(name).name == name
