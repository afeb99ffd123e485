import json

import numpy as np
import pytest

from dismax.config import load_config
from dismax.train import prepare_run
from dismax.vae import trainer

from tests.vae.vae_fixtures import write_training_cifs

TINY = ["model.latent_dim=8", "model.max_filter=2", "model.site_dense=16", "train.batch_size=8",
        "train.checkpoint_every=1", "data.workers=1"]


def test_split_follows_the_reference_order():
    split = trainer.split_indices(100, 0.2, 0.1, 42)
    assert (len(split["test"]), len(split["val"]), len(split["train"])) == (20, 8, 72)
    assert len(np.unique(np.concatenate(list(split.values())))) == 100


@pytest.mark.slow
def test_train_resume_and_sample_on_test_cifs(tmp_path):
    n_files = write_training_cifs(tmp_path / "cifs")
    overrides = [f"data.source={tmp_path / 'cifs'}", *TINY]
    config = load_config("configs/wyckoff_vae_small.yaml", [*overrides, "train.epochs=2"])
    run = prepare_run(config, tmp_path / "run")
    trainer.train(config, run)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1] and all(np.isfinite(r["val_loss"]) for r in rows)
    assert (run.plots / "losses.png").stat().st_size > 0
    assert len((run.path / "genes.jsonl").read_text().splitlines()) == n_files
    reconstruction = json.loads((run.path / "reconstruction.json").read_text())
    assert reconstruction["set"] == "test" and reconstruction["structures"] == 3
    assert 0.0 <= reconstruction["spacegroup_accuracy"] <= 1.0

    # a finished run extended by one epoch continues from the saved step instead of starting again
    longer = load_config("configs/wyckoff_vae_small.yaml", [*overrides, "train.epochs=3"])
    run = prepare_run(longer, tmp_path / "run")
    trainer.train(longer, run)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["step"] for r in rows] == [2, 4, 6]  # 12 training structures, batch 8 -> 2 steps per epoch

    from dismax.sample import main as sample_main

    assert sample_main(["--run-dir", str(run.path), "--n", "6", "--out", str(tmp_path / "samples"),
                        "--seed", "1", "--sampler", "gaussian"]) == 0
    metrics = json.loads((tmp_path / "samples" / "metrics.json").read_text())
    assert metrics["samples"] == 6
    assert metrics["generation_failures"] + metrics["sma_failures"] + metrics["wyckoff_genes"] == 6
    assert metrics["sampler"] == "gaussian"
    assert len(list((tmp_path / "samples").glob("*.cif"))) == metrics["written"]
    rejected = (tmp_path / "samples" / "rejected.csv").read_text().splitlines()
    assert len(rejected) - 1 == 6 - metrics["written"]
    with pytest.raises(Exception, match="unknown sampling options"):
        trainer.sample(run, 2, tmp_path / "other", bad_option=1)
