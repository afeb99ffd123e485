"""The GAN stage: the adversarial term reaches the generator (not in faithful mode, the reference's L1), the
critic's losses are finite with a positive gradient penalty, and parameters transfer into D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.ssl.backbone import Backbone
from dismax.ssl.gan import ModelConfig, Setup, adversarial_term, discriminator_loss, optimizers
from dismax.ssl.pretrain import as_batch, initial_params
from dismax.ssl.steps import transfer_params
from dismax.structures import StructureSet
from tests.ssl.helpers import TINY_BACKBONE, rock_salt_set

GENERATOR = Backbone(TINY_BACKBONE)
G_PARAMS = initial_params(GENERATOR, jax.random.PRNGKey(0))
BATCH = as_batch(StructureSet.padded(rock_salt_set(2)))


def setup_for(faithful: bool) -> Setup:
    discriminator = Backbone(TINY_BACKBONE, n_outputs=2 if faithful else 1)
    return Setup(GENERATOR, discriminator, *optimizers(1e-4, 1e-5, 0.5), ModelConfig(faithful=faithful))


def generator_gradient_norm(faithful: bool) -> float:
    setup = setup_for(faithful)
    d_params = transfer_params(G_PARAMS, initial_params(setup.discriminator, jax.random.PRNGKey(1)))
    grads = jax.jit(jax.grad(lambda g: adversarial_term(setup, g, d_params, BATCH, jax.random.PRNGKey(2))[0]))(
        G_PARAMS)
    return float(sum(jnp.sum(x**2) for x in jax.tree.leaves(grads)))


@pytest.mark.slow  # second-order and adversarial graphs: minutes of compilation on a loaded CPU
def test_adversarial_term_sends_gradient_to_the_generator_except_in_faithful_mode():
    assert generator_gradient_norm(faithful=False) > 1e-10
    assert generator_gradient_norm(faithful=True) == 0.0


@pytest.mark.slow
def test_critic_loss_and_transfer_of_the_pretrained_backbone():
    setup = setup_for(False)
    fresh = initial_params(setup.discriminator, jax.random.PRNGKey(1))
    d_params = transfer_params(G_PARAMS, fresh)
    np.testing.assert_array_equal(d_params["params"]["species_embedding"]["embedding"],
                                  G_PARAMS["params"]["species_embedding"]["embedding"])
    # copies, not shared buffers: a GAN state holding one buffer twice cannot be donated to its steps
    assert (d_params["params"]["species_embedding"]["embedding"].unsafe_buffer_pointer()
            != G_PARAMS["params"]["species_embedding"]["embedding"].unsafe_buffer_pointer())
    np.testing.assert_array_equal(d_params["params"]["structure_head"]["kernel"],
                                  fresh["params"]["structure_head"]["kernel"])
    loss, metrics = jax.jit(lambda d: discriminator_loss(setup, d, G_PARAMS, BATCH, jax.random.PRNGKey(3)))(d_params)
    assert np.isfinite(float(loss)) and float(metrics["gradient_penalty"]) > 0
    faithful = setup_for(True)
    d2 = transfer_params(G_PARAMS, initial_params(faithful.discriminator, jax.random.PRNGKey(1)))
    loss2, m2 = jax.jit(lambda d: discriminator_loss(faithful, d, G_PARAMS, BATCH, jax.random.PRNGKey(3)))(d2)
    assert 0.0 <= float(loss2) <= 4.0 and 0.0 <= float(m2["d_accuracy"]) <= 1.0
