"""CryinGAN networks, bond-distance features and WGAN-GP losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.gan.features import bond_distances
from dismax.gan.losses import critic_terms, interpolate, penalty_from_gradients
from dismax.gan.model import CombinedCritic, Critic, Generator, critic_input_gradient
from dismax.nn.pointwise import species_pool

INTERFACE_COUNTS = (72, 12, 36, 72, 72)  # Li72 Sc12 Co36 Cl72 O72
TINY_COUNTS = (3, 2, 4)


def n_params(module, *inputs, **kwargs):
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs, **kwargs))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def host_params(module, *inputs, seed=0):
    """Parameters of ``module.init``'s structure drawn on the host from the critics' initialiser distribution
    (Xavier-uniform kernels, zero biases): the properties tested hold for any such values, and skipping the
    initialisation skips compiling one random-number program per parameter shape."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['kernel']"):
            limit = np.sqrt(6.0 / sum(leaf.shape))
            return jnp.asarray(rng.uniform(-limit, limit, leaf.shape), leaf.dtype)
        assert jax.tree_util.keystr(path).endswith("['bias']"), path
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_parameter_counts_match_the_reference_networks():
    n = sum(INTERFACE_COUNTS)
    assert n_params(Generator(n), jnp.zeros((2, 64)), train=False) == 2_560_257
    assert n_params(Critic(INTERFACE_COUNTS), jnp.zeros((1, n, 3))) == 1_879_242
    assert n_params(Critic(INTERFACE_COUNTS), jnp.zeros((1, n, 6))) == 1_880_778


def test_species_pool_is_channel_major_and_supports_max_and_mix():
    features = jnp.arange(2 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 2)  # (B, N, C), blocks (2, 3)
    mean = species_pool(features, (2, 3), "mean")
    expected = np.stack([features[:, :2].mean(1), features[:, 2:].mean(1)], axis=-1).reshape(2, -1)
    np.testing.assert_allclose(mean, expected)  # index c * n_el + e
    maximum = species_pool(features, (2, 3), "max")
    np.testing.assert_allclose(maximum[:, 0], features[:, 1, 0])
    mix = species_pool(features, (2, 3), "mix")
    np.testing.assert_allclose(mix, np.concatenate([mean, maximum], axis=-1))
    with pytest.raises(ValueError):
        species_pool(features, (2, 2), "mean")


