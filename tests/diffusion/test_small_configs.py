"""The CPU configs learn what they are for (slow; ~20 min each on one core): a-Si samples with a first
g(r) peak near 2.35 Å and coordination near 4, alloy samples with most atoms on FCC sites. Both use the
cached small datasets (built on first use) and the configs exactly as shipped, through the same train and
sample functions as the CLI."""

from pathlib import Path

import numpy as np
import pytest

from dismax.config import load_config, save_config
from dismax.diffusion.quality import fcc_site_fraction, rdf_and_coordination
from dismax.diffusion.trainer import Config, sample, train
from dismax.io import read_extxyz
from dismax.runs import RunDir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _train_and_sample(tmp_path, name, n):
    config = load_config(CONFIGS / name, config_class=Config)
    run = RunDir(tmp_path / "run").create()
    save_config(config, run.config_path)
    train(config, run)
    return read_extxyz(sample(run, n, tmp_path / "samples.extxyz", seed=0))


@pytest.mark.slow
def test_a_si_small_config_gives_tetrahedral_first_shell(tmp_path):
    generated = _train_and_sample(tmp_path, "diffusion_a_si_small.yaml", 8)
    r, g, coordination = rdf_and_coordination(np.asarray(generated.frac), np.asarray(generated.lattice))
    first_peak = r[np.argmax(g * (r < 3.2))]
    assert 2.25 <= first_peak <= 2.45
    assert 3.6 <= coordination <= 4.6



@pytest.mark.slow
def test_alloy_small_config_puts_most_atoms_on_fcc_sites(tmp_path):
    generated = _train_and_sample(tmp_path, "diffusion_alloy_small.yaml", 8)
    on_site = fcc_site_fraction(np.asarray(generated.frac), 4, 3.6, tolerance=0.5)
    assert on_site.mean() > 0.5
