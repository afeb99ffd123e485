"""The e3nn interaction block: output irreps and rotation equivariance on a fixed-K neighbour graph."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from dismax.nn.equivariant import Interaction, gated_irreps
from dismax.nn.radial import bessel_basis, polynomial_envelope


def test_gated_irreps_adds_one_gate_scalar_per_non_scalar_irrep():
    assert gated_irreps(e3nn.Irreps("8x0e + 4x1o + 2x2e")) == e3nn.Irreps("14x0e + 4x1o + 2x2e")
    assert gated_irreps(e3nn.Irreps("5x0e")) == e3nn.Irreps("5x0e")


def _graph(vectors, features):
    """Inputs of one Interaction call for atom features (N, ·) and edge vectors (N, K, 3)."""
    lengths = jnp.linalg.norm(vectors, axis=-1)
    sh = e3nn.spherical_harmonics("0e + 1o + 2e", vectors, normalize=True)
    radial = bessel_basis(lengths, 6, 4.0) * polynomial_envelope(lengths, 4.0)[..., None]
    return features, sh, radial


def test_interaction_is_rotation_equivariant():
    n_atoms, k = 6, 4
    key_v, key_h, key_r, key_p = jax.random.split(jax.random.PRNGKey(0), 4)
    vectors = jax.random.normal(key_v, (n_atoms, k, 3)) * 1.5
    neighbours = jnp.asarray(np.random.default_rng(0).integers(0, n_atoms, (n_atoms, k)))
    h = e3nn.normal("4x0e + 2x1o", key_h, (n_atoms,))
    block = Interaction("8x0e + 4x1o + 2x2e")
    params = jax.jit(lambda v, f: block.init(key_p, *_graph(v, f), neighbours))(vectors, h)
    # compiled once: eager e3nn dispatches op by op, which took ~20 s on 2 cores
    apply = jax.jit(lambda v, f: block.apply(params, *_graph(v, f), neighbours))
    out = apply(vectors, h)
    assert out.irreps == e3nn.Irreps("8x0e + 4x1o + 2x2e") and out.shape == (n_atoms, out.irreps.dim)
    rotation = e3nn.rand_matrix(key_r, ())
    rotated = apply(vectors @ rotation.T, h.transform_by_matrix(rotation))
    np.testing.assert_allclose(np.asarray(rotated.array), np.asarray(out.transform_by_matrix(rotation).array),
                               atol=2e-4)
