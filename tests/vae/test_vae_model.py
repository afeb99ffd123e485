import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.vae import representation as rep
from dismax.vae.ingest import analyse_structure
from dismax.vae.losses import LossWeights, loss_terms, total_loss
from dismax.vae.model import WyckoffVAE
from dismax.vae import trainer
from dismax.vae.steps import create_state
from dismax.vae.trainer import ModelConfig

from tests.vae.vae_fixtures import ALL

TINY = dict(latent_dim=8, max_filter=2, site_dense=16)


@pytest.fixture(scope="module")
def batch():
    arrays = rep.encode_genes([analyse_structure(build()) for build in ALL.values()][:4])
    scaled = ((arrays.lattice - arrays.lattice.mean(0)) / (arrays.lattice.std(0) + 1e-6)).astype(np.float32)
    return arrays.sites, scaled, arrays.spacegroup


def test_layer_shapes_of_the_reference_architecture():
    model = WyckoffVAE()  # kernels (5, 3, 2), strides (2, 3, 2), max_filter 16, latent 256
    sites = jnp.zeros((2, 9, 183))
    crystal = jnp.zeros((2, 236))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sites, crystal, jax.random.PRNGKey(1)))
    encoder = shapes["params"]["encoder"]
    assert encoder["Conv_0"]["kernel"].shape == (5, 9, 32)
    assert encoder["Conv_2"]["kernel"].shape == (2, 64, 128)
    assert encoder["Dense_0"]["kernel"].shape == (15 * 128, 1024)
    assert encoder["mean"]["kernel"].shape == (1024 + 128, 256)
    decoder = shapes["params"]["decoder"]
    assert decoder["Dense_1"]["kernel"].shape == (256, 128 * 15)
    assert decoder["element"]["kernel"].shape == (183, 101)
    assert decoder["spacegroup"]["kernel"].shape == (236, 230)


def test_loss_terms_match_hand_computation(batch):
    sites, lattice, groups = batch
    rng = np.random.default_rng(0)
    b = len(groups)
    outputs = {
        "element_logits": rng.normal(size=(b, 9, 101)), "letter_logits": rng.normal(size=(b, 9, 27)),
        "multiplicity_logits": rng.normal(size=(b, 9, 51)), "xyz": rng.normal(size=(b, 9, 3)),
        "disorder_logits": rng.normal(size=(b, 9)), "spacegroup_logits": rng.normal(size=(b, 230)),
        "lattice": rng.normal(size=(b, 6)), "mean": rng.normal(size=(b, 8)), "log_var": rng.normal(size=(b, 8)),
    }
    terms = loss_terms(outputs, sites, lattice, groups, LossWeights())

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def cross_entropy(logits, onehot):
        return -(onehot * np.log(softmax(logits))).sum(-1)

    kl = -0.5 * np.mean(1 + outputs["log_var"] - outputs["mean"] ** 2 - np.exp(outputs["log_var"]), -1)
    element = ((softmax(outputs["element_logits"]) - sites[..., :101]) ** 2).mean(-1).sum(-1)
    letter = cross_entropy(outputs["letter_logits"], sites[..., 156:183]).sum(-1)
    p = 1 / (1 + np.exp(-outputs["disorder_logits"]))
    y = sites[..., 152]
    disorder = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)
    group = cross_entropy(outputs["spacegroup_logits"], np.eye(230)[groups - 1])
    np.testing.assert_allclose(terms["kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["element"], element.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["letter"], letter.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["disorder"], disorder.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["spacegroup"], group.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["lattice"], ((outputs["lattice"] - lattice) ** 2).sum(-1).mean(), rtol=1e-5)
    mae = loss_terms(outputs, sites, lattice, groups, LossWeights(lattice_loss="mae"))["lattice"]
    np.testing.assert_allclose(mae, np.abs(outputs["lattice"] - lattice).sum(-1).mean(), rtol=1e-5)
    # periodic coordinates: an error of 0.9 counts as 0.1
    shifted = dict(outputs, xyz=sites[..., 153:156] + 0.9)
    periodic = loss_terms(shifted, sites, lattice, groups, LossWeights(periodic_xyz=True))["xyz"]
    np.testing.assert_allclose(periodic, 9 * 0.01, rtol=1e-4)
    weights = LossWeights()
    assert float(total_loss(terms, weights)) == pytest.approx(
        sum(getattr(weights, k) * float(v) for k, v in terms.items()), rel=1e-5)


def test_train_steps_reduce_the_loss(batch):
    # the small config's compiled steps (shared with the trainer test: batch 8, tiny model, lr 1e-3)
    sites, lattice, groups = (np.resize(x, (8, *x.shape[1:])) for x in batch)
    model, optimizer, step, evaluate = trainer._compiled(ModelConfig(**TINY), 1e-3, LossWeights())
    assert model == WyckoffVAE(**TINY)
    state = create_state(model, optimizer, 0)
    mask = np.ones(len(groups), bool)
    before = float(evaluate(state, sites, lattice, groups, mask)[0]["loss"])
    first = None
    for _ in range(60):
        state, metrics = step(state, sites, lattice, groups)
        first = first if first is not None else float(metrics["loss"])
    assert int(state.step) == 60
    assert float(metrics["loss"]) < 0.5 * first
    after, outputs = evaluate(state, sites, lattice, groups, mask)
    assert float(after["loss"]) < before
    assert outputs["element_logits"].shape == (len(groups), 9, 101)
