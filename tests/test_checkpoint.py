"""Checkpoint save/restore, keep-last-k, best slot, and bit-identical resume after SIGKILL."""

import os
import random
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dismax.checkpoint import Checkpointer

# A tiny optax regression trained for 20 steps; each step's batch is a pure function of (seed, step),
# the state (params, optimizer state, PRNG key) is checkpointed after every step together with the
# data position, and the final parameters are written to OUT as raw bytes.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp, numpy as np, optax
    from dismax.checkpoint import Checkpointer

    ckpt_dir, out, total = sys.argv[1], sys.argv[2], 20
    tx = optax.adam(5e-2)
    params = {"w": jnp.zeros((4, 1)), "b": jnp.zeros((1,))}
    state = {"params": params, "opt": tx.init(params), "key": jax.random.PRNGKey(0)}

    @jax.jit
    def step(state, position):
        data_key = jax.random.fold_in(jax.random.PRNGKey(123), position)
        x = jax.random.normal(data_key, (16, 4))
        y = x @ jnp.arange(1.0, 5.0)[:, None] + 0.5
        key, noise_key = jax.random.split(state["key"])
        noise = 0.01 * jax.random.normal(noise_key, y.shape)
        loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y - noise) ** 2)
        grads = jax.grad(loss)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt, "key": key}

    checkpointer = Checkpointer(ckpt_dir, keep=2)
    position = 0
    restored = checkpointer.restore(state)
    if restored is not None:
        _, state, meta = restored
        position = meta["data_position"]
    while position < total:
        state = step(state, position)
        position += 1
        checkpointer.save(position, state, {"data_position": position})
        print(f"step {position}", flush=True)
        time.sleep(0.05)
    flat = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(state["params"])])
    open(out, "wb").write(flat.tobytes())
    """
)


def _run(script, ckpt_dir, out, kill_at=None):
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt_dir), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if kill_at is None:
        proc.communicate(timeout=300)
        assert proc.returncode == 0
        return
    for line in proc.stdout:
        if line.strip() == f"step {kill_at}":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    _run(script, tmp_path / "straight", tmp_path / "straight.bin")

    kill_at = random.Random().randint(2, 17)
    _run(script, tmp_path / "killed", tmp_path / "resumed.bin", kill_at=kill_at)
    assert not (tmp_path / "resumed.bin").exists()
    _run(script, tmp_path / "killed", tmp_path / "resumed.bin")
    straight = (tmp_path / "straight.bin").read_bytes()
    assert (tmp_path / "resumed.bin").read_bytes() == straight, f"killed at step {kill_at}"


def test_keep_last_and_best_slot(tmp_path):
    state = {"w": jnp.arange(3.0), "key": jax.random.PRNGKey(1)}
    checkpointer = Checkpointer(tmp_path / "ck", keep=2)
    metrics = [5.0, 3.0, 4.0, 6.0]
    for step, metric in enumerate(metrics, start=1):
        checkpointer.save(step, {"w": state["w"] * step, "key": state["key"]}, {"epoch": step}, metric=metric)
    assert checkpointer.all_steps() == [3, 4]
    step, restored, meta = checkpointer.restore(state)
    assert step == 4 and meta["epoch"] == 4
    np.testing.assert_array_equal(restored["w"], np.arange(3.0) * 4)
    np.testing.assert_array_equal(restored["key"], state["key"])
    best_step, best, best_meta = checkpointer.restore_best(state)
    assert best_step == 2 and best_meta["metric"] == 3.0
    np.testing.assert_array_equal(best["w"], np.arange(3.0) * 2)
    # a new Checkpointer over the same directory sees the same checkpoints (automatic resume)
    assert Checkpointer(tmp_path / "ck", keep=2).latest_step() == 4


def test_restore_without_checkpoint_returns_none(tmp_path):
    checkpointer = Checkpointer(tmp_path / "empty")
    assert checkpointer.restore({"w": jnp.zeros(2)}) is None
    assert checkpointer.restore_best({"w": jnp.zeros(2)}) is None
