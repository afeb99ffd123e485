"""Tiny inputs for the masked-denoising tests: a small backbone and a varied-size rock-salt set."""

import numpy as np
import yaml

from dismax.io import write_extxyz
from dismax.ssl.backbone import BackboneConfig
from dismax.structures import Crystals, StructureSet

TINY_BACKBONE = BackboneConfig(cutoff=4.0, n_neighbors=6, n_images=1, n_layers=1, hidden_irreps="8x0e+4x1o",
                               l_max=1, n_radial=4, radial_hidden=8, avg_neighbors=6.0, head_hidden=8)
ROCK_SALT = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                      [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])


def rock_salt_set(n: int, seed: int = 0) -> StructureSet:
    """n Na/Cl rock-salt cells (a = 5.6 Å, small jitter): every other one of 8 atoms, the rest with the last
    two atoms removed (6 atoms), so the set mixes atom counts and compositions."""
    rng = np.random.default_rng(seed)
    structures = []
    for i in range(n):
        keep = 8 if i % 2 == 0 else 6
        frac = (ROCK_SALT[:keep] + 0.01 * rng.normal(size=(keep, 3))) % 1.0
        species = np.array([11] * 4 + [17] * 4)[:keep]
        structures.append(Crystals(frac[None], (5.6 * np.eye(3))[None], species[None]))
    return StructureSet.from_structures(structures)


def write_tiny_config(folder, n_train: int = 12, data: dict | None = None, **train) -> str:
    """train.extxyz/val.extxyz and an ssl_pretrain config with the tiny backbone (``data``: extra data keys);
    returns the config path."""
    write_extxyz(rock_salt_set(n_train, seed=1), folder / "train.extxyz")
    write_extxyz(rock_salt_set(4, seed=2), folder / "val.extxyz")
    config = {"model": {"name": "ssl_pretrain", "backbone": TINY_BACKBONE.__dict__, "position_weight": 10.0},
              "data": {"train_file": str(folder / "train.extxyz"), "val_file": str(folder / "val.extxyz"),
                       **(data or {})},
              "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, **train}, "seed": 0}
    path = folder / "ssl.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)
