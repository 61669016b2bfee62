"""Cell geometry shared by the readers (sanity checks) and the graph builder (search radius)."""

from __future__ import annotations


def cell_volume(lattice: list[list[float]]) -> float:
    """Volume of a cell given as three lattice rows in nested lists, in Å^3.

    Plain floats rather than np.linalg.det, which costs ~10 µs a call: this runs once per structure.
    """
    (a, b, c), (d, e, f), (g, h, i) = lattice
    return abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))
