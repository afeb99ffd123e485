"""Symmetries of both denoisers, and the factorised CSPNet layer against the concatenated DiffCSP layer."""

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.diffusion.cspnet import CSPLayer
from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
from dismax.nn.periodic import fractional_fourier_features, mean_fourier_context

N_ATOMS = 10
TINY = dict(hidden=16, n_layers=2, n_freq=6, time_dim=16, hidden_irreps="8x0e+4x1o+2x2e", n_neighbors=8,
            n_images=1, cutoff=4.0, radial_hidden=8)


def _inputs(seed=0):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    frac = jax.random.uniform(k1, (N_ATOMS, 3))
    lattice = jnp.diag(jnp.array([4.6, 5.0, 5.4])) + 0.4 * jax.random.normal(k2, (3, 3))
    species = jnp.array([14] * 4 + [28] * 6)
    permutation = jax.random.permutation(k3, N_ATOMS)
    shift = jax.random.uniform(k4, (3,))
    integer_shifts = jax.random.randint(k5, (N_ATOMS, 3), -2, 3).astype(frac.dtype)
    rotation = e3nn.rand_matrix(jax.random.PRNGKey(seed + 100), ())
    return frac, lattice, species, permutation, shift, integer_shifts, rotation


def _transformed_batch(frac, lattice, species, permutation, shift, integer_shifts, rotation):
    """Stack: original, permuted, globally translated (wrapped), per-atom integer shifts, rotated cell."""
    fracs = jnp.stack([frac, frac[permutation], jnp.mod(frac + shift, 1.0), frac + integer_shifts, frac])
    lattices = jnp.stack([lattice] * 4 + [lattice @ rotation.T])
    species_b = jnp.stack([species, species[permutation], species, species, species])
    return fracs, lattices, species_b


@pytest.mark.parametrize("name,global_frequencies", [("cspnet", 0), ("equivariant", 0), ("equivariant", 5)])
def test_denoiser_symmetries(name, global_frequencies):
    frac, lattice, species, permutation, shift, integer_shifts, rotation = _inputs()
    cfg = DenoiserConfig(name=name, **(TINY if name == "cspnet" else dict(TINY, n_layers=1)),
                         global_frequencies=global_frequencies)
    net = build_denoiser(cfg)
    params = jax.jit(net.init)(jax.random.PRNGKey(1), frac, lattice, species, jnp.int32(3))
    fracs, lattices, species_b = _transformed_batch(frac, lattice, species, permutation, shift, integer_shifts,
                                                    rotation)
    # a sixth copy of the original at another time step
    fracs, lattices = jnp.concatenate([fracs, fracs[:1]]), jnp.concatenate([lattices, lattices[:1]])
    species_b, times = jnp.concatenate([species_b, species_b[:1]]), jnp.array([417] * 5 + [3])
    out = jax.jit(jax.vmap(lambda f, l, s, t: net.apply(params, f, l, s, t)))(fracs, lattices, species_b, times)
    out = np.asarray(out)
    scale = np.abs(out[0]).max()
    assert out.shape == (6, N_ATOMS, 3) and scale > 0 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1], out[0][np.asarray(permutation)], atol=1e-5 * scale)
    np.testing.assert_allclose(out[2], out[0], atol=1e-4 * scale)
    np.testing.assert_allclose(out[3], out[0], atol=1e-4 * scale)
    # the fractional score does not change when the whole cell (and so every atom) is rotated
    np.testing.assert_allclose(out[4], out[0], atol=1e-4 * scale)
    # the time embedding is used
    assert np.abs(out[5] - out[0]).max() > 1e-3 * scale
    if name == "equivariant":
        # the network's Cartesian vectors v = s L / V^(1/3) rotate with the cell: v' = v Rᵀ
        lattice_np, rotation_np = np.asarray(lattice), np.asarray(rotation)
        volume_third = abs(np.linalg.det(lattice_np)) ** (1 / 3)
        vectors = out[0] @ lattice_np / volume_third
        rotated = out[4] @ (lattice_np @ rotation_np.T) / volume_third
        np.testing.assert_allclose(rotated, vectors @ rotation_np.T, atol=1e-4 * np.abs(vectors).max())
        assert np.abs(rotated - vectors).max() > 1e-2 * np.abs(vectors).max()


