"""A small Wyckoff VAE trained on 100 demo crystals: it reconstructs its own training set (the overfit
diagnostic of issue #18) and every CIF it writes, with each latent sampler, is a valid crystal."""

import json

import numpy as np
import pytest
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from dismax.config import load_config
from dismax.train import prepare_run
from dismax.vae import demo, trainer

# the overfit settings: every structure is a training structure, reconstruction is scored on them
OVERFIT = ["data.test_fraction=0", "data.val_fraction=0", "data.workers=1", "train.epochs=600",
           "train.checkpoint_every=20"]
SYMPREC = 0.01  # SpacegroupAnalyzer tolerance of the declared-group check (pymatgen's default)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-overfit")
    demo.write_cifs(root / "cifs", 100, seed=1)
    config = load_config("configs/wyckoff_vae_small.yaml", [f"data.source={root / 'cifs'}", *OVERFIT])
    run = prepare_run(config, root / "run")
    trainer.train(config, run)
    return run


@pytest.mark.slow
def test_overfit_reconstructs_its_training_set(overfit_run):
    result = json.loads((overfit_run.path / "reconstruction.json").read_text())
    assert result["set"] == "train" and result["structures"] == 100
    assert result["spacegroup_accuracy"] >= 0.95
    for kind in ("ordered", "disordered"):
        assert result[f"{kind}_letter_accuracy"] >= 0.95
        assert result[f"{kind}_multiplicity_accuracy"] >= 0.95
    assert result["ordered_element_accuracy"] >= 0.95
    assert result["disordered_occupancy_mae"] <= 0.05
    assert max(result["lattice_mae_a_b_c"]) <= 0.1


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["gaussian", "gmm", "kde"])
def test_every_written_cif_is_a_valid_crystal_of_its_declared_group(overfit_run, sampler, tmp_path):
    metrics = trainer.sample(overfit_run, 200, tmp_path, seed=0, sampler=sampler)
    written = sorted(tmp_path.glob("*.cif"))
    assert metrics["samples"] == 200 and len(written) == metrics["written"] > 0
    rejected = (tmp_path / "rejected.csv").read_text().splitlines()
    assert len(rejected) - 1 == 200 - len(written)
    for path in written:
        structure = Structure.from_file(path)  # pymatgen's default tolerances
        declared = int(next(line.split()[1] for line in path.read_text().splitlines()
                            if line.startswith("_space_group_IT_number")))
        assert SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number() == declared, path.name
        assert all(site.species.num_atoms <= 1.0 + 1e-6 for site in structure), path.name
        distances = structure.distance_matrix[np.triu_indices(len(structure), 1)]
        assert len(structure) == 1 or distances.min() >= 0.5, path.name
