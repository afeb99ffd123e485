"""The masked-denoising backbone: the noise head rotates with the structure, the species logits do not, atoms
permute consistently, and padding leaves the real atoms' outputs unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dismax.ssl.backbone import N_EMBEDDINGS, Backbone
from dismax.ssl.pretrain import initial_params
from tests.ssl.helpers import TINY_BACKBONE

NETWORK = Backbone(TINY_BACKBONE)
GRAPH = Backbone(TINY_BACKBONE, n_outputs=2)
PARAMS = initial_params(NETWORK, jax.random.PRNGKey(0))
GRAPH_PARAMS = initial_params(GRAPH, jax.random.PRNGKey(1))
APPLY = jax.jit(NETWORK.apply)
APPLY_GRAPH = jax.jit(GRAPH.apply)
FRAC = jax.random.uniform(jax.random.PRNGKey(2), (10, 3))
LATTICE = jnp.array([[6.0, 0.2, 0.0], [0.5, 5.5, 0.1], [0.3, -0.4, 6.2]])
SPECIES = jnp.array([0, 26, 28, 24, 26, 0, 28, 28, 24, 26])
MASK = jnp.ones(10, bool)


def test_noise_head_rotates_with_the_input_and_logits_are_invariant():
    rotation = jnp.asarray(Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix(), jnp.float32)
    logits, noise = APPLY(PARAMS, FRAC, LATTICE, SPECIES, MASK)
    rotated_logits, rotated_noise = APPLY(PARAMS, FRAC, LATTICE @ rotation.T, SPECIES, MASK)
    assert logits.shape == (10, 118) and noise.shape == (10, 3)
    assert float(jnp.abs(noise).max()) > 1e-3
    np.testing.assert_allclose(rotated_noise, noise @ rotation.T, atol=1e-4)
    np.testing.assert_allclose(rotated_logits, logits, atol=1e-4)
    score = APPLY_GRAPH(GRAPH_PARAMS, FRAC, LATTICE, SPECIES, MASK)
    np.testing.assert_allclose(APPLY_GRAPH(GRAPH_PARAMS, FRAC, LATTICE @ rotation.T, SPECIES, MASK), score, atol=1e-4)


def test_permuting_atoms_permutes_outputs():
    order = jax.random.permutation(jax.random.PRNGKey(3), 10)
    logits, noise = APPLY(PARAMS, FRAC, LATTICE, SPECIES, MASK)
    p_logits, p_noise = APPLY(PARAMS, FRAC[order], LATTICE, SPECIES[order], MASK)
    np.testing.assert_allclose(p_logits, logits[order], atol=1e-4)
    np.testing.assert_allclose(p_noise, noise[order], atol=1e-4)


def test_padding_does_not_change_the_real_atoms():
    logits, noise = APPLY(PARAMS, FRAC, LATTICE, SPECIES, MASK)
    pad_frac = jnp.concatenate([FRAC, jax.random.uniform(jax.random.PRNGKey(4), (5, 3))])
    pad_species = jnp.concatenate([SPECIES, jnp.array([26, 0, 3, 28, 1])])
    pad_mask = jnp.arange(15) < 10
    p_logits, p_noise = APPLY(PARAMS, pad_frac, LATTICE, pad_species, pad_mask)
    np.testing.assert_allclose(p_logits[:10], logits, atol=1e-5)
    np.testing.assert_allclose(p_noise[:10], noise, atol=1e-5)
    assert not np.asarray(p_noise[10:]).any()
    score = APPLY_GRAPH(GRAPH_PARAMS, FRAC, LATTICE, SPECIES, MASK)
    np.testing.assert_allclose(APPLY_GRAPH(GRAPH_PARAMS, pad_frac, LATTICE, pad_species, pad_mask), score, atol=1e-5)


def test_soft_species_equal_integer_species_for_one_hot_input():
    one_hot = jax.nn.one_hot(SPECIES, N_EMBEDDINGS)
    logits, noise = APPLY(PARAMS, FRAC, LATTICE, SPECIES, MASK)
    soft_logits, soft_noise = APPLY(PARAMS, FRAC, LATTICE, one_hot, MASK)
    np.testing.assert_allclose(soft_logits, logits, atol=1e-5)
    np.testing.assert_allclose(soft_noise, noise, atol=1e-5)


@pytest.mark.slow  # ~55 s
def test_composition_context_sees_visible_atoms_beyond_the_receptive_field():
    from dataclasses import replace

    from dismax.ssl.backbone import visible_composition

    composition = visible_composition(jnp.array([26, 0, 28, 28, 24]), jnp.array([1, 1, 1, 1, 0], bool))
    np.testing.assert_allclose(composition[np.array([25, 27, 23])], [1 / 3, 2 / 3, 0.0])   # Z = class + 1
    assert float(composition.sum()) == 1.0
    # two atoms 1 Å apart, a third 12 Å away in a long cell: beyond the cutoff and the neighbour slots
    frac = jnp.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.5]])
    lattice = jnp.diag(jnp.array([10.0, 10.0, 24.0]))
    mask = jnp.ones(3, bool)
    for context in (False, True):
        network = Backbone(replace(TINY_BACKBONE, n_neighbors=1, n_images=0, composition_context=context))
        params = initial_params(network, jax.random.PRNGKey(5))
        if context:   # the fresh context weights are random; the shared weights do not depend on the flag
            assert "composition_context" in params["params"]
        apply = jax.jit(network.apply)   # one compiled program per cell size instead of op-by-op dispatch
        logits = [apply(params, frac, lattice, jnp.array([0, 26, far]), mask)[0] for far in (28, 24)]
        changed = float(jnp.abs(logits[0][0] - logits[1][0]).max())
        assert (changed > 1e-4) == context, (context, changed)
        rotated = apply(params, frac, lattice @ jnp.asarray(Rotation.from_euler("z", 0.4).as_matrix(),
                                                             jnp.float32).T, jnp.array([0, 26, 28]), mask)[0]
        np.testing.assert_allclose(rotated[0], logits[0][0], atol=1e-4)
        padded = apply(params, jnp.concatenate([frac, frac[:1]]), lattice, jnp.array([0, 26, 28, 24]),
                       jnp.array([True, True, True, False]))[0]
        np.testing.assert_allclose(padded[:3], logits[0], atol=1e-5)   # logits[0]: the same cell unpadded
