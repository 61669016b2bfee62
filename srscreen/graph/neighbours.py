"""Structure arrays -> crystal graph: each atom's nearest neighbours under periodic boundaries.

Two neighbour rules (`GraphSettings.rule`), both saved in graph files and model files:

``knn-ties`` (the default; ALIGNN's rule): each atom's ``max_nbr`` nearest neighbours within
``radius``, **plus every further neighbour as close as the ``max_nbr``-th** within ``tie_tolerance``
(1e-4 Å). The graph is then a function of the crystal alone: a shell of equidistant neighbours cut
by the ``max_nbr``-th is taken whole, so the graph does not depend on the order in which a file lists
its atoms, on the choice of unit cell, on a supercell or on a translation. Atoms keep a variable
number of edges (CSR); an atom with fewer than ``max_nbr`` neighbours within the radius keeps the
ones it has (no padding).

``cgcnn``: exactly ``max_nbr`` per atom, CGCNN's graph (Xie & Grossman 2018), only for imported
original checkpoints. As in CGCNN's data path (``Structure.get_all_neighbors`` then a stable sort by
distance), ties keep the order of pymatgen's neighbour search, and atoms short of ``max_nbr`` are
padded with neighbour index 0 at distance ``radius + 1``, whose Gaussian expansion is ~1e-11.

Speed: CGCNN calls ``Structure.get_all_neighbors(radius)`` and sorts every list in Python. Here the
neighbour search runs on raw arrays with pymatgen's compiled ``find_points_in_spheres``, first with
a small radius that holds ~1.5 ``max_nbr`` atoms at the crystal's density, then at twice that and at
the full radius only for the atoms whose ``max_nbr``-th neighbour (plus the tolerance) might lie
beyond the radius searched. Every pass returns every neighbour within its radius, so the result is
the same as a single full-radius search. `build_graphs` takes many structures at once: only the
search runs per structure; the checks and the per-atom sort run once over all their pairs.
No torch and no pymatgen objects here: this runs in the featurizer's workers.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

from srscreen.graph.csr import Graphs
from srscreen.graph.settings import GraphError, GraphSettings
from srscreen.io.cell import cell_volume

_PBC = np.ones(3, dtype=np.int64)
# find_points_in_spheres reports an atom as its own neighbour at distance 0 (same image).
_SELF_TOL = 1e-8
# find_points_in_spheres allocates ~270 bytes per cube of the search radius over the box that holds the
# atoms (plus the radius): atoms spread over 1e6 Å asked it for petabytes and the OOM killer ended the
# whole run. A cell needing more cubes than this (~270 MB) is a failure; a crystal of --max-atoms 1000
# needs a few thousand.
MAX_SEARCH_CUBES = 1_000_000


def _first_radius(lattice: list[list[float]], n_atoms: int, settings: GraphSettings) -> float:
    """Radius of a sphere expected to hold ~1.5 * (max_nbr + 1) atoms at this cell's number density."""
    r = (3.0 * 1.5 * (settings.max_nbr + 1) * cell_volume(lattice) / (4.0 * math.pi * n_atoms)) ** (1.0 / 3.0)
    return min(settings.radius, max(r, 1.0))


def _sparse_fault(cart: np.ndarray, r: float) -> str | None:
    """Why atoms at `cart` are too spread out for find_points_in_spheres at radius `r` (its cube count,
    as it computes it, above MAX_SEARCH_CUBES), or None."""
    span = cart.max(axis=0) - cart.min(axis=0)
    edge = max(r, 1.0)  # find_points_in_spheres searches at min_r = 1 Å at least
    cubes = math.prod(math.ceil((float(x) + 2.0 * edge) / edge) for x in span)
    if cubes <= MAX_SEARCH_CUBES:
        return None
    x, y, z = span.tolist()
    return (f"atoms spread over {x:.3g} x {y:.3g} x {z:.3g} Å: too sparse a cell for the neighbour search "
            f"({cubes:.3g} cubes of {edge:.3g} Å, at most {MAX_SEARCH_CUBES:,})")


_D32_BITS = 31  # a non-negative float32 as int: ordered like the value, below 2**31


