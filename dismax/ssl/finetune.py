"""Fine-tuning the pre-trained backbone for a per-structure property (``model.name: ssl_finetune``).

Labels are read from the extxyz frames' ``info`` (``model.target``, e.g. ``energy`` or ``is_stable``) of
``data.train_file``/``data.val_file`` or of a dataset's train/val files. The network is the backbone with a
structure head (mean over real atoms, then linear): ``task: regression`` fits one standardised scalar (MSE;
MAE reported in the target's units), ``task: classification`` ``n_classes`` logits (cross-entropy, accuracy;
labels 0..n_classes−1). The backbone starts from an ``ssl_pretrain`` run (``model.pretrained_run``, Liu et
al.'s property fine-tunes), or from scratch without one. A stability classifier initialises the GAN's
discriminator (``ssl_gan``'s ``model.discriminator_run``), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.config import load_config
from dismax.data.loader import BatchLoader
from dismax.data.registry import dataset_files
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.io import read_structure_set
from dismax.runs import RunDir, log
from dismax.ssl import pretrain
from dismax.ssl.backbone import Backbone, BackboneConfig
from dismax.ssl.data import DataConfig, PaddedSet
from dismax.ssl.steps import Batch, committed, transfer_params
from dismax.training import Panel, TrainingTask, check_data_source, check_loop_config, load_run_state

TASKS = ("regression", "classification")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ssl_finetune"
    pretrained_run: Optional[str] = None
    backbone: BackboneConfig = BackboneConfig()
    target: str = "energy"
    task: str = "regression"
    n_classes: int = 2


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: pretrain.TrainConfig = pretrain.TrainConfig()
    seed: int = 0


def check(config: Config) -> None:
    """Every config error, before anything is written."""
    check_loop_config(config.train)
    m = config.model
    if m.task not in TASKS:
        raise DismaxConfigError(f"config key 'model.task' is {m.task!r}; use one of {', '.join(TASKS)}")
    if m.task == "classification" and m.n_classes < 2:
        raise DismaxConfigError(f"config key 'model.n_classes' is {m.n_classes}; a classifier needs at least 2")
    if m.pretrained_run is not None and not (Path(m.pretrained_run) / "config.yaml").is_file():
        raise DismaxConfigError(f"config key 'model.pretrained_run' is '{m.pretrained_run}', which is not a run "
                                "directory (no config.yaml)")
    d = config.data
    check_data_source(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    if d.train_file:  # explicit files: label errors before the run directory is written
        for path in dataset_files(d.dataset, train_file=d.train_file, val_file=d.val_file):
            read_labelled(path, m.target, m.task, m.n_classes)


def read_labelled(path: Path, target: str, task: str, n_classes: int, n_atoms: int | None = None):
    """(PaddedSet, labels (S,) float32) of an extxyz file whose frames carry ``target`` in their info."""
    structures, infos = read_structure_set(path, with_info=True)
    labels = []
    for index, info in enumerate(infos):
        if target not in info:
            raise DismaxInputError(f"'{path}' structure {index} has no info key '{target}' (it has "
                                   f"{sorted(info) or 'none'})")
        value = float(np.asarray(info[target]).reshape(-1)[0])
        if task == "classification" and (value != int(value) or not 0 <= value < n_classes):
            raise DismaxInputError(f"'{path}' structure {index}: label {target}={value} is not a class in "
                                   f"0..{n_classes - 1}")
        labels.append(value)
    return PaddedSet(*structures.padded(n_atoms)), np.asarray(labels, np.float32)


def network_of(config: Config) -> Backbone:
    """The fine-tuned network: the pre-trained run's backbone (or ``model.backbone``) with a structure head."""
    m = config.model
    backbone = (load_config(Path(m.pretrained_run) / "config.yaml").model.backbone if m.pretrained_run
                else m.backbone)
    return Backbone(backbone, n_outputs=m.n_classes if m.task == "classification" else 1)


def loss_terms(network, params, batch: Batch, labels, task: str, scale):
    """(loss, {"loss", "error"}): MSE of standardised values and MAE in target units, or cross-entropy and
    accuracy. ``scale`` = (mean, std) of the training targets."""
    outputs = jax.vmap(lambda f, l, s, a: network.apply(params, f, l, s, a))(batch.frac, batch.lattice,
                                                                            batch.species, batch.atom_mask)
    if task == "classification":
        classes = labels.astype(jnp.int32)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, classes))
        return loss, {"loss": loss, "error": jnp.mean(jnp.argmax(outputs, -1) == classes)}
    mean, std = scale
    loss = jnp.mean((outputs[:, 0] - (labels - mean) / std) ** 2)
    return loss, {"loss": loss, "error": jnp.mean(jnp.abs(outputs[:, 0] * std + mean - labels))}


