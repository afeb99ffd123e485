"""Devices: a 1-axis 'data' mesh over all devices and batch sharding along B.

The same code runs on one CPU, several GPUs or a TPU slice; tests simulate devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax is imported).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dismax.errors import DismaxError

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A mesh with one axis named 'data' over ``devices`` (default: all of ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding that splits the batch axis ``axis`` (0, or 1 after a leading ensemble-member axis) over the
    'data' axis."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree, mesh: Mesh, axis: int = 0):
    """Place every array leaf of ``tree`` split along its batch axis ``axis`` over the mesh's devices.

    The batch axis must be divisible by the number of devices.
    """
    n = mesh.devices.size
    for leaf in jax.tree.leaves(tree):
        size = np.shape(leaf)[axis] if np.ndim(leaf) > axis else 0
        if size == 0 or size % n:
            raise DismaxError(f"batch axis of size {size} cannot be split over {n} devices; "
                              f"use a batch size divisible by {n}")
    return jax.device_put(tree, batch_sharding(mesh, axis))


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` fully on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
