"""Structure arrays -> crystal graph: each atom's nearest neighbours under periodic boundaries.

The graph is CGCNN's (Xie & Grossman 2018): for every atom the ``max_nbr`` nearest neighbours
(periodic images included) within ``radius``, sorted by distance. Atoms that find fewer than
``max_nbr`` are padded the way CGCNN pads them: neighbour index 0 and distance ``radius + 1``,
whose Gaussian expansion is ~1e-11, so original CGCNN checkpoints see exactly what they were
trained on.

Speed: CGCNN calls ``Structure.get_all_neighbors(radius)`` and sorts every list in Python. Here the
neighbour search runs on raw arrays with pymatgen's compiled ``find_points_in_spheres``, first with
a small radius that holds ~``max_nbr`` atoms at the crystal's density, and again with the full
radius only for the atoms that found fewer than ``max_nbr``. Both passes return every neighbour
within their radius, so the result is the same as a single full-radius search.
`build_graphs` takes many structures at once: only the search runs per structure; the checks and
the per-atom sort by distance run once over all their pairs, so numpy's per-call cost is paid once
per batch instead of once per structure (it was half the time of a graph).
No torch and no pymatgen objects here: this runs in the featurizer's workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

IsolatedPolicy = Literal["fail", "pad"]

_PBC = np.ones(3, dtype=np.int64)
# find_points_in_spheres reports an atom as its own neighbour at distance 0 (same image).
_SELF_TOL = 1e-8


class GraphError(ValueError):
    """A structure that has no valid crystal graph under the chosen policy (reason in the message)."""


@dataclass(frozen=True)
class GraphSettings:
    """How graphs are built. Saved in shard files and model files so a mismatch is caught."""

    radius: float = 8.0
    max_nbr: int = 12
    min_distance: float = 0.5
    on_isolated_atoms: IsolatedPolicy = "fail"

    def as_attrs(self) -> dict[str, float | int | str]:
        """The settings that change the graph, as stored in files (policies are recorded apart)."""
        return {"radius": float(self.radius), "max_nbr": int(self.max_nbr), "neighbour_algorithm": ALGORITHM}


ALGORITHM = "knn-pbc-v1"  # exact k nearest within radius, CGCNN padding; bump if the graph ever changes


@dataclass(frozen=True)
class CrystalGraph:
    """One structure's graph: atomic numbers, (n, max_nbr) local neighbour indices and distances (Å)."""

    numbers: np.ndarray  # uint8 (n,)
    nbr_idx: np.ndarray  # int32 (n, max_nbr)
    nbr_dist: np.ndarray  # float32 (n, max_nbr)


def _first_radius(lattice: list[list[float]], n_atoms: int, settings: GraphSettings) -> float:
    """Radius of a sphere expected to hold ~1.5 * (max_nbr + 1) atoms at this cell's number density."""
    (a, b, c), (d, e, f), (g, h, i) = lattice
    volume = abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))
    r = (3.0 * 1.5 * (settings.max_nbr + 1) * volume / (4.0 * math.pi * n_atoms)) ** (1.0 / 3.0)
    return min(settings.radius, max(r, 1.0))


def _search(cart: np.ndarray, lattice: np.ndarray, r: float, centres: np.ndarray | None = None):
    """All (centre, neighbour, distance) pairs within r, self-pairs removed; centres default to all atoms."""
    if centres is None:
        ci, ni, _, d = find_points_in_spheres(cart, cart, r, _PBC, lattice, tol=_SELF_TOL)
    else:
        ci, ni, _, d = find_points_in_spheres(cart, cart[centres], r, _PBC, lattice, tol=_SELF_TOL)
        ci = centres[ci]
    # Only an atom's own position is a self-pair: another atom on the same spot is an overlap.
    keep = (d > _SELF_TOL) | (ci != ni)
    return ci[keep], ni[keep], d[keep]


@dataclass(frozen=True)
class GraphBatch:
    """The graphs of several structures, atoms concatenated (CSR rows), and why the others have none.

    ``errors[s]`` is None when structure s has a graph; its rows are in ``nbr_idx``/``nbr_dist`` in
    input order. A structure with an error has no rows.
    """

    nbr_idx: np.ndarray  # int32 (n_atoms of the good structures, max_nbr), local to each structure
    nbr_dist: np.ndarray  # float32 (same shape), Å, ascending per row
    errors: list[str | None]


