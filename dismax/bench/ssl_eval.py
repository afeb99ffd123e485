"""``python -m dismax.bench ssl``: the evaluation protocol of the masked-denoising generators (Liu et al.;
spec ``ssl_gan.md`` §7).

Test structures (an extxyz file, a folder of CIFs or a CDVAE-format CSV; the first ``--max-structures``)
are corrupted with fixed masks — α: all atoms of one species, once per species present; β: 15 % random
distinct atoms, ``--repeats`` times; γ: 30 %, ``--repeats`` times — and Gaussian positional noise σ̃ ×
the periodic minimum pair distance for every ``--noise`` σ̃, then repaired by the run's generator in one
pass (``ssl_pretrain`` or ``ssl_gan`` run). Per (mask, σ̃) setting:

- structural validity: periodic minimum distance > 0.5 Å and volume ≥ 0.1 Å³;
- compositional validity: charge neutrality of the integerised composition (all-metal valid, Pauling test;
  :func:`dismax.vae.chemistry.charge_neutral`);
- compositional similarity (eq. 4): fraction of samples whose species equal the original on every atom;
- structural similarity (eq. 5): over samples with identical species, 1 − mean_i ‖P_i − P̃_i‖ / S with S the
  mean displacement introduced (minimum-image distances); ``structural_similarity_printed`` is the paper's
  printed formula 1 − (1/|T|) Σ δ·(…)/S, where non-matching samples add nothing;
- novelty: structurally and compositionally valid with a composition that differs from the original, and the
  species-replacement rates Rate(X) = n_replace(X) / N_novel (eq. 7), X counted once per novel sample;
- diagnostics against the trivial baselines: masked-species accuracy next to two composition priors on the
  same masked atoms (``prior_accuracy``: always the test set's most common species; ``visible_prior_accuracy``:
  the most common species among the sample's visible atoms, never right for α masks), and the RMS positional
  error after the pass next to the input noise's RMS (the zero-displacement prediction).

The corrupted inputs depend only on the test structures, ``--seed``, ``--repeats`` and ``--batch-size``, so
two runs evaluated with the same arguments see the same masks and the same noise.

Writes ``metrics.csv`` (one row per setting), ``metrics.json`` (rows and replacement rates) and
``plots/ssl_eval.png`` into ``--out`` (default RUN/eval_ssl).
"""

from __future__ import annotations

import argparse
import json
import math
from functools import lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from dismax.errors import DismaxInputError
from dismax.geometry import frac_to_cart, pairwise_minimum_image_distances, wrap_centered
from dismax.runs import RunDir, atomic_write, atomic_write_text, log, progress
from dismax.ssl import gan, pretrain
from dismax.ssl.corruption import CorruptionConfig, corrupt_with_mask
from dismax.ssl.data import PaddedSet, read_any
from dismax.ssl.steps import Batch, apply_batch, reconstruct
from dismax.vae.chemistry import charge_neutral

MASK_TYPES = {"alpha": None, "beta": 0.15, "gamma": 0.30}
RESTORERS = {"ssl_pretrain": pretrain.restore_generator, "ssl_gan": gan.restore_generator}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="an ssl_pretrain or ssl_gan run directory")
    parser.add_argument("--data", required=True, help="test structures: extxyz, a folder of CIFs or a CDVAE CSV")
    parser.add_argument("--mask", nargs="+", choices=tuple(MASK_TYPES), default=list(MASK_TYPES),
                        help="mask types (default: alpha beta gamma)")
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2], help="σ̃ values (default 0.1 0.2)")
    parser.add_argument("--repeats", type=int, default=5, help="random masks per structure for beta/gamma")
    parser.add_argument("--max-structures", type=int, default=2000, help="test structures used (default 2000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default RUN/eval_ssl)")


def restore(run_dir: str, which: str):
    """The generator of an ``ssl_pretrain`` or ``ssl_gan`` run."""
    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise DismaxInputError(f"'{run_dir}' is not a run directory (no config.yaml)")
    name = (yaml.safe_load(run.config_path.read_text()).get("model") or {}).get("name")
    if name not in RESTORERS:
        raise DismaxInputError(f"'{run_dir}' is a {name!r} run; the ssl evaluation needs an ssl_pretrain or ssl_gan run")
    return RESTORERS[name](run, which)


