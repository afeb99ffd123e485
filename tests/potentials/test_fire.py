"""Batched FIRE (dismax.potentials.fire): convergence, agreement with ASE FIRE, bad structures, table overflow and rebuilds."""

import numpy as np
import pytest
from ase.build import bulk

from dismax.potentials.fire import FireSettings, compiled_relaxation, relax, step_cost
from dismax.errors import DismaxInputError
from dismax.potentials import original_sw
from dismax.structures import Crystals

from tests.potentials.test_stillinger_weber import matscipy_calculator

DIAMOND_SW = -4.33652  # eV/atom
CHUNK = 4


def perturbed_diamond(n_structures, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    atoms_list = []
    for _ in range(n_structures):
        atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)
        atoms.positions += rng.normal(0.0, noise, atoms.positions.shape)
        atoms_list.append(atoms)
    return atoms_list


def test_relaxes_back_to_diamond():
    result = relax(Crystals.from_ase(perturbed_diamond(2)), original_sw(), fmax=1e-3, chunk_size=CHUNK)
    assert list(result.status) == ["converged"] * 2
    assert np.all(result.e_initial > DIAMOND_SW + 0.1)
    np.testing.assert_allclose(result.e_final, DIAMOND_SW, atol=2e-5)
    assert np.all(result.fmax < 1e-3) and np.all(result.steps > 10)


def test_final_energies_match_ase_fire():
    from ase.optimize import FIRE

    atoms_list = perturbed_diamond(3, noise=0.2, seed=1)
    result = relax(Crystals.from_ase(atoms_list), original_sw(), fmax=0.05, chunk_size=CHUNK)
    assert list(result.status) == ["converged"] * 3
    for b, atoms in enumerate(atoms_list):
        atoms.calc = matscipy_calculator(original_sw())
        FIRE(atoms, logfile=None).run(fmax=0.05, steps=1000)
        assert abs(result.e_final[b] - atoms.get_potential_energy() / len(atoms)) < 1e-3
        assert result.fmax[b] == pytest.approx(np.linalg.norm(
            matscipy_forces(result.crystals[b]), axis=1).max(), abs=1e-3)


def ase_fire_trajectory(atoms, fmax, steps):
    """Positions (Å) of ASE's FIRE (its defaults) after 0, 1, 2, ... steps, and its step count."""
    from ase.optimize import FIRE

    optimizer = FIRE(atoms, logfile=None)
    positions = []
    optimizer.attach(lambda: positions.append(atoms.positions.copy()))  # at the start and after every step
    optimizer.run(fmax=fmax, steps=steps)
    return positions, optimizer.nsteps


def test_fire_steps_equal_ase_fire_step_by_step():
    """In float64 the engine takes ASE's FIRE steps: the same positions after 1, 10 and 50 steps (ASE with
    matscipy's Stillinger–Weber, the same parameters) and the same number of steps to convergence."""
    import jax

    atoms = perturbed_diamond(1, noise=0.2, seed=1)[0]
    crystals = Crystals.from_ase([atoms])
    atoms.calc = matscipy_calculator(original_sw())
    reference, ase_steps = ase_fire_trajectory(atoms, fmax=1e-3, steps=1000)
    assert ase_steps > 60 and len(reference) == ase_steps + 1
    lattice = np.asarray(crystals.lattice[0])
    settings = FireSettings(dtype="float64")
    with jax.enable_x64(True):
        for steps in (1, 10, 50):
            result = relax(crystals, original_sw(), fmax=1e-3, max_steps=steps, settings=settings)
            assert result.status[0] == "max_steps" and result.steps[0] == steps
            difference = np.asarray(result.crystals.frac[0]) - reference[steps] @ np.linalg.inv(lattice)
            difference -= np.round(difference)
            np.testing.assert_allclose(difference @ lattice, 0.0, atol=1e-8)  # Å
        converged = relax(crystals, original_sw(), fmax=1e-3, settings=settings)
    assert converged.status[0] == "converged" and converged.steps[0] == ase_steps