def test_mean_fourier_context_equals_dense_pair_mean():
    frac = jax.random.uniform(jax.random.PRNGKey(7), (N_ATOMS, 3))
    dense = jnp.mean(fractional_fourier_features(jnp.mod(frac[None] - frac[:, None], 1.0), 7), axis=1)
    np.testing.assert_allclose(mean_fourier_context(frac, 7), dense, atol=2e-6)
    # an atom of a perfect simple-cubic grid sees |S(k)| = 1 at the grid's own frequency
    grid = jnp.asarray([[i, j, k] for i in range(3) for j in range(3) for k in range(3)], jnp.float32) / 3
    context = mean_fourier_context(jnp.mod(grid + 0.1, 1.0), 4)
    np.testing.assert_allclose(context[:, 3 * 4 + 3], 1.0, atol=1e-5)  # cos, x axis, k = 3


def test_factorised_csp_layer_equals_concatenated_edge_layer():
    hidden, n_freq = 8, 4
    key = jax.random.PRNGKey(3)
    h = jax.random.normal(key, (N_ATOMS, hidden))
    frac = jax.random.uniform(jax.random.PRNGKey(4), (N_ATOMS, 3))
    lattice = 5.0 * jnp.eye(3) + jax.random.normal(jax.random.PRNGKey(5), (3, 3))
    fourier = fractional_fourier_features(jnp.mod(frac[None] - frac[:, None], 1.0), n_freq)
    gram = (lattice @ lattice.T).reshape(9)
    layer = CSPLayer(hidden)
    params = jax.jit(layer.init)(key, h, fourier, gram)
    out = jax.jit(layer.apply)(params, h, fourier, gram)
    np.testing.assert_allclose(out, jax.jit(_concatenated_layer)(params["params"], h, fourier, gram), atol=1e-5)


def _concatenated_layer(p, h, fourier, gram):
    """DiffCSP's layer with the edge input concatenated, using the factorised layer's weights."""
    hidden = h.shape[-1]
    x = nn.LayerNorm().apply({"params": p["norm"]}, h)
    weight = jnp.concatenate([p["edge_in_i"]["kernel"], p["edge_in_j"]["kernel"], p["edge_in_gram"]["kernel"],
                              p["edge_in_fourier"]["kernel"]])
    pair_input = jnp.concatenate([jnp.broadcast_to(x[:, None], (N_ATOMS, N_ATOMS, hidden)),
                                  jnp.broadcast_to(x[None, :], (N_ATOMS, N_ATOMS, hidden)),
                                  jnp.broadcast_to(gram, (N_ATOMS, N_ATOMS, 9)), fourier], axis=-1)
    edge = nn.silu(pair_input @ weight + p["edge_in_i"]["bias"])
    edge = nn.silu(edge @ p["edge_out"]["kernel"] + p["edge_out"]["bias"])
    node_in = jnp.concatenate([x, edge.mean(axis=1)], axis=-1)
    node = nn.silu(node_in @ p["node_in"]["kernel"] + p["node_in"]["bias"])
    node = nn.silu(node @ p["node_out"]["kernel"] + p["node_out"]["bias"])
    return h + node


def test_fourier_features_match_diffcsp_layout():
    diff = jnp.array([[0.1, 0.2, 0.3]])
    features = np.asarray(fractional_fourier_features(diff, 3))
    angles = np.array([2 * np.pi * k * d for d in (0.1, 0.2, 0.3) for k in range(3)])
    np.testing.assert_allclose(features[0], np.concatenate([np.sin(angles), np.cos(angles)]), atol=1e-6)
