"""From decoder outputs to Wyckoff genes, CIFs and the Dis-GEN generation metrics.

Pipeline per latent (Dis-GEN §4.2): decode -> gene (or generation failure) -> symmetry-matching check
(SMA) -> snap onto Wyckoff positions, resolve overlapping orbits -> symmetrised CIF read back by pymatgen
with default tolerances -> declared space group confirmed by SpacegroupAnalyzer -> written; then
structural validity and charge neutrality. Rejected samples are listed with their stage and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from dismax.runs import atomic_write_text
from dismax.vae import representation as rep
from dismax.vae.chemistry import charge_neutral, composition_of, oxidation_state_source, structurally_valid
from dismax.vae.genes import WyckoffGene
from dismax.vae.representation import GenerationFailure, LatticeScaler
from dismax.vae.structure import Rejection, realise_gene, symmetry_matches


def outputs_to_numpy(outputs: dict) -> dict:
    """Decoder outputs as numpy with probabilities: element_probs, letter_probs, multiplicity_probs,
    disorder_probs, spacegroup_probs, xyz, lattice (standardised)."""
    return {
        "element_probs": np.asarray(jax.nn.softmax(outputs["element_logits"], -1)),
        "letter_probs": np.asarray(jax.nn.softmax(outputs["letter_logits"], -1)),
        "multiplicity_probs": np.asarray(jax.nn.softmax(outputs["multiplicity_logits"], -1)),
        "disorder_probs": np.asarray(jax.nn.sigmoid(outputs["disorder_logits"])),
        "spacegroup_probs": np.asarray(jax.nn.softmax(outputs["spacegroup_logits"], -1)),
        "xyz": np.asarray(outputs["xyz"]),
        "lattice": np.asarray(outputs["lattice"]),
    }


def decode_outputs(outputs: dict, scaler: LatticeScaler, element_acc: float = 0.05, disorder_acc: float = 0.5):
    """List of WyckoffGene or GenerationFailure, one per decoded latent."""
    arrays = outputs_to_numpy(outputs)
    lattice = scaler.inverse(arrays["lattice"])
    spacegroups = np.argmax(arrays["spacegroup_probs"], -1) + 1
    results = []
    for i in range(len(lattice)):
        try:
            results.append(rep.decode_gene(
                arrays["element_probs"][i], arrays["letter_probs"][i], arrays["multiplicity_probs"][i],
                arrays["disorder_probs"][i], arrays["xyz"][i], lattice[i], int(spacegroups[i]),
                element_acc=element_acc, disorder_acc=disorder_acc))
        except GenerationFailure as failure:
            results.append(failure)
    return results


REJECTION_STAGES = ("generation", "sma", "collapse", "overlap", "parse", "symmetry")


@dataclass
class GenerationReport:
    """Counts of the generation pipeline (rejections per stage in `rejected`); `as_dict` adds the rates.

    Stages, in order: generation (no Wyckoff gene), sma (letters/multiplicities do not match the space
    group), collapse and overlap (`structure.placed_sites`), parse (pymatgen cannot read the CIF with
    default tolerances), symmetry (SpacegroupAnalyzer finds another group). Only structures passing all of
    them are written; `structurally_valid`, `charge_neutral` and `valid` count written structures."""

    samples: int = 0
    rejected: dict = field(default_factory=lambda: dict.fromkeys(REJECTION_STAGES, 0))
    written: int = 0
    structurally_valid: int = 0
    charge_neutral: int = 0
    valid: int = 0
    disordered: int = 0
    oxidation_states: str = field(default_factory=oxidation_state_source)

    def add(self, other: "GenerationReport") -> None:
        """Accumulate the counts of another report (one sampling batch)."""
        self.samples += other.samples
        for stage, count in other.rejected.items():
            self.rejected[stage] += count
        for key in ("written", "structurally_valid", "charge_neutral", "valid", "disordered"):
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def as_dict(self) -> dict:
        rejected = self.rejected
        genes = self.samples - rejected["generation"] - rejected["sma"]
        cif_texts = genes - rejected["collapse"] - rejected["overlap"]

        def rate(numerator, denominator):
            return numerator / denominator if denominator else float("nan")

        return {
            **{key: value for key, value in self.__dict__.items() if key != "rejected"},
            "rejected": dict(rejected),
            "generation_failures": rejected["generation"],
            "sma_failures": rejected["sma"],
            "wyckoff_genes": genes,
            "generation_pass_rate": rate(self.samples - rejected["generation"], self.samples),
            "sma": rate(genes, self.samples),
            "sma_reference_formula": 1.0 - rate(rejected["sma"], self.samples),
            "parse_rate": rate(cif_texts - rejected["parse"], cif_texts),
            "written_rate": rate(self.written, genes),
            "structural_validity": rate(self.structurally_valid, genes),
            "charge_neutrality": rate(self.charge_neutral, genes),
            "charge_neutrality_of_written": rate(self.charge_neutral, self.written),
            "total_valid": rate(self.valid, genes),
            "disordered_fraction": rate(self.disordered, self.written),
        }


def evaluate_genes(results: list, out_dir: Path | None = None, prefix: str = "sample",
                   pauling_test: bool = True, first_index: int = 0) -> tuple[GenerationReport, list[tuple]]:
    """Check decoded results stage by stage (see GenerationReport) and write the CIFs of the structures that
    pass every check into out_dir (if given). Returns the report and (name, stage, reason) per rejection."""
    report = GenerationReport(samples=len(results))
    rejections = []
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    for index, result in enumerate(results):
        name = f"{prefix}_{first_index + index:06d}"
        try:
            if isinstance(result, GenerationFailure):
                raise Rejection("generation", str(result))
            if not symmetry_matches(result):
                raise Rejection("sma", f"Wyckoff sites {', '.join(s.label for s in result.sites)} do not all "
                                       f"exist in space group {result.spacegroup}")
            text, structure = realise_gene(result, name)
        except Rejection as rejection:
            report.rejected[rejection.stage] += 1
            rejections.append((name, rejection.stage, str(rejection)))
            continue
        if out_dir is not None:
            atomic_write_text(Path(out_dir) / f"{name}.cif", text)
        report.written += 1
        report.disordered += result.n_disordered > 0
        valid_structure = structurally_valid(structure)
        neutral = charge_neutral(composition_of(structure), pauling_test=pauling_test)
        report.structurally_valid += valid_structure
        report.charge_neutral += neutral
        report.valid += valid_structure and neutral
    return report, rejections


def write_rejections(path: Path, rejections: list[tuple]) -> None:
    """CSV of rejected samples: sample, stage, reason (atomic write)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sample", "stage", "reason"])
    writer.writerows(rejections)
    atomic_write_text(Path(path), buffer.getvalue())