def test_fixed_atoms_stay_and_the_free_ones_take_ase_fire_steps_with_fix_atoms():
    """``free``: in float64 the free atoms take the steps of ASE's FIRE under ``FixAtoms`` of the others (after
    10 and 30 steps and to convergence), the fixed atoms never move, and ``fmax`` is the largest free force."""
    import jax
    from ase.constraints import FixAtoms

    atoms = perturbed_diamond(1, noise=0.2, seed=2)[0]
    crystals = Crystals.from_ase([atoms])
    free = np.zeros((1, len(atoms)), bool)
    free[0, ::3] = True
    atoms.calc = matscipy_calculator(original_sw())
    atoms.set_constraint(FixAtoms(mask=~free[0]))
    reference, ase_steps = ase_fire_trajectory(atoms, fmax=1e-3, steps=1000)
    lattice = np.asarray(crystals.lattice[0])
    settings = FireSettings(dtype="float64")
    with jax.enable_x64(True):
        for steps in (10, 30, None):
            result = relax(crystals, original_sw(), fmax=1e-3, max_steps=steps or 1000, settings=settings, free=free)
            done = steps or ase_steps
            assert result.steps[0] == done and result.status[0] == ("max_steps" if steps else "converged")
            difference = np.asarray(result.crystals.frac[0]) - reference[done] @ np.linalg.inv(lattice)
            difference -= np.round(difference)
            np.testing.assert_allclose(difference @ lattice, 0.0, atol=1e-8)  # Å
    moved = np.asarray(result.crystals.frac[0]) - np.asarray(crystals.frac[0])
    moved -= np.round(moved)
    assert np.abs(moved[~free[0]]).max() < 1e-12 and np.abs(moved[free[0]]).max() > 1e-3  # frac round trip only
    forces = matscipy_forces(result.crystals)
    assert result.fmax[0] == pytest.approx(np.linalg.norm(forces[free[0]], axis=1).max(), abs=1e-6)
    assert np.linalg.norm(forces[~free[0]], axis=1).max() > 10 * result.fmax[0]  # fixed atoms are not relaxed
    with pytest.raises(DismaxInputError, match="free has shape"):
        relax(crystals, original_sw(), free=free[:, :5])


def test_float64_needs_x64_mode():
    from dismax.errors import DismaxInputError

    with pytest.raises(DismaxInputError, match="x64"):
        relax(Crystals.from_ase(perturbed_diamond(1)), original_sw(), settings=FireSettings(dtype="float64"))


def test_step_cap_bounds_the_whole_displacement():
    """One step from rest moves every atom by dt²·F, scaled down so that the norm of the whole (N·3)
    displacement is max_step (ASE's rule, not the largest atomic displacement)."""
    from dismax.potentials.evaluate import energies_and_forces

    crystals = Crystals.from_ase(perturbed_diamond(1, noise=0.3, seed=7))
    _, forces = energies_and_forces(original_sw(), crystals)
    free = FireSettings().dt_start ** 2 * np.asarray(forces[0], np.float64)  # the uncapped first step (Å)
    max_step = 1.5 * np.linalg.norm(free, axis=1).max()  # no atom would reach it alone
    assert max_step < np.linalg.norm(free)
    moved = relax(crystals, original_sw(), max_steps=1, settings=FireSettings(max_step=max_step))
    difference = np.asarray(moved.crystals.frac[0], np.float64) - np.asarray(crystals.frac[0])
    difference -= np.round(difference)
    np.testing.assert_allclose(difference @ np.asarray(crystals.lattice[0]), free * max_step / np.linalg.norm(free),
                               atol=2e-5)


def matscipy_forces(crystals):
    atoms = crystals.to_ase()[0]
    atoms.calc = matscipy_calculator(original_sw())
    return atoms.get_forces()


def test_bad_structures_do_not_change_the_others():
    good = Crystals.from_ase(perturbed_diamond(3, seed=2))
    close = good.to_numpy()[0]
    frac = np.array(close.frac)
    frac[0, 1] = frac[0, 0] + np.array([0.1, 0.0, 0.0]) / close.lattice[0, 0, 0]  # 0.1 Å apart
    nan = good.to_numpy()[1]
    nan_frac = np.array(nan.frac)
    nan_frac[0, 5] = np.nan
    bad = Crystals.concatenate([Crystals(frac, close.lattice, close.species), good[0:2],
                                Crystals(nan_frac, nan.lattice, nan.species), good[2:3]])
    alone = relax(good, original_sw(), chunk_size=CHUNK)
    mixed = relax(bad, original_sw(), chunk_size=CHUNK)
    assert mixed.status[3] == "failed" and mixed.steps[3] == 0
    keep = [1, 2, 4]
    # A chunk runs with the largest table sizes any member needs, so the summation order (not the
    # result) can differ from a run without the bad structures: equal to float32 rounding (SW forces in
    # float32 carry ~4e-5 eV/Å of it on 256-atom a-Si).
    for name in ("status", "steps"):
        np.testing.assert_array_equal(getattr(mixed, name)[keep], getattr(alone, name))
    for name in ("e_initial", "e_final"):
        np.testing.assert_allclose(getattr(mixed, name)[keep], getattr(alone, name), atol=1e-5)
    np.testing.assert_allclose(mixed.fmax[keep], alone.fmax, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mixed.crystals.frac)[keep], np.asarray(alone.crystals.frac), atol=1e-6)
    assert np.isfinite(mixed.e_initial[0]) and mixed.e_initial[0] > 10.0  # the close pair is very repulsive


