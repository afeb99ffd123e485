"""The one training loop of dismax, shared by CryinGAN, the diffusion model and the Wyckoff VAE.

A model describes itself with a :class:`TrainingTask` (its initial state, its data loaders, a step, an
optional evaluation, its ensemble members and its plot panels); :func:`train_loop` does everything else:

- **Epochs** are numbered from 0. Epoch e is loader steps [e·S, (e+1)·S), S = ``steps_per_epoch`` of the
  :class:`~dismax.data.loader.BatchLoader`, so the batches depend only on the seeds and the step.
- **Batches** come from one loader shared by every ensemble member (batch (B, ...)) or one loader per member
  (batches stacked on a leading member axis, (M, B, ...)).
- **Sharding**: when ``batch_size`` divides over the devices, each batch is split over the 'data' mesh
  (:mod:`dismax.devices`) along its batch axis and the state is replicated; otherwise everything stays on the
  default device (with a warning when there are several devices).
- **Several processes** (``jax.distributed``, see :mod:`dismax.devices`): every process builds the same
  loaders and loads only its own part of each global batch (``BatchLoader.batch(step, part, n_parts)``); the
  global batch size must divide over all devices. Parameters are replicated, so every process computes the
  same state; process 0 alone writes metrics, logs and plots, and orbax saves checkpoints collectively. A
  checkpoint restores on any number of processes (the state is read whole, then replicated).
- **Rows**: after every epoch one ``metrics.csv`` row per member: ``epoch``, the member's labels, ``step``,
  the epoch means of the step metrics, the evaluation columns (NaN in epochs without evaluation), the task's
  per-epoch columns and ``seconds``.
- **Evaluation** every ``val_every`` epochs and after the last: the task's own (validation losses, samples)
  and an optional external :class:`Evaluation` (e.g. benchmark metrics of samples).
- **Checkpoints** every ``checkpoint_every`` epochs, after the last epoch and when the time budget
  ``max_minutes`` is spent (the run then stops; rerunning continues it). The meta holds the number of epochs
  done, the loader positions and the task's JSON host state; ``best/`` keeps the checkpoint with the lowest
  ``task.monitor`` value. ``plots/losses.png`` is redrawn (atomically) at every checkpoint.
- **Resume** from the latest checkpoint, dropping metrics rows of epochs it does not contain; a finished run
  continues when ``epochs`` grows.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dismax.checkpoint import Checkpointer
from dismax.data.loader import BatchLoader
from dismax.data.registry import dataset_dir
from dismax.devices import data_mesh, is_primary, process_count, process_index, replicate, shard_batch, to_host
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.runs import RunDir, atomic_write, exclusive_lock, log, progress


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The ``train`` keys every model shares (a model's ``TrainConfig`` extends it and may change defaults).

    epochs: total epochs of the run (a larger value extends a finished run); batch_size: structures per step
    and member; val_every: epochs between evaluations; checkpoint_every: epochs between checkpoints;
    keep_checkpoints: newest checkpoints kept (plus ``best/``); max_minutes: stop with a checkpoint at the
    first epoch end past this wall time (None = no limit).
    """

    epochs: int = 100
    batch_size: int = 32
    val_every: int = 1
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    max_minutes: Optional[float] = None


#: keys that may differ between a run's saved config and the config that resumes it
BUDGET_KEYS = ("train.epochs", "train.max_minutes")


def check_loop_config(config: LoopConfig) -> None:
    """Raise a config error naming the first shared ``train`` key out of range."""
    for key in ("epochs", "batch_size", "val_every", "checkpoint_every", "keep_checkpoints"):
        value = getattr(config, key)
        if value < 1:
            raise DismaxConfigError(f"config key 'train.{key}' is {value}; it must be at least 1")
    if config.max_minutes is not None and config.max_minutes < 0:
        raise DismaxConfigError(f"config key 'train.max_minutes' is {config.max_minutes}; it must be at least 0")


