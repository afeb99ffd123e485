"""The data mesh: a jitted, batch-sharded step gives the same result on 1 and 4 (simulated) devices."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dismax.devices import data_mesh, shard_batch
from dismax.errors import DismaxError

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from dismax.devices import data_mesh, replicate, shard_batch

    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 5, 3)).astype(np.float32), "y": rng.normal(size=(8,)).astype(np.float32)}
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32)}

    @jax.jit
    def step(params, batch):
        def loss(p):
            h = jnp.tanh(batch["x"] @ p["w"]).sum(axis=(1, 2))
            return jnp.mean((h - batch["y"]) ** 2)
        value, grads = jax.value_and_grad(loss)(params)
        return value, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = data_mesh(devices)
        sharded = shard_batch(batch, mesh)
        assert len(sharded["x"].sharding.device_set) == len(devices)
        value, new = step(replicate(params, mesh), sharded)
        results.append((float(value), np.asarray(new["w"])))
    (v1, w1), (v4, w4) = results
    np.testing.assert_allclose(v1, v4, rtol=1e-6)
    np.testing.assert_allclose(w1, w4, rtol=1e-6, atol=1e-7)
    print("OK", v1, v4)
    """
)


def test_same_result_on_one_and_four_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("OK")


def test_indivisible_batch_is_a_clear_error():
    mesh = data_mesh()
    n = mesh.devices.size
    with pytest.raises(DismaxError, match="cannot be split"):
        shard_batch({"x": np.zeros((n * 2 + 1, 3))} if n > 1 else {"x": np.float32(1.0)}, mesh)
