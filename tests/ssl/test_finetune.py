"""Fine-tuning heads read their labels from extxyz info; a short classification run learns and its parameters
restore; missing or invalid labels give one ``error:`` line and exit 2."""

import pytest
import yaml

from dismax import train as train_cli
from dismax.cli import main_wrapper
from dismax.io import write_extxyz
from dismax.runs import RunDir
from dismax.ssl.finetune import restore_params
from tests.ssl.helpers import TINY_BACKBONE, rock_salt_set


def write_labelled(folder, n: int = 12) -> str:
    """Rock-salt frames labelled ``full`` = 1 for the 8-atom cells, 0 for the 6-atom ones; a config."""
    for name, count, seed in (("train", n, 1), ("val", 4, 2)):
        structures = rock_salt_set(count, seed)
        write_extxyz(structures, folder / f"{name}.extxyz",
                     info=[{"full": int(n_atoms == 8)} for n_atoms in structures.atom_counts])
    config = {"model": {"name": "ssl_finetune", "backbone": TINY_BACKBONE.__dict__, "target": "full",
                        "task": "classification", "n_classes": 2},
              "data": {"train_file": str(folder / "train.extxyz"), "val_file": str(folder / "val.extxyz")},
              "train": {"epochs": 6, "batch_size": 4, "lr": 3e-3, "val_every": 6, "checkpoint_every": 6}}
    (folder / "finetune.yaml").write_text(yaml.safe_dump(config))
    return str(folder / "finetune.yaml")


@pytest.mark.slow
def test_classification_fine_tune_learns_and_restores(tmp_path):
    config = write_labelled(tmp_path)
    assert main_wrapper(train_cli.main, ["--config", config, "--run-dir", str(tmp_path / "run")]) == 0
    rows = RunDir(tmp_path / "run").read_metrics()
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_error"] >= 0.75   # accuracy on the 4 validation cells
    params = restore_params(RunDir(tmp_path / "run"))
    assert params["params"]["structure_head"]["kernel"].shape[-1] == 2


def test_missing_or_invalid_labels_exit_2(tmp_path, capsys):
    config = write_labelled(tmp_path)
    for override, fragment in (("model.target=energy", "no info key 'energy'"),
                               ("model.n_classes=1", "at least 2"),
                               ("model.task=ranking", "model.task")):
        code = main_wrapper(train_cli.main, ["--config", config, "--run-dir", str(tmp_path / "run"), override])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not (tmp_path / "run").exists()
