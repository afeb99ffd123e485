"""Periodic geometry against pymatgen on random triclinic, slab, skewed and small cells."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from dismax import geometry
from dismax.errors import DismaxInputError

N_ATOMS = 12


def _cells():
    """Four lattices (rows = vectors, Å): triclinic, 14 Å vacuum slab, 75° skewed, smaller than 2 x 7 Å."""
    return np.stack([
        Lattice.from_parameters(5.1, 6.3, 7.2, 75, 80, 110).matrix,
        np.diag([6.0, 6.5, 8.0 + 14.0]),
        Lattice.from_parameters(7.0, 7.0, 7.0, 75, 75, 75).matrix,
        Lattice.from_parameters(3.1, 3.4, 3.7, 100, 110, 95).matrix,
    ])


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    lattices = _cells()
    frac = rng.random((len(lattices), N_ATOMS, 3))
    frac[1, :, 2] *= 8.0 / 22.0  # slab atoms fill the lowest 8 Å, the rest is vacuum
    structures = [Structure(lat, ["Si"] * N_ATOMS, f) for lat, f in zip(lattices, frac)]
    return jnp.asarray(frac, jnp.float32), jnp.asarray(lattices, jnp.float32), structures


def _reference_pairs(structure, cutoff):
    centers, neighbors, images, distances = structure.get_neighbor_list(cutoff)
    return {(int(c), int(n), tuple(int(x) for x in im)): d
            for c, n, im, d in zip(centers, neighbors, images, distances)}


# ------------------------------------------------------------------------------------------ basics
def test_wrap_maps_into_unit_interval_including_rounding_to_one():
    values = jnp.asarray([-1e-9, -0.0, 0.0, 1.0, 2.5, -3.25, 0.999999, -1e-12, 7.0 - 1e-9], jnp.float32)
    wrapped = np.asarray(geometry.wrap(values))
    assert np.all((wrapped >= 0.0) & (wrapped < 1.0))
    shift = np.asarray(values, np.float64) - wrapped
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-6)
    assert wrapped[0] == 0.0 and wrapped[7] == 0.0  # -1e-9 and -1e-12 round to 1.0 in float32 -> 0
    np.testing.assert_array_equal(jax.grad(lambda x: geometry.wrap(x).sum())(values), np.ones(len(values)))


def test_frac_cart_round_trip_matches_pymatgen(batch):
    frac, lattice, structures = batch
    cart = geometry.frac_to_cart(frac, lattice)
    for b, structure in enumerate(structures):
        np.testing.assert_allclose(cart[b], structure.cart_coords, atol=1e-5)
        np.testing.assert_allclose(geometry.frac_to_cart(frac[b], lattice[b]), structure.cart_coords, atol=1e-5)
    np.testing.assert_allclose(geometry.cart_to_frac(cart, lattice), frac, atol=1e-5)


def test_perpendicular_widths_and_image_counts():
    cube = np.eye(3) * 10.0
    np.testing.assert_allclose(geometry.perpendicular_widths(jnp.asarray(cube)), [10.0] * 3, rtol=1e-6)
    assert geometry.images_needed(cube, 4.0) == (0, 0, 0)
    assert geometry.images_needed(cube, 6.0) == (1, 1, 1)
    assert geometry.images_needed(cube, 16.0) == (2, 2, 2)
    slab = np.diag([6.0, 6.5, 22.0])
    assert geometry.images_needed(slab, 7.0) == (1, 1, 0)
    lattices = _cells()
    for cutoff in (2.0, 4.5, 7.0, 9.3):
        counts = geometry.images_needed(lattices, cutoff)
        assert np.all(np.asarray(geometry.search_radius(jnp.asarray(lattices), counts)) > cutoff)
    offsets = geometry.image_offsets((1, 2, 0))
    assert offsets.shape == (15, 3) and tuple(offsets[0]) == (0, 0, 0)
    assert len({tuple(o) for o in offsets}) == 15
    with pytest.raises(DismaxInputError):
        geometry.images_needed(cube, -1.0)
    with pytest.raises(DismaxInputError):
        geometry.images_needed(np.zeros((3, 3)), 3.0)


# ------------------------------------------------------------------------------------ minimum image
def test_pairwise_minimum_image_distances_match_pymatgen(batch):
    frac, lattice, structures = batch
    distances = geometry.pairwise_minimum_image_distances(frac, lattice)
    for b, structure in enumerate(structures):
        reference = structure.lattice.get_all_distances(structure.frac_coords, structure.frac_coords)
        np.testing.assert_allclose(distances[b], reference, atol=1e-4)
    np.testing.assert_array_equal(np.diagonal(np.asarray(distances), axis1=1, axis2=2), 0.0)


def test_minimum_image_vectors_are_lattice_translates_of_the_input(batch):
    frac, lattice, structures = batch
    dfrac = frac[:, :, None, :] - frac[:, None, :, :] + 3.0  # deliberately far from [-1/2, 1/2)
    vectors = geometry.minimum_image(dfrac, lattice)
    back = np.einsum("bijk,bkl->bijl", np.asarray(vectors, np.float64), np.linalg.inv(_cells()))
    shift = back - np.asarray(dfrac, np.float64)
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-4)
    single = geometry.minimum_image(dfrac[2], lattice[2])
    np.testing.assert_allclose(single, vectors[2], atol=1e-5)
    for b, structure in enumerate(structures):
        reference = structure.lattice.get_all_distances(structure.frac_coords, structure.frac_coords)
        np.testing.assert_allclose(np.linalg.norm(vectors[b], axis=-1), reference.T, atol=1e-4)


def test_coordinate_rms_matches_pymatgen_distances_between_two_positions(batch):
    frac, lattice, structures = batch
    moved = np.asarray(frac) + np.random.default_rng(3).normal(0, 0.2, frac.shape) + 2.0  # images of other cells
    rms = geometry.coordinate_rms(moved, frac, lattice)
    for b, structure in enumerate(structures):
        distances = [structure.lattice.get_all_distances(a[None], c[None])[0, 0]
                     for a, c in zip(moved[b], structure.frac_coords)]
        np.testing.assert_allclose(rms[b], np.sqrt(np.mean(np.square(distances))), rtol=1e-4)
    assert np.all(np.asarray(geometry.coordinate_rms(frac + 1.0, frac, lattice)) < 1e-5)


def test_minimum_image_exact_for_a_strongly_skewed_cell():
    """b is almost 3a: 27 images of the unreduced cell are not enough, minimum_image_range fixes it."""
    lattice = np.array([[4.0, 0.0, 0.0], [11.0, 1.3, 0.0], [0.5, 0.3, 4.0]])
    rng = np.random.default_rng(3)
    frac = rng.random((10, 3))
    reference = Lattice(lattice).get_all_distances(frac, frac)
    counts = geometry.minimum_image_range(lattice)
    assert max(counts) > 1
    dfrac = jnp.asarray(frac[None, :, :] - frac[:, None, :], jnp.float32)
    exact = np.linalg.norm(geometry.minimum_image(dfrac, jnp.asarray(lattice, jnp.float32), counts), axis=-1)
    np.testing.assert_allclose(exact, reference, atol=1e-4)
    nearby_only = np.linalg.norm(geometry.minimum_image(dfrac, jnp.asarray(lattice, jnp.float32), 1), axis=-1)
    assert np.all(nearby_only >= reference - 1e-4) and np.any(nearby_only > reference + 0.1)


# ---------------------------------------------------------------------------------- neighbour lists
def test_neighbor_list_matches_pymatgen(batch):
    frac, lattice, structures = batch
    cutoff = 4.5
    counts = geometry.images_needed(_cells(), cutoff)
    nl = geometry.neighbor_list(frac, lattice, cutoff, capacity=2000, n_images=counts)
    assert not bool(nl.overflow.any())
    for b, structure in enumerate(structures):
        reference = _reference_pairs(structure, cutoff)
        mask = np.asarray(nl.mask[b])
        assert int(nl.n_pairs[b]) == mask.sum() == len(reference)
        centers, neighbors = np.asarray(nl.centers[b]), np.asarray(nl.neighbors[b])
        images, distances = np.asarray(nl.images[b]), np.asarray(nl.distances[b])
        found = {(int(c), int(n), tuple(int(x) for x in im)): d
                 for c, n, im, d in zip(centers[mask], neighbors[mask], images[mask], distances[mask])}
        assert found.keys() == reference.keys()
        np.testing.assert_allclose([found[key] for key in reference], list(reference.values()), atol=1e-4)
        expected_vectors = (structure.frac_coords[neighbors[mask]] + images[mask]
                            - structure.frac_coords[centers[mask]]) @ structure.lattice.matrix
        np.testing.assert_allclose(nl.vectors[b][mask], expected_vectors, atol=1e-4)
        assert np.all(np.diff(centers[mask]) >= 0)
        assert np.all(centers[~mask] == N_ATOMS) and np.all(neighbors[~mask] == N_ATOMS)
        assert np.all(distances[~mask] == 0.0) and mask[: mask.sum()].all()
    np.testing.assert_array_equal(nl.senders, nl.neighbors)


def test_neighbor_list_reports_overflow_and_keeps_valid_pairs(batch):
    frac, lattice, structures = batch
    cutoff = 4.5
    counts = geometry.images_needed(_cells(), cutoff)
    full = geometry.neighbor_list(frac, lattice, cutoff, capacity=2000, n_images=counts)
    exact_capacity = int(full.n_pairs.max())
    fits = geometry.neighbor_list(frac, lattice, cutoff, capacity=exact_capacity, n_images=counts)
    assert not bool(fits.overflow.any())
    small = geometry.neighbor_list(frac, lattice, cutoff, capacity=exact_capacity - 1, n_images=counts)
    biggest = int(np.argmax(full.n_pairs))
    assert bool(small.overflow[biggest]) and int(small.n_pairs[biggest]) == exact_capacity
    np.testing.assert_array_equal(small.n_pairs, full.n_pairs)
    np.testing.assert_array_equal(small.overflow, np.asarray(full.n_pairs) > exact_capacity - 1)
    reference = _reference_pairs(structures[biggest], cutoff)
    mask = np.asarray(small.mask[biggest])
    assert mask.all()
    for c, n, im in zip(np.asarray(small.centers[biggest]), np.asarray(small.neighbors[biggest]),
                        np.asarray(small.images[biggest])):
        assert (int(c), int(n), tuple(int(x) for x in im)) in reference


def test_neighbor_list_gradients_are_finite_and_match_finite_differences(batch):
    frac, lattice, _ = batch

    @jax.jit
    def energy(f):
        nl = geometry.neighbor_list(f, lattice, 4.5, capacity=2000, n_images=(1, 1, 1))
        return jnp.sum(jnp.where(nl.mask, (4.5 - nl.distances) ** 2, 0.0))

    gradient = jax.grad(energy)(frac)
    assert np.all(np.isfinite(gradient))
    step = 1e-3
    bump = jnp.zeros_like(frac).at[0, 3, 1].set(step)
    numerical = (energy(frac + bump) - energy(frac - bump)) / (2 * step)
    np.testing.assert_allclose(gradient[0, 3, 1], numerical, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------ nearest neighbours
def _reference_knn(structure, k):
    return np.array([sorted(n.nn_distance for n in row)[:k] for row in structure.get_all_neighbors(7.0)])


def _check_knn(result, structures, k):
    for b, structure in enumerate(structures):
        np.testing.assert_allclose(result.distances[b], _reference_knn(structure, k), atol=1e-4)
        indices, images = np.asarray(result.indices[b]), np.asarray(result.images[b])
        vectors = (structure.frac_coords[indices] + images
                   - structure.frac_coords[:, None, :]) @ structure.lattice.matrix
        np.testing.assert_allclose(result.vectors[b], vectors, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), result.distances[b], atol=1e-4)
        for i in range(len(indices)):  # each (neighbour, image) at most once, never the atom itself
            keys = {(int(j), tuple(int(x) for x in im)) for j, im in zip(indices[i], images[i])}
            assert len(keys) == k and (i, (0, 0, 0)) not in keys
    assert np.all(np.diff(np.asarray(result.distances), axis=-1) >= 0)


def test_knn_matches_pymatgen_including_small_cells(batch):
    frac, lattice, structures = batch
    result = geometry.knn(frac, lattice, 6, 1)
    assert result.distances.shape == (4, N_ATOMS, 6) and result.images.shape == (4, N_ATOMS, 6, 3)
    assert np.all(np.asarray(result.distances[..., -1])
                  < np.asarray(geometry.search_radius(lattice, 1))[:, None])
    _check_knn(result, structures, 6)


def test_knn_fast_path_on_dense_cells_matches_pymatgen():
    """Dense cells: every 6th neighbour is within half the smallest width (the cheap, exact path)."""
    rng = np.random.default_rng(11)
    lattices = np.stack([Lattice.from_parameters(7.0, 7.4, 7.8, 80, 95, 105).matrix,
                         Lattice.from_parameters(7.2, 7.2, 7.2, 75, 75, 75).matrix])
    frac = rng.random((2, 40, 3))
    structures = [Structure(lat, ["Si"] * 40, f) for lat, f in zip(lattices, frac)]
    widths = np.asarray(geometry.perpendicular_widths(jnp.asarray(lattices))).min(axis=-1)
    references = [_reference_knn(s, 6) for s in structures]
    assert all(ref[:, -1].max() < 0.5 * w for ref, w in zip(references, widths))
    result = geometry.knn(jnp.asarray(frac, jnp.float32), jnp.asarray(lattices, jnp.float32), 6, 1)
    _check_knn(result, structures, 6)


def test_knn_gradients_finite_with_overlapping_atoms_and_match_finite_differences(batch):
    frac, lattice, _ = batch
    frac = frac.at[0, 5].set(frac[0, 4])  # two atoms on top of each other: a zero distance

    def total(f, lat):
        return geometry.knn(f, lat, 6, 1).distances.sum()

    gradient_frac, gradient_lattice = jax.grad(total, argnums=(0, 1))(frac, lattice)
    assert np.all(np.isfinite(gradient_frac)) and np.all(np.isfinite(gradient_lattice))
    step = 1e-3
    for b, i, axis in [(2, 7, 0), (3, 1, 2)]:
        bump = jnp.zeros_like(frac).at[b, i, axis].set(step)
        numerical = (total(frac + bump, lattice) - total(frac - bump, lattice)) / (2 * step)
        np.testing.assert_allclose(gradient_frac[b, i, axis], numerical, rtol=2e-2, atol=2e-2)


def test_reverse_slots_find_each_pair_from_its_other_end(batch):
    """Brute force on kNN tables (not symmetric; small cells hold an atom's own images and repeated atoms)."""
    frac, lattice, _ = batch
    found = geometry.knn(frac, lattice, 6, 1)
    indices, images = np.asarray(found.indices), np.asarray(found.images)
    reverse = np.asarray(geometry.reverse_slots(found.indices, found.images))
    assert reverse.shape == indices.shape and reverse.dtype == np.int32
    present = 0
    for b, i, k in np.ndindex(indices.shape):
        j = indices[b, i, k]
        back = [s for s in range(6) if indices[b, j, s] == i and np.all(images[b, j, s] == -images[b, i, k])]
        assert reverse[b, i, k] == (back[0] if back else 6)
        present += bool(back)
    assert 0 < present < indices.size  # both cases occur


def test_gather_reverse_equals_the_scatter_add_of_pairs_within_a_radius(batch):
    """Within a radius every pair is in both rows of a complete table, so summing each row's reverse values
    gives the sum over the pairs pointing at that atom (what the gradient of a table gather needs)."""
    frac, lattice, _ = batch
    k = 40
    found = geometry.knn(frac, lattice, k, 2)
    radius = 0.9 * np.asarray(found.distances[..., -1]).min()
    values = np.random.default_rng(3).normal(size=found.indices.shape + (3,)).astype(np.float32)
    values = np.where((np.asarray(found.distances) < radius)[..., None], values, 0.0)
    reverse = geometry.reverse_slots(found.indices, found.images)
    for b in range(frac.shape[0]):
        gathered = geometry.gather_reverse(jnp.asarray(values[b]), found.indices[b], reverse[b])
        scattered = np.zeros((N_ATOMS, 3), np.float32)
        np.add.at(scattered, np.asarray(found.indices[b]).ravel(), values[b].reshape(-1, 3))
        np.testing.assert_allclose(np.asarray(gathered).sum(axis=1), scattered, atol=1e-5)
        assert np.abs(scattered).max() > 0.5


def test_knn_under_jit_and_vmap(batch):
    frac, lattice, _ = batch
    direct = geometry.knn(frac, lattice, 6, 1)
    jitted = jax.jit(lambda f, lat: geometry.knn(f, lat, 6, 1))(frac, lattice)
    np.testing.assert_allclose(jitted.distances, direct.distances, atol=1e-6)
    pairs = jax.vmap(lambda f, lat: geometry.knn(f[None], lat[None], 6, 1).distances[0])(frac, lattice)
    np.testing.assert_allclose(pairs, direct.distances, atol=1e-5)


def test_knn_under_vmap_runs_the_image_search_only_when_needed_and_keeps_gradients(batch):
    """Per-structure knn under an outer vmap (a denoiser applied to each structure): the small cells of
    ``batch`` need the full image search, random dense cells do not; results and gradients equal the
    batched call, and the compiled program has only the conditional loop at top level (the image-offset
    scan stays inside it instead of being hoisted out and always run)."""
    frac, lattice, _ = batch

    def per_structure(f, lat):
        return jax.vmap(lambda fs, ls: geometry.knn(fs[None], ls[None], 6, 1).distances[0])(f, lat)

    np.testing.assert_allclose(per_structure(frac, lattice), geometry.knn(frac, lattice, 6, 1).distances, atol=1e-5)
    gradient = jax.grad(lambda f: per_structure(f, lattice).sum())(frac)
    np.testing.assert_allclose(gradient, jax.grad(lambda f: geometry.knn(f, lattice, 6, 1).distances.sum())(frac),
                               atol=1e-4)
    dense = jnp.asarray(np.random.default_rng(2).random((3, 64, 3)), jnp.float32)
    cells = jnp.asarray(np.broadcast_to(np.eye(3) * 11.0, (3, 3, 3)), jnp.float32)
    hlo = jax.jit(per_structure).lower(dense, cells).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    assert entry.count(" while(") == 1


def test_bad_arguments_raise_clear_errors(batch):
    frac, lattice, _ = batch
    with pytest.raises(DismaxInputError, match="k=5000"):
        geometry.knn(frac, lattice, 5000, 1)
    with pytest.raises(DismaxInputError, match="expected frac"):
        geometry.neighbor_list(frac[0], lattice[0], 3.0, capacity=10)
    with pytest.raises(DismaxInputError, match="n_images"):
        geometry.image_offsets((1, 1))


@pytest.mark.slow
def test_knn_and_neighbor_list_at_interface_size():
    """B = 32, N = 264 (the CryinGAN interface size), two structures checked against pymatgen."""
    rng = np.random.default_rng(5)
    lattice = np.diag([10.2, 10.2, 32.0])
    frac = rng.random((32, 264, 3))
    lattices = jnp.asarray(np.tile(lattice, (32, 1, 1)), jnp.float32)
    result = geometry.knn(jnp.asarray(frac, jnp.float32), lattices, 6, 1)
    gradient = jax.grad(lambda f: geometry.knn(f, lattices, 6, 1).distances.sum())(jnp.asarray(frac, jnp.float32))
    assert np.all(np.isfinite(gradient))
    nl = geometry.neighbor_list(jnp.asarray(frac, jnp.float32), lattices, 3.5, capacity=6000)
    for b in (0, 31):
        structure = Structure(lattice, ["Si"] * 264, frac[b])
        np.testing.assert_allclose(result.distances[b], _reference_knn(structure, 6), atol=1e-4)
        assert int(nl.n_pairs[b]) == len(structure.get_neighbor_list(3.5)[0])


def test_nearest_fcc_vector_matches_brute_force_in_numpy_and_jax():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(500, 3)) * 2
    r = np.arange(-8, 9)
    points = np.array([[i, j, k] for i in r for j in r for k in r if (i + j + k) % 2 == 0])
    brute = np.linalg.norm(y[:, None] - points[None], axis=-1).min(axis=1)
    host = geometry.nearest_fcc_vector(y)
    assert isinstance(host, np.ndarray) and np.all(host.sum(axis=-1) % 2 == 0)
    np.testing.assert_allclose(np.linalg.norm(y - host, axis=-1), brute, atol=1e-12)
    traced = jax.jit(geometry.nearest_fcc_vector)(jnp.asarray(y, jnp.float32))
    np.testing.assert_array_equal(np.asarray(traced), host)