def reconstruction_metrics(outputs: dict, sites: np.ndarray, lattice: np.ndarray, spacegroup: np.ndarray,
                           scaler: LatticeScaler) -> dict:
    """Dis-GEN Tables 1-2 on a reconstructed set: sites (B, 9, 183) targets, raw lattice (B, 6)."""
    arrays = outputs_to_numpy(outputs)
    real = sites[..., rep.LETTER.start] == 0  # not padding
    disordered = real & (sites[..., rep.DISORDER] > 0.5)
    ordered = real & ~disordered
    letter_ok = np.argmax(arrays["letter_probs"], -1) == np.argmax(sites[..., rep.LETTER], -1)
    mult_ok = np.argmax(arrays["multiplicity_probs"], -1) == np.argmax(sites[..., rep.MULTIPLICITY], -1)
    element_ok = np.argmax(arrays["element_probs"], -1) == np.argmax(sites[..., rep.ELEMENTS], -1)
    # occupancy MAE over the species (vacancy included) present on the true site
    present = sites[..., rep.ELEMENTS] > 0
    occupancy_error = np.abs(arrays["element_probs"] - sites[..., rep.ELEMENTS]) * present
    occupancy_mae = occupancy_error.sum(-1) / np.maximum(present.sum(-1), 1)
    xyz_mae = np.abs(arrays["xyz"] - sites[..., rep.XYZ]).mean(-1)
    flag_ok = (arrays["disorder_probs"] > 0.5) == (sites[..., rep.DISORDER] > 0.5)
    lattice_mae = np.abs(np.round(scaler.inverse(arrays["lattice"]), 1) - lattice).mean(0)

    def mean(values, mask):
        return float(values[mask].mean()) if mask.any() else float("nan")

    return {
        "structures": int(len(sites)),
        "spacegroup_accuracy": float(np.mean(np.argmax(arrays["spacegroup_probs"], -1) + 1 == spacegroup)),
        "disorder_flag_accuracy": mean(flag_ok, real),
        "lattice_mae_a_b_c": [float(x) for x in lattice_mae[:3]],
        "lattice_mae_alpha_beta_gamma": [float(x) for x in lattice_mae[3:]],
        "disordered_sites": int(disordered.sum()),
        "disordered_occupancy_mae": mean(occupancy_mae, disordered),
        "disordered_multiplicity_accuracy": mean(mult_ok, disordered),
        "disordered_letter_accuracy": mean(letter_ok, disordered),
        "disordered_coordinate_mae": mean(xyz_mae, disordered),
        "ordered_sites": int(ordered.sum()),
        "ordered_element_accuracy": mean(element_ok, ordered),
        "ordered_multiplicity_accuracy": mean(mult_ok, ordered),
        "ordered_letter_accuracy": mean(letter_ok, ordered),
        "ordered_coordinate_mae": mean(xyz_mae, ordered),
        "padding_letter_accuracy": mean(letter_ok, ~real),
    }
