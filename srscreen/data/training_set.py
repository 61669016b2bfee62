"""A graph file held in memory for training: any subset of crystals batched in one vectorised gather.

Training reads the shards once; every epoch then draws batches from these arrays, with no
re-featurizing and no per-crystal Python work (the gather is a handful of numpy calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srscreen.data.batch import GraphBatch, collate, with_atoms
from srscreen.graph.csr import rows_of, starts_of
from srscreen.graph.equivalent_atoms import quotient, unmerged
from srscreen.data.graph_file import GraphFile


@dataclass(frozen=True)
class GraphSet:
    """All crystals of a graph file in CSR arrays, addressable by position.

    Graph rows are nodes: atoms, or, when loaded with `steps`, classes of atoms that a network of that
    many steps cannot tell apart (`equivalent_atoms`: 2.3x fewer on Materials Project), which training
    counts once per atom so that it computes exactly what it would on every atom.
    """

    ids: list[str]
    formula: list[str]
    n_atoms: np.ndarray
    n_nodes: np.ndarray
    node_start: np.ndarray
    atomic_numbers: np.ndarray  # per node, as are n_edges and edge_start
    n_edges: np.ndarray
    edge_start: np.ndarray
    nbr_idx: np.ndarray  # per edge, local to its crystal's nodes
    nbr_dist: np.ndarray
    atom_start: np.ndarray
    node_of_atom: np.ndarray | None  # per atom, local to its crystal's nodes; None: nodes are atoms
    graph_settings: dict
    feature_table_id: str

    @classmethod
    def load(cls, path: str | Path, steps: int | None = None) -> "GraphSet":
        """The file's graphs, with equivalent atoms merged for a `steps`-step network (None: not merged)."""
        with GraphFile(path) as graphs:
            shards = list(graphs.iter_shards())
            settings, table_id = graphs.graph_settings, str(graphs.attrs["feature_table_id"])
        if not shards:
            raise ValueError(f"{path}: no featurized structures to train on")
        parts = [quotient(s, steps) if steps is not None else unmerged(s) for s in shards]
        n_atoms = np.concatenate([q.n_atoms for q in parts])
        n_nodes = np.concatenate([q.n_nodes for q in parts])
        n_edges = np.concatenate([q.n_edges for q in parts])
        return cls(
            ids=[i for s in shards for i in s.ids],
            formula=[f for s in shards for f in s.formula],
            n_atoms=n_atoms,
            n_nodes=n_nodes,
            node_start=starts_of(n_nodes),
            atomic_numbers=np.concatenate([q.atomic_numbers for q in parts]),
            n_edges=n_edges,
            edge_start=starts_of(n_edges),
            nbr_idx=np.concatenate([q.nbr_idx for q in parts]),
            nbr_dist=np.concatenate([q.nbr_dist for q in parts]),
            atom_start=starts_of(n_atoms),
            node_of_atom=np.concatenate([q.node_of_atom for q in parts]) if steps is not None else None,
            graph_settings=settings,
            feature_table_id=table_id,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, crystals: np.ndarray) -> GraphBatch:
        """The crystals at these positions, in this order, as one batch."""
        nodes = rows_of(self.node_start[crystals], self.n_nodes[crystals])
        edges = rows_of(self.edge_start[nodes], self.n_edges[nodes])
        batch = collate(self.n_nodes[crystals], self.atomic_numbers[nodes], self.n_edges[nodes],
                        self.nbr_idx[edges], self.nbr_dist[edges])
        if self.node_of_atom is None:
            return batch
        atoms = rows_of(self.atom_start[crystals], self.n_atoms[crystals])
        return with_atoms(batch, self.n_nodes[crystals], self.n_atoms[crystals], self.node_of_atom[atoms])


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Positions 0..n-1 cut into batches, shuffled when a generator is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
