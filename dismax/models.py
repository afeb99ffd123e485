"""The model registry: ``model.name`` → the package module that trains and samples that model.

Each registered module defines ``Config`` (a frozen dataclass), ``check(config)`` (every config and input
error, raised before a run directory is written), ``train(config, run)`` and
``sample(run, n, out, seed, **options)``. A module whose trainer vmaps an ensemble of seeds may define
``seed_ensemble(config, seeds)``: the config overrides that train those seeds as one run (member k = seed k),
or None. A shared layer: the config loader and the CLIs import it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dismax.errors import DismaxConfigError, DismaxError

MODELS: dict[str, str] = {
    "cryingan": "dismax.gan.trainer",
    "diffusion": "dismax.diffusion.trainer",
    "crystens": "dismax.diffusion.unet_trainer",
    "unimat": "dismax.diffusion.unet_trainer",
    "wyckoff_vae": "dismax.vae.trainer",
    "potential": "dismax.potentials.trainer",
    "ssl_pretrain": "dismax.ssl.pretrain",
    "ssl_gan": "dismax.ssl.gan",
    "ssl_finetune": "dismax.ssl.finetune",
}


def model_module(name: str | None) -> ModuleType:
    """The trainer module registered for ``model.name``."""
    if name not in MODELS:
        raise DismaxConfigError(f"config key 'model.name' is {name!r}; valid model names are: {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ModuleNotFoundError as exc:
        if exc.name and MODELS[name].startswith(exc.name):
            raise DismaxError(f"model '{name}' is not available in this version of dismax") from None
        raise
