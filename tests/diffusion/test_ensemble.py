"""Vmapped seed ensembles and batch sharding of the diffusion train step."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
from dismax.diffusion.noise import BetaSchedule, SigmaSchedule
from dismax.data.loader import BatchLoader
from dismax.diffusion.trainer import (LatticeDiffusion, ensemble_train_step, init_ensemble, init_state,
                                       make_optimizer, member_state, train_step)
from dismax.structures import Crystals

def epoch_batches(data, seeds, epoch, batch_size):
    """The loop's member-stacked batches (M, B, ...) of ``epoch``: one loader per member seed."""
    loaders = [BatchLoader(data, batch_size, seed=s) for s in seeds]
    for index in range(loaders[0].steps_per_epoch):
        parts = [loader.batch(epoch * loader.steps_per_epoch + index) for loader in loaders]
        yield tuple(np.stack([getattr(p, name) for p in parts]) for name in ("frac", "lattice", "species"))


# The same sizes, settings and call forms as the end-to-end test in test_trainer_lattice.py, so both share
# the compiled ensemble step.
TINY = DenoiserConfig(name="cspnet", hidden=8, n_layers=1, n_freq=2, time_dim=8)
SCHEDULE = SigmaSchedule(0.005, 0.1, 50)


def _crystals(n=6, n_atoms=8, seed=0):
    rng = np.random.default_rng(seed)
    return Crystals(rng.random((n, n_atoms, 3)).astype(np.float32),
                    np.repeat(np.eye(3, dtype=np.float32)[None] * 5.0, n, 0),
                    np.tile(np.array([13] * 4 + [28] * 4, np.int32), (n, 1)))


@pytest.mark.slow
def test_member_k_of_an_ensemble_equals_training_seed_k_alone():
    data = _crystals()
    seeds = [42, 43]
    network = build_denoiser(TINY, lattice_head=True)
    optimizer = make_optimizer(1e-3, 0.9, 0.999, 1e-8, 0.5)
    example = (jnp.asarray(data.frac[0]), jnp.asarray(data.lattice[0]), jnp.asarray(data.species[0]))
    options = dict(network=network, optimizer=optimizer, schedule=SCHEDULE, ema_decay=0.9,
                   lattice_diffusion=LatticeDiffusion(BetaSchedule(50), 1.0))
    ensemble = init_ensemble(network, optimizer, example, seeds)
    alone = init_state(network, optimizer, example, jax.random.PRNGKey(seeds[1]))
    for a, b in zip(jax.tree.leaves(member_state(ensemble, 1)), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(a, b)
    for epoch in (1, 2):  # epoch 1 teacher-forced, epoch 2 with the lattice loss
        ensemble_batches = [tuple(map(np.asarray, b)) for b in epoch_batches(data, seeds, epoch, 2)]
        alone_batches = [tuple(map(np.asarray, b)) for b in epoch_batches(data, [seeds[1]], epoch, 2)]
        assert len(ensemble_batches) == 3
        for batch, single in zip(ensemble_batches, alone_batches):
            for x, y in zip(batch, single):
                np.testing.assert_array_equal(x[1], y[0])  # member 1 sees seed 43's data order
            assert not np.array_equal(batch[0][0], batch[0][1])  # the members' orders differ
            ensemble, losses = ensemble_train_step(ensemble, batch, epoch == 1, **options)
            alone, loss = train_step(alone, tuple(x[0] for x in single), epoch == 1, **options)
            np.testing.assert_allclose(np.asarray(losses["loss"])[1], float(loss), rtol=1e-5)
        assert (np.asarray(losses["lattice_loss"]) > 0).all() == (epoch == 2)
    assert np.asarray(ensemble.step)[1] == int(alone.step) == 6
    member = member_state(ensemble, 1)
    # Adam normalises each update, so a rounding difference can move a parameter by up to ~one step (lr)
    for a, b in zip(jax.tree.leaves((member.params, member.ema_params)), jax.tree.leaves((alone.params,
                                                                                          alone.ema_params))):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-5)
    other = member_state(ensemble, 0)
    assert max(np.abs(a - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(other.params),
                                                               jax.tree.leaves(alone.params))) > 1e-2


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from dismax.devices import data_mesh, replicate, shard_batch
    from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
    from dismax.diffusion.noise import SigmaSchedule
    from dismax.diffusion.trainer import TrainState, ensemble_train_step, make_optimizer

    assert len(jax.devices()) == 4, jax.devices()
    network = build_denoiser(DenoiserConfig(name="cspnet", hidden=8, n_layers=1, n_freq=2, time_dim=8))
    optimizer = make_optimizer(1e-3)
    rng = np.random.default_rng(0)
    batch = (rng.random((2, 4, 5, 3)).astype(np.float32),
             (np.eye(3) * 4.0 + 0.1 * rng.normal(size=(2, 4, 3, 3))).astype(np.float32),
             np.full((2, 4, 5), 14, np.int32))
    # random host-side parameters for two members (no compiled initialiser needed)
    shapes = jax.eval_shape(network.init, jax.random.PRNGKey(0), *(jnp.asarray(x[0, 0]) for x in batch), 1)
    params = jax.tree.map(lambda s: (0.3 * rng.normal(size=(2, *s.shape))).astype(s.dtype), shapes)
    options = dict(network=network, optimizer=optimizer, schedule=SigmaSchedule(0.005, 0.1, 100), ema_decay=0.9)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = data_mesh(devices)
        state = TrainState(params, params, jax.vmap(optimizer.init)(params), np.zeros(2, np.int32),
                           np.stack([np.asarray(jax.random.PRNGKey(s)) for s in (1, 2)]))
        for _ in range(2):
            state, placed = replicate(state, mesh), shard_batch(batch, mesh, axis=1)
            if len(devices) > 1:
                assert len(placed[0].sharding.device_set) == 4
                assert placed[0].addressable_shards[0].data.shape == (2, 1, 5, 3)
                assert len(state.params["params"]["coord_head"]["kernel"].sharding.device_set) == 4
            state, losses = ensemble_train_step(state, placed, False, **options)
        assert len(losses["loss"].sharding.device_set) == len(devices)
        results.append((np.asarray(losses["loss"]), [np.asarray(x) for x in jax.tree.leaves(state.params)]))
    (loss1, params1), (loss4, params4) = results
    np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
    for a, b in zip(params1, params4):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    print("OK", loss1, loss4)
    """
)


def test_sharded_train_step_equals_single_device_step():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
