"""The GAN stage of the masked-denoising generator (``model.name: ssl_gan``; spec ``ssl_gan.md`` §6, §8, §9).

The generator G is the pre-trained backbone of an ``ssl_pretrain`` run (``model.generator_run``); its
inputs are corrupted with σ̃ = ``model.corruption.sigma_ratio`` (0.2: the paper's G_0.2). The
discriminator D is the same backbone with a structure head, initialised from a stability fine-tune
(``model.discriminator_run``, an ``ssl_finetune`` run, as in the paper) or else from G's backbone (the
structure head starts fresh). Real structures shown to D get σ̃ = ``real_sigma_ratio`` (0.001) noise.
G's loss is ``adversarial_weight`` · L_adv + L_species + ``position_weight`` · L_pos (0.1, 1, 200).

Default (the dismax fixes):
- the adversarial path is differentiable (L1): D sees G's positions wrap(noisy − predicted noise) and, on the
  masked atoms, the softmax of G's species logits as soft species (embedding mixture), so L_adv sends a
  gradient to every generator parameter;
- D is a WGAN-GP critic (L2): one scalar per structure, L_D = E[D(fake)] − E[D(real)] + λ·GP with the
  gradient penalty on random interpolates of real and fake (positions along the minimum-image displacement
  between corresponding atoms, species probabilities linearly), L_adv = −E[D(fake)]; ``critic_steps``
  critic updates per generator update (5, as CryinGAN), fp32.

``faithful: true`` reproduces the reference (L1, L2, L6, L8, L10 as in the code): D has 2 softmax outputs
(real = 1, fake = 0); L_D = mean L1(softmax D(real), onehot 1) + mean L1(softmax D(fake), onehot 0); G's
term is mean L1(softmax D(fake), onehot 1) computed on detached argmax species and detached positions
(no gradient to G); real structures get uniform noise; species loss over all atoms; G updated every batch,
D when (batch index + epoch) mod ``faithful_d_every`` (10) = 0; G's inputs masked the reference's biased way
(L3, :mod:`dismax.ssl.corruption`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.config import load_config
from dismax.data.loader import BatchLoader
from dismax.errors import DismaxConfigError
from dismax.geometry import cart_to_frac, frac_to_cart, wrap, wrap_centered
from dismax.runs import RunDir, log
from dismax.ssl import pretrain
from dismax.ssl.backbone import N_EMBEDDINGS, Backbone
from dismax.ssl.corruption import CorruptionConfig, minimum_distance
from dismax.ssl.data import DataConfig, load_padded
from dismax.ssl.steps import (Batch, Generator, apply_batch, committed, corrupt_batch, reconstruction_terms,
                              transfer_params)
from dismax.training import LoopConfig, Panel, TrainingTask, check_loop_config, load_run_state


@dataclass(frozen=True)
class ModelConfig:
    """generator_run: the ``ssl_pretrain`` run of G (its backbone config is used for D too);
    discriminator_run: an optional ``ssl_finetune`` run that initialises D; discriminator_layers: D's number of
    interaction layers if not G's (D then starts from G's first layers: a cheaper critic on a CPU); see the
    module docstring."""

    name: str = "ssl_gan"
    generator_run: str = ""
    generator_checkpoint: str = "best"
    discriminator_run: Optional[str] = None
    corruption: CorruptionConfig = CorruptionConfig(sigma_ratio=0.2)
    real_sigma_ratio: float = 0.001
    adversarial_weight: float = 0.1
    position_weight: float = 200.0
    gradient_penalty: float = 10.0
    critic_steps: int = 5
    faithful: bool = False
    faithful_d_every: int = 10
    discriminator_layers: Optional[int] = None


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """G: Adam ``lr_g``; D: Adam ``lr_d`` with β₁ ``beta1_d`` (the reference's 1e-4, 1e-5, 0.5)."""

    epochs: int = 20
    batch_size: int = 8
    val_every: int = 1
    checkpoint_every: int = 5
    lr_g: float = 1e-4
    lr_d: float = 1e-5
    beta1_d: float = 0.5


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: Optional[DataConfig] = None
    train: TrainConfig = TrainConfig()
    seed: int = 0


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GanState:
    g_params: dict
    d_params: dict
    g_opt: optax.OptState
    d_opt: optax.OptState
    step: jax.Array
    key: jax.Array


@dataclass(frozen=True)
class Setup:
    """Static pieces of the jitted steps (hashable): networks, optimisers and the model config."""

    generator: Backbone
    discriminator: Backbone
    g_optimizer: optax.GradientTransformation
    d_optimizer: optax.GradientTransformation
    model: ModelConfig


def check(config: Config) -> None:
    """Every config error, before anything is written."""
    check_loop_config(config.train)
    m, t = config.model, config.train
    if not m.generator_run:
        raise DismaxConfigError("config key 'model.generator_run' is empty; give the run directory of an "
                                "ssl_pretrain run")
    for key, run in (("model.generator_run", m.generator_run), ("model.discriminator_run", m.discriminator_run)):
        if run is not None and not (Path(run) / "config.yaml").is_file():
            raise DismaxConfigError(f"config key '{key}' is '{run}', which is not a run directory (no config.yaml)")
    if m.generator_checkpoint not in ("best", "latest"):
        raise DismaxConfigError(f"config key 'model.generator_checkpoint' is {m.generator_checkpoint!r}; use "
                                "'best' or 'latest'")
    too_few_layers = m.discriminator_layers is not None and m.discriminator_layers < 1
    if min(t.lr_g, t.lr_d) <= 0 or m.critic_steps < 1 or m.faithful_d_every < 1 or too_few_layers:
        raise DismaxConfigError("config keys 'train.lr_g' and 'train.lr_d' must be > 0 and 'model.critic_steps', "
                                "'model.faithful_d_every' and 'model.discriminator_layers' at least 1")
    if min(m.adversarial_weight, m.position_weight, m.gradient_penalty, m.real_sigma_ratio) < 0:
        raise DismaxConfigError("config keys 'model.adversarial_weight', 'model.position_weight', "
                                "'model.gradient_penalty' and 'model.real_sigma_ratio' must be >= 0")


@lru_cache(maxsize=None)
def optimizers(lr_g: float, lr_d: float, beta1_d: float):
    return optax.adam(lr_g), optax.adam(lr_d, b1=beta1_d)


# ------------------------------------------------------------------------------------------ the terms
def soft_species(logits, corrupted):
    """(B, N, 119) species probabilities of G's output: softmax over Z = 1..118 on masked atoms, one-hot of
    the visible species elsewhere (differentiable in the logits)."""
    probabilities = jnp.pad(jax.nn.softmax(logits, axis=-1), ((0, 0), (0, 0), (1, 0)))
    visible = jax.nn.one_hot(corrupted.species, N_EMBEDDINGS, dtype=logits.dtype)
    return jnp.where(corrupted.masked[..., None], probabilities, visible)


def generate(setup: Setup, g_params, batch: Batch, key):
    """G on a corrupted batch: (logits, noise, fake frac, fake species (B,N,119), Corrupted). In faithful mode
    the fake structure is detached and its species are the hard argmax (the reference's L1)."""
    corrupted = corrupt_batch(key, batch, setup.model.corruption)
    logits, noise = apply_batch(setup.generator, g_params, corrupted.frac, batch.lattice, corrupted.species,
                                batch.atom_mask)
    fake_frac = wrap(corrupted.frac - cart_to_frac(noise, batch.lattice))
    fake_species = soft_species(logits, corrupted)
    if setup.model.faithful:
        hard = jnp.where(corrupted.masked, jnp.argmax(logits, axis=-1) + 1, corrupted.species)
        fake_frac = jax.lax.stop_gradient(fake_frac)
        fake_species = jax.nn.one_hot(jax.lax.stop_gradient(hard), N_EMBEDDINGS, dtype=logits.dtype)
    return logits, noise, fake_frac, fake_species, corrupted


def real_inputs(setup: Setup, batch: Batch, key):
    """Real structures for D: tiny positional noise (normal; uniform in faithful mode) and one-hot species."""
    m = setup.model
    sigma = m.real_sigma_ratio * jax.vmap(lambda f, l, a: minimum_distance(
        f, l, a, m.corruption.single_atom_distance))(batch.frac, batch.lattice, batch.atom_mask)
    shape = batch.frac.shape
    draw = jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) if m.faithful else jax.random.normal(key, shape)
    noise = sigma[:, None, None] * draw * batch.atom_mask[..., None]
    return wrap(batch.frac + cart_to_frac(noise, batch.lattice)), jax.nn.one_hot(batch.species, N_EMBEDDINGS)


