"""Training and sampling of the Dis-GEN Wyckoff VAE (`model.name: wyckoff_vae`).

`train(config, run)`: ingest the CIF source once into RUN/genes.jsonl (rejections in RUN/rejected.csv),
split test / validation / train (Dis-GEN code: 20 % test, 10 % of the rest validation, seed 42), fit the
lattice scaler, train with Adam, validate and checkpoint (best = lowest validation loss), resume from the
latest checkpoint, plot loss curves and write RUN/reconstruction.json on the test set.

`sample(run, n, out, seed, sampler=...)`: draw latents (gaussian / gmm / kde fitted on the training
posterior means), decode, write the symmetrised CIFs that pass every check into `out`, the rejected
samples with stage and reason into out/rejected.csv and the metrics into out/metrics.json.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dismax.errors import DismaxConfigError, DismaxInputError
from dismax.vae.ingest import IngestOptions
from dismax.vae.losses import TERMS, LossWeights


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
class TrainConfig:
    """Paper defaults: Adam lr 5e-6, batch 64, 2500 epochs, best-validation checkpoint."""

    lr: float = 5e-6
    batch_size: int = 64
    epochs: int = 2500
    eval_every: int = 1
    checkpoint_every: int = 10
    keep: int = 3


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
    from dismax.vae.ingest import ingest_cifs, load_genes, save_genes

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
        from dismax.runs import log

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
    from dismax.runs import atomic_write_text
    from dismax.vae.representation import LatticeScaler, encode_genes

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


def build_model(m: ModelConfig):
    from dismax.vae.model import WyckoffVAE

    if len(m.kernels) != 3 or len(m.strides) != 3:
        raise DismaxConfigError("model.kernels and model.strides must have 3 entries each")
    return WyckoffVAE(latent_dim=m.latent_dim, max_filter=m.max_filter, kernels=tuple(m.kernels),
                      strides=tuple(m.strides), site_dense=m.site_dense)


@functools.lru_cache(maxsize=4)
def _compiled(model_config: ModelConfig, lr: float, weights: LossWeights):
    """(model, optimizer, train_step, eval_step), cached so that training, resuming and sampling in one
    process share the compiled functions."""
    import optax

    from dismax.vae.steps import make_eval_step, make_train_step

    model = build_model(model_config)
    optimizer = optax.adam(lr)
    return model, optimizer, make_train_step(model, optimizer, weights), make_eval_step(model, weights)


def _initial_state(config: Config):
    from dismax.vae.steps import create_state

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
    import jax

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


def train(config: Config, run) -> None:
    """Train (or resume) a Wyckoff VAE in run directory `run` (dismax.runs.RunDir)."""
    from dismax.checkpoint import Checkpointer
    from dismax.runs import log, progress

    _check_config(config)
    data = prepare_data(config, run)
    train_sites, train_lattice, train_group, _ = data.part("train")
    val_sites, val_lattice, val_group, _ = data.part("val") if len(data.split["val"]) else data.part("train")
    _, _, train_step, eval_step, state = _initial_state(config)
    chunk = _eval_chunk(config, len(train_sites))
    checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep)
    start_epoch = 0
    restored = checkpointer.restore(state)
    if restored is not None:
        _, state, meta = restored
        start_epoch = int(meta["epoch"]) + 1
        run.truncate_metrics(lambda row: row.get("epoch", 0) < start_epoch)
        log.info("resumed at epoch %d (step %d)", start_epoch, int(state.step))

    n_train = len(train_sites)
    batch = min(config.train.batch_size, n_train)
    n_batches = math.ceil(n_train / batch)
    last = config.train.epochs - 1
    for epoch in progress(range(start_epoch, config.train.epochs), total=config.train.epochs - start_epoch,
                          desc="train wyckoff_vae"):
        order = np.resize(np.random.default_rng([config.seed, epoch]).permutation(n_train), n_batches * batch)
        sums = {}
        for indices in order.reshape(n_batches, batch):
            state, metrics = train_step(state, train_sites[indices], train_lattice[indices], train_group[indices])
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        row = {"epoch": epoch, "step": int(state.step)}
        row.update({f"train_{k}": sums[k] / n_batches for k in ("loss", *TERMS)})
        evaluate = (epoch + 1) % config.train.eval_every == 0 or epoch == last
        val = _evaluate(eval_step, state, val_sites, val_lattice, val_group, chunk)[0] if evaluate else {}
        row.update({f"val_{k}": val.get(k, float("nan")) for k in ("loss", *TERMS)})
        run.append_metrics(row)
        if (epoch + 1) % config.train.checkpoint_every == 0 or epoch == last:
            checkpointer.save(int(state.step), state, meta={"epoch": epoch},
                              metric=val.get("loss") if evaluate else None)
    checkpointer.close()
    plot_losses(run)
    write_reconstruction(config, run, data)


def _check_config(config: Config) -> None:
    if config.sample.sampler not in ("gaussian", "gmm", "kde"):
        raise DismaxConfigError(f"config key 'sample.sampler' must be gaussian, gmm or kde, got "
                                f"{config.sample.sampler!r}")
    if config.loss.lattice_loss not in ("mse", "mae"):
        raise DismaxConfigError(f"config key 'loss.lattice_loss' must be mse or mae, got {config.loss.lattice_loss!r}")
    if config.train.epochs < 1 or config.train.batch_size < 1:
        raise DismaxConfigError("config keys 'train.epochs' and 'train.batch_size' must be at least 1")


def plot_losses(run) -> None:
    """Train/validation total loss and the per-term training losses per epoch into RUN/plots/loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.read_metrics()
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], "o-", ms=2, label="validation")
    left.set(xlabel="epoch", ylabel="total loss", yscale="log")
    left.legend()
    for term in TERMS:
        right.plot(epochs, [max(r[f"train_{term}"], 1e-12) for r in rows], label=term)
    right.set(xlabel="epoch", ylabel="unweighted term", yscale="log")
    right.legend(fontsize=7)
    figure.tight_layout()
    run.plots.mkdir(parents=True, exist_ok=True)
    figure.savefig(run.plots / "loss.png", dpi=120)
    plt.close(figure)


