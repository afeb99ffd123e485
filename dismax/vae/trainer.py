"""Training and sampling of the Dis-GEN Wyckoff VAE (`model.name: wyckoff_vae`).

`train(config, run)`: ingest the CIF source once into RUN/genes.jsonl (rejections in RUN/rejected.csv),
split test / validation / train (Dis-GEN code: 20 % test, 10 % of the rest validation, seed 42), fit the
lattice scaler, train with Adam in the shared loop (:mod:`dismax.training`: validation every
``train.val_every`` epochs, checkpoints with best = lowest validation loss, resume, loss curves; the last
batch of an epoch is completed with the epoch's first structures), then write RUN/reconstruction.json on the
test set.

`sample(run, n, out, seed, sampler=...)`: draw latents (gaussian / gmm / kde fitted on the training
posterior means), decode, write the symmetrised CIFs that pass every check into `out`, the rejected
samples with stage and reason into out/rejected.csv and the metrics into out/metrics.json.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import optax

from dismax.config import load_config
from dismax.data.loader import BatchLoader
from dismax.devices import barrier, is_primary, process_share
from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.runs import atomic_write_text, exclusive_lock, log, progress
from dismax.training import LoopConfig, Panel, TrainingTask, check_loop_config, load_run_state, train_loop
from dismax.vae.conditional import optimise_latents
from dismax.vae.generate import (GenerationReport, decode_outputs, evaluate_genes, reconstruction_metrics,
                                  write_rejections)
from dismax.vae.ingest import IngestOptions, ingest_cifs, load_genes, save_genes
from dismax.vae.losses import TERMS, LossWeights
from dismax.vae.model import WyckoffVAE
from dismax.vae.representation import LatticeScaler, encode_genes
from dismax.vae.samplers import make_sampler
from dismax.vae.steps import create_state, decode_latents, encode_means, make_eval_step, make_train_step


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (Dis-GEN released config: kernels [5, 3, 2], strides [2, 3, 2], max_filter 16)."""

    name: str = "wyckoff_vae"
    latent_dim: int = 256
    max_filter: int = 16
    kernels: tuple[int, ...] = (5, 3, 2)
    strides: tuple[int, ...] = (2, 3, 2)
    site_dense: int = 1024