class FailsWhenStretched:
    """SW that returns NaN once every bond is longer than 2.38 Å (a test double for a blow-up)."""

    sw = original_sw()
    cutoff = sw.cutoff
    check_species = sw.check_species

    def energy_from_displacements(self, dR, mask):
        import jax.numpy as jnp

        r = jnp.sqrt(jnp.sum(dR**2, -1) + 1e-12)
        shortest = jnp.min(jnp.where(mask, r, 10.0))
        return jnp.where(shortest > 2.38, jnp.nan, self.sw.energy_from_displacements(dR, mask))


@pytest.mark.slow  # ~45 s
def test_non_finite_energy_freezes_and_fails_one_structure():
    # Structure 0 sits in an expanded cell (bonds relax towards 2.43 Å) and hits the NaN region on the
    # way; structure 1 (bonds -> 2.35 Å) never does.
    stretched = bulk("Si", "diamond", a=5.60, cubic=True) * (2, 2, 2)
    stretched.positions += np.random.default_rng(4).normal(0.0, 0.1, stretched.positions.shape)
    crystals = Crystals.from_ase([stretched] + perturbed_diamond(1, seed=4))
    potential = FailsWhenStretched()  # one instance: both runs share one compiled program
    result = relax(crystals, potential, fmax=1e-3, chunk_size=CHUNK)
    reference = relax(crystals[1:2], potential, fmax=1e-3, chunk_size=CHUNK)  # never stretched
    assert result.status[0] == "failed" and result.steps[0] > 0
    assert np.all(np.isfinite(np.asarray(result.crystals.frac[0])))  # frozen at its last finite state
    assert np.isfinite(result.e_final[0]) and result.e_final[0] < result.e_initial[0]
    assert result.status[1] == reference.status[0] == "converged"
    assert result.steps[1] == reference.steps[0]
    np.testing.assert_allclose(result.e_final[1], reference.e_final[0], atol=1e-6)


@pytest.mark.slow  # ~60 s; test_small_skin_rebuilds_tables_and_gives_the_same_minimum covers rebuilding by default
def test_neighbour_overflow_is_rebuilt_larger():
    crystals = Crystals.from_ase(perturbed_diamond(2, seed=5))
    normal = relax(crystals, original_sw(), chunk_size=CHUNK)
    tight = relax(crystals, original_sw(), chunk_size=CHUNK, settings=FireSettings(capacity_multiplier=0.3))
    assert list(tight.status) == list(normal.status) == ["converged"] * 2
    np.testing.assert_allclose(tight.e_final, normal.e_final, atol=1e-6)
    np.testing.assert_array_equal(tight.steps, normal.steps)


def test_table_head_room_does_not_change_the_compiled_program():
    """capacity_multiplier only sizes the first tables on the host, so runs that differ in it alone (such as
    a regrown table and a default one of the same size) share one compiled relaxation."""
    from dismax.potentials.fire import _relax_program

    tight = _relax_program(original_sw(), FireSettings(capacity_multiplier=0.3), 32)
    assert tight is _relax_program(original_sw(), FireSettings(), 32)
    assert tight is not _relax_program(original_sw(), FireSettings(skin=0.3), 32)
    assert tight is not _relax_program(original_sw(), FireSettings(), 36)


def test_step_limit_and_already_converged():
    crystals = Crystals.from_ase(perturbed_diamond(1, seed=6) + [bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)])
    result = relax(crystals, original_sw(), max_steps=5, chunk_size=CHUNK)
    assert list(result.status) == ["max_steps", "converged"]
    assert list(result.steps) == [5, 0]


def test_small_skin_rebuilds_tables_and_gives_the_same_minimum():
    # With a 0.05 Å skin the tables are rebuilt many times during the relaxation (atoms move ~0.1 Å).
    crystals = Crystals.from_ase(perturbed_diamond(2, noise=0.15, seed=10))
    wide = relax(crystals, original_sw(), fmax=1e-3, chunk_size=CHUNK)
    narrow = relax(crystals, original_sw(), fmax=1e-3, chunk_size=CHUNK, settings=FireSettings(skin=0.05))
    assert list(narrow.status) == list(wide.status) == ["converged"] * 2
    np.testing.assert_allclose(narrow.e_final, wide.e_final, atol=1e-5)
    np.testing.assert_allclose(narrow.e_final, DIAMOND_SW, atol=2e-5)