def test_cell_centred_minimum_image_in_numpy_and_jax_and_displacements():
    rng = np.random.default_rng(1)
    lattice = np.diag([7.0, 8.0, 9.0])
    dfrac = rng.uniform(-2.0, 2.0, (40, 3))
    host = geometry.minimum_image(dfrac, lattice, n_images=0)
    assert isinstance(host, np.ndarray)
    centred = geometry.wrap_centered(dfrac)
    assert np.all((centred >= -0.5) & (centred < 0.5))
    np.testing.assert_allclose(np.round(dfrac - centred), dfrac - centred, atol=1e-12)
    # an orthorhombic cell: the centred image is the shortest one
    exact = np.asarray(geometry.minimum_image(jnp.asarray(dfrac, jnp.float32), jnp.asarray(lattice, jnp.float32)))
    np.testing.assert_allclose(np.linalg.norm(host, axis=-1), np.linalg.norm(exact, axis=-1), atol=1e-5)
    points, atoms = rng.random((5, 3)) * 7, rng.random((6, 3)) * 7
    vectors = geometry.displacements(points, atoms, lattice)
    assert vectors.shape == (5, 6, 3)
    shift = (vectors - (atoms[None] - points[:, None])) @ np.linalg.inv(lattice)
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-12)
    index, distance = geometry.nearest_atom(jnp.asarray(points), jnp.asarray(atoms), jnp.ones(6, bool),
                                            jnp.asarray(lattice))
    np.testing.assert_array_equal(np.asarray(index), np.linalg.norm(vectors, axis=-1).argmin(axis=1))
    np.testing.assert_allclose(np.asarray(distance), np.linalg.norm(vectors, axis=-1).min(axis=1), rtol=1e-6)


