"""CryinGAN learning curve on the reduced 2×2×2 alloy cell: does the generator put atoms on FCC sites?

Trains a CryinGAN config (default ``configs/cryingan_alloy_2x2x2_small.yaml``) through the normal trainer
and, every ``--every`` epochs, generates ``--n`` structures and records the fraction of atoms within 0.8 Å
of an FCC site after the best global translation (``site_fraction``), the same counting each site once
(``distinct_sites``: a collapsed generator that piles every atom onto one site scores 1 on the first and
1/N on this one), the process's CPU time (``cpu_minutes``), the trainer's close-pair count
(pairs < 1.5 Å per structure, ``close_pairs``) and the epoch's mean Wasserstein estimate
(``distance_dis``). Writes ``learning.csv`` and ``learning.png`` into the run directory and prints the
table, with the same site fraction for uniformly random positions in the same cell (the no-learning
baseline) beside it. A run directory that already holds checkpoints is continued.

``--torch`` then trains the PyTorch implementation (:mod:`dismax.gan.reference_torch`, dense layout) from
the same initial weights on the same batches (the trainer's loader, same seed and augmentation) with the
same settings for as many steps as the dismax run made (or ``--torch-steps``), evaluates it at the same
steps in the same way and draws both runs on one plot (``learning_comparison.csv``). The PyTorch side
draws its own noise and interpolation weights (NumPy, seeded), so the two runs are two samples of the
same training process, not replicas.

    python benchmarks/cryingan_learning.py [--config FILE] [--run-dir DIR] [--every 5] [--n 100]
        [--minutes 30] [--torch] [--no-train] [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dismax.config import load_config
from dismax.diffusion.quality import aligned_site_fraction
from dismax.gan import trainer
from dismax.runs import atomic_write, atomic_write_text, exclusive_lock
from dismax.train import prepare_run
from dismax.training import Evaluation

COLUMNS = ("epoch", "step", "minutes", "cpu_minutes", "site_fraction", "distinct_sites", "close_pairs",
           "distance_dis")


def site_evaluation(every: int, n: int, lattice_constant: float) -> Evaluation:
    """Aligned FCC site fraction of ``n`` generated structures per member, every ``every`` epochs."""

    def evaluate(task, state, epoch):
        values = []
        for member in range(len(task.members)):
            crystals = task.sample(state, member, n, jax.random.PRNGKey(epoch))
            lattice = np.asarray(crystals.lattice[0], float)
            repeats = int(round(lattice[0, 0] / lattice_constant))
            values.append(aligned_site_fraction(np.asarray(crystals.frac), lattice, repeats))
        atoms, sites = np.asarray(values).T
        return {"site_fraction": atoms, "distinct_sites": sites, "cpu_minutes": np.full(len(atoms), cpu_minutes())}

    return Evaluation(every=every, columns=("site_fraction", "distinct_sites", "cpu_minutes"), evaluate=evaluate)


def cpu_minutes() -> float:
    """CPU time (user + system, all threads) this process has used so far, in minutes."""
    return time.process_time() / 60


def learning_rows(rows: list[dict]) -> list[dict]:
    """Member-0 rows of metrics.csv at the evaluated epochs, with the elapsed training time in minutes."""
    mine = [r for r in rows if r.get("member", 0) == 0]
    elapsed = np.cumsum([r["seconds"] for r in mine]) / 60
    return [{"epoch": r["epoch"], "step": r["step"], "minutes": round(float(t), 2),
             **{c: r[c] for c in COLUMNS[3:]}}
            for r, t in zip(mine, elapsed) if np.isfinite(r["site_fraction"])]


def torch_rows(config, data, steps: int, eval_steps: set[int], n: int, lattice_constant: float) -> list[dict]:
    """Train the PyTorch reference for ``steps`` critic steps on the dismax trainer's batches (generator
    cadence and learning rates of ``config``; one shared learning rate) and evaluate it after every step in
    ``eval_steps``: rows of step, minutes, site_fraction, distinct_sites, close_pairs (of the same generated
    structures) and distance_dis (mean Wasserstein estimate over the last epoch's worth of steps, as the
    dismax trainer logs it)."""
    import torch  # optional dependency: the comparison runs only where torch is installed

    from dismax.gan.reference_torch import ReferenceGan
    from dismax.gan.steps import init_ensemble, member_state

    t, m = config.train, config.model
    if len({t.lr_gen, t.lr_coord, t.lr_dist}) > 1:
        raise SystemExit("error: the PyTorch reference uses one learning rate; set lr_gen = lr_coord = lr_dist")
    torch.set_num_threads(2)
    setup = trainer.make_setup(config, data.counts, data.lattice)
    state = member_state(init_ensemble(setup, [config.seed], [m.w_dist]), 0)
    reference = ReferenceGan(data.counts, data.lattice, m.w_dist, layout="dense", latent_dim=m.latent_dim,
                             gen_channels=m.gen_channels, bn_eps=m.bn_eps, n_neighbors=m.n_neighbors,
                             gp_weight=m.gp_weight, lr=t.lr_gen, betas=(t.beta1, t.beta2))
    reference.load_dismax(state.gen_params, state.gen_stats, state.critic_params)
    loader = trainer.make_loader(data, config, config.seed)
    rng = np.random.default_rng([config.seed, 17])
    lattice = data.lattice.astype(float)
    repeats = int(round(lattice[0, 0] / lattice_constant))
    rows, wasserstein, started = [], [], time.monotonic()
    for step in range(steps):
        crystals, distances = loader.batch(step)
        batch = len(distances)
        terms = reference.critic_step(torch.tensor(np.asarray(crystals.frac)), torch.tensor(np.asarray(distances)),
                                      torch.tensor(rng.standard_normal((batch, m.latent_dim)), dtype=torch.float32),
                                      torch.tensor(rng.random(batch), dtype=torch.float32),
                                      torch.tensor(rng.random(batch), dtype=torch.float32))
        wasserstein.append(float(terms["wasserstein"].detach()))
        index = step % loader.steps_per_epoch if t.gen_cadence == "epoch" else step
        if index % t.gen_int == 0:
            reference.generator_step(torch.tensor(rng.standard_normal((batch, m.latent_dim)), dtype=torch.float32))
        if step + 1 in eval_steps:
            reference.generator.eval()
            with torch.no_grad():
                z = torch.tensor(rng.standard_normal((n, m.latent_dim)), dtype=torch.float32)
                frac = reference.generator(z).numpy().reshape(n, -1, 3).astype(float)
            atoms, sites = aligned_site_fraction(frac, lattice, repeats)
            close = float(trainer.close_pair_counts(jnp.asarray(frac), data.lattice, t.close_pair_cutoff).mean())
            rows.append({"step": step + 1, "minutes": round((time.monotonic() - started) / 60, 2),
                         "site_fraction": atoms, "distinct_sites": sites, "close_pairs": close,
                         "distance_dis": float(np.mean(wasserstein[-loader.steps_per_epoch:]))})
            print(f"  torch step {step + 1}: site_fraction {atoms:.3f}, distinct_sites {sites:.3f}, "
                  f"close_pairs {close:.1f}, distance_dis {rows[-1]['distance_dis']:.3f}", flush=True)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def comparison_rows(rows: list[dict], reference_rows: list[dict]) -> list[dict]:
    """Both implementations' evaluations in one table (long format, ``implementation`` = dismax | pytorch)."""
    keys = ("step", "site_fraction", "distinct_sites", "close_pairs", "distance_dis")
    return ([{"implementation": "dismax", **{k: r[k] for k in keys}} for r in rows]
            + [{"implementation": "pytorch", **{k: r[k] for k in keys}} for r in reference_rows])


