"""Checkpoints of any train-state pytree with orbax: the last ``keep`` steps plus a 'best' slot.

Each checkpoint holds the state pytree (params, optimizer state, PRNG key, ...) and a JSON ``meta``
dict (e.g. the data-iterator position and the epoch). Saves are synchronous and orbax writes each step
into a temporary directory that is renamed when complete, so a process killed mid-save leaves the
previous checkpoint intact and resuming is always from a complete step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from dismax.errors import DismaxError

_BEST = "best"
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO


class Checkpointer:
    """Versioned checkpoints in ``directory`` (step-numbered subdirectories and ``best/``)."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._best_path = self.directory / _BEST
        self._best_manager = ocp.CheckpointManager(
            self._best_path, options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                                                  create=True))

    def save(self, step: int, state, meta: dict | None = None, metric: float | None = None) -> None:
        """Save ``state`` at ``step``; with ``metric`` (lower is better) also update the best slot."""
        meta = dict(meta or {})
        if metric is not None:
            meta["metric"] = float(metric)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_jsonable(meta)))
        if step in self._manager.all_steps():  # re-saving a step (e.g. after a resume) replaces it
            self._manager.delete(step)
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        if metric is not None and np.isfinite(metric):
            best = self.best_metric()
            if best is None or metric < best:
                for old in self._best_manager.all_steps():
                    self._best_manager.delete(old)
                self._best_manager.save(step, args=args, force=True)
                self._best_manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, like_state, step: int | None = None):
        """Restore ``(step, state, meta)`` at ``step`` (default: the latest); ``like_state`` gives the
        pytree structure, shapes and dtypes. Returns None when there is no checkpoint."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            return None
        return step, *self._restore(self._manager, step, like_state)

    def best_metric(self) -> float | None:
        step = self._best_manager.latest_step()
        if step is None:
            return None
        meta = self._best_manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return meta["meta"].get("metric")

    def restore_best(self, like_state):
        """Restore ``(step, state, meta)`` of the best-metric checkpoint, or None if there is none."""
        step = self._best_manager.latest_step()
        if step is None:
            return None
        return step, *self._restore(self._best_manager, step, like_state)

    def close(self) -> None:
        self._manager.close()
        self._best_manager.close()

    @staticmethod
    def _restore(manager, step, like_state):
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     meta=ocp.args.JsonRestore()))
        except ValueError as exc:  # orbax: a shape or tree-structure mismatch, with a many-line message
            first = str(exc).strip().splitlines()[0][:200]
            raise DismaxError(f"checkpoint {step} in '{manager.directory}' does not match the model built from the "
                              f"run's config (was config.yaml edited after training?): {first}") from None
        return restored["state"], dict(restored["meta"])


def _jsonable(meta: dict) -> dict:
    """Numpy scalars/arrays → plain Python so the meta dict is JSON."""
    return json.loads(json.dumps(meta, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