def critic(setup: Setup, d_params, frac, lattice, species, atom_mask):
    """D's outputs (B, n_outputs) in fp32."""
    return jax.vmap(lambda f, l, s, a: setup.discriminator.apply(d_params, f, l, s, a))(frac, lattice, species,
                                                                                          atom_mask)


def l1_to_label(outputs, label: int):
    """Mean over structures of Σ |softmax(outputs) − onehot(label)| (the reference's 'Wasserstein distance')."""
    return jnp.mean(jnp.sum(jnp.abs(jax.nn.softmax(outputs, axis=-1) - jax.nn.one_hot(label, 2)), axis=-1))


def adversarial_term(setup: Setup, g_params, d_params, batch: Batch, key):
    """(L_adv, generator outputs) for G's loss: −E[D(fake)] (WGAN), or the detached L1 term (faithful)."""
    logits, noise, fake_frac, fake_species, corrupted = generate(setup, g_params, batch, key)
    scores = critic(setup, d_params, fake_frac, batch.lattice, fake_species, batch.atom_mask)
    if setup.model.faithful:
        term = jax.lax.stop_gradient(l1_to_label(scores, 1))
    else:
        term = -jnp.mean(scores[:, 0])
    return term, (logits, noise, corrupted)


def generator_loss(setup: Setup, g_params, d_params, batch: Batch, key):
    m = setup.model
    adversarial, (logits, noise, corrupted) = adversarial_term(setup, g_params, d_params, batch, key)
    terms = reconstruction_terms(logits, noise, batch, corrupted, all_atoms=m.faithful)
    loss = m.adversarial_weight * adversarial + terms["species_loss"] + m.position_weight * terms["position_loss"]
    return loss, {"g_loss": loss, "adversarial": adversarial, **terms}


