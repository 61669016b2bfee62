"""Crystal graphs stored CSR-style (numpy) -> one batched graph (torch) for the network."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from srscreen.graph.csr import Graphs, starts_of


@dataclass(frozen=True)
class GraphBatch:
    """Several crystal graphs merged into one disconnected graph.

    Edges are CSR: sorted by their `centre` node; `nbr_idx` indexes the batch's nodes (global), so the
    network never needs per-crystal loops; `crystal` tells which crystal each atom belongs to, for
    pooling. Nodes are atoms, unless
    `atom_node` is given: then nodes are classes of equivalent atoms (`equivalent_atoms`) and
    `atom_node` says which node each atom takes its features from.
    """

    numbers: torch.Tensor  # long (N,) atomic numbers, per node
    centre: torch.Tensor  # long (E,) node of each edge, ascending
    nbr_idx: torch.Tensor  # long (E,) global neighbour index of each edge
    nbr_dist: torch.Tensor  # float32 (E,) edge lengths in Å
    crystal: torch.Tensor  # long (A,) crystal index of each atom, 0..n_crystals-1
    n_crystals: int
    atom_node: torch.Tensor | None = None  # long (A,) node of each atom; None: A == N, node i is atom i
    # With `dense_width` K > 0 (evaluation only), the first N * K edges are each node's first K edges, node
    # by node (`dense_real` marks the real ones where a node has fewer; None: all are), and the edges after
    # them are the rest (ties beyond the K-th): see `collate`.
    dense_width: int = 0
    dense_real: torch.Tensor | None = None  # bool (N, K)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GraphBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> GraphBatch:
        """Page-locked copy, so a later `.to(cuda, non_blocking=True)` overlaps with compute."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn) -> GraphBatch:
        tensors = {f.name: fn(getattr(self, f.name)) for f in fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **tensors)


