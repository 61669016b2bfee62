"""The crystal graph: a function of the crystal (knn-ties), and CGCNN's graph for imported checkpoints.

A user screening a database trusts that the graph depends on the crystal only, and that srscreen's
fast neighbour search gives exactly the graph its rule defines. These tests hold it against two
references that share no code with it: a brute-force search over explicitly enumerated lattice images
(numpy only), and CGCNN's own path (pymatgen ``Structure.get_all_neighbors`` + a stable sort), on cells
of every shape a database holds. The knn-ties rule leaves no choice (a cut shell is taken whole), so
the comparison is exact; the cgcnn rule must reproduce CGCNN's pick within a cut shell as well.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import build_prototypes, cu_slab, require_shared_mp

from srscreen.errors import OptionError
from srscreen.graph.settings import GraphError, GraphSettings

from srscreen.graph.neighbours import build_graph

from srscreen.graph.csr import Graphs

DEFAULT = GraphSettings()
CGCNN = GraphSettings(rule="cgcnn")


# --------------------------------------------------------------------------- references


def brute_force_neighbours(lattice, frac, radius):
    """Every (neighbour index, distance) within `radius` of each atom, by enumerating images.

    Images are enumerated explicitly: along cell vector i, enough translations to cover `radius`
    (radius / interplanar spacing) plus the spread of the fractional coordinates, plus one.
    """
    lattice = np.asarray(lattice, dtype=float)
    frac = np.asarray(frac, dtype=float)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(lattice).T, axis=1)  # distance between lattice planes
    spread = frac.max(axis=0) - frac.min(axis=0)
    reach = np.ceil(radius / spacing + spread).astype(int) + 1
    shifts = np.array(list(itertools.product(*(range(-m, m + 1) for m in reach))), dtype=float)
    cart = frac @ lattice
    images = (shifts @ lattice)[:, None, :] + cart[None, :, :]  # (n_shifts, n, 3)
    out = []
    for i in range(len(cart)):
        d = np.linalg.norm(images - cart[i], axis=2)  # (n_shifts, n)
        s, j = np.nonzero((d <= radius) & (d > 1e-8))
        dist = d[s, j]
        order = np.lexsort((j, dist))
        out.append((j[order], dist[order]))
    return out


def pymatgen_neighbours(lattice, frac, numbers, radius):
    """CGCNN's data path: get_all_neighbors(radius), each list sorted by distance (stable)."""
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice(lattice), list(numbers), frac, validate_proximity=False)
    out = []
    for nbrs in structure.get_all_neighbors(radius, include_index=True):
        nbrs = sorted(nbrs, key=lambda x: x[1])
        out.append((np.array([n[2] for n in nbrs], dtype=int), np.array([n[1] for n in nbrs])))
    return out


