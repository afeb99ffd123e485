"""Datasets: builders (alloy CE Monte Carlo, a-Si melt-quench, ...), the registry/cache and loaders.

``BUILDERS`` maps a dataset name to ``"module:function"``; the function has the signature
``build(size: str, seed: int, out_dir: Path) -> None`` and writes ``train.extxyz``, ``val.extxyz`` and
``params.json`` into ``out_dir``. Modules are imported only when a dataset is built.
"""

BUILDERS: dict[str, str] = {
    "alloy_300K_wide": "dismax.data.alloy:build_300K_wide",
    "alloy_300K_narrow": "dismax.data.alloy:build_300K_narrow",
    "alloy_1500K_wide": "dismax.data.alloy:build_1500K_wide",
    "alloy_1500K_narrow": "dismax.data.alloy:build_1500K_narrow",
    "alloy_2x2x2_300K_wide": "dismax.data.alloy:build_2x2x2_300K_wide",
    "alloy_2x2x2_1500K_wide": "dismax.data.alloy:build_2x2x2_1500K_wide",
    "a_si": "dismax.data.a_si:build",
    "interface": "dismax.data.interface:build",
    "disordered_demo": "dismax.vae.demo:build",
}
# "module:function" (directory, size) -> str | None: why a cached build differs from what the builder writes now
# (e.g. other relaxation settings or potential weights), checked each time the cached build is used
STALE_CHECKS: dict[str, str] = {"interface": "dismax.data.interface:stale_reason"}
# datasets that are not extxyz train/val pairs: the files their builder must write
BUILT_FILES: dict[str, tuple[str, ...]] = {"disordered_demo": ("params.json",)}
