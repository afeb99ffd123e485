"""CryinGAN configuration (``model.name: cryingan``): frozen dataclasses read from YAML by dismax.config."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from dismax.training import LoopConfig


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and losses (spec cryingan.md §2–4, §7, §11)."""

    name: str = "cryingan"
    latent_dim: int = 64
    gen_channels: int = 128
    bn_eps: float = 0.8  # the reference's BatchNorm eps; 1e-5 is the usual value
    n_neighbors: int = 6
    w_dist: float = 0.1  # λ: weight of the bond-distance critic
    critics: Literal["separate", "combined"] = "separate"  # combined = CryinGAN-comb
    use_distance: bool = True  # False = CryinGAN λ = 0 (coordinate critic only)
    coord_pooling: Literal["mean", "max", "mix"] = "mean"
    dist_pooling: Literal["mean", "max", "mix"] = "mean"
    gp_weight: float = 10.0
    gp_on: Literal["sum", "mean"] = "sum"  # sum of the 10 critic outputs, as the reference


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training structures: a registered dataset, or an extxyz file when ``train_file`` is set."""

    dataset: str = "alloy_300K_narrow"
    size: str = "small"
    dataset_seed: int = 0
    train_file: Optional[str] = None
    augmentation: Literal["none", "online", "offline"] = "none"
    translation_grid: int = 4  # alloy: translations (i, j, k) / 4 map FCC sites onto FCC sites
    max_structures: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The shared loop keys (``val_every``: epochs between sample files and the close-pair count) and the
    CryinGAN optimiser: Adam per network, step decay of every learning rate by ``lr_gamma`` every
    ``lr_step_size`` epochs, a generator update every ``gen_int`` critic steps."""

    batch_size: int = 32
    epochs: int = 1500
    val_every: int = 10
    gen_int: int = 5
    gen_cadence: Literal["epoch", "global"] = "epoch"  # epoch: batch index restarts every epoch
    drop_last: bool = True  # False completes the last batch of an epoch with the epoch's first structures
    lr_gen: float = 5e-5
    lr_coord: float = 5e-5
    lr_dist: float = 5e-5
    beta1: float = 0.5
    beta2: float = 0.999
    lr_step_size: int = 100_000  # epochs between learning-rate decays
    lr_gamma: float = 0.95
    n_save: int = 100  # structures per member written at every evaluation
    close_pair_cutoff: float = 1.5  # Å


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Members are all (seed, w_dist) pairs; empty lists mean (seed,) and (model.w_dist,)."""

    seeds: tuple[int, ...] = ()
    w_dists: tuple[float, ...] = ()
    independent_data: bool = False  # each member its own data order (from its seed)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    seed: int = 0
