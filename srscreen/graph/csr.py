"""Crystal graphs in CSR layouts (structures -> atoms -> edges): the container and its index arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


def starts_of(counts: np.ndarray) -> np.ndarray:
    """First row of each run, for runs of `counts` rows laid end to end."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


def rows_of(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows of the runs of `counts[i]` rows from `starts[i]`, concatenated in order."""
    counts = np.asarray(counts, dtype=np.int64)
    within = np.arange(int(counts.sum())) - np.repeat(starts_of(counts), counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + within


@dataclass(frozen=True)
class Graphs:
    """Crystal graphs of many structures in CSR arrays: the one container every floor passes graphs in
    (builder -> writer -> file -> reader -> merging -> batches), so none converts between look-alikes.

    Per crystal `n_atoms`; per node its `atomic_numbers` and `n_edges`; per edge `nbr_idx`, the neighbour's
    node local to its crystal (nearest first within each node), and `nbr_dist` in Å. Nodes are atoms,
    unless `n_nodes` (per crystal) and `node_of_atom` (per atom, local to its crystal) say that they are
    classes of equivalent atoms (`equivalent_atoms.quotient`). `ids`, `formula` and `sources` are per
    crystal where known, else empty.
    """

    n_atoms: np.ndarray  # int (crystals,)
    atomic_numbers: np.ndarray  # uint8 (nodes,)
    n_edges: np.ndarray  # int32 (nodes,)
    nbr_idx: np.ndarray  # int32 (edges,)
    nbr_dist: np.ndarray  # float32 (edges,)
    ids: list[str] = field(default_factory=list)
    formula: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    n_nodes: np.ndarray | None = None  # None: nodes are atoms
    node_of_atom: np.ndarray | None = None

    @classmethod
    def empty(cls) -> "Graphs":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def nodes(self) -> np.ndarray:
        """Graph nodes per crystal."""
        return self.n_atoms if self.n_nodes is None else self.n_nodes

    @cached_property
    def node_start(self) -> np.ndarray:
        return starts_of(self.nodes)

    @cached_property
    def edge_start(self) -> np.ndarray:
        return starts_of(self.n_edges)

    @cached_property
    def atom_start(self) -> np.ndarray:
        return starts_of(self.n_atoms)

    @cached_property
    def elemental(self) -> np.ndarray:
        """Whether each crystal is of one element (bool per crystal): its formation energy cannot be
        negative (`FORMATION_ENERGY_TARGETS`). Every crystal has a node, so each run of nodes is non-empty."""
        if not len(self):
            return np.zeros(0, dtype=bool)
        z = self.atomic_numbers
        return np.minimum.reduceat(z, self.node_start) == np.maximum.reduceat(z, self.node_start)

    def take(self, positions: np.ndarray) -> "Graphs":
        """The crystals at these positions, in this order (their nodes and edges follow them)."""
        positions = np.asarray(positions, dtype=np.int64)
        nodes = rows_of(self.node_start[positions], self.nodes[positions])
        edges = rows_of(self.edge_start[nodes], self.n_edges[nodes])
        pick = positions.tolist()
        return Graphs(
            self.n_atoms[positions], self.atomic_numbers[nodes], self.n_edges[nodes], self.nbr_idx[edges],
            self.nbr_dist[edges],
            *([values[i] for i in pick] if values else [] for values in (self.ids, self.formula, self.sources)),
            n_nodes=None if self.n_nodes is None else self.n_nodes[positions],
            node_of_atom=None if self.node_of_atom is None else
            self.node_of_atom[rows_of(self.atom_start[positions], self.n_atoms[positions])],
        )

    @staticmethod
    def concat(parts: list["Graphs"]) -> "Graphs":
        """The crystals of all parts, in order (all merged or none)."""
        if not parts:
            return Graphs.empty()
        merged = [p.n_nodes is not None for p in parts]
        if any(merged) and not all(merged):
            raise ValueError("cannot concatenate merged and unmerged graphs")
        arrays = ("n_atoms", "atomic_numbers", "n_edges", "nbr_idx", "nbr_dist")
        return Graphs(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in arrays),
            *([x for p in parts for x in getattr(p, name)] for name in ("ids", "formula", "sources")),
            n_nodes=np.concatenate([p.n_nodes for p in parts]) if merged[0] else None,
            node_of_atom=np.concatenate([p.node_of_atom for p in parts]) if merged[0] else None,
        )