def gradient_penalty(setup: Setup, d_params, batch: Batch, real_frac, real_species, fake_frac, fake_species, key):
    """E[(‖∇D(x̂)‖ − 1)²] over interpolates x̂ of corresponding real and fake atoms (Cartesian positions along
    the minimum-image displacement, species probabilities linearly); the gradient is taken with respect to
    the Cartesian positions and the species probabilities together."""
    epsilon = jax.random.uniform(key, (batch.frac.shape[0], 1, 1))
    real_cart = frac_to_cart(real_frac, batch.lattice)
    displacement = frac_to_cart(wrap_centered(fake_frac - real_frac), batch.lattice)
    cart = real_cart + epsilon * displacement
    species = real_species + epsilon * (fake_species - real_species)

    def total_score(cart, species):
        frac = wrap(cart_to_frac(cart, batch.lattice))
        return jnp.sum(critic(setup, d_params, frac, batch.lattice, species, batch.atom_mask)[:, 0])

    g_cart, g_species = jax.grad(total_score, argnums=(0, 1))(cart, species)
    mask = batch.atom_mask[..., None]
    norm = jnp.sqrt(jnp.sum((g_cart * mask) ** 2, axis=(1, 2)) + jnp.sum((g_species * mask) ** 2, axis=(1, 2)) + 1e-12)
    return jnp.mean((norm - 1.0) ** 2)