def test_generator_outputs_fractional_coordinates_and_updates_bn_statistics():
    generator = Generator(n_atoms=5, channels=8)
    variables = generator.init(jax.random.PRNGKey(0), jnp.zeros((2, 64)), train=False)
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 64))
    frac, updated = generator.apply(variables, z, train=True, mutable=["batch_stats"])
    assert frac.shape == (4, 5, 3)
    assert bool(jnp.all((frac > 0) & (frac < 1)))
    assert generator.bn_eps == 0.8
    # momentum 0.9 on Flax's side = PyTorch's momentum 0.1: running = 0.9 · 0 + 0.1 · batch mean
    h = jax.nn.relu(z @ variables["params"]["l1"]["kernel"]).reshape(4, 8, 5).transpose(0, 2, 1)
    pre_bn = jnp.einsum("bnc,cwo->bnwo", h, variables["params"]["map1_kernel"])
    np.testing.assert_allclose(updated["batch_stats"]["bn1"]["mean"], 0.1 * pre_bn.mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    eval_frac = generator.apply(variables, z, train=False)
    assert not np.allclose(eval_frac, frac)


def random_cells(key, batch, n):
    """Random triclinic cells (B, 3, 3) of about 6 Å and uniform fractional coordinates (B, N, 3)."""
    k1, k2 = jax.random.split(key)
    lattice = 6.0 * jnp.eye(3) + jax.random.uniform(k1, (batch, 3, 3), minval=-1.2, maxval=1.2)
    return jax.random.uniform(k2, (batch, n, 3)), lattice


def test_bond_distances_match_pymatgen_nearest_neighbours():
    from pymatgen.core import Lattice, Structure

    frac, lattice = random_cells(jax.random.PRNGKey(3), 3, 9)
    ours = np.asarray(bond_distances(frac, lattice, 6))
    for b in range(3):
        structure = Structure(Lattice(np.asarray(lattice[b], float)), ["Fe"] * 9, np.asarray(frac[b], float))
        neighbours = structure.get_all_neighbors(8.0)
        for i in range(9):
            reference = sorted(nb.nn_distance for nb in neighbours[i])[:6]
            np.testing.assert_allclose(ours[b, i], reference, rtol=1e-5, atol=1e-4)


def test_bond_distances_ignore_the_periodic_image_choice():
    frac, lattice = random_cells(jax.random.PRNGKey(4), 2, 7)
    shifts = jax.random.randint(jax.random.PRNGKey(5), frac.shape, -2, 3).astype(frac.dtype)
    np.testing.assert_allclose(bond_distances(frac + shifts, lattice), bond_distances(frac, lattice),
                               rtol=1e-5, atol=1e-4)


def permute_within_blocks(x, counts, seed):
    rng = np.random.default_rng(seed)
    order, start = [], 0
    for count in counts:
        order.extend(start + rng.permutation(count))
        start += count
    return x[:, np.asarray(order)]


@pytest.mark.parametrize("pooling", ["mean", "max", "mix"])
def test_critics_are_invariant_to_permutations_within_element_blocks(pooling):
    n = sum(TINY_COUNTS)
    frac, lattice = random_cells(jax.random.PRNGKey(6), 2, n)
    coord = Critic(TINY_COUNTS, pooling)
    params = host_params(coord, frac)
    permuted = permute_within_blocks(frac, TINY_COUNTS, 0)
    np.testing.assert_allclose(coord.apply(params, permuted), coord.apply(params, frac), rtol=1e-5, atol=1e-6)
    # swapping atoms of different elements changes the score
    swapped = frac.at[:, [0, 3]].set(frac[:, [3, 0]])
    assert not np.allclose(coord.apply(params, swapped), coord.apply(params, frac), atol=1e-6)

    dist = Critic(TINY_COUNTS, pooling)
    dist_params = host_params(dist, jnp.zeros((1, n, 6)), seed=1)
    score = lambda f: dist.apply(dist_params, bond_distances(f, lattice))
    np.testing.assert_allclose(score(permuted), score(frac), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score(frac + 1.0), score(frac), rtol=1e-4, atol=1e-5)

    comb = CombinedCritic(TINY_COUNTS, pooling=pooling)
    comb_params = host_params(comb, frac, seed=2)
    np.testing.assert_allclose(comb.apply(comb_params, permuted), comb.apply(comb_params, frac),
                               rtol=1e-5, atol=1e-6)


def test_gradient_penalty_matches_finite_differences():
    counts = (2, 2)
    with jax.enable_x64(True):
        critic = Critic(counts)
        real = jax.random.uniform(jax.random.PRNGKey(7), (3, 4, 3), jnp.float64)
        fake = jax.random.uniform(jax.random.PRNGKey(8), (3, 4, 3), jnp.float64)
        params = host_params(critic, real)
        apply = jax.jit(lambda x: critic.apply(params, x))
        alpha_key = jax.random.PRNGKey(9)
        terms = jax.jit(lambda r, f: {on: critic_terms(apply, r, f, alpha_key, 10.0, on) for on in ("sum", "mean")})(
            real, fake)

        x_hat = np.asarray(interpolate(real, fake, alpha_key))
        h = 1e-6
        size = x_hat[0].size
        steps = (h * np.eye(size)).reshape(size, *x_hat.shape[1:])
        for gp_on, reduce in (("sum", np.sum), ("mean", np.mean)):
            penalties = []
            for b in range(3):  # central differences of the reduced output, all 2·size inputs in one call
                outputs = np.asarray(apply(jnp.asarray(np.concatenate([x_hat[b] + steps, x_hat[b] - steps]))))
                reduced = reduce(outputs, axis=-1)
                grad = (reduced[:size] - reduced[size:]) / (2 * h)
                penalties.append((np.linalg.norm(grad) - 1.0) ** 2)
            np.testing.assert_allclose(float(terms[gp_on].penalty), 10.0 * np.mean(penalties), rtol=1e-6)
            np.testing.assert_allclose(float(terms[gp_on].real), float(apply(real).mean()), rtol=1e-10)
            np.testing.assert_allclose(float(terms[gp_on].fake), float(apply(fake).mean()), rtol=1e-10)


@pytest.mark.parametrize("pooling", ["mean", "max", "mix"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("width", [3, 6])
def test_explicit_input_gradient_and_its_penalty_gradient_match_autodiff(pooling, reduction, width):
    critic = Critic(TINY_COUNTS, pooling)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, sum(TINY_COUNTS), width))
    params = host_params(critic, x)["params"]

    def autodiff_gradient(p):
        return jax.grad(lambda x: getattr(critic.apply({"params": p}, x), reduction)(-1).sum())(x)

    def explicit_gradient(p):
        return critic_input_gradient(p, x, TINY_COUNTS, pooling, reduction)

    want, got = autodiff_gradient(params), explicit_gradient(params)
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-5
    # the penalty's parameter gradient: one backward of the explicit gradient vs autodiff's double backward;
    # biases only switch LeakyReLU slopes, so their gradient is zero on both sides
    want_grads = jax.grad(lambda p: penalty_from_gradients(autodiff_gradient(p)))(params)
    got_grads = jax.grad(lambda p: penalty_from_gradients(explicit_gradient(p)))(params)
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want_grads))
    for path, got_leaf in jax.tree_util.tree_leaves_with_path(got_grads):
        want_leaf, where = flat_want[path], jax.tree_util.keystr(path)
        if where.endswith("['bias']"):
            assert float(jnp.abs(got_leaf).max()) == 0.0 and float(jnp.abs(want_leaf).max()) < 1e-6, where
        else:
            assert float(jnp.linalg.norm(got_leaf - want_leaf)) < 1e-5 * float(jnp.linalg.norm(want_leaf)), where


def test_explicit_input_gradient_rejects_an_unknown_reduction():
    params = host_params(Critic(TINY_COUNTS), jnp.zeros((1, sum(TINY_COUNTS), 3)))["params"]
    with pytest.raises(ValueError, match="reduction"):
        critic_input_gradient(params, jnp.zeros((1, sum(TINY_COUNTS), 3)), TINY_COUNTS, "mean", "median")


def test_interpolates_use_one_alpha_per_sample():
    real = jnp.ones((4, 5, 3))
    fake = jnp.zeros((4, 5, 3))
    x_hat = interpolate(real, fake, jax.random.PRNGKey(0))
    alphas = x_hat[:, 0, 0]
    np.testing.assert_allclose(x_hat, jnp.broadcast_to(alphas[:, None, None], x_hat.shape))
    assert bool(jnp.all((alphas >= 0) & (alphas < 1)))
