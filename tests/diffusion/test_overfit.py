"""Overfit one small cell and check that sampled atoms return to its lattice sites (slow)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dismax.diffusion.denoisers import DenoiserConfig, build_denoiser
from dismax.diffusion.noise import SigmaSchedule
from dismax.diffusion.sampling import predictor_corrector
from dismax.diffusion.trainer import init_state, make_optimizer, train_step


def _site_distances(frac, spacing):
    """Distances (Å) of atoms to the nearest simple-cubic site after the best global translation."""
    y = frac * 2.0
    best = []
    for points in y:
        candidates = points - np.round(points)
        shifted = points[None] - candidates[:, None]
        d = np.linalg.norm(shifted - np.round(shifted), axis=-1) * spacing
        best.append(d[np.argmin(d.mean(axis=1))])
    return np.array(best)


@pytest.mark.slow
def test_overfit_simple_cubic_cell_and_sample_back_to_sites():
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], float) / 2 + 0.25
    batch = 16
    frac = jnp.asarray(np.repeat(grid[None], batch, 0), jnp.float32)
    lattice = jnp.asarray(np.repeat(np.eye(3)[None] * 5.0, batch, 0), jnp.float32)
    species = jnp.full((batch, 8), 14, jnp.int32)
    network = build_denoiser(DenoiserConfig(name="cspnet", hidden=32, n_layers=2, n_freq=8, time_dim=32))
    optimizer = make_optimizer(1e-3)
    schedule = SigmaSchedule(0.005, 0.1, 1000)
    state = init_state(network, optimizer, (frac[0], lattice[0], species[0]), jax.random.PRNGKey(0))
    for _ in range(600):
        state, loss = train_step(state, (frac, lattice, species), network=network, optimizer=optimizer,
                                 schedule=schedule, ema_decay=0.99)
    assert float(loss) < 0.6
    samples = predictor_corrector(state.ema_params, lattice[0], species[0], jax.random.PRNGKey(1),
                                  network=network, schedule=schedule, n_steps=200, step_lr=1e-5, n_structures=16)
    distances = _site_distances(np.asarray(samples), spacing=2.5)
    random = _site_distances(np.random.default_rng(0).random((16, 8, 3)), spacing=2.5)
    print(f"median site distance {np.median(distances):.3f} Å (uniform random {np.median(random):.3f} Å); "
          f"fraction within 0.3 Å {np.mean(distances < 0.3):.3f}")
    assert np.mean(distances < 0.3) > 0.8
