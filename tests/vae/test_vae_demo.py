import json

import numpy as np

from dismax.data import registry
from dismax.vae import demo
from dismax.vae.chemistry import charge_neutral
from dismax.vae.ingest import ingest_cifs
from dismax.vae.structure import symmetry_matches


def test_demo_crystals_substitute_within_families_and_balance_charge():
    rng = np.random.default_rng(0)
    genes = [demo.random_gene(rng) for _ in range(30)]
    assert all(symmetry_matches(g) for g in genes)
    assert sum(g.n_disordered > 0 for g in genes) >= 8
    assert {g.spacegroup for g in genes} <= {p.group for p in demo.PROTOTYPES}
    assert np.mean([charge_neutral(demo.composition(g)) for g in genes]) >= 0.95
    families = [set(family) for p in demo.PROTOTYPES for c in p.chemistries for _, family in c.values()]
    for gene in genes:
        for site in gene.sites:
            symbols = {el for el, _ in site.occupancy}
            assert sum(v for _, v in site.occupancy) <= 1.0 + 1e-9
            compensated = any(symbols == {host, partner} for host, partner in demo.COMPENSATING.items())
            assert compensated or any(symbols <= family for family in families), site


def test_demo_lattice_follows_the_ionic_radii():
    rocksalt = next(p for p in demo.PROTOTYPES if p.name == "rocksalt")
    rng = np.random.default_rng(1)
    sizes = {}
    while len(sizes) < 2:
        gene = demo.random_gene(rng)
        symbols = {el for site in gene.sites for el, _ in site.occupancy}
        if gene.spacegroup == rocksalt.group and symbols in ({"Mg", "O"}, {"Ba", "Se"}):
            sizes[frozenset(symbols)] = gene.lattice[0]
    # MgO a ~ 4.2 Å, BaSe a ~ 6.6 Å
    assert sizes[frozenset({"Mg", "O"})] < 4.5 < 6.0 < sizes[frozenset({"Ba", "Se"})]


def test_disordered_demo_builds_through_the_dataset_registry(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.SIZES, "small", 5)
    directory = registry.build_dataset("disordered_demo", "small", seed=3, out_dir=tmp_path / "demo")
    params = json.loads((directory / "params.json").read_text())
    assert params["written"] == 5 and params["seed"] == 3
    result = ingest_cifs(directory, workers=1)
    assert len(result.genes) == 5 and not result.rejections  # the declared groups are found again