def build_graphs(structures: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 settings: GraphSettings) -> tuple[Graphs, list[str | None]]:
    """The crystal graphs of many periodic structures given as (lattice, fractional coordinates, atomic
    numbers), and per structure why it has none.

    Same graphs as `build_graph` one by one, whatever the batch. A structure with overlapping atoms,
    or with an atom that has no neighbour within the radius when ``settings.on_isolated_atoms ==
    "fail"``, gets the one-line reason in ``errors`` and no place in the graphs, which hold the others
    in input order.
    """
    cgcnn = settings.rule == "cgcnn"
    n_structures = len(structures)
    sizes = np.zeros(n_structures, dtype=np.int64)
    first_radii = np.zeros(n_structures)
    searched: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
    cells: list[tuple[np.ndarray, np.ndarray]] = []
    too_sparse: list[str | None] = [None] * n_structures
    # Per structure only the search itself; everything else runs once over the batch below.
    row0 = 0  # first row of the structure in the batch
    for s, (lattice, frac, _) in enumerate(structures):
        frac = np.asarray(frac, dtype=np.float64)
        if frac.size and (frac.min() < -1.0 or frac.max() >= 2.0):
            frac = frac - np.floor(frac)  # atoms written cells away: the same crystal, and a search box of one cell
        if cgcnn:  # CGCNN's tie order hangs on the last bit of each distance: positions as pymatgen computes them
            given = np.array(lattice, dtype=np.float64).reshape(3, 3)  # keeps the memory order, as pymatgen's Lattice
            cart = np.array([np.dot(f, given) for f in frac]).reshape(-1, 3)
        lattice = np.ascontiguousarray(lattice, dtype=np.float64)
        if not cgcnn:
            cart = frac @ lattice
        n = len(cart)
        sizes[s] = n
        cells.append((cart, lattice))
        if n == 0:
            continue
        # CGCNN's tie order is that of one full-radius search, so that rule searches once.
        r0 = first_radii[s] = settings.radius if cgcnn else _first_radius(lattice.tolist(), n, settings)
        too_sparse[s] = _sparse_fault(cart, r0)
        if too_sparse[s] is not None:  # not searched: its atoms have no pairs, and the wider passes skip it
            first_radii[s] = settings.radius
            row0 += n
            continue
        ci, ni, _, d = find_points_in_spheres(cart, cart, r0, _PBC, lattice, tol=_SELF_TOL)
        searched.append((ci, ni, d, row0))
        row0 += n

    offsets = np.zeros(n_structures + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n_total = int(offsets[-1])
    centre, ni, d = _join(searched)
    if not cgcnn:
        centre, ni, d = _complete(centre, ni, d, np.repeat(first_radii, sizes), offsets, cells, settings)
    counts = np.bincount(centre, minlength=n_total)
    errors = [sparse or error for sparse, error in zip(too_sparse, _errors(centre, ni, d, counts, offsets, settings))]
    if cgcnn:
        n_edges, nbr_idx, nbr_dist = _cgcnn_edges(centre, ni, d, counts, settings)
    else:
        n_edges, nbr_idx, nbr_dist = _tied_edges(centre, ni, d, counts, int(sizes.max(initial=1)), settings)
    good = np.array([e is None for e in errors], dtype=bool)
    numbers = [np.asarray(z, dtype=np.uint8) for (_, _, z), ok in zip(structures, good) if ok]
    if not good.all():
        keep_atoms = np.repeat(good, sizes)
        keep_edges = np.repeat(keep_atoms, n_edges)
        n_edges, nbr_idx, nbr_dist = n_edges[keep_atoms], nbr_idx[keep_edges], nbr_dist[keep_edges]
    atomic_numbers = np.concatenate(numbers) if numbers else np.zeros(0, np.uint8)
    return Graphs(sizes[good].astype(np.int32), atomic_numbers, n_edges, nbr_idx, nbr_dist), errors


def _complete(centre, ni, d, r_atom, offsets, cells, settings: GraphSettings):
    """Search again, wider, around every atom whose max_nbr-th neighbour plus the tie tolerance may lie
    beyond the radius it was searched with (rare: ~2% of MP structures have such atoms)."""
    k, radius, tol = settings.max_nbr, settings.radius, settings.tie_tolerance
    inside = np.bincount(centre[d < r_atom[centre] - tol], minlength=len(r_atom))
    short = np.flatnonzero((inside < k) & (r_atom < radius))
    if not short.size:
        return centre, ni, d
    owner = np.searchsorted(offsets, short, side="right") - 1
    redone = np.zeros(len(r_atom), dtype=bool)
    redone[short] = True
    keep = ~redone[centre]
    redo = []
    for s in np.unique(owner).tolist():
        rows = short[owner == s] - offsets[s]
        cart, lattice = cells[s]
        r = min(radius, 2.0 * float(r_atom[offsets[s]]))
        redo.append((*_search_again(cart, lattice, rows, r, settings), int(offsets[s])))
    centre2, ni2, d2 = _join(redo)
    return np.concatenate((centre[keep], centre2)), np.concatenate((ni[keep], ni2)), np.concatenate((d[keep], d2))


def _search_again(cart: np.ndarray, lattice: np.ndarray, rows: np.ndarray, r: float, settings: GraphSettings):
    """Every pair within r of the atoms `rows`, then within the full radius for those still short:
    (centre, neighbour, distance), local indices, self-pairs included."""
    k, tol = settings.max_nbr, settings.tie_tolerance
    ci, ni, _, d = find_points_in_spheres(cart, cart[rows], r, _PBC, lattice, tol=_SELF_TOL)
    ci = rows[ci]
    if r < settings.radius:
        real = (d > _SELF_TOL) | (ci != ni)
        found = np.bincount(ci[real & (d < r - tol)], minlength=len(cart))
        short = rows[found[rows] < k]
        if short.size:
            keep = found[ci] >= k
            ci2, ni2, _, d2 = find_points_in_spheres(cart, cart[short], settings.radius, _PBC, lattice, tol=_SELF_TOL)
            ci = np.concatenate((ci[keep], short[ci2]))
            ni = np.concatenate((ni[keep], ni2))
            d = np.concatenate((d[keep], d2))
    return ci, ni, d


def _tied_edges(centre, ni, d, counts, max_size: int, settings: GraphSettings):
    """The knn-ties rule: per centre, nearest first, the max_nbr nearest and every neighbour tied with
    the max_nbr-th. One sort of all pairs by (centre, float32 distance, neighbour), packed into one
    int64 when it fits (sorting values is ~3x faster than argsort)."""
    k, tol = settings.max_nbr, settings.tie_tolerance
    d32 = d.astype(np.float32)
    bits = d32.view(np.uint32).astype(np.int64)
    n_bits = max(1, max_size - 1).bit_length()
    if len(counts).bit_length() + _D32_BITS + n_bits <= 63:
        key = np.sort((centre << (_D32_BITS + n_bits)) | (bits << n_bits) | ni)
        centre = key >> (_D32_BITS + n_bits)
        d32 = ((key >> n_bits) & ((1 << _D32_BITS) - 1)).astype(np.uint32).view(np.float32)
        ni = key & ((1 << n_bits) - 1)
    else:
        order = np.lexsort((ni, bits, centre))
        centre, ni, d32 = centre[order], ni[order], d32[order]
    starts = np.cumsum(counts) - counts
    kth = np.full(len(counts), np.inf, dtype=np.float32)
    full = counts >= k
    kth[full] = d32[starts[full] + k - 1]
    keep = d32 <= kth[centre] + np.float32(tol)
    n_edges = np.bincount(centre[keep], minlength=len(counts)).astype(np.int32)
    return n_edges, ni[keep].astype(np.int32), d32[keep]


def _cgcnn_edges(centre, ni, d, counts, settings: GraphSettings):
    """CGCNN's rule: per centre the first max_nbr of its neighbours stably sorted by float64 distance
    (ties in pymatgen's search order), padded to max_nbr with index 0 at radius + 1."""
    k = settings.max_nbr
    order = np.lexsort((d, centre))
    centre, ni, d = centre[order], ni[order], d[order]
    rank = np.arange(centre.size) - (np.cumsum(counts) - counts)[centre]
    sel = rank < k
    nbr_idx = np.zeros((len(counts), k), dtype=np.int32)
    nbr_dist = np.full((len(counts), k), settings.radius + 1.0, dtype=np.float32)
    nbr_idx[centre[sel], rank[sel]] = ni[sel]
    nbr_dist[centre[sel], rank[sel]] = d[sel]
    return np.full(len(counts), k, dtype=np.int32), nbr_idx.reshape(-1), nbr_dist.reshape(-1)


def _join(searched: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]):
    """Pairs of several searches, each (local centre, local neighbour, distance, first row of its
    structure), as (centre row in the batch, local neighbour, distance), self-pairs removed."""
    if not searched:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    ci = np.concatenate([x[0] for x in searched])
    ni = np.concatenate([x[1] for x in searched])
    d = np.concatenate([x[2] for x in searched])
    # Only an atom's own position is a self-pair: another atom on the same spot is an overlap.
    keep = (d > _SELF_TOL) | (ci != ni)
    centre = ci + np.repeat([x[3] for x in searched], [x[0].size for x in searched])
    return centre[keep], ni[keep].astype(np.int64, copy=False), d[keep]
