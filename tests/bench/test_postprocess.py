import numpy as np

from dismax.bench.postprocess import move_atoms_apart


def _published_move_apart(frac, lattice, min_dist=1.5, max_iter=100):
    """Re-statement of the published script with pymatgen neighbour lists."""
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice(lattice), ["Si"] * len(frac), frac)
    iterations, count, first = 0, 999, None
    while count > 0 and iterations < max_iter:
        centres, neighbours, _, _ = structure.get_neighbor_list(min_dist)
        pairs = np.column_stack((centres, neighbours))
        if pairs.size == 0:
            count, pairs = 0, []
        else:
            pairs = np.unique(np.sort(pairs, axis=1), axis=0).tolist()
            count = len(pairs)
        first = count if first is None else first
        coords = structure.cart_coords
        for i, j in pairs:
            vector = coords[j] - coords[i]
            coords[j] = coords[i] + vector * ((min_dist + 0.1) / np.linalg.norm(vector))
        structure = Structure(structure.lattice, structure.species, coords, coords_are_cartesian=True)
        iterations += 1
    return structure.frac_coords, count == 0, iterations, first


def _structures(rng, batch=3, n=24):
    lattice = np.array([[8.0, 0, 0], [0.4, 7.6, 0], [0.2, 0.3, 8.2]])
    frac = rng.random((batch, n, 3))
    frac[:, 1] = frac[:, 0] + 0.05                       # a close pair
    frac[:, 2] = (frac[:, 3] + np.array([0.0, 0.0, 0.1])) % 1.0
    frac[:, 5] = np.array([0.995, 0.5, 0.5])             # close only through the periodic boundary
    frac[:, 6] = np.array([0.005, 0.52, 0.5])
    return frac, np.repeat(lattice[None], batch, 0)


def test_reference_mode_equals_published_script():
    rng = np.random.default_rng(0)
    frac, lattice = _structures(rng)
    ours = move_atoms_apart(frac, lattice, reference_compatible=True)
    for b in range(len(frac)):
        expected_frac, ok, iterations, first = _published_move_apart(frac[b], lattice[b])
        assert ours.ok[b] == ok and ours.iterations[b] == iterations and ours.first_count[b] == first
        np.testing.assert_allclose(ours.frac[b], expected_frac, atol=1e-9)


def test_default_mode_leaves_no_close_pairs_and_wraps():
    rng = np.random.default_rng(1)
    frac, lattice = _structures(rng)
    result = move_atoms_apart(frac, lattice)
    assert result.ok.all() and (result.first_count >= 3).all()
    assert (result.frac >= 0).all() and (result.frac < 1).all()
    for b in range(len(frac)):
        delta = result.frac[b][None] - result.frac[b][:, None]
        delta -= np.round(delta)
        distance = np.linalg.norm(delta @ lattice[b], axis=-1) + np.eye(len(delta)) * 10
        assert distance.min() >= 1.5
        moved = np.linalg.norm(((result.frac[b] - frac[b] + 0.5) % 1 - 0.5) @ lattice[b], axis=1)
        assert moved[[5, 6]].max() < 2.0                # the boundary pair is pushed apart locally
    reference = move_atoms_apart(frac, lattice, reference_compatible=True)
    jump = np.linalg.norm((reference.frac[0, 6] - frac[0, 6]) @ lattice[0])
    assert jump > 3.0                                   # the published raw displacement crosses the cell


def test_rejection_after_max_iterations():
    frac, lattice = _structures(np.random.default_rng(2))
    lattice = lattice * 0.4                               # far too dense to resolve
    result = move_atoms_apart(frac, lattice, max_iter=5)
    assert not result.ok.any() and (result.iterations == 5).all() and (result.final_count > 0).all()
