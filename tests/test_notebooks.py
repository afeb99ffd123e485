"""The notebooks in notebooks/ run top to bottom with small parameters, and are committed without outputs.

Each notebook is executed with nbclient in a kernel that is this test process's own Python (a kernel spec
written by ipykernel for ``sys.executable``, so no separately installed kernel is needed). Parameters are
injected papermill-style: a cell after the one tagged ``parameters`` overrides its values. A cell error fails
the test; each test then checks real outputs (reports, metric rows, run directories).
"""

import copy
import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from ase.build import bulk
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from dismax.io import write_extxyz
from dismax.structures import Crystals
from tests.bench.test_alloy import random_alloy

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_quickstart", "02_sweeps", "03_score_your_structures", "04_colab_tpu")
CELL_TIMEOUT = 1800  # s; a loaded 2-core machine is slow, a hung cell still ends the test


def load(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def with_parameters(nb, parameters: dict):
    """A copy of ``nb`` with a cell after the ``parameters`` cell that assigns ``parameters``."""
    nb = copy.deepcopy(nb)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    return nb


def execute(name: str, parameters: dict, cwd: Path, tmp_path: Path, env: dict | None = None,
            stop_at: str | None = None):
    """Run notebook ``name`` with ``parameters`` in a kernel of this Python; return the executed notebook.

    ``stop_at``: run only the cells before the first markdown cell that starts with this heading.
    """
    kernels = tmp_path / "kernels"
    if not (kernels / "python3").is_dir():
        write_kernel_spec(path=kernels / "python3")  # argv: this sys.executable -m ipykernel_launcher
    spec_manager = KernelSpecManager(kernel_dirs=[str(kernels)])
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=spec_manager)
    assert manager.kernel_spec.argv[0] == sys.executable
    nb = with_parameters(load(name), parameters)
    if stop_at is not None:
        end = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
                   and cell.source.startswith(stop_at))
        nb.cells = nb.cells[:end]
    client = NotebookClient(nb, km=manager, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(cwd)}})
    kernel_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(NOTEBOOKS.parent),
                                                                          os.environ.get("PYTHONPATH")]))}
    kernel_env.update(env or {})
    client.execute(env=kernel_env)
    return nb


def text_outputs(nb) -> str:
    """Every stream and text/plain output of the executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def alloy_file(path: Path, n: int = 8) -> Path:
    """``n`` random Fe154 Ni51 Cr51 structures on the 256 FCC sites of a 14.4 Å cube (extxyz)."""
    rng = np.random.default_rng(0)
    lattice = np.eye(3) * 14.4
    structures = [random_alloy(rng) for _ in range(n)]
    crystals = Crystals(np.stack([(cart / 14.4) % 1.0 for cart, _ in structures]),
                        np.repeat(lattice[None], n, 0), np.stack([numbers for _, numbers in structures]))
    return write_extxyz(crystals, path)


TINY_GAN = ["model.gen_channels=16", "train.val_every=1", "train.n_save=4", "train.gen_int=1"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = load(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells and "parameters" in code_cells[0].metadata.get("tags", [])
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: a code cell holds outputs"
        assert set(cell.metadata) <= {"tags"}, f"{name}: a code cell holds execution metadata"
    assert all("/work/" not in cell.source and "/tmp/" not in cell.source for cell in nb.cells)


def test_parameter_injection_overrides_the_defaults():
    nb = with_parameters(load("01_quickstart"), {"EPOCHS": 1, "OVERRIDES": ["a=1"]})
    tags = [cell.metadata.get("tags", []) for cell in nb.cells]
    index = tags.index(["injected-parameters"])
    assert tags[index - 1] == ["parameters"] and nb.cells[index].source == "EPOCHS = 1\nOVERRIDES = ['a=1']"


@pytest.mark.slow  # about 1 min of CPU: the longest test of the default run
def test_quickstart_runs_top_to_bottom_on_a_tiny_training_set(tmp_path):
    train = alloy_file(tmp_path / "train.extxyz")
    work = tmp_path / "work"
    nb = execute("01_quickstart", {"WORK_DIR": str(work), "TRAIN_FILE": str(train), "EPOCHS": 1,
                                   "MODEL_CONFIG": "cryingan_alloy_small.yaml",
                                   "MAX_STRUCTURES": None, "BATCH_SIZE": 4, "OVERRIDES": TINY_GAN,
                                   "N_SAMPLES": 4, "N_BOOTSTRAP": 20}, tmp_path, tmp_path)
    report = (work / "score" / "report.md").read_text()
    assert "| model | seeds | d_cluster |" in report and "\n| generated | 1 |" in report
    summary = json.loads((work / "score" / "metrics.json").read_text())
    assert summary["models"]["generated"]["metrics"]["pct_failed"]["mean"] >= 0
    assert (work / "run" / "metrics.csv").read_text().count("\n") == 2  # header + one epoch
    assert "1 epochs; last: epoch=0" in text_outputs(nb)
    assert any("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))


@pytest.mark.slow
def test_quickstart_runs_with_its_own_defaults(tmp_path):
    work = tmp_path / "work"
    execute("01_quickstart", {"WORK_DIR": str(work)}, tmp_path, tmp_path)
    for report in (work / "score" / "report.md", work / "score_validation_set" / "report.md"):
        assert "\n| generated | 1 |" in report.read_text()
    validation = json.loads((work / "score_validation_set" / "metrics.json").read_text())
    assert validation["models"]["generated"]["metrics"]["pct_failed"]["mean"] == 0.0


def diamond_file(path: Path, n: int, rattle: float, seed: int = 0) -> Path:
    """``n`` 64-atom diamond-Si cells with Gaussian displacements of ``rattle`` Å (extxyz)."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat((2, 2, 2))
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        cells.append(atoms)
    return write_extxyz(Crystals.from_ase(cells), path)