def rows(graph: Graphs) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per atom its (neighbour indices, distances)."""
    ends = np.cumsum(graph.n_edges)
    return [(graph.nbr_idx[e - n : e], graph.nbr_dist[e - n : e]) for n, e in zip(graph.n_edges, ends)]


def knn_ties(reference, settings: GraphSettings):
    """The knn-ties rule applied to a sorted reference list: the k nearest and all tied with the k-th."""
    k, tol = settings.max_nbr, settings.tie_tolerance
    out = []
    for j, d in reference:
        keep = d <= d[k - 1] + tol if len(d) >= k else np.ones(len(d), dtype=bool)
        out.append((j[keep], d[keep]))
    return out


def assert_knn_ties(graph: Graphs, reference, settings: GraphSettings = DEFAULT, atol=1e-6):
    """Exactly the reference's edges: same count per atom, distances to `atol`, and within each shell
    of equal distances the same neighbours (the rule leaves no choice)."""
    want = knn_ties(reference, settings)
    assert len(graph.n_edges) == len(want)
    for i, ((got_j, got_d), (ref_j, ref_d)) in enumerate(zip(rows(graph), want)):
        assert len(got_d) == len(ref_d), f"atom {i}: {len(got_d)} edges, reference {len(ref_d)}"
        np.testing.assert_allclose(got_d, ref_d, atol=atol, rtol=0, err_msg=f"atom {i}")
        shells = np.round(ref_d / 1e-5).astype(np.int64)
        assert sorted(zip(shells.tolist(), got_j.tolist())) == sorted(zip(shells.tolist(), ref_j.tolist())), f"atom {i}"


def assert_cgcnn(graph: Graphs, reference, settings: GraphSettings = CGCNN, atol=1e-6):
    """CGCNN's arrays from pymatgen's sorted lists: the first k, padded with index 0 at radius + 1."""
    k, n = settings.max_nbr, len(reference)
    want_idx = np.zeros((n, k), dtype=int)
    want_dist = np.full((n, k), settings.radius + 1.0)
    for i, (j, d) in enumerate(reference):
        m = min(k, len(d))
        want_idx[i, :m], want_dist[i, :m] = j[:m], d[:m]
    assert (graph.n_edges == k).all()
    np.testing.assert_allclose(graph.nbr_dist.reshape(n, k), want_dist, atol=atol, rtol=0)
    np.testing.assert_array_equal(graph.nbr_idx.reshape(n, k), want_idx)


def graph_of(structure, settings: GraphSettings = DEFAULT) -> Graphs:
    return build_graph(structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers), settings)


def check_both_references(structure, settings: GraphSettings = DEFAULT) -> Graphs:
    """The knn-ties graph against both references, and the cgcnn graph against pymatgen's exactly."""
    lattice, frac, numbers = structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers)
    graph = build_graph(lattice, frac, numbers, settings)
    assert_knn_ties(graph, brute_force_neighbours(lattice, frac, settings.radius), settings)
    pymatgen = pymatgen_neighbours(lattice, frac, numbers, settings.radius)
    assert_knn_ties(graph, pymatgen, settings)
    cgcnn = GraphSettings(radius=settings.radius, max_nbr=settings.max_nbr, rule="cgcnn",
                          on_isolated_atoms=settings.on_isolated_atoms)
    assert_cgcnn(build_graph(lattice, frac, numbers, cgcnn), pymatgen, cgcnn)
    np.testing.assert_array_equal(graph.atomic_numbers, numbers)
    assert graph.atomic_numbers.dtype == np.uint8 and graph.nbr_idx.dtype == np.int32 and graph.nbr_dist.dtype == np.float32
    assert graph.n_edges.dtype == np.int32
    assert all((np.diff(d) >= 0).all() for _, d in rows(graph)), "neighbours sorted nearest first"
    return graph


def skewed(structure, transform):
    """The same crystal described by another (unimodular) choice of cell vectors."""
    from pymatgen.core import Lattice, Structure

    m = np.asarray(transform, dtype=float)
    assert round(abs(np.linalg.det(m))) == 1
    lattice = m @ structure.lattice.matrix
    frac = structure.frac_coords @ np.linalg.inv(m)
    return Structure(Lattice(lattice), structure.species, frac)


PROTOTYPES = build_prototypes()


# --------------------------------------------------------------------------- every prototype


@pytest.mark.parametrize("name", sorted(PROTOTYPES))
def test_each_prototype_matches_brute_force_and_cgcnn(name):
    """Rock salt, perovskite, wurtzite, bcc, fcc, triclinic, a 128-atom supercell, a slab, a molecule."""
    check_both_references(PROTOTYPES[name])


def test_one_atom_cell_sees_its_own_images():
    """bcc Fe primitive (1 atom): 8 neighbours at a√3/2, then the whole shell of 6 at a (the 12th cuts
    it: knn-ties keeps all 14; CGCNN keeps 4 of the 6)."""
    graph = check_both_references(PROTOTYPES["Fe"])
    a = 2.87
    assert (graph.nbr_idx == 0).all() and graph.n_edges.tolist() == [14]
    np.testing.assert_allclose(graph.nbr_dist[:8], a * np.sqrt(3) / 2, atol=1e-5)
    np.testing.assert_allclose(graph.nbr_dist[8:], a, atol=1e-5)
    assert graph_of(PROTOTYPES["Fe"], CGCNN).n_edges.tolist() == [12]