def check_data_source(dataset: str, size: str, seed: int, train_file: str | None = None,
                      val_file: str | None = None) -> None:
    """Errors of a trainer's ``data`` keys before anything is written: explicit files must be readable, a
    dataset name must be registered or buildable (building it is left to training)."""
    for key, path in (("data.train_file", train_file), ("data.val_file", val_file)):
        if path is not None:
            path = Path(path).expanduser()
            if not path.is_file() or not os.access(path, os.R_OK):
                raise DismaxConfigError(f"config key '{key}' is '{path}', which is not a readable file")
    if not train_file:
        dataset_dir(dataset, size, seed)


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(lr: float, kind: str = "constant", total_steps: int = 1, warmup_steps: int = 0,
                           final_fraction: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """The learning rate as a function of the optimiser step count k = 0, 1, ... (for ``optax``).

    ``constant``: lr; ``cosine``: lr · (f + (1 − f)(1 + cos(π min(k, K)/K))/2) with K = ``total_steps`` and
    f = ``final_fraction`` (PyTorch's ``CosineAnnealingLR``, imagen-pytorch's ``cosine_decay_max_steps``).
    ``warmup_steps`` W > 0 multiplies either by min(1, (k + 1)/W) (imagen-pytorch's linear warmup).
    """
    if kind not in LR_SCHEDULES:
        raise DismaxConfigError(f"learning-rate schedule '{kind}' is not one of {', '.join(LR_SCHEDULES)}")
    total = max(int(total_steps), 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        rate = jnp.full_like(count, lr)
        if kind == "cosine":
            rate = rate * (final_fraction + (1.0 - final_fraction)
                           * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count, total) / total)))
        if warmup_steps > 0:
            rate = rate * jnp.minimum(1.0, (count + 1.0) / warmup_steps)
        return rate

    return schedule


