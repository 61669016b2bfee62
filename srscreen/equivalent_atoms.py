"""Merge atoms that the network cannot tell apart, so that it convolves each kind once.

A T-step crystal graph convolution gives two atoms the same features whenever their T-hop
neighbourhoods match: same element, and neighbours at the same distances whose own neighbourhoods
match one step less deep. That is colour refinement (1-WL) with distances on the edges, and in a
crystal it is what symmetry does: the 25.8 atoms of an average Materials Project cell fall into 11.4
such classes for 4 steps (`python benchmarks/predict.py` prints the ratio). Convolving one representative per class
on the quotient graph (a representative's neighbours point to their classes) and expanding the result
back to atoms before pooling gives every atom its own features, so predictions are unchanged up to
float rounding. Distances count as equal when their stored float32 values are: symmetric neighbours'
distances, computed in float64, almost always round to the same float32, and where they do not the
class splits (slower, never wrong). A tolerance of 1e-4 Å would also merge nearly symmetric atoms,
and moved MP predictions by up to 1e-5 eV.

`predict` (on CPU) and `train` both convolve the quotient; training counts each class once per atom
in its BatchNorm statistics (`batch_stats`). Classes stay within a crystal, so the quotient is again
a shard of self-contained graphs and batches can be packed from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shards import Shard


@dataclass(frozen=True)
class Quotient:
    """A shard's graphs on classes of equivalent atoms, in the shard's CSR layout.

    Per crystal `n_nodes` classes; per class `atomic_numbers`, `nbr_idx` (local to its crystal's classes)
    and `nbr_dist`; per atom `node_of_atom`, its class local to its crystal (None: classes are atoms).
    """

    n_atoms: np.ndarray
    n_nodes: np.ndarray
    atomic_numbers: np.ndarray
    nbr_idx: np.ndarray
    nbr_dist: np.ndarray
    node_of_atom: np.ndarray | None


def equivalence_classes(crystal: np.ndarray, numbers: np.ndarray, nbr: np.ndarray, dist: np.ndarray,
                        steps: int) -> np.ndarray:
    """Class label per atom (0..n_classes-1): atoms with equal labels get equal features for `steps` steps.

    `nbr` indexes atoms globally; labels of different crystals never coincide. Each round relabels an
    atom by its row (own class, sorted (distance, neighbour's class) pairs: ties in distance may list
    neighbours in any order). Rows are hashed for speed and every class is then checked against its
    first row exactly, so a hash collision cannot merge atoms that differ.
    """
    if len(numbers) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(numbers) >= 2**32:  # labels share an int64 with a distance's 32 bits: leave such a shard unmerged
        return np.arange(len(numbers))
    dkey = np.ascontiguousarray(dist, dtype=np.float32).view(np.int32).astype(np.int64) << 32  # exact
    labels = np.unique((crystal.astype(np.int64) << 8) | numbers, return_inverse=True)[1].reshape(-1)
    for _ in range(steps):
        rows = np.empty((len(labels), nbr.shape[1] + 1), dtype=np.int64)
        rows[:, 0] = labels
        rows[:, 1:] = dkey | labels[nbr]
        rows[:, 1:].sort(axis=1)
        _, first, refined = np.unique(_row_hash(rows), return_index=True, return_inverse=True)
        refined = refined.reshape(-1)
        if (rows != rows[first[refined]]).any():  # a hash collision: exact, slower relabelling
            refined = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
        if refined.max() == labels.max():  # refinement only splits: same count, same partition, stable
            break
        labels = refined
    return labels


def _row_hash(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row: a weighted sum with fixed odd random weights (wrapping)."""
    weights = np.random.default_rng(0).integers(1, 2**62, size=rows.shape[1]) | 1
    return (rows * weights).sum(axis=1)


def quotient(shard: Shard, steps: int) -> Quotient:
    """The shard's graphs with the atoms merged that a `steps`-step convolution cannot tell apart."""
    n_atoms = shard.n_atoms.astype(np.int64)
    atom_start = np.repeat(np.cumsum(n_atoms) - n_atoms, n_atoms)
    crystal = np.repeat(np.arange(len(n_atoms)), n_atoms)
    nbr = shard.nbr_idx.astype(np.int64) + atom_start[:, None]
    labels = equivalence_classes(crystal, shard.atomic_numbers, nbr, shard.nbr_dist, steps)
    # Number the classes by their first atom, so that they come crystal by crystal, like atoms.
    _, first = np.unique(labels, return_index=True)
    rep = np.sort(first)
    node = np.empty(len(rep), dtype=np.int64)
    node[labels[rep]] = np.arange(len(rep))
    node_of_atom = node[labels]
    n_nodes = np.bincount(crystal[rep], minlength=len(n_atoms))
    node_start = np.cumsum(n_nodes) - n_nodes
    return Quotient(
        n_atoms=n_atoms,
        n_nodes=n_nodes,
        atomic_numbers=shard.atomic_numbers[rep],
        nbr_idx=node_of_atom[nbr[rep]] - node_start[crystal[rep], None],
        nbr_dist=shard.nbr_dist[rep],
        node_of_atom=node_of_atom - node_start[crystal],
    )


def unmerged(shard: Shard) -> Quotient:
    """The shard as a quotient with every atom its own class: for a GPU, where merging would cost more
    CPU time than the convolutions it saves (1.3 s against 0.2 s to read the MP file)."""
    n_atoms = shard.n_atoms.astype(np.int64)
    return Quotient(n_atoms, n_atoms, shard.atomic_numbers, shard.nbr_idx, shard.nbr_dist, None)
