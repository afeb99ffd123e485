"""CryinGAN training step: ensembles over seeds × λ, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.gan.config import ModelConfig
from dismax.gan.steps import (CPU_PRODUCT_OPTIONS, GanSetup, ensemble_step_fn, init_ensemble, init_state, member_state,
                              step_compiler_options, train_step)

LATTICE = ((6.0, 0.0, 0.0), (0.5, 6.0, 0.0), (0.0, 0.3, 6.5))


def tiny_setup(**options):
    return GanSetup(counts=(5, 3), lattice=LATTICE, model=ModelConfig(gen_channels=8, **options))


def real_batches(setup, n_steps, batch=4):
    frac = jax.random.uniform(jax.random.PRNGKey(42), (n_steps, batch, setup.n_atoms, 3))
    return [(frac[i], setup.distances(frac[i])) for i in range(n_steps)]


@pytest.mark.slow
def test_one_ensemble_member_equals_training_it_alone():
    setup = tiny_setup()
    seeds, w_dists = [0, 0, 1, 1], [0.05, 0.1, 0.05, 0.1]
    ensemble = init_ensemble(setup, seeds, w_dists)
    alone = init_state(setup, jax.random.PRNGKey(1), 0.1)
    step = ensemble_step_fn(setup, True, False)
    single = jax.jit(lambda s, r, d: train_step(setup, s, r, d, 1.0, True))
    for real, dists in real_batches(setup, 2):
        ensemble, metrics = step(ensemble, real, dists, jnp.float32(1.0))
        alone, alone_metrics = single(alone, real, dists)
    member = member_state(ensemble, 3)
    # equal up to float32 reordering. Some gradients are exactly zero in exact arithmetic (biases feeding
    # BatchNorm; head biases whose real and fake contributions cancel), so both runs hold rounding noise
    # there, which Adam's normalisation scales up to a fraction of a step (lr = 5e-5); the tolerance is
    # half of one step, far below the differences between members (different initialisations, ~0.1)
    for got, want in zip(jax.tree.leaves(member), jax.tree.leaves(alone)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2.5e-5)
    for key, value in alone_metrics.items():
        np.testing.assert_allclose(metrics[key][3], value, rtol=2e-4, atol=1e-6)
    # members with the same seed start equal and diverge only through λ
    first = jax.tree.leaves(member_state(ensemble, 0).gen_params)[0]
    second = jax.tree.leaves(member_state(ensemble, 1).gen_params)[0]
    assert not np.allclose(first, second)
    assert int(member.step) == 2


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(critics="combined", coord_pooling="mix"),
    dict(use_distance=False, coord_pooling="max"),
    dict(dist_pooling="mix", gp_on="mean", bn_eps=1e-5),
])
def test_variants_train_and_update_only_what_they_should(options):
    setup = tiny_setup(**options)
    state = init_state(setup, jax.random.PRNGKey(0), 0.05)
    (real, dists), = real_batches(setup, 1)
    step = jax.jit(lambda s, r, d: train_step(setup, s, r, d, 1.0, False))
    new, metrics = step(state, real, dists if setup.has_dist_critic else None)
    assert set(new.critic_params) == set(setup.critic_modules())
    assert all(np.isfinite(float(v)) for v in metrics.values())
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.critic_params),
                                                       jax.tree.leaves(state.critic_params))]
    assert all(changed)
    for a, b in zip(jax.tree.leaves(new.gen_params), jax.tree.leaves(state.gen_params)):
        np.testing.assert_array_equal(a, b)  # no generator update on this batch
    if not setup.has_dist_critic:
        assert float(metrics["D_dist_real"]) == 0.0


def _library_dot_fusions(compiled_text: str) -> int:
    """Matrix products the compiled program hands to YNNPACK fusions (XLA CPU)."""
    return sum('dot_general"' in line and "__ynn_fusion" in line for line in compiled_text.splitlines())


@pytest.fixture(scope="module")
def trainer_steps_with_and_without_product_options():
    """The trainer's ensemble step of a one-member ensemble compiled with and without the CPU product options
    (compiled once per module: both tests below read these programs): ({True|False: compiled}, state, batch)."""
    setup = tiny_setup()
    ensemble = init_ensemble(setup, [0], [0.1])
    (real, dists), = real_batches(setup, 1)
    compiled = {product_options: ensemble_step_fn(setup, True, False, product_options)
                .lower(ensemble, real, dists, jnp.float32(1.0)).compile()
                for product_options in (True, False)}
    return compiled, ensemble, (real, dists)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_cpu_product_options_move_the_products_off_ynnpack_and_change_only_rounding(
        trainer_steps_with_and_without_product_options):
    compiled, ensemble, (real, dists) = trainer_steps_with_and_without_product_options
    assert step_compiler_options(True) == CPU_PRODUCT_OPTIONS
    assert _library_dot_fusions(compiled[True].as_text()) == 0
    assert _library_dot_fusions(compiled[False].as_text()) > 0  # what they change
    # the step donates its state: each run gets its own copy
    (got, got_metrics), (want, want_metrics) = (compiled[options](jax.tree.map(jnp.copy, ensemble), real, dists,
                                                                  jnp.float32(1.0)) for options in (True, False))
    # as in the ensemble test above: rounding noise of exactly-zero gradients moves by up to half an Adam step
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2.5e-5)
    for key, value in want_metrics.items():
        np.testing.assert_allclose(got_metrics[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_the_trainer_step_is_compiled_with_the_cpu_product_options(trainer_steps_with_and_without_product_options):
    compiled, _, _ = trainer_steps_with_and_without_product_options
    for product_options in (True, False):
        assert (_library_dot_fusions(compiled[product_options].as_text()) == 0) == product_options