def sample_masks(test: PaddedSet, mask_type: str, repeats: int, rng: np.random.Generator):
    """(structure index (M,), masks (M, N) bool) of every evaluation sample of one mask type."""
    indices, masks = [], []
    species, real = np.asarray(test.crystals.species), test.atom_mask
    for s in range(len(test)):
        if mask_type == "alpha":
            for z in np.unique(species[s][real[s]]):
                indices.append(s)
                masks.append(real[s] & (species[s] == z))
            continue
        n_real = int(real[s].sum())
        count = max(1, math.ceil(MASK_TYPES[mask_type] * n_real - 1e-6))
        for _ in range(repeats):
            mask = np.zeros_like(real[s])
            mask[rng.choice(np.flatnonzero(real[s]), count, replace=False)] = True
            indices.append(s)
            masks.append(mask)
    return np.asarray(indices), np.stack(masks)


@partial(jax.jit, static_argnames=("network", "corruption"))
def repair_and_measure(params, batch: Batch, masked, key, *, network, corruption: CorruptionConfig):
    """Repair a batch with the given masks; per sample: species (B, N), minimum distance (Å), mean
    displacement from the original (Å), mean input displacement S (Å), RMS of both, masked-species hits."""
    keys = jax.random.split(key, batch.frac.shape[0])
    corrupted = jax.vmap(partial(corrupt_with_mask, config=corruption))(
        keys, batch.frac, batch.lattice, batch.species, batch.atom_mask, masked)
    logits, noise = apply_batch(network, params, corrupted.frac, batch.lattice, corrupted.species, batch.atom_mask)
    frac, species = reconstruct(logits, noise, batch.lattice, corrupted)
    real = batch.atom_mask
    n_real = jnp.maximum(jnp.sum(real, axis=1), 1)
    distances = pairwise_minimum_image_distances(frac, batch.lattice)
    pair = real[:, :, None] & real[:, None, :] & ~jnp.eye(real.shape[1], dtype=bool)
    min_distance = jnp.min(jnp.where(pair, distances, jnp.inf), axis=(1, 2))
    error = jnp.linalg.norm(frac_to_cart(wrap_centered(frac - batch.frac), batch.lattice), axis=-1) * real
    introduced = jnp.linalg.norm(corrupted.noise, axis=-1) * real
    hits = jnp.sum((species == batch.species) & masked, axis=1)
    return {"species": species, "min_distance": min_distance, "error": jnp.sum(error, 1) / n_real,
            "introduced": jnp.sum(introduced, 1) / n_real, "error_rms": jnp.sqrt(jnp.sum(error**2, 1) / n_real),
            "input_rms": jnp.sqrt(jnp.sum(introduced**2, 1) / n_real), "hits": hits,
            "n_masked": jnp.sum(masked, axis=1)}


@lru_cache(maxsize=None)
def neutral(composition: tuple) -> bool:
    """Charge neutrality of a composition given as sorted (symbol, count) pairs (cached)."""
    return charge_neutral(dict(composition))


def composition_key(numbers) -> tuple:
    from ase.data import chemical_symbols  # symbols only; ase is a core dependency

    values, counts = np.unique(numbers, return_counts=True)
    return tuple((chemical_symbols[int(z)], int(c)) for z, c in zip(values, counts))


def visible_majority(species, visible):
    """(M,) the most common atomic number among each sample's ``visible`` atoms (the lowest on ties; 0 when
    none is visible): the per-structure composition prior for its masked atoms."""
    counts = np.zeros((len(species), 119), np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(species)), species.shape[1]), species.ravel()), visible.ravel())
    return np.where(counts.any(axis=1), np.argmax(counts, axis=1), 0)


