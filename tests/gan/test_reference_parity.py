"""CryinGAN step parity: dismax's JAX step against an independent PyTorch implementation of the
reference's conv layout (dismax.gan.reference_torch), with identical weights and random numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.gan.config import ModelConfig, TrainConfig
from dismax.gan.losses import critic_terms
from dismax.gan.steps import (CPU_PRODUCT_OPTIONS, GanSetup, critic_loss, generate, generator_loss, init_state,
                              step_keys, train_step)

torch = pytest.importorskip("torch", reason="torch is not importable here; it is pinned in the dev extra")
from dismax.gan.reference_torch import ReferenceGan  # noqa: E402

COUNTS = (5, 3)
LATTICE = ((6.0, 0.0, 0.0), (0.5, 6.0, 0.0), (0.0, 0.3, 6.5))
W_DIST = 0.1
BATCH = 4
RTOL = 1e-4


def relative_error(got, want) -> float:
    """‖got − want‖ / ‖want‖ over one array (the tolerance of the issue: 1e-4)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a/b/c": array} of a nested dict of arrays."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value, np.float64)
    return flat


def assert_trees_close(got: dict, want, rtol=RTOL, floor=0.0, where=""):
    """Every array of ``got`` (a nested dict from the torch side) matches the same path of ``want``:
    ‖got − want‖ ≤ rtol · max(‖want‖, floor · ‖all of want‖). The floor is for arrays whose exact
    value is zero (e.g. the gradient of the critic's output bias, which shifts real and fake scores
    alike), where both sides hold float32 rounding noise."""
    got, want = flatten(got), flatten(jax.device_get(want))
    scale = np.sqrt(sum(np.sum(v ** 2) for v in want.values()))
    errors = {}
    for key, value in got.items():
        assert value.shape == want[key].shape, f"{where}/{key}"
        bound = rtol * max(np.linalg.norm(want[key]), floor * scale)
        if np.linalg.norm(value - want[key]) > bound:
            errors[key] = relative_error(value, want[key])
    assert not errors, f"{where}: relative errors above {rtol}: {errors}"


def make_pair(seed: int):
    """A dismax setup and state, and the reference model holding the same weights (lr 5e-5, the paper's)."""
    torch.manual_seed(0)
    setup = GanSetup(counts=COUNTS, lattice=LATTICE, model=ModelConfig(gen_channels=8),
                     train=TrainConfig(lr_gen=5e-5, lr_coord=5e-5, lr_dist=5e-5))
    state = init_state(setup, jax.random.PRNGKey(seed), W_DIST)
    reference = ReferenceGan(COUNTS, np.asarray(LATTICE), W_DIST, layout="conv", gen_channels=8, lr=5e-5)
    reference.load_dismax(*jax.device_get((state.gen_params, state.gen_stats, state.critic_params)))
    return setup, state, reference


@pytest.fixture(scope="module")
def pair():
    """A dismax state and the reference model holding the same weights, plus a real batch."""
    setup, state, reference = make_pair(3)
    real = np.random.default_rng(7).uniform(0, 1, (3, BATCH, setup.n_atoms, 3)).astype(np.float32)
    return setup, state, reference, real


def as_torch(x):
    return torch.as_tensor(np.asarray(x, np.float32))


def test_weights_round_trip(pair):
    setup, state, reference, _ = pair
    exported = reference.dismax_layout()
    assert_trees_close(exported["gen"], jax.device_get(state.gen_params), rtol=1e-7)
    assert_trees_close(exported["critic"], jax.device_get(state.critic_params), rtol=1e-7)