def _errors(centre, ni, d, counts, offsets, settings: GraphSettings) -> list[str | None]:
    """Per structure, why it has no graph (overlapping or, under the fail policy, isolated atoms)."""
    errors: list[str | None] = [None] * (len(offsets) - 1)
    if d.size and d.min() < settings.min_distance:
        for s in np.unique(np.searchsorted(offsets, centre[d < settings.min_distance], side="right") - 1).tolist():
            pairs = np.flatnonzero((centre >= offsets[s]) & (centre < offsets[s + 1]))
            j = pairs[np.argmin(d[pairs])]
            errors[s] = (
                f"overlapping atoms: sites {centre[j] - offsets[s]} and {ni[j]} are {d[j]:.3f} Å apart "
                f"(< {settings.min_distance} Å)"
            )
    if settings.on_isolated_atoms == "fail" and counts.size and counts.min() == 0:
        for row in np.flatnonzero(counts == 0).tolist():
            s = int(np.searchsorted(offsets, row, side="right") - 1)
            if errors[s] is None:
                errors[s] = (
                    f"isolated atom: site {row - offsets[s]} has no neighbour within {settings.radius} Å "
                    f"(use --on-isolated-atoms pad to keep it)"
                )
    return errors


def build_graph(lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, settings: GraphSettings) -> Graphs:
    """The crystal graph of one periodic structure given as arrays (lattice rows are cell vectors).

    Raises GraphError for overlapping atoms, and for atoms with no neighbour within the radius
    when ``settings.on_isolated_atoms == "fail"``.
    """
    graphs, errors = build_graphs([(lattice, frac_coords, numbers)], settings)
    if errors[0] is not None:
        raise GraphError(errors[0])
    return graphs
