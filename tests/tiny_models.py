"""Tiny configs and data of the three trainers for the shared-loop tests (sharding, SIGKILL resume), and a
script: ``python -m tests.tiny_models sharded MODEL DIR`` trains one epoch on 1 and on 4 devices of the
'data' mesh and checks that the final states agree (run with 4 simulated CPU devices)."""

import sys
from pathlib import Path

import jax
import numpy as np

from dismax.config import from_dict, load_config
from dismax.devices import data_mesh
from dismax.models import model_module
from dismax.runs import RunDir
from dismax.training import train_loop

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(model: str, directory: Path, **train):
    """A config of ``model`` with tiny networks and data written into ``directory`` (batch 4, 2-3 steps per
    epoch)."""
    directory.mkdir(parents=True, exist_ok=True)
    if model == "cryingan":
        from tests.gan.helpers import write_fcc_dataset

        path = write_fcc_dataset(directory / "fcc.extxyz", n_structures=8)
        return from_dict(model_module(model).Config, {
            "model": {"gen_channels": 8, "latent_dim": 16},
            "data": {"train_file": str(path), "augmentation": "online", "translation_grid": 2},
            "train": {"batch_size": 4, "epochs": 1, "gen_int": 1, "checkpoint_every": 1, "val_every": 1,
                      "n_save": 2, **train}})
    if model == "diffusion":
        from tests.diffusion.test_trainer import _dataset

        train_file, val_file = _dataset(directory, n=10)
        return from_dict(model_module(model).Config, {
            "model": {"denoiser": {"name": "cspnet", "hidden": 16, "n_layers": 1, "n_freq": 4, "time_dim": 16},
                      "n_steps": 50},
            "data": {"train_file": str(train_file), "val_file": str(val_file)},
            "train": {"epochs": 2, "batch_size": 4, "val_every": 1, "checkpoint_every": 1, "ema_decay": 0.9,
                      "n_seeds": 2, **train},
            "sample": {"n_steps": 4, "batch_size": 2}, "seed": 1})
    if model == "wyckoff_vae":
        from tests.vae.vae_fixtures import write_training_cifs

        write_training_cifs(directory / "cifs")
        overrides = [f"data.source={directory / 'cifs'}", "model.latent_dim=8", "model.max_filter=2",
                     "model.site_dense=16", "train.batch_size=4", "train.checkpoint_every=1", "data.workers=1",
                     "train.epochs=1", *(f"train.{k}={v}" for k, v in train.items())]
        return load_config(CONFIGS / "wyckoff_vae_small.yaml", overrides)
    raise ValueError(model)


def make_task(model: str, config, run: RunDir):
    module = model_module(model)
    if model == "wyckoff_vae":
        return module.make_task(config, run, module.prepare_data(config, run))
    return module.make_task(config, run)


def sharded_equals_single_device(model: str, directory: Path) -> None:
    """The first step (same state, same batch) gives the same metrics to 1e-5 on 1 and on 4 devices (CryinGAN's
    cost_gen, computed after that step's critic update, and all later steps to 1e-2) and every state leaf to 2·lr per step. Adam turns the rounding noise of gradients that are
    exactly 0 (biases of layers followed by BatchNorm in the CryinGAN generator and the VAE) into ±lr steps
    whose sign depends on the reduction order, so a few leaves cannot agree to 1e-5 after a step; the count
    of leaves beyond 1e-5 is printed."""
    assert len(jax.devices()) == 4, jax.devices()
    config = tiny_config(model, directory / "data")
    finals, metrics = [], []
    lr = getattr(config.train, "lr", None) or getattr(config.train, "lr_gen", None)
    for n_devices in (1, 4):
        run = RunDir(directory / f"run{n_devices}").create()
        task = make_task(model, config, run)
        step, seen, recorded = task.step, [], []

        def recording_step(state, batch, epoch, index, step=step, seen=seen, recorded=recorded):
            seen.append(max(len(leaf.sharding.device_set) if hasattr(leaf, "sharding") else 1
                            for leaf in jax.tree.leaves(batch)))
            state, values = step(state, batch, epoch, index)
            recorded.append({k: np.asarray(v) for k, v in values.items()})
            return state, values

        task.step = recording_step
        state = train_loop(task, config.train, run, mesh=data_mesh(jax.devices()[:n_devices]))
        assert seen and set(seen) == {n_devices}, seen
        finals.append(jax.tree_util.tree_flatten_with_path(state)[0])
        metrics.append(recorded)
    for index, (single, sharded) in enumerate(zip(*metrics)):
        for key in single:
            exact = index == 0 and key != "cost_gen"
            np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5 if exact else 1e-2, atol=1e-6,
                                       err_msg=f"{key} at step {index}")
    n_steps, loose = len(metrics[0]), 0
    for (path, single), (_, sharded) in zip(*finals):
        difference = np.abs(np.asarray(sharded, np.float64) - np.asarray(single, np.float64)).max()
        assert difference <= 2 * lr * n_steps, jax.tree_util.keystr(path)
        loose += difference > 1e-5
    print("OK", model, len(finals[0]), "leaves;", loose, "beyond 1e-5")


if __name__ == "__main__":
    if sys.argv[1] == "sharded":
        sharded_equals_single_device(sys.argv[2], Path(sys.argv[3]))
