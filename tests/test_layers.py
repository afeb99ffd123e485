"""The package's layering (design.md, "The flow"): data flows one way and each concept has one home.

Stages, left to right: data → models (gan, diffusion, vae, ssl; the training CLI) → sample → post-process →
relax → metrics → report. A module may import its own stage, stages to its left and the shared layers; the
shared layers (structures, geometry, io, config, runs, checkpoint, devices, the batch loader, nn,
potentials, the cluster expansion, ...) import only shared layers. The training loop that every model
shares reads datasets, so it sits with the models. Imports are read with ``ast``, including
imports inside functions. A new module must be placed in ``STAGES`` (the test says so), so no module is
left unchecked. Minimum-image rounding is written only in ``geometry.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dismax"

SHARED = 0
DATA, MODELS, SAMPLE, POSTPROCESS, RELAX, METRICS, REPORT = range(1, 8)
STAGE_NAMES = {SHARED: "shared layer", DATA: "data", MODELS: "models", SAMPLE: "sample",
               POSTPROCESS: "post-process", RELAX: "relax", METRICS: "metrics", REPORT: "report"}

# Module-name prefixes (longest match wins) and their stage.
STAGES = {
    "dismax": SHARED,
    "dismax.errors": SHARED,
    "dismax.structures": SHARED,
    "dismax.geometry": SHARED,
    "dismax.io": SHARED,
    "dismax.config": SHARED,
    "dismax.runs": SHARED,
    "dismax.checkpoint": SHARED,
    "dismax.devices": SHARED,
    "dismax.validation": SHARED,
    "dismax.cli": SHARED,
    "dismax.cluster_expansion": SHARED,
    "dismax.nn": SHARED,
    "dismax.potentials": SHARED,
    "dismax.potentials.trainer": MODELS,  # fits a potential through the shared training loop
    "dismax.registry": SHARED,          # the model registry
    "dismax.models": SHARED,
    "dismax.data.loader": SHARED,       # batching: the one batch loader
    "dismax.data": DATA,
    "dismax.gan": MODELS,
    "dismax.diffusion": MODELS,
    "dismax.vae": MODELS,
    "dismax.ssl": MODELS,
    "dismax.train": MODELS,
    "dismax.training": MODELS,          # the training loop every model shares; it reads datasets
    "dismax.sample": SAMPLE,
    "dismax.bench.periodic": POSTPROCESS,
    "dismax.bench.postprocess": POSTPROCESS,
    "dismax.bench.alloy": POSTPROCESS,
    "dismax.relax": RELAX,
    "dismax.bench.rdf": METRICS,
    "dismax.bench.motifs": METRICS,
    "dismax.bench.bootstrap": METRICS,
    "dismax.bench": REPORT,
}
# Packages whose every module must be listed itself (a top-level catch-all would hide new modules).
EXPLICIT = {"dismax"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(name: str) -> int | None:
    """Stage of module ``name`` by its longest listed prefix; None when only a catch-all would match."""
    parts = name.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in STAGES:
            if prefix in EXPLICIT and length < len(parts):
                return None
            return STAGES[prefix]
    return None


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every dismax import in the file, inside functions too; ``from a import b`` names
    the module a.b when that is a module of the package, else a."""
    found = []
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else base))
    return [(line, name) for line, name in found if name == "dismax" or name.startswith("dismax.")]


def layering_violations(paths, root: Path = ROOT) -> list[str]:
    """One line per import against the flow (and per module not placed in ``STAGES``) in ``paths``, files
    under ``root`` (the repository)."""
    problems = []
    for path in paths:
        name = module_name(path, root)
        stage = stage_of(name)
        if stage is None:
            problems.append(f"{name}: not placed in a stage; add it to STAGES in tests/test_layers.py")
            continue
        for line, target in imported_modules(path, root):
            target_stage = stage_of(target)
            if target_stage is None:
                continue  # reported for the target's own file
            allowed = target_stage == SHARED if stage == SHARED else target_stage <= stage
            if not allowed:
                problems.append(f"{path.relative_to(root)}:{line}: {name} ({STAGE_NAMES[stage]}) imports "
                                f"{target} ({STAGE_NAMES[target_stage]})")
    return problems


# x - round(x), x -= round(x), x - floor(x + 0.5), x -= floor(x + 0.5): minimum image written inline.
_OPERAND = r"[\w.\[\]]+"
MINIMUM_IMAGE_PATTERNS = (
    re.compile(rf"({_OPERAND})\s*-\s*(?:\w+\.)?(?:round|rint)\(\s*\1\s*\)"),
    re.compile(r"-=\s*(?:\w+\.)?(?:round|rint)\("),
    re.compile(rf"(?:\w+\.)?floor\(\s*{_OPERAND}\s*\+\s*0?\.5\s*\)"),
)


def minimum_image_copies(paths) -> list[str]:
    """One line per source line of ``paths`` that writes minimum-image rounding."""
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(pattern.search(code) for pattern in MINIMUM_IMAGE_PATTERNS):
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{shown}:{number}: {line.strip()}")
    return found


def package_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_later_stage():
    problems = layering_violations(package_files())
    assert not problems, "imports against the flow:\n" + "\n".join(problems)


def test_minimum_image_is_written_only_in_geometry():
    paths = [p for p in package_files() + sorted((ROOT / "benchmarks").glob("*.py"))
             if p != PACKAGE / "geometry.py"]
    copies = minimum_image_copies(paths)
    assert not copies, "minimum image outside dismax/geometry.py:\n" + "\n".join(copies)


@pytest.mark.parametrize("source, expected", [
    ("d = d - np.round(d)\n", True),
    ("d -= np.round(d)\n", True),
    ("v = (delta - jnp.round(delta)) @ lattice\n", True),
    ("x = x - jnp.floor(x + 0.5)\n", True),
    ("shift = np.floor(frac[j] + 0.5)\n", True),
    ("f = np.round(targets @ inverse, 3) % 1\n", False),
    ("n = int(round(0.8 * n))\n", False),
    ("c = np.floor(r_max / widths + 0.5 + 1e-9)\n", False),
])
def test_minimum_image_detector(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert bool(minimum_image_copies([path])) == expected


def test_layering_detector_flags_imports_against_the_flow(tmp_path, monkeypatch):
    probes = {
        "dismax/data/_probe.py": ("from dismax.relax import driver\n", True),
        "dismax/gan/_probe.py": ("def f():\n    from dismax.bench import alloy\n", True),
        "dismax/config_probe.py": ("import dismax.train\n", True),
        "dismax/_unplaced.py": ("import numpy\n", True),
        "dismax/bench/_probe.py": ("from dismax.relax import driver\nfrom dismax import geometry\n", False),
        "dismax/relax/_probe.py": ("from dismax.bench.postprocess import move_atoms_apart\n", False),
        "dismax/relax/_probe2.py": ("from dismax.bench import rdf\n", True),
    }
    monkeypatch.setitem(STAGES, "dismax.config_probe", SHARED)
    for relative, (source, expected) in probes.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        assert bool(layering_violations([path], root=tmp_path)) == expected, relative
