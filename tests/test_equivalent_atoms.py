"""Merging equivalent atoms: the classes crystals should have, and predictions that do not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cu_slab

import srscreen.graph.equivalent_atoms as eq
from srscreen.data.batch import collate, with_atoms
from srscreen.graph.csr import rows_of, starts_of
from srscreen.graph.elements import cgcnn_feature_table
from srscreen.graph.settings import GraphSettings
from srscreen.graph.neighbours import build_graph
from srscreen.model.network import CrystalGraphNet
from srscreen.graph.csr import Graphs

SETTINGS = GraphSettings(radius=8.0, max_nbr=12)


def shard_of(structures: list) -> Graphs:
    graphs = [build_graph(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers), SETTINGS) for s in structures]
    return Graphs(
        ids=[f"s{i}" for i in range(len(structures))],
        formula=[s.composition.reduced_formula for s in structures],
        n_atoms=np.array([len(s) for s in structures], dtype=np.int32),
        atomic_numbers=np.concatenate([g.atomic_numbers for g in graphs]),
        n_edges=np.concatenate([g.n_edges for g in graphs]),
        nbr_idx=np.concatenate([g.nbr_idx for g in graphs]),
        nbr_dist=np.concatenate([g.nbr_dist for g in graphs]),
    )


@pytest.fixture(scope="module")
def crystals(prototypes) -> list:
    nacl = prototypes["NaCl"]  # conventional: 4 Na, 4 Cl
    rattled = prototypes["supercell"].copy().perturb(0.05, seed=0)
    return [nacl, prototypes["SrTiO3"], nacl * (2, 1, 1), prototypes["ZnO"], cu_slab(layers=6),
            prototypes["triclinic"], prototypes["supercell"], rattled]


def test_symmetry_gives_the_classes_a_chemist_expects(crystals):
    q = eq.quotient(shard_of(crystals), steps=4)
    nacl, srtio3, nacl_double, zno, _, triclinic, supercell, rattled = q.n_nodes
    assert (nacl, srtio3, nacl_double, zno) == (2, 3, 2, 2)  # Na/Cl; Sr/Ti/O; a supercell changes nothing
    assert triclinic == 4 and supercell == 2
    assert rattled == crystals[-1].num_sites  # broken symmetry: every atom its own class


def test_deeper_networks_tell_more_atoms_apart(crystals):
    # One step sees only the nearest neighbours: a slab's surface atoms, and the rest. Deeper steps see
    # the surface from inside: the classes are the graph's (each atom's 12 nearest and the shell tied
    # with the 12th), not the ideal crystal's.
    slab = shard_of([crystals[4]])
    counts = [int(eq.quotient(slab, steps).n_nodes[0]) for steps in (1, 2, 4)]
    assert counts[0] == 2 and counts == sorted(counts) and counts[-1] > 2


def test_quotient_points_every_atom_at_a_class_of_its_own_element_and_crystal(crystals):
    shard = shard_of(crystals)
    q = eq.quotient(shard, steps=3)
    node_start = np.repeat(np.cumsum(q.n_nodes) - q.n_nodes, q.n_atoms)
    nodes = q.node_of_atom + node_start
    assert np.array_equal(q.atomic_numbers[nodes], shard.atomic_numbers)
    assert (q.node_of_atom >= 0).all() and (q.node_of_atom < np.repeat(q.n_nodes, q.n_atoms)).all()
    assert len(q.n_edges) == len(q.atomic_numbers) and q.n_edges.sum() == len(q.nbr_idx) == len(q.nbr_dist)
    assert (q.nbr_idx >= 0).all() and (q.nbr_idx < np.repeat(np.repeat(q.n_nodes, q.n_nodes), q.n_edges)).all()
    # A class keeps the edges of the atom it stands for: same count, same distances.
    first_atom = np.unique(nodes, return_index=True)[1]
    assert np.array_equal(q.n_edges, shard.n_edges[first_atom])
    assert np.array_equal(q.nbr_dist, shard.nbr_dist[rows_of(starts_of(shard.n_edges)[first_atom], q.n_edges)])


def test_a_hash_collision_falls_back_to_exact_classes(crystals, monkeypatch):
    shard = shard_of(crystals)
    want = eq.quotient(shard, steps=4)
    # Every row hashes to 0: all rows collide, whatever their labels and neighbours.
    monkeypatch.setattr(eq, "_row_hashes", lambda labels, *rest: np.zeros(len(labels), dtype=np.int64))
    exact = eq._exact_relabel
    calls = []
    monkeypatch.setattr(eq, "_exact_relabel", lambda *args: calls.append(1) or exact(*args))
    got = eq.quotient(shard, steps=4)
    assert calls, "the collisions were noticed"
    assert np.array_equal(got.n_nodes, want.n_nodes)
    assert np.array_equal(got.node_of_atom, want.node_of_atom)


def test_unmerged_is_every_atom_its_own_class(crystals):
    shard = shard_of(crystals)
    q = eq.unmerged(shard)
    assert np.array_equal(q.n_nodes, q.n_atoms) and np.array_equal(q.n_edges, shard.n_edges)
    assert np.array_equal(q.nbr_idx, shard.nbr_idx) and np.array_equal(q.nbr_dist, shard.nbr_dist)
    assert q.node_of_atom is None


def test_an_empty_shard_has_an_empty_quotient():
    empty = Graphs.empty()
    assert eq.quotient(empty, steps=3).n_nodes.size == 0


def _float64(batch):
    return batch._map(lambda t: t.double() if t.is_floating_point() else t)


@pytest.mark.parametrize(("steps", "shared"), [(4, True), (4, False), (1, True)])
def test_predictions_on_the_quotient_equal_predictions_on_every_atom(crystals, steps, shared):
    # float64: this untrained net amplifies float32 rounding (thread-dependent summation order on the
    # 128-atom cell) to ~1e-4 between two runs of the same path.
    torch.manual_seed(0)
    net = CrystalGraphNet(feature_table=np.array(cgcnn_feature_table()), steps=steps, shared=shared).double()
    with torch.no_grad():  # non-trivial normalisation, as a trained model has
        for bn in [*net.bn1, *net.bn2]:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    net.eval()
    shard = shard_of(crystals)
    q = eq.quotient(shard, steps=steps)
    with torch.inference_mode():
        want = net(_float64(collate(shard.n_atoms, shard.atomic_numbers, shard.n_edges, shard.nbr_idx, shard.nbr_dist)))
        merged = with_atoms(collate(q.n_nodes, q.atomic_numbers, q.n_edges, q.nbr_idx, q.nbr_dist), q.n_nodes, q.n_atoms, q.node_of_atom)
        got = net(_float64(merged))
    assert merged.numbers.shape[0] <= shard.atomic_numbers.shape[0] // 2  # it really merged
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _training_step(net: CrystalGraphNet, batch) -> tuple[torch.Tensor, dict, list]:
    net.train()
    net.zero_grad()
    loss = (net(batch) - 0.3).square().mean()
    loss.backward()
    stats = [t.clone() for bn in [*net.bn1, *net.bn2] for t in (bn.running_mean, bn.running_var)]
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}, stats


@pytest.mark.parametrize("fused", [False, True])
def test_training_on_the_quotient_equals_training_on_every_atom(crystals, fused):
    """Loss, every gradient and every BatchNorm running statistic: classes count once per atom in the
    batch statistics, so a training step on merged atoms is the step on every atom (float64)."""
    from srscreen.model.edge_block import GatedEdges, edge_forward

    torch.manual_seed(0)
    net = CrystalGraphNet(feature_table=np.array(cgcnn_feature_table()), steps=3).double()
    if fused:  # the fused block with its hand-written backward, run eagerly
        net.gated_edges = GatedEdges()
        net.gated_edges.fwd = edge_forward
    shard = shard_of(crystals)
    q = eq.quotient(shard, steps=3)
    every = collate(shard.n_atoms, shard.atomic_numbers, shard.n_edges, shard.nbr_idx, shard.nbr_dist)
    merged = with_atoms(collate(q.n_nodes, q.atomic_numbers, q.n_edges, q.nbr_idx, q.nbr_dist), q.n_nodes, q.n_atoms, q.node_of_atom)
    want = _training_step(net, _float64(every))
    for bn in [*net.bn1, *net.bn2]:
        bn.reset_running_stats()
    got = _training_step(net, _float64(merged))
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-8, atol=1e-10, msg=name)
    for g, w in zip(got[2], want[2]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