@pytest.mark.slow  # ~35 s
def test_compiled_relaxation_and_step_cost_describe_the_relax_loop():
    """The profiled program is the loop relax() runs: same steps and final energies; XLA counts work."""
    crystals = Crystals.from_ase(perturbed_diamond(CHUNK))  # one chunk of the size the other tests compile
    result = relax(crystals, original_sw(), fmax=1e-3, max_steps=60, chunk_size=CHUNK)
    compiled, arguments = compiled_relaxation(crystals, original_sw(), fmax=1e-3, max_steps=60)
    _, status, steps, _, e_final, _, _ = (np.asarray(x) for x in compiled(*arguments))
    np.testing.assert_array_equal(steps, result.steps)
    np.testing.assert_allclose(e_final / crystals.n_atoms, result.e_final, rtol=1e-6)
    cost = step_cost(crystals, original_sw(), repeats=1)
    assert cost["flops"] > 0 and cost["bytes"] > 0 and 4 <= cost["capacity"] < crystals.n_atoms


def test_table_forces_match_the_reference_until_the_skin_is_used_up():
    """Forces from the skin tables (per-slot gradients, reverse-slot gathers) equal the independent
    evaluation at the build positions and after every atom moved by up to half the skin."""
    import jax.numpy as jnp

    from dismax.potentials.evaluate import energies_and_forces
    from dismax.potentials.fire import _chunk_program

    settings = FireSettings()
    crystals = Crystals.from_ase(perturbed_diamond(CHUNK, noise=0.2, seed=3)).to_numpy()
    program, R, lattice, species, _ = _chunk_program(crystals, original_sw(), settings)
    tables, overflow = program.build(R, lattice)
    assert not np.any(overflow)
    direction = np.random.default_rng(8).normal(size=R.shape)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    for length in (0.0, 0.49 * settings.skin):
        moved = np.asarray(R, np.float64) + length * direction
        forces = program.force(jnp.asarray(moved, jnp.float32), tables.indices, tables.shifts, tables.reverse,
                               species)
        frac = np.einsum("bnj,bji->bni", moved, np.linalg.inv(crystals.lattice)) % 1.0
        _, reference = energies_and_forces(original_sw(), Crystals(frac, crystals.lattice, crystals.species))
        np.testing.assert_allclose(np.asarray(forces), np.asarray(reference), atol=2e-4)


@pytest.mark.slow  # ~45 s
def test_rebuilding_only_stale_tables_gives_the_trajectory_of_rebuilding_every_step():
    """A zero skin rebuilds every structure's table at every step; the default skin rebuilds rarely and
    per structure, with the same steps and minima."""
    crystals = Crystals.from_ase(perturbed_diamond(CHUNK, noise=0.15, seed=12))
    runs = {}
    for skin in (0.0, FireSettings().skin):
        compiled, arguments = compiled_relaxation(crystals, original_sw(), fmax=1e-3, max_steps=400,
                                                  settings=FireSettings(skin=skin))
        names = ("positions", "status", "steps", "e_initial", "e_final", "fmax", "rebuilds")
        runs[skin] = dict(zip(names, (np.asarray(x) for x in compiled(*arguments))))
    every, rarely = runs[0.0], runs[FireSettings().skin]
    assert np.all(every["status"] == 1) and np.all(rarely["status"] == 1)  # converged
    np.testing.assert_array_equal(every["steps"], rarely["steps"])
    np.testing.assert_array_equal(every["rebuilds"], every["steps"])
    assert np.all(rarely["rebuilds"] >= 0) and np.all(rarely["rebuilds"] < every["steps"] // 10)
    np.testing.assert_allclose(every["e_final"], rarely["e_final"], rtol=1e-6)
    np.testing.assert_allclose(every["positions"], rarely["positions"], atol=1e-4)  # Å


def test_structures_that_outlast_the_chunk_give_the_results_of_relaxing_them_alone():
    """The running structures of a chunk move to smaller batches as the others finish (8 -> 4 here); each
    structure's steps and minimum are the ones it reaches in a chunk of its own. In float64: in float32 the
    batch size changes XLA's summation order, and near fmax = 1e-3 that rounding can flip FIRE's P = F·v test."""
    import jax

    atoms = perturbed_diamond(8, noise=0.05, seed=20)
    atoms[5].positions += np.random.default_rng(21).normal(0.0, 0.2, atoms[5].positions.shape)  # slow ones
    atoms[6].positions += np.random.default_rng(22).normal(0.0, 0.25, atoms[6].positions.shape)
    crystals = Crystals.from_ase(atoms)
    settings = FireSettings(dtype="float64")
    with jax.enable_x64(True):
        together = relax(crystals, original_sw(), fmax=1e-3, chunk_size=8, settings=settings)
        alone = relax(crystals, original_sw(), fmax=1e-3, chunk_size=1, settings=settings)
    assert list(together.status) == ["converged"] * 8
    assert np.sum(together.steps > np.sort(together.steps)[3]) >= 2  # some outlast half of the chunk
    np.testing.assert_array_equal(together.steps, alone.steps)
    np.testing.assert_allclose(together.e_final, alone.e_final, atol=1e-6)