def test_pair_distance_histogram_equals_numpy_histogram_of_pymatgen_distances():
    structure = Structure(_cells()[0], ["Si"] * N_ATOMS, np.random.default_rng(2).random((N_ATOMS, 3)))
    r_max, n_bins = 6.0, 30
    _, _, _, distances = structure.get_neighbor_list(r_max)
    expected, _ = np.histogram(distances, bins=n_bins, range=(0.0, r_max))
    lattice = structure.lattice.matrix
    images = geometry.image_offsets(geometry.images_needed(lattice, r_max))
    with jax.enable_x64(True):
        counts = geometry.pair_distance_histogram(jnp.asarray(structure.frac_coords), jnp.asarray(lattice),
                                                  jnp.asarray(images, jnp.float64), r_max=r_max, n_bins=n_bins)
        mask = jnp.arange(N_ATOMS) < 4
        centres_only = geometry.pair_distance_histogram(jnp.asarray(structure.frac_coords), jnp.asarray(lattice),
                                                        jnp.asarray(images, jnp.float64), r_max=r_max,
                                                        n_bins=n_bins, mask_i=mask)
    np.testing.assert_array_equal(np.asarray(counts), expected)
    centres, _, _, distances = structure.get_neighbor_list(r_max)
    expected_centres, _ = np.histogram(distances[centres < 4], bins=n_bins, range=(0.0, r_max))
    np.testing.assert_array_equal(np.asarray(centres_only), expected_centres)