def test_large_supercell_equals_its_primitive_cell():
    """A 4x4x4 supercell (128 atoms) gives every atom the same distances as the 2-atom cell."""
    primitive = PROTOTYPES["NaCl"].get_primitive_structure()
    small = rows(graph_of(primitive))
    big = check_both_references(primitive * (4, 4, 4))
    for z, (_, d) in zip(big.atomic_numbers, rows(big)):
        np.testing.assert_allclose(d, small[list(primitive.atomic_numbers).index(z)][1], atol=1e-6)


@pytest.mark.parametrize(
    "transform",
    [[[1, 0, 0], [5, 1, 0], [3, 4, 1]], [[1, 7, 0], [0, 1, 0], [-6, 2, 1]], [[3, 2, 0], [4, 3, 0], [0, 0, 1]]],
    ids=["shear-5-3-4", "shear-7-6", "near-parallel"],
)
@pytest.mark.parametrize("name", ["Fe", "ZnO", "triclinic"])
def test_very_skewed_cells_give_the_same_graph(name, transform):
    """The same crystal in a needle-like, far-from-reduced cell (angles of a few degrees)."""
    structure = PROTOTYPES[name]
    other = skewed(structure, transform)
    angles = other.lattice.angles
    assert min(min(angles), 180 - max(angles)) < 30, "the test cell must be strongly skewed"
    graph = check_both_references(other)
    reference = graph_of(structure)
    np.testing.assert_array_equal(graph.n_edges, reference.n_edges)
    np.testing.assert_allclose(graph.nbr_dist, reference.nbr_dist, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_random_triclinic_cells(seed):
    """Random skewed triclinic cells with random atoms (kept apart by a minimum distance)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    while True:
        abc = rng.uniform(2.5, 9.0, 3)
        angles = rng.uniform(35, 145, 3)
        try:
            lattice = Lattice.from_parameters(*abc, *angles)
        except ValueError:
            continue
        if lattice.volume < 5.0:
            continue
        n = int(rng.integers(1, 9))
        frac = rng.uniform(-0.3, 1.3, (n, 3))  # deliberately not wrapped into the cell
        species = rng.choice(["Li", "O", "Fe", "Si"], n).tolist()
        structure = Structure(lattice, species, frac, validate_proximity=False)
        if n == 1 or structure.distance_matrix[np.triu_indices(n, 1)].min() > 0.8:
            break
    check_both_references(structure, GraphSettings(radius=6.0, max_nbr=12))


# --------------------------------------------------------------------------- vacuum and padding


def test_slab_surface_atoms_keep_the_neighbours_they_have():
    """Cu(100), 4 layers in 20 Å of vacuum, radius 3 Å: bulk-like layers see 12 neighbours, surface
    layers 8. knn-ties stores those 8; cgcnn pads them with 4 (index 0, distance radius + 1)."""
    settings = GraphSettings(radius=3.0, max_nbr=12)
    slab = cu_slab(layers=4, vacuum=20.0)
    graph = check_both_references(slab, settings)
    nn = 3.615 / np.sqrt(2)
    z = slab.cart_coords[:, 2]
    surface = np.isclose(z, z.min()) | np.isclose(z, z.max())
    assert (graph.n_edges[surface] == 8).all() and (graph.n_edges[~surface] == 12).all()
    np.testing.assert_allclose(graph.nbr_dist, nn, atol=1e-5)
    padded = graph_of(slab, GraphSettings(radius=3.0, max_nbr=12, rule="cgcnn"))
    dist, idx = padded.nbr_dist.reshape(-1, 12), padded.nbr_idx.reshape(-1, 12)
    assert (dist[surface][:, 8:] == np.float32(settings.radius + 1.0)).all()
    assert (idx[surface][:, 8:] == 0).all()


def test_molecule_in_a_big_box_keeps_two_neighbours_per_atom():
    """CO2 in a 20 Å box: C has 2 neighbours within 8 Å and each O has 2 (C and the other O)."""
    graph = check_both_references(PROTOTYPES["molecule"])
    assert graph.n_edges.tolist() == [2, 2, 2]
    np.testing.assert_allclose(graph.nbr_dist[:2], 1.16, atol=1e-5)
    padded = graph_of(PROTOTYPES["molecule"], CGCNN)
    assert (padded.nbr_dist.reshape(3, 12)[:, 2:] == np.float32(9.0)).all()
    assert (padded.nbr_idx.reshape(3, 12)[:, 2:] == 0).all()


def test_default_slab_with_radius_8_needs_no_padding():
    check_both_references(PROTOTYPES["slab"])


# --------------------------------------------------------------------------- policies


def lone_atoms():
    """Two atoms 15 Å apart in a 30 Å box: nothing within 8 Å of either."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(30.0), ["Ar", "Ar"], [[0, 0, 0], [0.5, 0, 0]])


def test_isolated_atom_fails_by_default_with_a_one_line_reason():
    s = lone_atoms()
    with pytest.raises(GraphError) as err:
        graph_of(s, GraphSettings(on_isolated_atoms="fail"))
    message = str(err.value)
    assert "\n" not in message
    assert "isolated atom" in message and "8.0" in message and "pad" in message


def test_isolated_atom_pad_policy_keeps_the_atom_without_edges():
    graph = graph_of(lone_atoms(), GraphSettings(on_isolated_atoms="pad"))
    assert graph.n_edges.tolist() == [0, 0] and graph.nbr_idx.size == 0
    padded = graph_of(lone_atoms(), GraphSettings(on_isolated_atoms="pad", rule="cgcnn"))
    assert (padded.nbr_idx == 0).all() and (padded.nbr_dist == np.float32(9.0)).all()


def test_partly_isolated_structure_fails_on_the_isolated_site():
    """One lone atom among bonded ones is enough to fail under the default policy."""
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(30.0), ["O", "O", "Ar"], [[0, 0, 0], [0.04, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(GraphError, match="site 2"):
        graph_of(s)
    graph = graph_of(s, GraphSettings(on_isolated_atoms="pad"))
    assert graph.n_edges[2] == 0
    (_, d0), (_, d1), _ = rows(graph)
    np.testing.assert_allclose([d0[0], d1[0]], 1.2, atol=1e-5)


@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_overlapping_atoms_raise(gap):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [gap / 5.0, 0, 0]], validate_proximity=False)
    with pytest.raises(GraphError, match="overlapping atoms") as err:
        graph_of(s)
    assert "\n" not in str(err.value)


def test_overlap_through_the_periodic_boundary_is_caught():
    """Atoms at x=0.01 and x=0.99 of a 10 Å cell are 0.2 Å apart across the cell face."""
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]])
    with pytest.raises(GraphError, match="overlapping atoms"):
        graph_of(s)


