"""UniMat against imagen-pytorch: does dismax's video U-Net learn coordinates as fast as the published network?

    pip install --no-deps imagen-pytorch==1.26.2      # the version of the published UniMat scripts
    python -m benchmarks.unimat_reference [--steps 3000] [--every 500] [--min-snr-gamma 5] [--dir DIR]

Trains, on the four Li4O4 cells of the UniMat overfit test (8 frames of 4 × 4 × 3; cells 1.25–1.47 Å apart),
with that test's settings (dim 16, dim_mults (1, 2), one ResNet block, attention at the second level, 2 heads of
16, the v objective, batch 4, Adam lr 3e-3 with betas (0.9, 0.99) and the cosine decay to 0, EMA 0.99):

* dismax's UniMat through the normal trainer (``dismax.train``);
* imagen-pytorch 1.26.2's ``Unet3D`` with the same settings (``cond_on_text=False``, other arguments at their
  defaults, as the published script), trained with imagen's continuous-time loss (``Imagen.p_losses``: t ~ U(0, 1),
  cosine log-SNR, the U-Net told λ, v = α ε − σ x_0, per-sample MSE times the min-SNR weight when
  ``--min-snr-gamma`` is given) by torch's Adam and cosine annealing, with an every-step EMA of the weights.

Every ``--every`` steps both EMA networks are probed in the same way, dismax's ``val_x0_rms``: the four cells
noised to t = 0.05 (one noise draw, the same at every probe), denoised in one step, clipped to [−1, 1], decoded and compared atom by atom with
their true positions (minimum-image RMS, Å). The two runs start from different initial weights and batch orders:
two samples of the same training process. Prints both curves, the no-learning baselines (the noisy input alone;
the cells' mean) and each implementation's median time per training step and their ratio (same machine, one
after the other). imagen-pytorch imports text encoders (transformers) at import time; only its
``imagen_video`` module is loaded here, hence the ``--no-deps`` install (it needs torch and einops).
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import math
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dismax.diffusion.unet_diffusion import DENOISING_PROBE_TIME, alpha_sigma, log_snr, noise_to
from dismax.diffusion.unimat import coordinate_ranges, from_unimat, to_unimat
from dismax.geometry import coordinate_rms
from dismax.io import write_extxyz
from dismax.train import main as train_main
from tests.diffusion.test_unet_overfit import SMALL, eight_atom_cells

SPECIES_ORDER = (3, 8)
COMPOSITION = (4, 4)
LR, BETAS, EMA_DECAY, BATCH = 3e-3, (0.9, 0.99), 0.99, 4


@functools.cache
def load_unet3d():
    """imagen-pytorch's ``imagen_video`` module, without the package's text-encoder imports."""
    spec = importlib.util.find_spec("imagen_pytorch")
    if spec is None:
        raise SystemExit("imagen-pytorch is not installed: pip install --no-deps imagen-pytorch==1.26.2")
    package = types.ModuleType("imagen_pytorch")
    package.__path__ = list(spec.submodule_search_locations)
    text_encoder = types.ModuleType("imagen_pytorch.t5")       # Unet3D only asks it for a default width
    text_encoder.t5_encode_text, text_encoder.DEFAULT_T5_NAME = None, "google/t5-v1_1-base"
    text_encoder.get_encoded_dim = lambda name: 768
    sys.modules["imagen_pytorch"], sys.modules["imagen_pytorch.t5"] = package, text_encoder
    video_spec = importlib.util.spec_from_file_location(
        "imagen_pytorch.imagen_video", Path(package.__path__[0]) / "imagen_video.py")
    module = importlib.util.module_from_spec(video_spec)
    video_spec.loader.exec_module(module)
    return module


def probe_rms(x0_hat: np.ndarray, cells, ranges) -> float:
    """Mean over the cells of the RMS distance (Å) of the decoded one-step estimates (B, F, 4, 4, 3)."""
    frac, _, _ = from_unimat(jnp.clip(jnp.asarray(x0_hat), -1, 1), SPECIES_ORDER, COMPOSITION, ranges)
    return float(np.mean(np.asarray(coordinate_rms(frac, cells.frac, cells.lattice))))


def baselines(video, cells, ranges) -> tuple[float, float]:
    """(the noisy input x_t/α decoded, the cells' mean): RMS (Å) that no learning reaches, 16 draws."""
    t = jnp.full((len(cells),), DENOISING_PROBE_TIME)
    alpha = alpha_sigma(log_snr(t))[0][:, None, None, None, None]
    noisy = np.mean([probe_rms(noise_to(video, t, jax.random.normal(jax.random.PRNGKey(k), video.shape)) / alpha,
                               cells, ranges) for k in range(16)])
    mean = np.repeat(cells.frac.mean(0, keepdims=True), len(cells), 0)
    return float(noisy), float(np.mean(np.asarray(coordinate_rms(mean, cells.frac, cells.lattice))))


def run_dismax(cells, steps: int, every: int, gamma: float | None, directory: Path) -> tuple[dict, float]:
    """({step: val_x0_rms}, median seconds per step) of dismax's UniMat trained through ``dismax.train``."""
    write_extxyz(cells, directory / "cells.extxyz")
    (directory / "unimat.yaml").write_text("model:\n  name: unimat\n")
    run = directory / "dismax_run"
    overrides = [*SMALL["unimat"], f"model.min_snr_gamma={'null' if gamma is None else gamma}",
                 f"data.train_file={directory / 'cells.extxyz'}", f"data.val_file={directory / 'cells.extxyz'}",
                 "model.objective=v", f"train.epochs={steps}", f"train.batch_size={BATCH}", f"train.lr={LR}",
                 "train.lr_schedule=cosine", f"train.ema_decay={EMA_DECAY}", f"train.val_every={every}",
                 f"train.checkpoint_every={steps}"]
    if train_main(["--config", str(directory / "unimat.yaml"), "--run-dir", str(run), *overrides]) != 0:
        raise SystemExit("the dismax run failed")
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    curve = {int(r["step"]): float(r["val_x0_rms"]) for r in rows if r["val_x0_rms"] not in ("", "nan")}
    seconds = [float(r["seconds"]) for r in rows[10:] if r["val_x0_rms"] in ("", "nan")]  # no compile, no probe
    return curve, float(np.median(seconds))


def run_imagen(cells, video, ranges, steps: int, every: int, gamma: float | None, seed: int) -> tuple[dict, float]:
    """({step: probe RMS}, median seconds per step) of imagen-pytorch's Unet3D trained with imagen's loss."""
    import torch

    torch.manual_seed(seed)
    unet = load_unet3d().Unet3D(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                                layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=16,
                                cond_on_text=False, channels=3)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    optimizer = torch.optim.Adam(unet.parameters(), lr=LR, betas=BETAS)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    data = torch.from_numpy(np.array(video)).permute(0, 4, 1, 2, 3).contiguous()    # (B, C, F, H, W)

    def imagen_log_snr(t, s=0.008):                                # imagen's alpha_cosine_log_snr
        return -torch.log(torch.clamp(torch.cos((t + s) / (1 + s) * math.pi / 2) ** -2 - 1, min=1e-5))

    def column(x):
        return x.view(-1, 1, 1, 1, 1)

    def probe() -> float:
        live = {k: v.clone() for k, v in unet.state_dict().items()}
        unet.load_state_dict(ema)
        unet.eval()
        t = torch.full((len(cells),), DENOISING_PROBE_TIME)
        lam = imagen_log_snr(t)
        alpha, sigma = (torch.sqrt(torch.sigmoid(s * lam)) for s in (1, -1))
        noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(seed + 1))    # fixed, as dismax's
        noisy = column(alpha) * data + column(sigma) * noise
        with torch.no_grad():
            x0_hat = column(alpha) * noisy - column(sigma) * unet(noisy, lam)
        unet.load_state_dict(live)
        unet.train()
        return probe_rms(x0_hat.permute(0, 2, 3, 4, 1).numpy(), cells, ranges)

    curve, seconds = {}, []
    for step in range(1, steps + 1):
        started = time.perf_counter()
        x0 = data[torch.randperm(len(data))[:BATCH]]
        t = torch.rand(len(x0))
        lam = imagen_log_snr(t)
        alpha, sigma = (torch.sqrt(torch.sigmoid(s * lam)) for s in (1, -1))
        noise = torch.randn_like(x0)
        output = unet(column(alpha) * x0 + column(sigma) * noise, lam)
        losses = ((output - (column(alpha) * noise - column(sigma) * x0)) ** 2).mean((1, 2, 3, 4))
        if gamma is not None:
            snr = lam.exp()
            losses = losses * snr.clamp(max=gamma) / (snr + 1)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for name, value in unet.state_dict().items():
                if value.dtype.is_floating_point:
                    ema[name].mul_(EMA_DECAY).add_(value, alpha=1 - EMA_DECAY)
        seconds.append(time.perf_counter() - started)
        if step % every == 0:
            curve[step] = probe()
            print(f"  imagen-pytorch step {step}: {curve[step]:.3f} Å", flush=True)
    return curve, float(np.median(seconds[10:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--min-snr-gamma", type=float, default=None,
                        help="imagen's min-SNR loss weighting for both (default: plain MSE, the test's setting)")
    parser.add_argument("--seed", type=int, default=0, help="imagen-pytorch's torch seed")
    parser.add_argument("--dir", type=Path, default=None, help="where the dismax run goes (default: a temp dir)")
    args = parser.parse_args()
    load_unet3d()                                                  # fail early if imagen-pytorch is missing
    cells = eight_atom_cells(4, displacement=0.15)
    ranges = coordinate_ranges(cells.frac)
    video = to_unimat(jnp.asarray(cells.frac), jnp.asarray(cells.species), SPECIES_ORDER, ranges)
    noisy, mean = baselines(video, cells, ranges)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="unimat_reference_"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"dismax UniMat, {args.steps} steps (run in {directory}) ...", flush=True)
    ours, our_seconds = run_dismax(cells, args.steps, args.every, args.min_snr_gamma, directory)
    print(f"imagen-pytorch Unet3D, {args.steps} steps ...", flush=True)
    theirs, their_seconds = run_imagen(cells, video, ranges, args.steps, args.every, args.min_snr_gamma, args.seed)
    weighting = "plain MSE" if args.min_snr_gamma is None else f"min-SNR weighting, gamma {args.min_snr_gamma:g}"
    print(f"\none-step x̂_0 at t = {DENOISING_PROBE_TIME}, RMS from the true positions (Å), v objective, {weighting}; "
          f"no learning: the noisy input {noisy:.3f}, the cells' mean {mean:.3f}")
    print("| step | dismax | imagen-pytorch |\n|---|---|---|")
    for step in sorted(set(ours) | set(theirs)):
        print(f"| {step} | {ours.get(step, math.nan):.3f} | {theirs.get(step, math.nan):.3f} |")
    print(f"\nmedian time per training step: dismax {our_seconds * 1e3:.1f} ms, imagen-pytorch "
          f"{their_seconds * 1e3:.1f} ms; ratio {their_seconds / our_seconds:.1f}x "
          f"({jax.devices()[0].platform}, torch threads {__import__('torch').get_num_threads()})")


if __name__ == "__main__":
    main()