def evaluate_setting(generator, test: PaddedSet, mask_type: str, sigma_ratio: float, repeats: int, batch_size: int,
                     seed: int) -> tuple[dict, dict]:
    """(row of metrics, species-replacement counts) of one (mask type, σ̃) setting."""
    from ase.data import chemical_symbols  # symbols only

    rng = np.random.default_rng(seed)
    indices, masks = sample_masks(test, mask_type, repeats, rng)
    corruption = CorruptionConfig(sigma_ratio=sigma_ratio, single_atom_distance=generator.corruption.single_atom_distance)
    order = np.resize(np.arange(len(indices)), -(-len(indices) // batch_size) * batch_size)
    parts = []
    for i, start in enumerate(progress(range(0, len(order), batch_size), desc=f"{mask_type} σ̃={sigma_ratio}")):
        rows = order[start:start + batch_size]
        chosen = test.take(indices[rows])
        out = repair_and_measure(generator.params, pretrain.as_batch(chosen), jnp.asarray(masks[rows]),
                                 jax.random.fold_in(jax.random.PRNGKey(seed), i), network=generator.network,
                                 corruption=corruption)
        parts.append({k: np.asarray(v) for k, v in out.items()})
    result = {k: np.concatenate([p[k] for p in parts])[:len(indices)] for k in parts[0]}
    original = np.asarray(test.crystals.species)[indices]
    real = test.atom_mask[indices]
    values, counts = np.unique(np.asarray(test.crystals.species)[test.atom_mask], return_counts=True)
    majority = values[np.argmax(counts)]
    visible_prior = visible_majority(original, real & ~masks)
    volume = np.abs(np.linalg.det(np.asarray(test.crystals.lattice, np.float64)[indices]))
    same = np.all((result["species"] == original) | ~real, axis=1)
    structural = (result["min_distance"] > 0.5) & (volume >= 0.1)
    compositions = [composition_key(result["species"][m][real[m]]) for m in range(len(indices))]
    compositional = np.array([neutral(c) for c in compositions])
    changed = np.array([c != composition_key(original[m][real[m]]) for m, c in enumerate(compositions)])
    novel = structural & compositional & changed
    replaced: dict[str, int] = {}
    for m in np.flatnonzero(novel):
        for z in np.unique(original[m][real[m] & (result["species"][m] != original[m])]):
            replaced[chemical_symbols[int(z)]] = replaced.get(chemical_symbols[int(z)], 0) + 1
    ratio = np.where(result["introduced"] > 0, result["error"] / np.maximum(result["introduced"], 1e-12), 0.0)
    row = {"mask": mask_type, "noise": sigma_ratio, "n_samples": len(indices),
           "structural_validity": float(structural.mean()), "compositional_validity": float(compositional.mean()),
           "compositional_similarity": float(same.mean()),
           "structural_similarity": float(1.0 - ratio[same].mean()) if same.any() else float("nan"),
           "structural_similarity_printed": float(1.0 - np.sum(ratio * same) / len(indices)),
           "novelty": float(novel.mean()), "masked_species_accuracy": float(result["hits"].sum() /
                                                                            max(result["n_masked"].sum(), 1)),
           "prior_accuracy": float(np.sum(masks & (original == majority)) / max(masks.sum(), 1)),
           "visible_prior_accuracy": float(np.sum(masks & (original == visible_prior[:, None])) / max(masks.sum(), 1)),
           "position_rms_after": float(np.sqrt(np.mean(result["error_rms"] ** 2))),
           "position_rms_input": float(np.sqrt(np.mean(result["input_rms"] ** 2)))}
    n_novel = int(novel.sum())
    return row, {x: n / n_novel for x, n in sorted(replaced.items())} if n_novel else {}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # optional heavy dependency, only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("structural_validity", "compositional_validity", "compositional_similarity", "structural_similarity",
             "novelty")
    figure, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    width = 0.8 / len(rows)
    for k, row in enumerate(rows):
        ax.bar(np.arange(len(names)) + k * width, [row[n] for n in names], width,
               label=f"{row['mask']} σ̃={row['noise']}")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set(ylim=(0, 1), ylabel="fraction")
    ax.legend(fontsize=6)
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=90), binary=True)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.max_structures < 1 or args.batch_size < 1 or min(args.noise) < 0:
        raise DismaxInputError("--repeats, --max-structures and --batch-size must be at least 1 and --noise >= 0")
    generator = restore(args.run_dir, args.checkpoint)
    structures = read_any(args.data)
    structures = structures.select(range(min(args.max_structures, len(structures))))
    test = PaddedSet(*structures.padded())
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval_ssl"
    rows, replacements = [], {}
    for mask_type in args.mask:
        for sigma_ratio in args.noise:
            row, rates = evaluate_setting(generator, test, mask_type, sigma_ratio, args.repeats, args.batch_size,
                                          args.seed)
            rows.append(row)
            replacements[f"{mask_type}@{sigma_ratio}"] = rates
            log.info("%s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    (out / "plots").mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    atomic_write_text(out / "metrics.csv", "\n".join([",".join(header)] + [",".join(str(r[h]) for h in header)
                                                                           for r in rows]) + "\n")
    atomic_write_text(out / "metrics.json", json.dumps({"run": str(args.run_dir), "data": str(args.data),
                                                        "n_structures": len(test), "settings": rows,
                                                        "replacement_rates": replacements}, indent=2) + "\n")
    plot(rows, out / "plots" / "ssl_eval.png")
    print(out / "metrics.csv")
    return 0