def test_outputs_penalties_and_every_gradient_agree(pair):
    setup, state, reference, real = pair
    real = real[0]
    k_z, k_coord, k_dist, _ = step_keys(state)
    z = jax.random.normal(k_z, (BATCH, setup.model.latent_dim))
    alphas = [jax.random.uniform(k, (BATCH, 1, 1)) for k in (k_coord, k_dist)]
    # a fixed generated batch: the generator in eval mode (running statistics, no update)
    fake = generate(setup, state, k_z, BATCH)
    real_dists, fake_dists = setup.distances(jnp.asarray(real)), setup.distances(fake)

    critic_value_and_grad = jax.jit(jax.value_and_grad(critic_loss, argnums=1, has_aux=True), static_argnums=0)
    (loss, metrics), critic_grads = critic_value_and_grad(
        setup, state.critic_params, real, real_dists, fake, fake_dists, state.w_dist, (k_coord, k_dist))
    reference.generator.eval()
    torch_fake = reference.generator(as_torch(z))
    np.testing.assert_allclose(torch_fake.detach().numpy(), fake, rtol=RTOL, atol=1e-6)
    t_real = as_torch(real)
    t_real_dists = reference.distances(t_real)
    np.testing.assert_allclose(t_real_dists.numpy(), real_dists, rtol=RTOL)
    for critic in reference.critics.values():
        critic.zero_grad()
    terms = reference.critic_terms(t_real, t_real_dists, as_torch(fake), as_torch(alphas[0][:, 0, 0]),
                                   as_torch(alphas[1][:, 0, 0]))
    terms["loss"].backward()

    # critic outputs per sample, then the batch scores and the Wasserstein estimate. The scores are means
    # of outputs that partly cancel, so their float32 rounding is relative to the outputs' magnitude:
    # the tolerance is RTOL × max(|value|, mean |output|)
    scale = 0.0
    for name, x_real, x_fake in (("coord", real, fake), ("dist", real_dists, fake_dists)):
        module = setup.critic_modules()[name]
        want = module.apply({"params": state.critic_params[name]}, jnp.concatenate([x_real, x_fake]))
        got = reference.critics[name](as_torch(np.concatenate([x_real, x_fake]))).detach().numpy()
        assert relative_error(got, want) < RTOL, name
        scale = max(scale, float(jnp.abs(want).mean()))
    expected = {"coord_real": metrics["D_real"], "coord_fake": metrics["D_fake"],
                "dist_real": metrics["D_dist_real"], "dist_fake": metrics["D_dist_fake"],
                "wasserstein": metrics["distance_dis"], "loss": loss}
    for key, want in expected.items():
        assert abs(terms[key].item() - float(want)) <= RTOL * max(abs(float(want)), scale), key
    # the penalties: the loss minus the score terms leaves GP_coord + λ·GP_dist on both sides; each
    # penalty separately against dismax's penalty at the same interpolates
    for name, x_real, x_fake, alpha_key in (("coord", real, fake, k_coord), ("dist", real_dists, fake_dists, k_dist)):
        module = setup.critic_modules()[name]
        jax_terms = jax.jit(lambda params, r, f, k, module=module: critic_terms(
            lambda x: module.apply({"params": params}, x), r, f, k))(state.critic_params[name], x_real, x_fake, alpha_key)
        assert relative_error(terms[f"{name}_penalty"].item(), jax_terms.penalty) < RTOL, name
        assert float(jax_terms.penalty) > 1.0  # a penalty far from zero, so the comparison means something

    # gradients of every critic parameter
    torch_grads = reference.dismax_layout(gradients=True)
    assert set(torch_grads["critic"]) == {"coord", "dist"}
    assert_trees_close(torch_grads["critic"], jax.device_get(critic_grads), floor=1e-3,
                       where="critic grad")

    # gradients of every generator parameter (train mode: batch statistics), through the bond distances
    gen_value_and_grad = jax.jit(jax.value_and_grad(generator_loss, argnums=1, has_aux=True), static_argnums=0)
    (gen_loss, _), gen_grads = gen_value_and_grad(
        setup, state.gen_params, state.gen_stats, state.critic_params, z, state.w_dist)
    reference.generator.train()
    reference.generator.zero_grad()
    torch_gen_loss = reference.generator_loss(as_torch(z))
    torch_gen_loss.backward()
    assert relative_error(torch_gen_loss.item(), gen_loss) < RTOL
    assert_trees_close(reference.dismax_layout(gradients=True)["gen"], jax.device_get(gen_grads), floor=1e-3,
                       where="generator grad")