def build_graphs(
    structures: Sequence[tuple[np.ndarray, np.ndarray]], settings: GraphSettings
) -> GraphBatch:
    """The crystal graphs of many periodic structures given as (lattice, fractional coordinates).

    Same graphs as `build_graph` one by one. A structure with overlapping atoms, or with an atom that
    has no neighbour within the radius when ``settings.on_isolated_atoms == "fail"``, gets the
    one-line reason in ``errors`` instead of rows.
    """
    k, radius = settings.max_nbr, settings.radius
    n_structures = len(structures)
    sizes = np.empty(n_structures, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s, (lattice, frac) in enumerate(structures):
        lattice = np.ascontiguousarray(lattice, dtype=np.float64)
        n = len(frac)
        sizes[s] = n
        cart = np.ascontiguousarray(np.asarray(frac, dtype=np.float64) @ lattice)
        r0 = _first_radius(lattice.tolist(), n, settings)
        ci, ni, d = _search(cart, lattice, r0)
        if r0 < radius:
            found = np.bincount(ci, minlength=n)
            if n and found.min() < k:  # rare: these atoms again with the full radius
                short = np.flatnonzero(found < k)
                ci2, ni2, d2 = _search(cart, lattice, radius, short)
                retry = found[ci] >= k
                ci, ni, d = np.concatenate((ci[retry], ci2)), np.concatenate((ni[retry], ni2)), np.concatenate((d[retry], d2))
        parts.append((ci, ni, d))

    # From here on, every structure at once: atom rows numbered across the batch.
    offsets = np.zeros(n_structures + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n_total = int(offsets[-1])
    pair_counts = np.fromiter((p[0].size for p in parts), dtype=np.int64, count=n_structures)
    ci = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    ni = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    d = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float64)
    pair_structure = np.repeat(np.arange(n_structures), pair_counts)
    centre = ci + offsets[:-1][pair_structure]  # row of the centre atom in the batch
    counts = np.bincount(centre, minlength=n_total)

    errors: list[str | None] = [None] * n_structures
    if d.size and d.min() < settings.min_distance:
        for s in np.unique(pair_structure[d < settings.min_distance]).tolist():
            lo, hi = int(pair_counts[:s].sum()), int(pair_counts[: s + 1].sum())
            j = lo + int(np.argmin(d[lo:hi]))
            errors[s] = (
                f"overlapping atoms: sites {ci[j]} and {ni[j]} are {d[j]:.3f} Å apart "
                f"(< {settings.min_distance} Å)"
            )
    if settings.on_isolated_atoms == "fail" and n_total and counts.min() == 0:
        atom_structure = np.repeat(np.arange(n_structures), sizes)
        for row in np.flatnonzero(counts == 0).tolist():
            s = int(atom_structure[row])
            if errors[s] is None:
                errors[s] = (
                    f"isolated atom: site {row - offsets[s]} has no neighbour within {radius} Å "
                    f"(use --on-isolated-atoms pad to keep it)"
                )

    # Per centre, its k nearest, sorted: one sort of all pairs by (centre, float32 distance). The key
    # packs the float32 bits (ordered like the values, all >= 0) under the centre's row.
    d32 = d.astype(np.float32)
    order = np.argsort((centre << 32) | d32.view(np.uint32).astype(np.int64), kind="stable")
    centre = centre[order]
    starts = np.cumsum(counts) - counts
    rank = np.arange(centre.size) - starts[centre]
    sel = rank < k
    order = order[sel]
    rows, cols = centre[sel], rank[sel]
    nbr_idx = np.zeros((n_total, k), dtype=np.int32)
    nbr_dist = np.full((n_total, k), radius + 1.0, dtype=np.float32)
    nbr_idx[rows, cols] = ni[order]
    nbr_dist[rows, cols] = d32[order]
    if any(e is not None for e in errors):
        good = np.array([e is None for e in errors])
        keep = np.repeat(good, sizes)
        nbr_idx, nbr_dist = nbr_idx[keep], nbr_dist[keep]
    return GraphBatch(nbr_idx, nbr_dist, errors)


def build_graph(
    lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, settings: GraphSettings
) -> CrystalGraph:
    """The crystal graph of one periodic structure given as arrays (lattice rows are cell vectors).

    Raises GraphError for overlapping atoms, and for atoms with no neighbour within the radius
    when ``settings.on_isolated_atoms == "fail"``.
    """
    batch = build_graphs([(lattice, frac_coords)], settings)
    if batch.errors[0] is not None:
        raise GraphError(batch.errors[0])
    return CrystalGraph(np.asarray(numbers, dtype=np.uint8), batch.nbr_idx, batch.nbr_dist)