def write_outputs(rows: list[dict], baseline, directory: Path, reference_rows=()) -> None:
    """learning.csv and learning.png (three panels against training steps) in ``directory``; with
    ``reference_rows`` (the PyTorch run) also learning_comparison.csv, and every panel shows both runs."""
    import matplotlib  # optional heavy dependency, only needed for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_csv(directory / "learning.csv", rows)
    if reference_rows:
        write_csv(directory / "learning_comparison.csv", comparison_rows(rows, reference_rows))
    runs = [("dismax", rows, "C0")] + ([("PyTorch", reference_rows, "C1")] if reference_rows else [])
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, table, colour in runs:
        steps = [r["step"] for r in table]
        axes[0].plot(steps, [r["site_fraction"] for r in table], marker="o", ms=3, color=colour,
                     label=f"{label}: atoms")
        axes[0].plot(steps, [r["distinct_sites"] for r in table], marker="s", ms=3, ls=":", color=colour,
                     label=f"{label}: distinct sites")
        axes[1].plot(steps, [r["close_pairs"] for r in table], marker="o", ms=3, color=colour, label=label)
        axes[2].plot(steps, [r["distance_dis"] for r in table], marker="o", ms=3, color=colour, label=label)
    for value, style in zip(baseline, ("--", ":")):
        axes[0].axhline(value, color="grey", ls=style, lw=1)
    axes[0].plot([], [], color="grey", ls="--", label="uniform random positions")
    axes[0].set(title="atoms within 0.8 Å of an FCC site (aligned)", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    axes[1].set(title="pairs < 1.5 Å per structure")
    axes[2].set(title="Wasserstein estimate (epoch mean)")
    for ax in axes:
        ax.set_xlabel("critic steps")
    if reference_rows:
        axes[1].legend(fontsize=7)
    figure.tight_layout()
    atomic_write(directory / "learning.png", lambda handle: figure.savefig(handle, format="png", dpi=90),
                 binary=True)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cryingan_alloy_2x2x2_small.yaml")
    parser.add_argument("--run-dir", default="runs/cryingan_learning")
    parser.add_argument("--every", type=int, default=5, help="epochs between evaluations")
    parser.add_argument("--n", type=int, default=100, help="generated structures per evaluation")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    parser.add_argument("--lattice-constant", type=float, default=3.6, help="FCC conventional cell, Å")
    parser.add_argument("--torch", action="store_true", help="also train the PyTorch reference for comparison")
    parser.add_argument("--torch-steps", type=int, default=None,
                        help="PyTorch steps (default: as many as the dismax run made)")
    parser.add_argument("--no-train", action="store_true",
                        help="do not train: tabulate (and compare) the run directory's existing metrics")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    overrides = list(args.overrides) + [f"train.val_every={args.every}"]
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    config = load_config(args.config, overrides)
    trainer.check(config)
    with exclusive_lock(Path(args.run_dir), "run directory"):
        run = prepare_run(config, Path(args.run_dir))
        if not args.no_train:
            trainer.train(config, run, site_evaluation(args.every, args.n, args.lattice_constant))
    rows = learning_rows(run.read_metrics())
    data = trainer.load_training_data(config)
    lattice = data.lattice.astype(float)
    repeats = int(round(lattice[0, 0] / args.lattice_constant))
    uniform = np.random.default_rng(0).random((args.n, data.crystals.frac.shape[1], 3))
    baseline = aligned_site_fraction(uniform, lattice, repeats)
    reference_rows = []
    if args.torch:
        steps = args.torch_steps or int(rows[-1]["step"])
        print(f"PyTorch reference: {steps} steps")
        reference_rows = torch_rows(config, data, steps, {int(r["step"]) for r in rows}, args.n,
                                    args.lattice_constant)
    write_outputs(rows, baseline, run.path, reference_rows)
    print(f"{args.config} {' '.join(args.overrides)}: uniform random positions: site_fraction {baseline[0]:.3f}, "
          f"distinct_sites {baseline[1]:.3f}")
    print(" ".join(f"{c:>13}" for c in COLUMNS))
    for r in rows:
        print(" ".join(f"{r[c]:>13.4g}" for c in COLUMNS))
    print(f"written: {run.path / 'learning.csv'}, {run.path / 'learning.png'}")


if __name__ == "__main__":
    main()