@dataclass(frozen=True)
class DataConfig:
    """`source`: folder, tar or zip of CIFs, or a genes .jsonl written by ingestion."""

    source: str = ""
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 42
    workers: int = 0
    filters: IngestOptions = field(default_factory=IngestOptions)


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The shared loop keys with the paper's defaults (Adam lr 5e-6, batch 64, 2500 epochs, validation
    every epoch, best-validation checkpoint)."""

    epochs: int = 2500
    batch_size: int = 64
    val_every: int = 1
    checkpoint_every: int = 10
    lr: float = 5e-6


@dataclass(frozen=True)
class SampleConfig:
    """Generation settings of the Dis-GEN generation script."""

    sampler: str = "kde"
    kde_bandwidth: float = 0.25
    gmm_components: int = 5
    element_acc: float = 0.05
    disorder_acc: float = 0.5
    pauling_test: bool = True
    batch_size: int = 1024
    checkpoint: str = "best"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    seed: int = 0


# ----------------------------------------------------------------------------------------------- data


def prepare_genes(config: Config, run):
    """Genes of the run (ingested once into RUN/genes.jsonl)."""
    genes_path = run.path / "genes.jsonl"
    if genes_path.exists():
        return load_genes(genes_path)
    if not config.data.source:
        raise DismaxConfigError("config key 'data.source' is empty; give a folder, tar or zip of CIF files")
    source = Path(config.data.source).expanduser()
    if source.suffix == ".jsonl":
        names, genes = load_genes(source)
    else:
        result = ingest_cifs(source, config.data.filters, workers=config.data.workers or None,
                             cache_dir=run.path / "ingest_cache", report_path=run.path / "rejected.csv")
        names, genes = result.names, result.genes
        log.info("ingested %d structures, rejected %d (reasons in %s)", len(genes), len(result.rejections),
                 run.path / "rejected.csv")
    if len(genes) < 3:
        raise DismaxInputError(f"{source}: only {len(genes)} usable structures; at least 3 are needed")
    save_genes(genes_path, names, genes)
    return names, genes


def split_indices(n: int, test_fraction: float, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Random test split, then validation as a fraction of the remainder (the Dis-GEN code's order)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 2, max(1, round(test_fraction * n))) if test_fraction > 0 else 0
    rest = order[n_test:]
    n_val = min(len(rest) - 1, max(1, round(val_fraction * len(rest)))) if val_fraction > 0 else 0
    return {"test": np.sort(order[:n_test]), "val": np.sort(rest[:n_val]), "train": np.sort(rest[n_val:])}


@dataclass
class PreparedData:
    arrays: object  # WyckoffArrays of all genes
    split: dict
    scaler: object  # LatticeScaler

    def part(self, name: str):
        idx = self.split[name]
        a = self.arrays
        return a.sites[idx], self.scaler.transform(a.lattice[idx]), a.spacegroup[idx], a.lattice[idx]


def prepare_data(config: Config, run) -> PreparedData:
    """Genes -> arrays, split (saved to RUN/split.json) and lattice scaler (RUN/scaler.json)."""
    _, genes = prepare_genes(config, run)
    arrays = encode_genes(genes)
    split_path = run.path / "split.json"
    if split_path.exists():
        split = {k: np.asarray(v, int) for k, v in json.loads(split_path.read_text()).items()}
    else:
        split = split_indices(len(genes), config.data.test_fraction, config.data.val_fraction,
                              config.data.split_seed)
        atomic_write_text(split_path, json.dumps({k: v.tolist() for k, v in split.items()}))
    scaler_path = run.path / "scaler.json"
    if scaler_path.exists():
        scaler = LatticeScaler.from_dict(json.loads(scaler_path.read_text()))
    else:
        scaler = LatticeScaler.fit(arrays.lattice[split["train"]])
        atomic_write_text(scaler_path, json.dumps(scaler.to_dict()))
    return PreparedData(arrays=arrays, split=split, scaler=scaler)


# ------------------------------------------------------------------------------------------- training


def build_model(m: ModelConfig) -> WyckoffVAE:
    return WyckoffVAE(latent_dim=m.latent_dim, max_filter=m.max_filter, kernels=tuple(m.kernels),
                      strides=tuple(m.strides), site_dense=m.site_dense)


@functools.lru_cache(maxsize=4)
def _compiled(model_config: ModelConfig, lr: float, weights: LossWeights):
    """(model, optimizer, train_step, eval_step), cached so that training, resuming and sampling in one
    process share the compiled functions."""
    model = build_model(model_config)
    optimizer = optax.adam(lr)
    return model, optimizer, make_train_step(model, optimizer, weights), make_eval_step(model, weights)


def _initial_state(config: Config):
    model, optimizer, train_step, eval_step = _compiled(config.model, config.train.lr, config.loss)
    return model, optimizer, train_step, eval_step, create_state(model, optimizer, config.seed)


def _padded_chunks(n: int, chunk: int):
    """(indices (chunk,), mask (chunk,)) covering range(n) in fixed-size chunks (last one padded)."""
    for start in range(0, n, chunk):
        real = np.arange(start, min(n, start + chunk))
        indices = np.concatenate([real, np.full(chunk - len(real), real[-1])])
        yield indices, np.arange(chunk) < len(real)


def _evaluate(eval_step, state, sites, lattice_scaled, spacegroup, chunk: int):
    """Mean eval metrics and the outputs over fixed-size chunks (one compilation for every set)."""
    totals, outputs, n = {}, [], len(sites)
    for indices, mask in _padded_chunks(n, chunk):
        metrics, out = eval_step(state, sites[indices], lattice_scaled[indices], spacegroup[indices], mask)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value) * mask.sum()
        outputs.append(jax.tree.map(lambda x: np.asarray(x)[mask], out))
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return {k: v / n for k, v in totals.items()}, merged


def _eval_chunk(config: Config, n_train: int) -> int:
    return min(config.train.batch_size, n_train)


PANELS = (Panel("total loss", ("train_loss", "val_loss"), log_scale=True),
          Panel("unweighted training terms", tuple(f"train_{term}" for term in TERMS), log_scale=True))


def check(config: Config) -> None:
    """Every config error, before anything is written."""
    check_loop_config(config.train)
    if config.sample.sampler not in ("gaussian", "gmm", "kde"):
        raise DismaxConfigError(f"config key 'sample.sampler' must be gaussian, gmm or kde, got "
                                f"{config.sample.sampler!r}")
    if config.loss.lattice_loss not in ("mse", "mae"):
        raise DismaxConfigError(f"config key 'loss.lattice_loss' must be mse or mae, got {config.loss.lattice_loss!r}")
    if len(config.model.kernels) != 3 or len(config.model.strides) != 3:
        raise DismaxConfigError("config keys 'model.kernels' and 'model.strides' must have 3 entries each")
    if not config.data.source:
        raise DismaxConfigError("config key 'data.source' is empty; give a folder, tar or zip of CIF files")
    source = Path(config.data.source).expanduser()
    if not source.exists() or not os.access(source, os.R_OK):
        raise DismaxConfigError(f"config key 'data.source' is '{source}', which does not exist or is not readable")


def make_task(config: Config, run, data: PreparedData) -> TrainingTask:
    """The VAE as a task of the shared training loop."""
    train_arrays = data.part("train")[:3]
    val_arrays = data.part("val")[:3] if len(data.split["val"]) else train_arrays
    _, _, train_step, eval_step, state = _initial_state(config)
    chunk = _eval_chunk(config, len(train_arrays[0]))
    loader = BatchLoader(train_arrays, min(config.train.batch_size, len(train_arrays[0])), seed=config.seed,
                         drop_last=False)

    def step(state, batch, epoch, index):
        state, metrics = train_step(state, *batch)
        return state, {f"train_{k}": v for k, v in metrics.items()}

    def evaluate(state, epoch):
        return state, {f"val_{k}": v for k, v in _evaluate(eval_step, state, *val_arrays, chunk)[0].items()}

    return TrainingTask(
        name="wyckoff_vae", state=state, loaders=[loader], step=step, members=[{"member": 0, "seed": config.seed}],
        evaluate=evaluate, eval_columns=tuple(f"val_{k}" for k in ("loss", *TERMS)),
        monitor=lambda v: float(v["val_loss"][0]) if np.isfinite(v["val_loss"][0]) else None,
        loss_column="train_loss", panels=PANELS)


def train(config: Config, run, evaluation=None) -> None:
    """Train (or resume) a Wyckoff VAE in run directory `run` (dismax.runs.RunDir)."""
    check(config)
    with exclusive_lock(run.path, "run directory"):
        run.create()
        data = prepare_data(config, run)
        train_loop(make_task(config, run, data), config.train, run, evaluation)
        write_reconstruction(config, run, data)


def load_state(config: Config, run, checkpoint: str = "best"):
    """(model, state) restored from the best (fallback latest) or latest checkpoint."""
    model, _, _, _, state = _initial_state(config)
    if checkpoint == "best":
        try:
            return model, load_run_state(run, state, "best")[0]
        except DismaxInputError:
            pass
    return model, load_run_state(run, state, "latest")[0]


def write_reconstruction(config: Config, run, data: PreparedData) -> dict:
    """Reconstruction metrics (Dis-GEN Tables 1-2) and SMA of the reconstructed test set -> RUN/reconstruction.json."""
    part = "test" if len(data.split["test"]) else "train"
    sites, lattice_scaled, spacegroup, lattice = data.part(part)
    _, state = load_state(config, run, "best")
    eval_step = _compiled(config.model, config.train.lr, config.loss)[3]
    chunk = _eval_chunk(config, len(data.split["train"]))
    _, outputs = _evaluate(eval_step, state, sites, lattice_scaled, spacegroup, chunk)
    result = {"set": part, **reconstruction_metrics(outputs, sites, lattice, spacegroup, data.scaler)}
    decoded = decode_outputs(outputs, data.scaler, config.sample.element_acc, config.sample.disorder_acc)
    report, _ = evaluate_genes(decoded, pauling_test=config.sample.pauling_test)
    result["generation"] = report.as_dict()
    atomic_write_text(run.path / "reconstruction.json", json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------- sampling


def training_latents(config: Config, run, model, state, data: PreparedData) -> np.ndarray:
    """Posterior means of the training set (N, latent_dim)."""
    sites, lattice_scaled, spacegroup, _ = data.part("train")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    chunks = [np.asarray(encode_means(model, variables, sites[i], lattice_scaled[i], spacegroup[i]))[mask]
              for i, mask in _padded_chunks(len(sites), _eval_chunk(config, len(sites)))]
    return np.concatenate(chunks)


def sample(run, n: int, out, seed: int = 0, sampler: str | None = None, checkpoint: str | None = None,
           batch_size: int | None = None, member: int = 0, condition: Optional[dict] = None, **unused) -> dict:
    """Generate n structures: CIFs of the Wyckoff genes that pass SMA into `out`, metrics into
    out/metrics.json. `condition` (optional) = keyword arguments of `conditional.optimise_latents`
    (elements, spacegroup, n_disordered, steps, lr) applied to the sampled latents first."""
    if unused:
        raise DismaxConfigError(f"unknown sampling options for wyckoff_vae: {', '.join(sorted(unused))}")
    if member != 0:
        raise DismaxConfigError("wyckoff_vae runs have a single member; use --member 0")
    config = load_config(run.config_path, config_class=Config)
    sampler_name = sampler or config.sample.sampler
    data = prepare_data(config, run)
    model, state = load_state(config, run, checkpoint or config.sample.checkpoint)
    latents = training_latents(config, run, model, state, data)
    latent_sampler = make_sampler(sampler_name, latents, config.model.latent_dim, config.sample.kde_bandwidth,
                                  config.sample.gmm_components, seed)
    z = latent_sampler.sample(n, np.random.default_rng(seed))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if condition:
        z = np.asarray(optimise_latents(model, variables, z, **condition))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = min(batch_size or config.sample.batch_size, n)
    chunks = list(_padded_chunks(n, batch))
    records = [out / f".chunk{c:05d}-of-{len(chunks):05d}.json" for c in range(len(chunks))]
    for c in progress(process_share(len(chunks)), desc=f"sample {sampler_name}"):
        if records[c].exists():  # decoded before an interruption
            continue
        indices, mask = chunks[c]
        outputs = jax.tree.map(lambda x: np.asarray(x)[mask], decode_latents(model, variables, z[indices]))
        decoded = decode_outputs(outputs, data.scaler, config.sample.element_acc, config.sample.disorder_acc)
        report, batch_rejections = evaluate_genes(decoded, out, prefix=sampler_name, first_index=int(indices[0]),
                                                  pauling_test=config.sample.pauling_test)
        atomic_write_text(records[c], json.dumps({"report": asdict(report),
                                                  "rejections": batch_rejections}))
    barrier(f"sampled chunks of {out}")
    total, rejections = GenerationReport(), []
    for record in records:
        chunk = json.loads(record.read_text())
        total.add(GenerationReport(**chunk["report"]))
        rejections += [tuple(row) for row in chunk["rejections"]]
    metrics = {"sampler": sampler_name, "seed": seed, **total.as_dict()}
    if condition:
        metrics["condition"] = {k: v for k, v in condition.items()}
    if is_primary():
        write_rejections(out / "rejected.csv", rejections)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
        for record in records:
            record.unlink()
    barrier(f"metrics of {out}")
    return metrics

