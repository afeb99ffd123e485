"""A fitted potential's run directory: its training state, its ``potential.json`` and loading it for use.

A run of ``model.name: potential`` holds the usual checkpoints of :class:`TrainState` and
``potential.json`` (written before training): the network hyperparameters (with the neighbour-count
normalisation measured on the training data), the species (atomic numbers), the per-species reference
energies (eV, least squares on the training energies) and the energy scale (eV, the RMS training force).
:func:`load_potential` turns both into a :class:`~dismax.potentials.nequip.LearnedPotential`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np
import optax
from flax import serialization

from dismax.checkpoint import Checkpointer
from dismax.errors import DismaxInputError
from dismax.potentials.nequip import LearnedPotential, NetworkConfig, PotentialNetwork, initial_params
from dismax.runs import atomic_write_bytes, atomic_write_text

POTENTIAL_FILE = "potential.json"


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """params, their exponential moving average (used for validation and by the fitted potential), the
    optimiser state and the step counter (a pytree)."""

    params: dict
    ema_params: dict
    opt_state: optax.OptState
    step: jax.Array


@lru_cache(maxsize=None)
def make_optimizer(lr: float, total_steps: int, final_lr_fraction: float = 0.02,
                   clip_norm: float = 10.0) -> optax.GradientTransformation:
    """Adam with a cosine decay from ``lr`` to ``lr · final_lr_fraction`` over ``total_steps``, after
    clipping the global gradient norm. Cached so equal settings give the same (static) object."""
    schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=final_lr_fraction)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(schedule))


def initial_state(network: PotentialNetwork, optimizer, key, params=None) -> TrainState:
    """The first training state: fresh parameters of ``network`` (from ``key``), or ``params`` when given
    (fine-tuning, which then compiles no initialisation)."""
    params = initial_params(network, key) if params is None else params
    return TrainState(params, jax.tree.map(lambda x: x.copy(), params), optimizer.init(params),
                      jax.numpy.zeros((), jax.numpy.int32))


def write_potential_file(run_path: Path, config: NetworkConfig, species, shift, scale: float) -> None:
    """``potential.json`` of a run (atomic)."""
    record = {"network": dataclasses.asdict(config), "species": [int(z) for z in species],
              "shift": [float(x) for x in shift], "scale": float(scale)}
    atomic_write_text(Path(run_path) / POTENTIAL_FILE, json.dumps(record, indent=2) + "\n")


def read_potential_file(run_path: Path) -> dict:
    path = Path(run_path) / POTENTIAL_FILE
    if not path.is_file():
        raise DismaxInputError(f"'{run_path}' is not a fitted potential run (no {POTENTIAL_FILE}); train one with "
                               "python -m dismax.train --config configs/potential_*.yaml")
    record = json.loads(path.read_text())
    record["network"] = NetworkConfig(**record["network"])
    return record


def load_potential(run_path, which: str = "best") -> LearnedPotential:
    """The fitted potential of run directory ``run_path`` from its ``best`` (lowest validation loss) or
    ``latest`` checkpoint, with the EMA parameters."""
    run_path = Path(run_path)
    record = read_potential_file(run_path)
    network = PotentialNetwork(record["network"], len(record["species"]))
    like = jax.eval_shape(lambda: initial_state(network, make_optimizer(1e-3, 1), jax.random.PRNGKey(0)))
    checkpointer = Checkpointer(run_path / "checkpoints")
    try:
        restored = checkpointer.restore_best(like) if which == "best" else checkpointer.restore(like)
    finally:
        checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"run directory '{run_path}' has no {which} checkpoint")
    state = restored[1]
    return LearnedPotential(record["network"], tuple(record["species"]), state.ema_params, record["shift"],
                            record["scale"], name=f"run:{run_path}")


def export_potential(potential: LearnedPotential, out_file, description: str = "") -> Path:
    """Write ``potential`` (e.g. ``load_potential(run)``) as one self-contained file (msgpack: the network
    hyperparameters, species, reference energies, scale, ``description`` and the parameters), the form in
    which dismax ships potentials."""
    record = {"network": dataclasses.asdict(potential.config), "species": list(potential.species),
              "shift": [float(x) for x in np.asarray(potential.shift)], "scale": potential.scale,
              "description": description}
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), potential.params)
    atomic_write_bytes(Path(out_file), serialization.msgpack_serialize({"record": json.dumps(record),
                                                                        "params": params}))
    return Path(out_file)


def load_exported(path, name: str | None = None) -> LearnedPotential:
    """The potential of a file written by :func:`export_potential`."""
    path = Path(path)
    if not path.is_file():
        raise DismaxInputError(f"potential file '{path}' does not exist")
    content = serialization.msgpack_restore(path.read_bytes())
    record = json.loads(content["record"])
    params = jax.tree.map(jax.numpy.asarray, content["params"])  # device arrays: the programs close over them
    return LearnedPotential(NetworkConfig(**record["network"]), tuple(record["species"]), params,
                            record["shift"], record["scale"], name=name or path.stem)