def test_generator_with_nonzero_pre_norm_biases_matches_in_train_and_eval_mode():
    """dismax folds the biases before each BatchNorm into it (never added to the activations); the
    reference adds them. With random biases and running statistics both give the same outputs in
    evaluation mode, and the same outputs and running means after a training-mode pass."""
    setup, state, reference = make_pair(9)
    keys = iter(jax.random.split(jax.random.PRNGKey(4), 16))
    params = jax.tree.map(lambda a: a, jax.device_get(state.gen_params))
    params["map1_bias"] = jax.random.normal(next(keys), params["map1_bias"].shape)
    for name in ("map2", "map3"):
        params[name]["bias"] = jax.random.normal(next(keys), params[name]["bias"].shape)
    stats = {name: {"mean": jax.random.normal(next(keys), value["mean"].shape),
                    "var": jax.random.uniform(next(keys), value["var"].shape, minval=0.5, maxval=2.0)}
             for name, value in jax.device_get(state.gen_stats).items()}
    reference.load_dismax(params, stats, jax.device_get(state.critic_params))
    z = jax.random.normal(next(keys), (BATCH, setup.model.latent_dim))
    variables = {"params": params, "batch_stats": stats}
    reference.generator.eval()
    want = reference.generator(as_torch(z)).detach().numpy()
    np.testing.assert_allclose(setup.generator().apply(variables, z, train=False), want, rtol=RTOL, atol=1e-6)
    reference.generator.train()
    want = reference.generator(as_torch(z)).detach().numpy()
    got, updated = setup.generator().apply(variables, z, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
    assert_trees_close(reference.dismax_layout()["stats"], updated["batch_stats"], where="BN running mean")


@pytest.mark.parametrize("compiler_options", [
    # on CPU the default run checks the trainer's options here and, in tests/gan/test_steps.py, that XLA's
    # defaults give the same step to rounding; this variant's own compile is left to the slow run there
    pytest.param(None, id="xla-defaults", marks=[pytest.mark.slow] if jax.default_backend() == "cpu" else []),
    pytest.param(CPU_PRODUCT_OPTIONS, id="cpu-product-options",
                 marks=pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")),
])
def test_three_training_iterations_leave_equal_parameters(compiler_options):
    """Three iterations of (critic step, generator step) with Adam and BatchNorm in train mode, compiled with
    XLA's defaults and with the CPU product options the trainer uses."""
    setup, state, reference = make_pair(5)
    initial = jax.device_get(state)
    real = np.random.default_rng(11).uniform(0, 1, (3, BATCH, setup.n_atoms, 3)).astype(np.float32)
    step = jax.jit(lambda s, r, d: train_step(setup, s, r, d, 1.0, True), compiler_options=compiler_options)
    for batch in real:
        k_z, k_coord, k_dist, k_gen = step_keys(state)  # the same random numbers for the torch side
        noise = {name: np.asarray(jax.random.normal(k, (BATCH, setup.model.latent_dim))) for name, k in
                 (("critic", k_z), ("gen", k_gen))}
        alphas = [np.asarray(jax.random.uniform(k, (BATCH, 1, 1)))[:, 0, 0] for k in (k_coord, k_dist)]
        real_dists = setup.distances(jnp.asarray(batch))
        state, metrics = step(state, batch, real_dists)
        t_batch = as_torch(batch)
        terms = reference.critic_step(t_batch, reference.distances(t_batch), as_torch(noise["critic"]),
                                      as_torch(alphas[0]), as_torch(alphas[1]))
        reference.generator_step(as_torch(noise["gen"]))
        scale = max(abs(float(metrics[key])) for key in ("D_real", "D_fake", "distance_dis"))
        assert abs(terms["wasserstein"].item() - float(metrics["distance_dis"])) <= RTOL * scale, (
            terms["wasserstein"].item(), metrics)
    final = reference.dismax_layout()
    got = jax.device_get(state)
    # The biases of the three layers feeding BatchNorm have a zero gradient in exact arithmetic (train-mode
    # BatchNorm subtracts the batch mean), so on both sides Adam moves them by its normalised rounding
    # noise; they do not change any training-mode output and are left out. Other arrays that start at
    # zero are compared with the floor (1e-3 of the whole network's norm) for the same rounding reason.
    pre_norm_biases = ("map1_bias", "map2", "map3")
    generator = {key: value for key, value in final["gen"].items() if key not in pre_norm_biases}
    generator["map2"] = {"kernel": final["gen"]["map2"]["kernel"]}
    generator["map3"] = {"kernel": final["gen"]["map3"]["kernel"]}
    assert_trees_close(generator, got.gen_params, floor=1e-3, where="generator")
    # Critic biases start at zero and after three steps are a few Adam steps of size lr, set by the sign
    # of small gradients: kernels are compared at RTOL, biases per entry to 2 lr (one Adam step whose sign rounding flipped); the output
    # biases (exactly zero gradient: they shift real and fake scores alike) are left out.
    kernels = {key: value for key, value in flatten(final["critic"]).items() if key.endswith("kernel")}
    want = flatten(jax.device_get(got.critic_params))
    for key, value in kernels.items():
        assert relative_error(value, want[key]) < RTOL, key
    for key, value in flatten(final["critic"]).items():
        if key.endswith("bias") and not key.endswith("out/bias"):
            np.testing.assert_allclose(value, want[key], rtol=0, atol=2 * setup.train.lr_coord, err_msg=key)
    assert_trees_close(final["stats"], got.gen_stats, floor=1e-3, where="BN running mean")
    # the parameters moved by much more than the tolerance, so equality is not just the initial weights
    moved = relative_error(got.critic_params["coord"]["head"]["out"]["kernel"],
                           initial.critic_params["coord"]["head"]["out"]["kernel"])
    assert moved > 10 * RTOL
