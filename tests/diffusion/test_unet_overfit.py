"""Slow: a small CrysTens cascade and a small UniMat U-Net, trained through ``python -m dismax.train`` on 4
structures, sample structures that reconstruct to within 0.3 Å RMS of one of them (fixed atom order)."""

import json

import numpy as np
import pytest

from dismax.geometry import coordinate_rms
from dismax.io import read_extxyz, write_extxyz
from dismax.sample import main as sample_main
from dismax.structures import Crystals
from dismax.train import main as train_main

SMALL = {
    "crystens": ["model.dim=16", "model.dim_mults=[1,2]", "model.num_resnet_blocks=1",
                 "model.layer_attns=[false,true]", "model.sr_layer_attns=[false,false]", "model.low_size=8",
                 "model.heads=2", "model.head_dim=16", "model.min_snr_gamma=null"],
    "unimat": ["model.dim=16", "model.dim_mults=[1,2]", "model.num_resnet_blocks=1",
               "model.layer_attns=[false,true]", "model.sr_layer_attns=[false,false]", "model.heads=2",
               "model.head_dim=16", "model.min_snr_gamma=null"],
}


def eight_atom_cells(n: int, seed: int = 0, displacement: float = 0.06) -> Crystals:
    """Li4O4 on a 2×2×2 grid of a 6 Å cube, each fractional coordinate displaced uniformly by up to
    ``displacement`` (0.06: up to 0.36 Å per axis; fixed atom order)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[[0.0, 0.5]] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.25
    frac = grid + rng.uniform(-displacement, displacement, (n, 8, 3))
    return Crystals(frac.astype(np.float32), np.broadcast_to(np.eye(3) * 6.0, (n, 3, 3)).astype(np.float32),
                    np.broadcast_to([3, 3, 3, 3, 8, 8, 8, 8], (n, 8)).astype(np.int32))


# Measured with the settings below (U-Nets told the noise level as the log-SNR, as imagen-pytorch does).
# CrysTens (cascade) on the cells displaced by up to 0.06 (0.50–0.59 Å apart; their mean 0.32–0.35 Å from
# each): 10,000 steps pass. Conditioned on t (before): 803 s at load ~5, 544 s at load 2–6, samples 0.12–0.25 Å
# from the nearest cell, two of the four nearer the mean than any cell, so "nearer a cell than the mean" is
# not asserted for CrysTens on these cells. On the log-SNR: 961 s at load 7–9, samples 0.11–0.15 Å from the
# nearest cell (three different cells) and 0.27–0.31 Å from the mean.
# UniMat needs cells displaced by up to 0.15 (1.25–1.47 Å apart, their mean 0.80–0.86 Å from each) to tell a
# memorised sample from the mean. The noise objective (the paper's) samples washed-out videos in short runs
# while the sampler itself is exact (the oracle-mixture test), so v is used; dim 32 and the Unet3D frame
# mixing did not help. What limits it is the budget: the Bayes-optimal denoiser of the four cells is exact at
# t ≤ 0.1, but the net must resolve the cell-specific coordinates (24 of the 384 pixels) with a gain
# α/σ ≈ 11 at t = 0.05; undertrained, it learns the mean video and samples a blur nearer the mean than any
# cell. x̂_0 of each cell noised to t (4 noise draws, decoded, RMS Å) at t = 0.05 / 0.2, and the samples'
# RMS to their nearest cell (dim 16, batch 4, EMA 0.99, log-SNR conditioning):
#   lr 1e-3 constant, 3,000 steps                     0.42–0.58 / 0.77–0.97 Å, samples 0.69–0.88 Å
#   lr 3e-3 cosine decay to 0, 3,000 steps            0.37–0.56 / 0.75–0.93 Å, samples 0.65–0.86 Å
#   lr 3e-3 cosine, 10,000 steps (596 s, load 4–9)    0.16–0.42 Å at t = 0.05,  samples 0.39–0.63 Å
#   lr 3e-3 cosine, 15,000 steps (1,133 s, load ~5)   0.23–0.37 / 0.59–0.79 Å, samples 0.22–0.41 Å (fails)
#   lr 3e-3 cosine, 20,000 steps (1,366 s, load ~5)   0.14–0.36 / 0.60–0.82 Å, samples 0.11–0.23 Å
#                                                     (three different cells; 0.64–0.84 Å from the mean)
# (lr 1e-3 constant at 4,000 steps: samples 0.75–0.97 Å from the nearest cell, 0.44–0.82 Å from the mean;
# batch 16 of repeated cells costs 1.8× the step time for about 2× the progress per step; the x_0 objective
# learns only the mean.) So 20,000 steps at lr 3e-3 with the cosine decay; the test: 1,624 s at load 5–6
# (12 steps/s, 1,187 s user time); on an otherwise idle machine 858 s (load 1.0–1.8, 1,218 s user time).
# All with the plain MSE (model.min_snr_gamma=null); imagen's default min-SNR weighting learns the t = 0.05
# coordinates of these cells slower with this U-Net (benchmarks/unimat_reference.py, README).


@pytest.mark.slow
@pytest.mark.parametrize("kind, steps, displacement, nearer_than_mean, optimiser",
                         [("crystens", 10_000, 0.06, False, ["train.lr=1e-3"]),
                          ("unimat", 20_000, 0.15, True, ["train.lr=3e-3", "train.lr_schedule=cosine"])])
def test_small_unet_overfits_four_structures(kind, steps, displacement, nearer_than_mean, optimiser, tmp_path):
    cells = eight_atom_cells(4, displacement=displacement)
    write_extxyz(cells, tmp_path / "train.extxyz")
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  name: {kind}\n")
    run = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run), *SMALL[kind],
                       f"data.train_file={tmp_path / 'train.extxyz'}", f"data.val_file={tmp_path / 'train.extxyz'}",
                       "model.objective=v", f"train.epochs={steps}", "train.batch_size=4", *optimiser,
                       "train.ema_decay=0.99", "train.val_every=1000", "train.checkpoint_every=1000",
                       "sample.n_steps=100"]) == 0
    out = tmp_path / "samples.extxyz"
    assert sample_main(["--run-dir", str(run), "--n", "4", "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "samples.extxyz.summary.json").read_text())
    assert summary["n_failed"] <= 1
    samples = read_extxyz(out)
    assert np.array_equal(samples.species, cells.species[: len(samples)])
    rms = np.stack([coordinate_rms(samples.frac, np.repeat(cells.frac[i:i + 1], len(samples), 0), samples.lattice)
                    for i in range(4)])
    mean_cell = np.repeat(cells.frac.mean(0, keepdims=True), len(samples), 0)
    to_mean = coordinate_rms(samples.frac, mean_cell, samples.lattice)
    assert np.all(rms.min(0) < 0.3), rms.min(0)
    if nearer_than_mean:                                          # one of the cells, not their average
        assert np.all(rms.min(0) < to_mean), (rms.min(0), to_mean)
