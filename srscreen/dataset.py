"""A graph file held in memory for training: any subset of crystals batched in one vectorised gather.

Training reads the shards once; every epoch then draws batches from these arrays, with no
re-featurizing and no per-crystal Python work (the gather is a handful of numpy calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import GraphBatch, collate
from .shards import GraphFile


@dataclass(frozen=True)
class GraphSet:
    """All crystals of a graph file in CSR arrays, addressable by position."""

    ids: list[str]
    formula: list[str]
    n_atoms: np.ndarray
    atom_start: np.ndarray
    atomic_numbers: np.ndarray
    nbr_idx: np.ndarray
    nbr_dist: np.ndarray
    graph_settings: dict
    feature_table_id: str

    @classmethod
    def load(cls, path: str | Path) -> "GraphSet":
        with GraphFile(path) as graphs:
            shards = list(graphs.iter_shards())
            settings, table_id = graphs.graph_settings, str(graphs.attrs["feature_table_id"])
        if not shards:
            raise ValueError(f"{path}: no featurized structures to train on")
        n_atoms = np.concatenate([s.n_atoms for s in shards]).astype(np.int64)
        return cls(
            ids=[i for s in shards for i in s.ids],
            formula=[f for s in shards for f in s.formula],
            n_atoms=n_atoms,
            atom_start=np.cumsum(n_atoms) - n_atoms,
            atomic_numbers=np.concatenate([s.atomic_numbers for s in shards]),
            nbr_idx=np.concatenate([s.nbr_idx for s in shards]),
            nbr_dist=np.concatenate([s.nbr_dist for s in shards]),
            graph_settings=settings,
            feature_table_id=table_id,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, crystals: np.ndarray) -> GraphBatch:
        """The crystals at these positions, in this order, as one batch."""
        counts = self.n_atoms[crystals]
        starts = self.atom_start[crystals]
        # Atom rows of every chosen crystal, concatenated: start repeated per atom plus a running offset.
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = np.repeat(starts, counts) + within
        return collate(counts, self.atomic_numbers[rows], self.nbr_idx[rows], self.nbr_dist[rows])


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Positions 0..n-1 cut into batches, shuffled when a generator is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