def discriminator_loss(setup: Setup, d_params, g_params, batch: Batch, key):
    m = setup.model
    g_key, real_key, gp_key = jax.random.split(key, 3)
    _, _, fake_frac, fake_species, _ = generate(setup, g_params, batch, g_key)
    fake_frac, fake_species = jax.lax.stop_gradient(fake_frac), jax.lax.stop_gradient(fake_species)
    real_frac, real_species = real_inputs(setup, batch, real_key)
    # real and fake through one critic call (one copy of the network in the compiled graph for both)
    both = critic(setup, d_params, jnp.concatenate([real_frac, fake_frac]), jnp.concatenate([batch.lattice] * 2),
                  jnp.concatenate([real_species, fake_species]), jnp.concatenate([batch.atom_mask] * 2))
    real_scores, fake_scores = jnp.split(both, 2)
    if m.faithful:
        loss = l1_to_label(real_scores, 1) + l1_to_label(fake_scores, 0)
        accuracy = 0.5 * (jnp.mean(jnp.argmax(real_scores, -1) == 1) + jnp.mean(jnp.argmax(fake_scores, -1) == 0))
        return loss, {"d_loss": loss, "d_accuracy": accuracy}
    gap = jnp.mean(real_scores[:, 0]) - jnp.mean(fake_scores[:, 0])
    penalty = gradient_penalty(setup, d_params, batch, real_frac, real_species, fake_frac, fake_species, gp_key)
    loss = -gap + m.gradient_penalty * penalty
    return loss, {"d_loss": loss, "wasserstein_gap": gap, "gradient_penalty": penalty}


@partial(jax.jit, static_argnames="setup", donate_argnums=(0,))
def generator_step(state: GanState, batch: Batch, *, setup: Setup):
    key, step_key = jax.random.split(state.key)
    (_, metrics), grads = jax.value_and_grad(
        lambda p: generator_loss(setup, p, state.d_params, batch, step_key), has_aux=True)(state.g_params)
    updates, g_opt = setup.g_optimizer.update(grads, state.g_opt, state.g_params)
    return dataclasses.replace(state, g_params=optax.apply_updates(state.g_params, updates), g_opt=g_opt,
                               step=state.step + 1, key=key), metrics


@partial(jax.jit, static_argnames="setup", donate_argnums=(0,))
def discriminator_step(state: GanState, batch: Batch, *, setup: Setup):
    key, step_key = jax.random.split(state.key)
    (_, metrics), grads = jax.value_and_grad(
        lambda p: discriminator_loss(setup, p, state.g_params, batch, step_key), has_aux=True)(state.d_params)
    updates, d_opt = setup.d_optimizer.update(grads, state.d_opt, state.d_params)
    return dataclasses.replace(state, d_params=optax.apply_updates(state.d_params, updates), d_opt=d_opt,
                               key=key), metrics


@partial(jax.jit, static_argnames="setup")
def eval_terms(g_params, d_params, batch: Batch, key, *, setup: Setup):
    g_key, d_key = jax.random.split(key)
    _, g_metrics = generator_loss(setup, g_params, d_params, batch, g_key)
    _, d_metrics = discriminator_loss(setup, d_params, g_params, batch, d_key)
    return {**g_metrics, **d_metrics}


# ------------------------------------------------------------------------------------------ building
def build(config: Config, abstract: bool = False):
    """(setup, initial state, data config) from the generator run (and the discriminator run)."""
    m, t = config.model, config.train
    generator = pretrain.restore_generator(RunDir(m.generator_run), m.generator_checkpoint)
    g_params = generator.params
    d_backbone = generator.network.config
    if m.discriminator_layers is not None:
        d_backbone = dataclasses.replace(d_backbone, n_layers=m.discriminator_layers)
    discriminator = Backbone(d_backbone, n_outputs=2 if m.faithful else 1)
    d_params = pretrain.initial_params(discriminator, jax.random.PRNGKey(config.seed))
    source = g_params
    if m.discriminator_run:
        from dismax.ssl import finetune  # the fine-tuning module imports this one's data helpers

        source = finetune.restore_params(RunDir(m.discriminator_run))
    d_params = transfer_params(source, d_params)
    g_optimizer, d_optimizer = optimizers(t.lr_g, t.lr_d, t.beta1_d)
    if m.faithful:  # the reference's biased masking too (L3)
        m = dataclasses.replace(m, corruption=dataclasses.replace(m.corruption, faithful=True))
    setup = Setup(generator.network, discriminator, g_optimizer, d_optimizer, m)
    state = GanState(g_params, d_params, g_optimizer.init(g_params), d_optimizer.init(d_params),
                     jnp.zeros((), jnp.int32), jax.random.PRNGKey(config.seed + 7))
    if abstract:
        state = jax.eval_shape(lambda: state)
    else:
        state = committed(state)  # else every step compiles twice: minutes for the critic's second-order graph
    return setup, state, config.data or generator.data


