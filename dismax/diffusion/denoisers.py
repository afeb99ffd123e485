"""Denoiser selection: ``DenoiserConfig.name`` picks CSPNet (dense periodic) or the e3nn network."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dismax.errors import DismaxConfigError


@dataclass(frozen=True)
class DenoiserConfig:
    """Network hyperparameters; fields not used by the chosen network are ignored.

    cspnet: hidden, n_layers, n_freq, time_dim, remat. equivariant: hidden_irreps, n_layers, l_max,
    n_neighbors, n_images (periodic images per side searched for neighbours), cutoff (Å), n_radial,
    radial_hidden, time_dim, global_frequencies (0 = off: per-axis frequencies of the cell-wide Fourier
    context added to the equivariant network).
    """

    name: str = "cspnet"
    hidden: int = 256
    n_layers: int = 4
    n_freq: int = 128
    time_dim: int = 256
    max_atomic_num: int = 100
    remat: bool = False
    hidden_irreps: str = "64x0e+32x1o+16x2e"
    l_max: int = 2
    n_neighbors: int = 32
    n_images: int = 1
    cutoff: float = 6.0
    n_radial: int = 8
    radial_hidden: int = 64
    global_frequencies: int = 0


DENOISERS = ("cspnet", "equivariant")


@lru_cache(maxsize=None)
def build_denoiser(cfg: DenoiserConfig, lattice_head: bool = False):
    """The flax module for ``cfg`` with signature (frac (N,3), lattice (3,3), species (N,), t) → (N, 3);
    with ``lattice_head`` (lattice diffusion, cspnet only) it returns (score (N, 3), lattice noise (3, 3)).

    Cached, so equal configs give the same module object and jitted steps are not recompiled."""
    if cfg.name == "cspnet":
        from dismax.diffusion.cspnet import CSPNet

        return CSPNet(hidden=cfg.hidden, n_layers=cfg.n_layers, n_freq=cfg.n_freq, time_dim=cfg.time_dim,
                      max_atomic_num=cfg.max_atomic_num, remat=cfg.remat, lattice_head=lattice_head)
    if lattice_head and cfg.name in DENOISERS:
        raise DismaxConfigError(f"config key 'model.lattice_diffusion' is true but the {cfg.name!r} denoiser "
                                f"predicts coordinates only; use model.denoiser.name: cspnet or set "
                                f"model.lattice_diffusion: false")
    if cfg.name == "equivariant":
        from dismax.diffusion.equivariant import EquivariantDenoiser

        return EquivariantDenoiser(hidden_irreps=cfg.hidden_irreps, n_layers=cfg.n_layers, l_max=cfg.l_max,
                                   n_neighbors=cfg.n_neighbors, n_images=cfg.n_images, cutoff=cfg.cutoff,
                                   n_radial=cfg.n_radial, radial_hidden=cfg.radial_hidden,
                                   time_dim=cfg.time_dim, max_atomic_num=cfg.max_atomic_num,
                                   global_frequencies=cfg.global_frequencies)
    raise DismaxConfigError(f"config key 'model.denoiser.name' is {cfg.name!r}; valid denoisers are: "
                            f"{', '.join(DENOISERS)}")