def check_lr_schedule(kind: str, warmup_steps: int) -> None:
    """Raise a config error for a ``train.lr_schedule`` or ``train.warmup_steps`` out of range."""
    if kind not in LR_SCHEDULES:
        raise DismaxConfigError(f"config key 'train.lr_schedule' is '{kind}'; it must be one of "
                                f"{', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0:
        raise DismaxConfigError(f"config key 'train.warmup_steps' is {warmup_steps}; it must be at least 0")


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel of ``plots/losses.png``: ``columns`` of metrics.csv against the epoch, one line per member."""

    title: str
    columns: tuple[str, ...]
    log_scale: bool = False


@dataclasses.dataclass
class TrainingTask:
    """What a model supplies to :func:`train_loop`.

    state: initial state (fresh; replaced by the checkpoint on resume), a pytree with a leading member axis
        when the model trains an ensemble.
    loaders: one :class:`BatchLoader` shared by the members (batches (B, ...)), or with ``member_batches`` one
        per member (batches stacked on a leading member axis, (M, B, ...)); all with equal ``steps_per_epoch``.
    step: ``(state, batch, epoch, index_in_epoch) → (state, metrics)``, metrics a dict of scalars or (M,)
        arrays; NaN entries (e.g. a loss not computed in this step) are left out of the epoch mean.
    members: one dict of row labels per member, e.g. ``{"member": 0, "seed": 1}``.
    evaluate: ``(state, epoch) → (state, values)`` with exactly ``eval_columns`` as keys, run every
        ``val_every`` epochs and after the last (the state may change, e.g. a plateau learning rate).
    monitor: epoch values (train and evaluation, (M,) each) → the checkpoint metric (lower is better) or None.
    epoch_columns: ``(state, epoch) → {column: scalar or (M,)}`` appended to every row (e.g. learning rates).
    host_state: JSON state outside the pytree (e.g. plateau counters), saved in the checkpoint meta.
    sample: ``(state, member, n, key) → Crystals`` for external evaluations, or None.
    loss_column: a train column that must stay finite (the run stops with an error otherwise).
    """

    name: str
    state: Any
    loaders: Sequence[BatchLoader]
    step: Callable
    members: Sequence[dict]
    evaluate: Optional[Callable] = None
    eval_columns: tuple[str, ...] = ()
    monitor: Optional[Callable[[dict], Optional[float]]] = None
    epoch_columns: Optional[Callable] = None
    host_state: dict = dataclasses.field(default_factory=dict)
    sample: Optional[Callable] = None
    loss_column: Optional[str] = None
    panels: tuple[Panel, ...] = ()
    member_batches: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return self.loaders[0].steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An evaluation from outside the model (e.g. benchmark metrics of generated samples), run by the loop
    every ``every`` epochs and after the last: ``evaluate(task, state, epoch) → {column: scalar or (M,)}``
    with exactly ``columns`` as keys (NaN in the other epochs' rows). With ``monitor`` (one of ``columns``)
    ``best/`` keeps the checkpoint with the lowest mean of that column over the members instead of
    ``task.monitor``, and every evaluated epoch is checkpointed."""

    every: int
    columns: tuple[str, ...]
    evaluate: Callable
    monitor: Optional[str] = None


def train_loop(task: TrainingTask, config: LoopConfig, run: RunDir, evaluation: Evaluation | None = None,
               mesh=None):
    """Train ``task`` for ``config.epochs`` epochs in ``run`` (resuming from its latest checkpoint); returns
    the final state. ``mesh``: the 'data' mesh to shard batches over (default: all devices). The run directory
    is locked (:func:`dismax.runs.exclusive_lock`) while training. See the module docstring."""
    check_loop_config(config)
    with exclusive_lock(run.path, "run directory"):
        return _train_loop(task, config, run, evaluation, mesh)


def _train_loop(task: TrainingTask, config: LoopConfig, run: RunDir, evaluation: Evaluation | None, mesh):
    steps = {loader.steps_per_epoch for loader in task.loaders}
    if len(steps) != 1:
        raise DismaxConfigError(f"the member data loaders disagree on the steps per epoch: {sorted(steps)}")
    spe, n_members = task.steps_per_epoch, len(task.members)
    run.create()
    checkpointer = Checkpointer(run.checkpoints, keep=config.keep_checkpoints)
    state, start_epoch = task.state, 0
    restored = restore_checkpoint(checkpointer, state)
    if restored is not None:
        state, meta = restored
        start_epoch = int(meta["epoch"])
        task.host_state.update(meta.get("host_state", {}))
        for loader, position in zip(task.loaders, meta["loaders"]):
            loader.restore(position)
        run.truncate_metrics(lambda row: row["epoch"] < start_epoch)
        log.info("%s: resumed after epoch %d", task.name, start_epoch - 1)
    for loader in task.loaders:
        loader.step = start_epoch * spe
    mesh = data_mesh() if mesh is None else mesh
    batch_axis = _batch_axis(mesh, config.batch_size, task.member_batches)
    started = time.monotonic()
    bar = progress(total=config.epochs * spe, initial=start_epoch * spe, desc=task.name, unit="step")
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.monotonic()
        records = []
        for index in range(spe):
            batch = _next_batch(task.loaders, task.member_batches, process_index(), process_count())
            if batch_axis is not None:
                state, batch = replicate(state, mesh), shard_batch(batch, mesh, batch_axis)
            state, metrics = task.step(state, batch, epoch, index)
            records.append(metrics)
            bar.update(1)
        values = _epoch_means(to_host(records), n_members)
        if task.loss_column and not np.all(np.isfinite(values[task.loss_column])):
            raise DismaxInputError(f"{task.name}: the training loss became {values[task.loss_column].tolist()} "
                                   f"in epoch {epoch}; lower the learning rate")
        last = epoch == config.epochs - 1
        values |= _nan_columns(task.eval_columns, n_members)
        if task.evaluate is not None and ((epoch + 1) % config.val_every == 0 or last):
            state, evaluated = task.evaluate(state, epoch)
            values |= _per_member(evaluated, n_members)
        external_due = evaluation is not None and ((epoch + 1) % evaluation.every == 0 or last)
        if evaluation is not None:
            values |= _nan_columns(evaluation.columns, n_members)
            if external_due:
                values |= _per_member(evaluation.evaluate(task, state, epoch), n_members)
        monitor_column = evaluation.monitor if evaluation is not None else None
        if task.epoch_columns is not None:
            values |= _per_member(task.epoch_columns(state, epoch), n_members)
        seconds = round(time.monotonic() - epoch_started, 3)
        for m, labels in enumerate(task.members):
            run.append_metrics({"epoch": epoch, **labels, "step": (epoch + 1) * spe,
                                **{k: float(v[m]) for k, v in values.items()}, "seconds": seconds})
        bar.set_postfix({k: f"{float(np.nanmean(values[k])):.4g}" for k in list(values)[:2]})
        out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
        if last or out_of_time or (epoch + 1) % config.checkpoint_every == 0 or (external_due and monitor_column):
            meta = {"epoch": epoch + 1, "loaders": [loader.state() for loader in task.loaders],
                    "host_state": task.host_state}
            if monitor_column:
                monitored = values[monitor_column]
                metric = float(np.nanmean(monitored)) if np.isfinite(monitored).any() else None
            else:
                metric = task.monitor(values) if task.monitor is not None else None
            if process_count() > 1:  # orbax saves global arrays only (an evaluation may leave local leaves)
                state = replicate(state, mesh)
            checkpointer.save(epoch + 1, state, meta=meta, metric=metric)
            if is_primary():
                plot_metrics(run, task.panels)
        if out_of_time and not last:
            log.info("%s: time budget of %.1f min reached after epoch %d; rerun the command to continue",
                     task.name, config.max_minutes, epoch)
            break
    bar.close()
    checkpointer.close()
    return state


def restore_checkpoint(checkpointer: Checkpointer, like_state, which: str = "latest"):
    """(state, meta) of the latest or best checkpoint, or None. The state is restored whole onto this process's
    first device whatever devices or processes saved it (the loop places it again)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        jax.eval_shape(lambda s: s, like_state))
    restored = checkpointer.restore_best(like) if which == "best" else checkpointer.restore(like)
    return None if restored is None else restored[1:]


def load_run_state(run: RunDir, like_state, which: str = "latest"):
    """(state, meta) of a trained run's ``which`` checkpoint ('latest' or 'best'); a clear error if missing."""
    checkpointer = Checkpointer(run.checkpoints)
    try:
        restored = restore_checkpoint(checkpointer, like_state, which)
    finally:
        checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"run directory '{run.path}' has no {which} checkpoint")
    return restored