@pytest.mark.slow
def test_score_your_structures_reads_ase_pymatgen_and_files_relaxes_and_scores(tmp_path):
    reference = diamond_file(tmp_path / "reference.extxyz", n=3, rattle=0.03)
    work = tmp_path / "work"
    nb = execute("03_score_your_structures", {"WORK_DIR": str(work), "REFERENCE_FILE": str(reference), "N_DEMO": 2,
                                              "MAX_STEPS": 200, "N_BOOTSTRAP": 20}, tmp_path, tmp_path)
    assert len(list((work / "demo_cifs").glob("*.cif"))) == 1 and (work / "demo_ase.extxyz").is_file()
    results = (work / "relax" / "results.csv").read_text().splitlines()
    assert results[0].startswith("id,status,steps") and len(results) == 3
    report = (work / "score" / "report.md").read_text()
    assert "\n| generated | 1 |" in report and "d_motif" in report
    metrics = json.loads((work / "score" / "metrics.json").read_text())["models"]["generated"]["metrics"]
    assert metrics["pct_failed"]["mean"] == 0.0 and metrics["d_rdf"]["mean"] > 0
    assert "2 structures of 64 atoms" in text_outputs(nb)


def test_colab_notebook_installs_nothing_on_a_cpu_and_falls_back_to_one_device(tmp_path):
    nb = execute("04_colab_tpu", {"WORK_DIR": str(tmp_path / "work")}, tmp_path, tmp_path,
                 env={"XLA_FLAGS": ""}, stop_at="## 3.")
    out = text_outputs(nb)
    assert "accelerator: cpu; hosted notebook (Colab or TPU VM): False" in out
    assert "nothing to install" in out and "mesh: {'data': 1}" in out and "notice: one CPU device" in out


@pytest.mark.slow
def test_colab_notebook_shards_training_over_two_simulated_devices(tmp_path):
    train = alloy_file(tmp_path / "train.extxyz")
    work = tmp_path / "work"
    nb = execute("04_colab_tpu", {"WORK_DIR": str(work), "TRAIN_FILE": str(train), "EPOCHS": 1, "BATCH_SIZE": 3,
                                  "MAX_STRUCTURES": None, "OVERRIDES": TINY_GAN}, tmp_path, tmp_path,
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    out = text_outputs(nb)
    assert "mesh: {'data': 2}" in out and "notice" not in out and "structures 2..3" in out
    assert "batches sharded over 2 devices" in out
    assert (work / "run" / "metrics.csv").read_text().count("\n") == 2


@pytest.mark.slow
def test_sweeps_train_vmapped_ensembles_and_score_every_member(tmp_path):
    train = alloy_file(tmp_path / "train.extxyz")
    work = tmp_path / "work"
    tiny_diffusion = ["train.batch_size=4", "sample.batch_size=2", "model.denoiser.hidden_irreps=8x0e+4x1o",
                      "model.denoiser.n_layers=1", "model.denoiser.n_neighbors=8"]
    execute("02_sweeps", {"WORK_DIR": str(work), "TRAIN_FILE": str(train), "GAN_SEEDS": [0, 1],
                          "GAN_LAMBDAS": [0.0, 0.1], "GAN_EPOCHS": 1, "GAN_OVERRIDES": [*TINY_GAN, "train.batch_size=4"],
                          "DIFFUSION_SEEDS": 2, "DIFFUSION_EPOCHS": 1, "DIFFUSION_SAMPLE_STEPS": 5,
                          "DIFFUSION_OVERRIDES": tiny_diffusion, "N_SAMPLES": 2, "N_BOOTSTRAP": 20}, tmp_path, tmp_path)
    gan_rows = (work / "cryingan_sweep" / "metrics.csv").read_text().splitlines()
    assert len(gan_rows) == 1 + 4 and [row.split(",")[2:4] for row in gan_rows[1:]] == [
        ["0", "0.0"], ["0", "0.1"], ["1", "0.0"], ["1", "0.1"]]
    assert len((work / "diffusion_seeds" / "metrics.csv").read_text().splitlines()) == 1 + 2
    for name in ("cryingan_score_member3", "diffusion_score_member1"):
        assert "\n| generated | 1 |" in (work / name / "report.md").read_text()
    paper = yaml.safe_load((work / "cryingan_sweep_paper.yaml").read_text())
    assert paper["ensemble"]["seeds"] == [0, 1, 2] and paper["train"]["epochs"] == 1500
    assert yaml.safe_load((work / "diffusion_seeds_paper.yaml").read_text())["train"]["n_seeds"] == 3