def collate(
    n_atoms: np.ndarray,
    atomic_numbers: np.ndarray,
    n_edges: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_dist: np.ndarray,
    dense_width: int = 0,
) -> GraphBatch:
    """Batch a contiguous run of structures given as CSR arrays (neighbour indices local to each structure).

    `dense_width` K > 0 lays the edges out for evaluation as a dense (nodes, K) block of each node's first
    K edges, then the rest: nearly every atom has exactly max_nbr edges, so with K = max_nbr the network
    sums most messages over a block (and adds each node's own term by broadcasting) instead of scattering
    them, which is ~15% faster per convolution on CPU; the few edges tied beyond the K-th are scattered.
    Nodes with fewer than K edges get masked filler slots. Training takes the plain layout (K = 0).
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    n_edges = np.asarray(n_edges, dtype=np.int64)
    total = int(n_atoms.sum())
    if not (len(atomic_numbers) == len(n_edges) == total and len(nbr_idx) == len(nbr_dist) == int(n_edges.sum())):
        raise ValueError(
            f"CSR arrays disagree: n_atoms sums to {total} and n_edges to {int(n_edges.sum())}, but got "
            f"{len(atomic_numbers)} atomic numbers, {len(n_edges)} edge counts, {len(nbr_idx)} neighbour "
            f"indices and {len(nbr_dist)} distances"
        )
    centre = np.repeat(np.arange(total, dtype=np.int64), n_edges)
    nbr = np.asarray(nbr_idx, dtype=np.int64) + np.repeat(starts_of(n_atoms), n_atoms)[centre]
    dist = np.ascontiguousarray(nbr_dist, dtype=np.float32)
    real = None
    if dense_width > 0:
        centre, nbr, dist, real = _dense_first(centre, nbr, dist, n_edges, dense_width)
    return GraphBatch(
        numbers=torch.from_numpy(np.asarray(atomic_numbers, dtype=np.int64)),
        centre=torch.from_numpy(centre),
        nbr_idx=torch.from_numpy(nbr),
        nbr_dist=torch.from_numpy(dist),
        crystal=torch.from_numpy(np.repeat(np.arange(len(n_atoms), dtype=np.int64), n_atoms)),
        n_crystals=len(n_atoms),
        dense_width=dense_width,
        dense_real=None if real is None else torch.from_numpy(real),
    )


def _dense_first(centre: np.ndarray, nbr: np.ndarray, dist: np.ndarray, n_edges: np.ndarray, k: int):
    """Edges reordered as (nodes, k) slots of each node's first k edges, then the remaining edges; a
    node short of k fills its slots with itself at distance 0, marked not real."""
    n_nodes = len(n_edges)
    rank = np.arange(len(centre)) - np.repeat(starts_of(n_edges), n_edges)
    first = rank < k
    extra = ~first
    slot = np.where(first, centre * k + rank, n_nodes * k + np.cumsum(extra) - 1)
    size = n_nodes * k + int(extra.sum())
    own = np.repeat(np.arange(n_nodes, dtype=np.int64), k)
    out_centre = np.concatenate([own, np.zeros(size - n_nodes * k, np.int64)])
    out_nbr = out_centre.copy()
    out_dist = np.zeros(size, np.float32)
    out_centre[slot], out_nbr[slot], out_dist[slot] = centre, nbr, dist
    real = None if n_edges.min(initial=k) >= k else np.arange(k) < n_edges[:, None]
    return out_centre, out_nbr, out_dist, real


def with_atoms(batch: GraphBatch, n_nodes: np.ndarray, n_atoms: np.ndarray, node_of_atom: np.ndarray) -> GraphBatch:
    """A batch collated from classes of equivalent atoms (`n_nodes` per crystal), told its atoms: per
    crystal `n_atoms`, and per atom its node, local to its crystal (as `equivalent_atoms.quotient` gives them)."""
    n_nodes, n_atoms = np.asarray(n_nodes, dtype=np.int64), np.asarray(n_atoms, dtype=np.int64)
    if not (len(n_nodes) == len(n_atoms) == batch.n_crystals and len(node_of_atom) == n_atoms.sum()):
        raise ValueError(f"{batch.n_crystals} crystals in the batch, but {len(n_nodes)} node counts, "
                         f"{len(n_atoms)} atom counts and {len(node_of_atom)} atoms")
    node_start = np.cumsum(n_nodes) - n_nodes
    return replace(
        batch,
        crystal=torch.from_numpy(np.repeat(np.arange(len(n_atoms), dtype=np.int64), n_atoms)),
        atom_node=torch.from_numpy(node_of_atom.astype(np.int64) + np.repeat(node_start, n_atoms)),
    )


def pack_by_atoms(n_atoms: np.ndarray, max_atoms: int) -> list[slice]:
    """Split structures, in order, into contiguous runs of at most `max_atoms` atoms.

    Batching by atoms rather than by structures keeps memory bounded whatever the cell sizes.
    A structure larger than `max_atoms` gets a batch of its own. One binary search per batch.
    """
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be at least 1, got {max_atoms}")
    ends = np.concatenate([[0], np.cumsum(np.asarray(n_atoms, dtype=np.int64))])
    n = len(ends) - 1
    runs = []
    start = 0
    while start < n:
        stop = int(np.searchsorted(ends, ends[start] + max_atoms, side="right")) - 1
        stop = max(stop, start + 1)
        runs.append(slice(start, stop))
        start = stop
    return runs


def batch_of(graphs: Graphs, dense_width: int = 0) -> GraphBatch:
    """All crystals of `graphs` as one batch, their atoms told their nodes when equivalent atoms are merged."""
    batch = collate(graphs.nodes, graphs.atomic_numbers, graphs.n_edges, graphs.nbr_idx, graphs.nbr_dist, dense_width)
    if graphs.node_of_atom is None:
        return batch
    return with_atoms(batch, graphs.nodes, graphs.n_atoms, graphs.node_of_atom)