@partial(jax.jit, static_argnames=("network", "optimizer", "task"), donate_argnums=(0,))
def train_step(state: pretrain.TrainState, batch, labels, scale, *, network, optimizer, task):
    (_, metrics), grads = jax.value_and_grad(
        lambda p: loss_terms(network, p, batch, labels, task, scale), has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return pretrain.TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1, state.key), \
        metrics


@partial(jax.jit, static_argnames=("network", "task"))
def eval_step(params, batch, labels, scale, *, network, task):
    return loss_terms(network, params, batch, labels, task, scale)[1]


def initial_state(config: Config, network: Backbone) -> pretrain.TrainState:
    params = pretrain.initial_params(network, jax.random.PRNGKey(config.seed))
    if config.model.pretrained_run:
        params = transfer_params(pretrain.restore_generator(RunDir(config.model.pretrained_run), "best").params,
                                 params)
    optimizer = pretrain.make_optimizer(config.train.lr, config.train.clip_norm)
    return committed(pretrain.TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                                         jax.random.PRNGKey(0)))


def make_task(config: Config, run: RunDir) -> TrainingTask:
    m, t, d = config.model, config.train, config.data
    train_path, val_path = dataset_files(d.dataset, d.size, d.dataset_seed, d.train_file, d.val_file)
    train_set, train_labels = read_labelled(train_path, m.target, m.task, m.n_classes, d.max_atoms)
    val_set, val_labels = read_labelled(val_path, m.target, m.task, m.n_classes, train_set.crystals.n_atoms)
    if t.batch_size > min(len(train_set), len(val_set)):
        raise DismaxConfigError(f"config key 'train.batch_size' is {t.batch_size}, more than the {len(train_set)} "
                                f"training or {len(val_set)} validation structures")
    network = network_of(config)
    optimizer = pretrain.make_optimizer(t.lr, t.clip_norm)
    scale = (jnp.float32(train_labels.mean()), jnp.float32(train_labels.std() or 1.0))
    log.info("ssl_finetune: %s of '%s', backbone %s, %d training / %d validation structures", m.task, m.target,
             f"from {m.pretrained_run}" if m.pretrained_run else "from scratch", len(train_set), len(val_set))

    def step(state, data, epoch, index):
        (crystals, mask), labels = data
        state, metrics = train_step(state, pretrain.as_batch((crystals, mask)), jnp.asarray(labels), scale,
                                    network=network, optimizer=optimizer, task=m.task)
        return state, {f"train_{k}": v for k, v in metrics.items()}

    def evaluate(state, epoch):
        rows = []
        for start in range(0, len(val_set) - t.batch_size + 1, t.batch_size):
            rows_index = np.arange(start, start + t.batch_size)
            rows.append(eval_step(state.params, pretrain.as_batch(val_set.take(rows_index)),
                                  jnp.asarray(val_labels[rows_index]), scale, network=network, task=m.task))
        return state, {f"val_{k}": float(np.mean([np.asarray(r[k]) for r in rows])) for k in ("loss", "error")}

    return TrainingTask(
        name="ssl_finetune", state=initial_state(config, network),
        loaders=[BatchLoader((tuple(train_set), train_labels), t.batch_size, seed=config.seed)], step=step,
        members=[{"member": 0, "seed": config.seed}], evaluate=evaluate, eval_columns=("val_loss", "val_error"),
        monitor=lambda v: float(v["val_loss"][0]) if np.isfinite(v["val_loss"][0]) else None,
        loss_column="train_loss",
        panels=(Panel("loss", ("train_loss", "val_loss"), log_scale=True),
                Panel("MAE" if m.task == "regression" else "accuracy", ("train_error", "val_error"))))


def train(config: Config, run: RunDir, evaluation=None) -> None:
    """Fine-tune (or resume) in ``run``; see the module docstring."""
    pretrain.run_training(check, make_task, config, run, evaluation)


def restore_params(run: RunDir, which: str = "best"):
    """The fine-tuned network's parameters of a run's checkpoint (e.g. to initialise a discriminator)."""
    config = load_config(run.config_path, config_class=Config)
    state, _ = load_run_state(run, jax.eval_shape(lambda: initial_state(
        Config(model=ModelConfig(backbone=network_of(config).config, target=config.model.target,
                                 task=config.model.task, n_classes=config.model.n_classes),
               train=config.train, seed=config.seed), network_of(config))), which)
    return state.params


def sample(run: RunDir, n: int, out, seed: int = 0, **options):
    """A property model does not generate structures."""
    raise DismaxInputError(f"'{run.path}' is a fine-tuned property model, which does not generate structures")
