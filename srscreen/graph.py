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
No torch and no pymatgen objects here: this runs in the featurizer's workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


def _first_radius(lattice: np.ndarray, n_atoms: int, settings: GraphSettings) -> float:
    """Radius of a sphere expected to hold ~1.5 * max_nbr atoms at this cell's number density."""
    volume = abs(float(np.linalg.det(lattice)))
    r = (3.0 * 1.5 * (settings.max_nbr + 1) * volume / (4.0 * np.pi * n_atoms)) ** (1.0 / 3.0)
    return min(settings.radius, max(r, 1.0))


def _search(cart: np.ndarray, centres: np.ndarray, lattice: np.ndarray, r: float) -> tuple[np.ndarray, ...]:
    """All (centre, neighbour, distance) pairs within r, self-pairs removed."""
    ci, ni, _, d = find_points_in_spheres(cart, cart[centres], r, _PBC, lattice, tol=_SELF_TOL)
    ci = centres[ci]
    # Only an atom's own position is a self-pair: another atom on the same spot is an overlap.
    keep = (d > _SELF_TOL) | (ci != ni)
    return ci[keep], ni[keep], d[keep]


def _take_nearest(ci: np.ndarray, ni: np.ndarray, d: np.ndarray, n: int, k: int, pad_dist: float):
    """Per centre, the k nearest neighbours sorted by distance, padded CGCNN-style."""
    order = np.lexsort((d, ci))
    ci, ni, d = ci[order], ni[order], d[order]
    counts = np.bincount(ci, minlength=n)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(ci.size) - np.repeat(starts, counts)
    sel = rank < k
    nbr_idx = np.zeros((n, k), dtype=np.int32)
    nbr_dist = np.full((n, k), pad_dist, dtype=np.float32)
    nbr_idx[ci[sel], rank[sel]] = ni[sel]
    nbr_dist[ci[sel], rank[sel]] = d[sel]
    return nbr_idx, nbr_dist, np.minimum(counts, k)


def build_graph(
    lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, settings: GraphSettings
) -> CrystalGraph:
    """The crystal graph of one periodic structure given as arrays (lattice rows are cell vectors).

    Raises GraphError for overlapping atoms, and for atoms with no neighbour within the radius
    when ``settings.on_isolated_atoms == "fail"``.
    """
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    n = len(numbers)
    cart = np.ascontiguousarray(np.asarray(frac_coords, dtype=np.float64) @ lattice)
    k = settings.max_nbr
    all_atoms = np.arange(n)

    r0 = _first_radius(lattice, n, settings)
    ci, ni, d = _search(cart, all_atoms, lattice, r0)
    if r0 < settings.radius:
        found = np.bincount(ci, minlength=n)
        short = all_atoms[found < k]
        if short.size:
            retry = np.isin(ci, short, invert=True)
            ci2, ni2, d2 = _search(cart, short, lattice, settings.radius)
            ci = np.concatenate((ci[retry], ci2))
            ni = np.concatenate((ni[retry], ni2))
            d = np.concatenate((d[retry], d2))

    if d.size and d.min() < settings.min_distance:
        j = int(np.argmin(d))
        raise GraphError(
            f"overlapping atoms: sites {ci[j]} and {ni[j]} are {d[j]:.3f} Å apart "
            f"(< {settings.min_distance} Å)"
        )
    nbr_idx, nbr_dist, counts = _take_nearest(ci, ni, d, n, k, settings.radius + 1.0)
    if settings.on_isolated_atoms == "fail" and (counts == 0).any():
        site = int(np.flatnonzero(counts == 0)[0])
        raise GraphError(
            f"isolated atom: site {site} has no neighbour within {settings.radius} Å "
            f"(use --on-isolated-atoms pad to keep it)"
        )
    return CrystalGraph(np.asarray(numbers, dtype=np.uint8), nbr_idx, nbr_dist)