def test_other_settings_change_k_and_radius():
    s = PROTOTYPES["SrTiO3"]
    settings = GraphSettings(radius=5.0, max_nbr=20)
    graph = check_both_references(s, settings)
    assert (graph.n_edges >= 20).all()


# --------------------------------------------------------------------------- real MP crystals

MP_SAMPLE = 300


@pytest.fixture(scope="module")
def mp_sample():
    """~300 shared MP CIFs (fixed seed), parsed by srscreen's reader."""
    from srscreen.io.parsed import Parsed
    from srscreen.io.readers import parse_bytes

    folder = require_shared_mp()
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".cif")
    rng = np.random.default_rng(20240611)
    picked = sorted(rng.choice(len(names), size=min(MP_SAMPLE, len(names)), replace=False))
    sample = []
    for i in picked:
        path = folder / names[i]
        text = path.read_bytes()
        (parsed,) = list(parse_bytes(path.name, text))
        assert isinstance(parsed, Parsed), f"{path.name}: {parsed}"
        sample.append((path, text.decode(), parsed))
    return sample


def test_mp_sample_matches_cgcnn_neighbour_lists(mp_sample):
    """On real MP crystals: both rules = get_all_neighbors(8) + sort, to 1e-6 Å, CGCNN's tie order included."""
    for path, _, p in mp_sample:
        reference = pymatgen_neighbours(p.lattice, p.frac_coords, p.numbers, DEFAULT.radius)
        try:
            assert_knn_ties(build_graph(p.lattice, p.frac_coords, p.numbers, DEFAULT), reference)
            assert_cgcnn(build_graph(p.lattice, p.frac_coords, p.numbers, CGCNN), reference)
        except AssertionError as e:
            raise AssertionError(f"{path.name}: {e}") from None