def load_state(config: Config, run, checkpoint: str = "best"):
    """(model, state) restored from the best (fallback latest) or latest checkpoint."""
    from dismax.checkpoint import Checkpointer

    model, _, _, _, state = _initial_state(config)
    checkpointer = Checkpointer(run.checkpoints, keep=config.train.keep)
    restored = checkpointer.restore_best(state) if checkpoint == "best" else None
    restored = restored or checkpointer.restore(state)
    checkpointer.close()
    if restored is None:
        raise DismaxInputError(f"{run.path}: no checkpoint to load")
    return model, restored[1]


def write_reconstruction(config: Config, run, data: PreparedData) -> dict:
    """Reconstruction metrics (Dis-GEN Tables 1-2) and SMA of the reconstructed test set -> RUN/reconstruction.json."""
    from dismax.runs import atomic_write_text
    from dismax.vae.generate import decode_outputs, evaluate_genes, reconstruction_metrics

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
    from dismax.vae.steps import encode_means

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
    import jax

    from dismax.config import load_config
    from dismax.runs import atomic_write_text, progress
    from dismax.vae.generate import GenerationReport, decode_outputs, evaluate_genes, write_rejections
    from dismax.vae.samplers import make_sampler
    from dismax.vae.steps import decode_latents

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
        from dismax.vae.conditional import optimise_latents

        z = np.asarray(optimise_latents(model, variables, z, **condition))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = batch_size or config.sample.batch_size
    total, rejections = GenerationReport(), []
    batch = min(batch, n)
    for indices, mask in progress(_padded_chunks(n, batch), total=math.ceil(n / batch),
                                  desc=f"sample {sampler_name}"):
        start = int(indices[0])
        outputs = jax.tree.map(lambda x: np.asarray(x)[mask], decode_latents(model, variables, z[indices]))
        decoded = decode_outputs(outputs, data.scaler, config.sample.element_acc, config.sample.disorder_acc)
        report, batch_rejections = evaluate_genes(decoded, out, prefix=sampler_name, first_index=start,
                                                  pauling_test=config.sample.pauling_test)
        total.add(report)
        rejections += batch_rejections
    write_rejections(out / "rejected.csv", rejections)
    metrics = {"sampler": sampler_name, "seed": seed, **total.as_dict()}
    if condition:
        metrics["condition"] = {k: v for k, v in condition.items()}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics

