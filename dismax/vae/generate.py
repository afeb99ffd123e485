"""From decoder outputs to Wyckoff genes, CIFs and the Dis-GEN generation metrics.

Pipeline per latent (Dis-GEN §4.2): decode -> gene (or generation failure) -> symmetry-matching check
(SMA) -> snap onto Wyckoff positions and write a symmetrised CIF -> re-parse -> structural validity and
charge neutrality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from dismax.vae import representation as rep
from dismax.vae.chemistry import charge_neutral, composition_of, oxidation_state_source, structurally_valid
from dismax.vae.genes import WyckoffGene
from dismax.vae.representation import GenerationFailure, LatticeScaler
from dismax.vae.structure import gene_to_cif, parse_generated_cif, symmetry_matches


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


@dataclass
class GenerationReport:
    """Counts of the generation pipeline; `as_dict` adds the rates."""

    samples: int = 0
    generation_failures: int = 0
    sma_failures: int = 0
    parse_failures: int = 0
    structurally_valid: int = 0
    charge_neutral: int = 0
    valid: int = 0
    disordered: int = 0
    oxidation_states: str = field(default_factory=oxidation_state_source)

    def as_dict(self) -> dict:
        genes = self.samples - self.generation_failures - self.sma_failures
        parsed = genes - self.parse_failures

        def rate(numerator, denominator):
            return numerator / denominator if denominator else float("nan")

        return {
            **self.__dict__,
            "wyckoff_genes": genes,
            "generation_pass_rate": rate(self.samples - self.generation_failures, self.samples),
            "sma": rate(genes, self.samples),
            "sma_reference_formula": 1.0 - rate(self.sma_failures, self.samples),
            "parse_rate": rate(parsed, genes),
            "structural_validity": rate(self.structurally_valid, genes),
            "charge_neutrality": rate(self.charge_neutral, genes),
            "structural_validity_of_parsed": rate(self.structurally_valid, parsed),
            "charge_neutrality_of_parsed": rate(self.charge_neutral, parsed),
            "total_valid": rate(self.valid, genes),
            "disordered_fraction": rate(self.disordered, genes),
        }


def evaluate_genes(results: list, out_dir: Path | None = None, prefix: str = "sample",
                   pauling_test: bool = True, first_index: int = 0) -> tuple[GenerationReport, list[WyckoffGene]]:
    """Run SMA, CIF writing/parsing, validity and neutrality on decoded results; write CIFs of Wyckoff
    genes to out_dir (if given). Returns the report and the genes that passed SMA."""
    report = GenerationReport(samples=len(results))
    kept = []
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    for index, result in enumerate(results):
        if isinstance(result, GenerationFailure):
            report.generation_failures += 1
            continue
        if not symmetry_matches(result):
            report.sma_failures += 1
            continue
        kept.append(result)
        report.disordered += result.n_disordered > 0
        name = f"{prefix}_{first_index + index:06d}"
        text = gene_to_cif(result, name)
        if out_dir is not None:
            (Path(out_dir) / f"{name}.cif").write_text(text)
        structure = parse_generated_cif(text)
        if structure is None:
            report.parse_failures += 1
            continue
        valid_structure = structurally_valid(structure)
        neutral = charge_neutral(composition_of(structure), pauling_test=pauling_test)
        report.structurally_valid += valid_structure
        report.charge_neutral += neutral
        report.valid += valid_structure and neutral
    return report, kept


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