def match_sites(p, structure):
    """For each srscreen site, the index of the same atom in the pymatgen structure, and how far apart."""
    ref_frac = structure.frac_coords
    ref_z = np.array(structure.atomic_numbers)
    # The two parsers may orient the cell differently; fractional coordinates do not care.
    np.testing.assert_allclose(
        p.lattice @ p.lattice.T, structure.lattice.matrix @ structure.lattice.matrix.T, atol=1e-6
    )
    perm, gaps = [], []
    for f, z in zip(p.frac_coords, p.numbers):
        df = ref_frac - f
        df -= np.round(df)
        d = np.linalg.norm(df @ p.lattice, axis=1)
        d[ref_z != z] = np.inf
        j = int(np.argmin(d))
        perm.append(j)
        gaps.append(d[j])
    assert sorted(perm) == list(range(len(ref_z))), "sites do not pair up one to one"
    return np.array(perm), np.array(gaps)


def graph_gap(p, structure, perm) -> float:
    """Largest difference between the two parsers' graph distances (rows paired by site)."""
    mine = rows(build_graph(p.lattice, p.frac_coords, p.numbers, CGCNN))
    theirs = rows(build_graph(structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers), CGCNN))
    return max(float(np.abs(mine[i][1].astype(float) - theirs[j][1].astype(float)).max()) for i, j in enumerate(perm))


def test_gemmi_reader_agrees_with_pymatgen_cifparser(mp_sample):
    """srscreen reads coordinates as written. pymatgen's CifParser agrees to 1e-6 Å when its
    snapping is off (frac_tolerance=0); with its default snapping (fractional coordinates within
    1e-4 of 0, 1/4, 1/3, 1/2, ... are moved onto them) the two agree only to what snapping allows,
    1e-4 of a cell length per coordinate."""
    import io
    import warnings

    from pymatgen.io.cif import CifParser

    exact_worst, snapped_worst, snapped_moved = 0.0, 0.0, 0
    for path, text, p in mp_sample[:150]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (exact,) = CifParser(io.StringIO(text), frac_tolerance=0).parse_structures(primitive=False)
            (snapped,) = CifParser(io.StringIO(text)).parse_structures(primitive=False)
        perm, gaps = match_sites(p, exact)
        exact_worst = max(exact_worst, gaps.max(), graph_gap(p, exact, perm))
        assert gaps.max() < 1e-6, f"{path.name}: sites differ by {gaps.max():.2e} Å without snapping"

        perm, gaps = match_sites(p, snapped)
        bound = 1e-4 * np.linalg.norm(p.lattice, axis=1).sum()  # 1e-4 of each cell vector, at most
        assert gaps.max() <= bound, f"{path.name}: snapping moved a site {gaps.max():.2e} Å > {bound:.2e} Å"
        g = graph_gap(p, snapped, perm)
        assert g <= 2 * bound + 1e-6, f"{path.name}: snapping changed a distance by {g:.2e} Å"
        snapped_worst = max(snapped_worst, g)
        snapped_moved += gaps.max() > 1e-6
    assert exact_worst < 1e-6
    # Snapping is not a no-op on real data: some sites really move by more than 1e-6 Å.
    assert snapped_moved > 0, "expected pymatgen's default snapping to move some MP sites"



@pytest.mark.parametrize("settings", [
    {"radius": math.nan}, {"radius": math.inf}, {"radius": -1.0}, {"radius": 0.0}, {"tie_tolerance": math.nan},
    {"tie_tolerance": -1e-4}, {"min_distance": math.nan}, {"max_nbr": 0},
])
def test_graph_settings_refuse_values_that_build_no_graph(settings):
    """NaN fails every comparison, so a check written `radius <= 0` would let `--radius nan` through."""
    with pytest.raises(OptionError, match=next(iter(settings))):
        GraphSettings(**settings)
