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

from dataclasses import replace

import numpy as np

from srscreen.graph.csr import Graphs, rows_of, starts_of


def equivalence_classes(crystal: np.ndarray, numbers: np.ndarray, n_edges: np.ndarray, nbr: np.ndarray,
                        dist: np.ndarray, steps: int) -> np.ndarray:
    """Class label per atom (0..n_classes-1): atoms with equal labels get equal features for `steps` steps.

    `n_edges` per atom; per edge (grouped by atom, ascending distance within each) `nbr` indexes atoms
    globally. Labels of different crystals never coincide. Each round relabels an atom by its row (own
    class, its (distance, neighbour's class) pairs in canonical order: by distance, ties by class).
    Rows are hashed for speed and every class is then checked against its first row exactly, so a hash
    collision cannot merge atoms that differ. A crystal whose classes a round did not split is final
    (refinement only splits, and a crystal's atoms only see each other), so later rounds run on the
    crystals still splitting: on MP ~6% of atoms after the second round, halving the work.
    """
    n = len(numbers)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n >= 2**30 or len(nbr) >= 2**31:  # keys pack an edge's group and a label in an int64: leave unmerged
        return np.arange(n)
    n_edges = n_edges.astype(np.int64)
    crystal = crystal.astype(np.int64)
    edge_start = starts_of(n_edges)
    centre = np.repeat(np.arange(n), n_edges)
    d32 = np.ascontiguousarray(dist, dtype=np.float32)
    # Edges with the same centre and distance bits form a group: within it neighbours may come in any order.
    new_group = np.ones(len(nbr), dtype=bool)
    new_group[1:] = (centre[1:] != centre[:-1]) | (d32[1:] != d32[:-1])
    group = (np.cumsum(new_group) - 1) << 32
    dkey = d32.view(np.int32).astype(np.int64) << 32  # exact
    rank = np.arange(len(nbr)) - edge_start[centre]
    weights = np.random.default_rng(0).integers(1, 2**62, size=int(n_edges.max(initial=0)) + 1) | 1
    edge_weight = weights[rank + 1]
    cum = np.zeros(len(nbr) + 1, dtype=np.int64)
    labels = np.unique((crystal << 8) | numbers, return_inverse=True)[1].reshape(-1)
    atoms, edges = None, None  # the atoms (whole crystals) still splitting and their edges; None: all
    for _ in range(steps):
        own, counts = _take(labels, atoms), _take(n_edges, atoms)
        start = starts_of(counts)
        # Neighbour classes sorted within each group: one sort of (group, class) packed in an int64.
        keys = labels[_take(nbr, edges)]
        keys |= _take(group, edges)
        keys.sort()
        keys &= 0xFFFFFFFF
        keys |= _take(dkey, edges)
        _, first, refined = np.unique(_row_hashes(own, keys, weights[0], _take(edge_weight, edges), start, counts,
                                                  cum[: len(keys) + 1]),
                                      return_index=True, return_inverse=True)
        refined = refined.reshape(-1)
        local_centre = np.repeat(np.arange(len(own)), counts)
        if not _rows_equal(own, counts, start, local_centre, keys, first[refined]):  # a hash collision: exact
            refined = _exact_relabel(own, counts, start, _take(rank, edges), local_centre, keys)
        of_crystal = _take(crystal, atoms)
        split = _classes_per_crystal(of_crystal, refined) > _classes_per_crystal(of_crystal, own)
        if atoms is None:
            labels = refined
        else:
            labels[atoms] = refined + labels.max() + 1
        still = split[of_crystal]
        if not still.any():
            break
        atoms = np.flatnonzero(still) if atoms is None else atoms[still]
        edges = rows_of(edge_start[atoms], n_edges[atoms])
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _take(values: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    return values if index is None else values[index]


def _classes_per_crystal(crystal: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How many classes each crystal has (indexed by crystal number)."""
    _, first = np.unique(labels, return_index=True)
    return np.bincount(crystal[first], minlength=int(crystal.max(initial=-1)) + 1)


def _row_hashes(labels, keys, own_weight, edge_weight, start, n_edges, cum) -> np.ndarray:
    """A 64-bit hash per row: its label and keys weighted by position with fixed odd random weights,
    summed with wrapping (per row as a difference of cumulative sums; `cum` is scratch space)."""
    np.cumsum(keys * edge_weight, out=cum[1:])
    return labels * own_weight + (cum[start + n_edges] - cum[start])


def _rows_equal(labels, n_edges, start, centre, keys, rep) -> bool:
    """Whether every atom's row equals its class representative's `rep` row, exactly."""
    if (labels != labels[rep]).any() or (n_edges != n_edges[rep]).any():
        return False
    partner = (start[rep] - start)[centre]  # each edge's counterpart in its representative's row
    partner += np.arange(len(keys))
    return bool(np.array_equal(keys[partner], keys))


def _exact_relabel(labels, n_edges, start, rank, centre, keys) -> np.ndarray:
    """Classes of whole rows, padded to the longest, by exact comparison."""
    rows = np.full((len(labels), int(n_edges.max(initial=0)) + 2), -1, dtype=np.int64)
    rows[:, 0], rows[:, 1] = labels, n_edges
    rows[centre, rank + 2] = keys
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def quotient(shard: Graphs, steps: int) -> Graphs:
    """The graphs with the atoms merged that a `steps`-step convolution cannot tell apart (nodes become
    classes of atoms: `n_nodes`, `node_of_atom`)."""
    n_atoms = shard.n_atoms.astype(np.int64)
    n_edges = shard.n_edges.astype(np.int64)
    atom_start = starts_of(n_atoms)
    crystal = np.repeat(np.arange(len(n_atoms)), n_atoms)
    nbr = shard.nbr_idx.astype(np.int64) + np.repeat(atom_start[crystal], n_edges)
    labels = equivalence_classes(crystal, shard.atomic_numbers, n_edges, nbr, shard.nbr_dist, steps)
    # Number the classes by their first atom, so that they come crystal by crystal, like atoms.
    _, first = np.unique(labels, return_index=True)
    rep = np.sort(first)
    node = np.empty(len(rep), dtype=np.int64)
    node[labels[rep]] = np.arange(len(rep))
    node_of_atom = node[labels]
    n_nodes = np.bincount(crystal[rep], minlength=len(n_atoms))
    node_start = starts_of(n_nodes)
    edges = rows_of(starts_of(n_edges)[rep], n_edges[rep])
    rep_of_edge = np.repeat(rep, n_edges[rep])
    return Graphs(
        n_atoms=n_atoms,
        atomic_numbers=shard.atomic_numbers[rep],
        n_edges=shard.n_edges[rep],
        nbr_idx=node_of_atom[nbr[edges]] - node_start[crystal[rep_of_edge]],
        nbr_dist=shard.nbr_dist[edges],
        ids=shard.ids,
        formula=shard.formula,
        sources=shard.sources,
        n_nodes=n_nodes,
        node_of_atom=node_of_atom - node_start[crystal],
    )


def unmerged(shard: Graphs) -> Graphs:
    """The graphs with every atom its own class (`n_nodes` = `n_atoms`, no `node_of_atom`): for a GPU,
    where merging would cost more CPU time than the convolutions it saves (1.3 s against 0.2 s to read
    the MP file)."""
    n_atoms = shard.n_atoms.astype(np.int64)
    return replace(shard, n_atoms=n_atoms, n_nodes=n_atoms, node_of_atom=None)