def plot_metrics(run: RunDir, panels: Sequence[Panel]) -> None:
    """Draw ``panels`` from metrics.csv into RUN/plots/losses.png (atomically)."""
    rows = run.read_metrics()
    if not rows or not panels:
        return
    import matplotlib  # optional heavy dependency, only needed when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    members = sorted({r.get("member", 0) for r in rows})
    for ax, panel in zip(axes[0], panels):
        for member in members:
            mine = [r for r in rows if r.get("member", 0) == member]
            for column in panel.columns:
                points = [(r["epoch"], r[column]) for r in mine
                          if isinstance(r.get(column), (int, float)) and np.isfinite(r[column])]
                if points:
                    label = column + (f" (member {member})" if len(members) > 1 else "")
                    ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, lw=1, label=label)
        ax.set(title=panel.title, xlabel="epoch", yscale="log" if panel.log_scale else "linear")
        if ax.lines:
            ax.legend(fontsize=6)
    figure.tight_layout()
    atomic_write(run.plots / "losses.png", lambda handle: figure.savefig(handle, format="png", dpi=90), binary=True)
    plt.close(figure)


def _batch_axis(mesh, batch_size: int, per_member: bool) -> int | None:
    """The batch axis to shard over ``mesh``, or None with one device or a batch size that does not divide
    (an error with several processes, which cannot fall back to one device)."""
    n = mesh.devices.size
    if n == 1:
        return None
    if batch_size % n and process_count() > 1:
        raise DismaxConfigError(f"train.batch_size {batch_size} does not divide over the {n} devices of the "
                                f"{process_count()} processes; use a multiple of {n}")
    if batch_size % n:
        log.warning("train.batch_size %d does not divide over %d devices; training on one device", batch_size, n)
        return None
    log.info("batches sharded over %d devices", n)
    return 1 if per_member else 0


def _next_batch(loaders: Sequence[BatchLoader], stacked: bool, part: int = 0, n_parts: int = 1):
    """The next batch of every loader (this process's ``part`` of ``n_parts``), stacked per member or the
    shared one."""
    batches = []
    for loader in loaders:
        batches.append(loader.batch(loader.step, part, n_parts))
        loader.step += 1
    return jax.tree.map(lambda *leaves: np.stack(leaves), *batches) if stacked else batches[0]


def _per_member(values: dict, n_members: int) -> dict:
    """Every value as a float64 (M,) array (scalars are broadcast to every member)."""
    return {k: np.broadcast_to(np.asarray(v, np.float64), (n_members,)) for k, v in values.items()}


def _nan_columns(columns, n_members: int) -> dict:
    return {k: np.full(n_members, np.nan) for k in columns}


def _epoch_means(records: list[dict], n_members: int) -> dict:
    """Mean of every step metric over the epoch's steps, per member, ignoring NaN entries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric that is NaN in every step stays NaN
        return {k: np.nanmean(np.stack([_per_member({k: r[k]}, n_members)[k] for r in records]), axis=0)
                for k in records[0]}