PANELS = (Panel("generator", ("train_g_loss", "val_g_loss")),
          Panel("discriminator", ("train_d_loss", "val_d_loss")),
          Panel("reconstruction", ("val_accuracy", "val_residual_rms", "val_input_rms")))
EVAL_COLUMNS = ("val_g_loss", "val_d_loss", "val_adversarial", "val_species_loss", "val_position_loss",
                "val_accuracy", "val_residual_rms", "val_input_rms", "val_critic")


def make_task(config: Config, run: RunDir) -> TrainingTask:
    setup, state, data = build(config)
    train_set, val_set = load_padded(data)
    t, m = config.train, config.model
    log.info("ssl_gan: %s, G from %s, %d training / %d validation structures", "faithful reference losses"
             if m.faithful else "differentiable WGAN-GP", m.generator_run, len(train_set), len(val_set))

    def step(state, data, epoch, index):
        batch = pretrain.as_batch(data)
        metrics = {}
        if m.faithful:
            state, metrics = generator_step(state, batch, setup=setup)
            if (index + epoch) % m.faithful_d_every == 0:
                state, d_metrics = discriminator_step(state, batch, setup=setup)
                metrics = {**metrics, **d_metrics}
        else:
            state, metrics = discriminator_step(state, batch, setup=setup)
            if (epoch * 10**6 + index) % m.critic_steps == m.critic_steps - 1:
                state, g_metrics = generator_step(state, batch, setup=setup)
                metrics = {**metrics, **g_metrics}
        columns = ("g_loss", "d_loss", "adversarial", "species_loss", "position_loss", "accuracy")
        return state, {f"train_{k}": metrics.get(k, jnp.nan) for k in columns}

    def evaluate(state, epoch):
        rows = []
        for i, start in enumerate(range(0, len(val_set) - t.batch_size + 1, t.batch_size)):
            batch = pretrain.as_batch(val_set.take(np.arange(start, start + t.batch_size)))
            rows.append(eval_terms(state.g_params, state.d_params, batch,
                                   jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), i), setup=setup))
        values = {f"val_{k}": float(np.mean([np.asarray(r[k]) for r in rows])) for k in rows[0]}
        values["val_critic"] = values.pop("val_d_accuracy", values.pop("val_wasserstein_gap", np.nan))
        return state, {k: values.get(k, np.nan) for k in EVAL_COLUMNS}

    if t.batch_size > len(val_set):
        raise DismaxConfigError(f"config key 'train.batch_size' is {t.batch_size} but the validation set has only "
                                f"{len(val_set)} structures")
    return TrainingTask(
        # one padded shape whatever data.max_buckets says: every shape compiles the critic's second-order step
        name="ssl_gan", state=state, loaders=[BatchLoader(tuple(train_set), t.batch_size, seed=config.seed)],
        step=step, members=[{"member": 0, "seed": config.seed}], evaluate=evaluate, eval_columns=EVAL_COLUMNS,
        monitor=lambda v: float(v["val_g_loss"][0]) if np.isfinite(v["val_g_loss"][0]) else None,
        panels=PANELS)


def train(config: Config, run: RunDir, evaluation=None) -> None:
    """Train (or resume) the GAN stage of ``config`` in ``run``; see the module docstring."""
    pretrain.run_training(check, make_task, config, run, evaluation)


def restore_generator(run: RunDir, which: str = "latest") -> Generator:
    """The generator G of a GAN run's checkpoint, with the GAN stage's input corruption."""
    config = load_config(run.config_path, config_class=Config)
    setup, like, data = build(config, abstract=True)
    state, _ = load_run_state(run, like, which)
    return Generator(setup.generator, state.g_params, config.model.corruption, data)


def sample(run: RunDir, n: int, out: Path, seed: int = 0, checkpoint: str = "latest", **options) -> Path:
    """Write ``n`` structures repaired by G to ``out`` (see :func:`dismax.ssl.pretrain.write_repaired`)."""
    return pretrain.write_repaired(restore_generator(run, checkpoint), n, out, seed)
