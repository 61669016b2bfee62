"""The network and its batching: parameter budget, the maths against a plain CGCNN layer, and the
properties a screening run relies on (a crystal's prediction depends on nothing but the crystal)."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.compile_probe import really_compiled

from srscreen.data.batch import GraphBatch, collate, pack_by_atoms
from srscreen.model.network import CrystalGraphNet

RADIUS, MAX_NBR = 8.0, 12


def random_table(seed: int = 0) -> np.ndarray:
    table = np.random.default_rng(seed).random((101, 92)).astype(np.float32)
    table[0] = 0.0
    return table


def random_graphs(sizes: list[int], seed: int = 0, rule: str = "knn-ties") -> dict[str, np.ndarray]:
    """Valid CSR crystal graphs: local neighbour indices, distances ascending within each atom.

    "knn-ties": 10-16 edges per atom (ties with the 12th), and a third of the atoms short of neighbours
    within the radius, with 0-9 edges. "cgcnn": 12 edges per atom, a third of the atoms padded CGCNN's
    way after 1-11 real neighbours (index 0 at radius + 1).
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    short = rng.choice(n, size=n // 3, replace=False)
    if rule == "cgcnn":
        n_edges = np.full(n, MAX_NBR, dtype=np.int32)
    else:
        n_edges = rng.integers(10, 17, n).astype(np.int32)
        n_edges[short] = rng.integers(0, 10, len(short))
    size_of_edge = np.repeat(np.repeat(sizes, sizes), n_edges)
    nbr_idx = np.floor(rng.random(len(size_of_edge)) * size_of_edge).astype(np.int32)
    centre = np.repeat(np.arange(n), n_edges)
    nbr_dist = rng.uniform(1.6, RADIUS, len(centre))
    nbr_dist = nbr_dist[np.lexsort((nbr_dist, centre))].astype(np.float32)
    if rule == "cgcnn":
        for row, found in zip(short, rng.integers(1, MAX_NBR, len(short))):
            padding = slice(row * MAX_NBR + found, (row + 1) * MAX_NBR)
            nbr_idx[padding] = 0
            nbr_dist[padding] = RADIUS + 1.0
    return {
        "n_atoms": np.asarray(sizes, dtype=np.int32),
        "atomic_numbers": rng.choice([3, 8, 14, 22, 26, 56, 83], n).astype(np.uint8),
        "n_edges": n_edges,
        "nbr_idx": nbr_idx,
        "nbr_dist": nbr_dist,
    }


def crystal(graphs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Structure i alone, as CSR arrays."""
    atom_ends = np.concatenate([[0], np.cumsum(graphs["n_atoms"])])
    edge_ends = np.concatenate([[0], np.cumsum(graphs["n_edges"])])
    a, b = atom_ends[i], atom_ends[i + 1]
    atoms, edges = slice(a, b), slice(edge_ends[a], edge_ends[b])
    return {
        "n_atoms": graphs["n_atoms"][i : i + 1],
        **{k: graphs[k][atoms] for k in ("atomic_numbers", "n_edges")},
        **{k: graphs[k][edges] for k in ("nbr_idx", "nbr_dist")},
    }


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def trained_looking(model: CrystalGraphNet, seed: int = 1) -> CrystalGraphNet:
    """Eval-mode model with non-trivial BatchNorm running statistics, as after training."""
    gen = torch.Generator().manual_seed(seed)
    for bn in [*model.bn1, *model.bn2]:
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    return model.eval()


def plain_forward(model: CrystalGraphNet, batch: GraphBatch) -> torch.Tensor:
    """The model's maths written the CGCNN way: concatenate [v_i, v_j, u_ij] per edge, then fc_full, and
    sum each atom's gated messages over its own run of edges, one atom at a time."""
    centres = torch.as_tensor(np.arange(0.0, model.radius + model.gaussian_step, model.gaussian_step))
    u = torch.exp(-((batch.nbr_dist.double().unsqueeze(-1) - centres) ** 2) / model.gaussian_step**2).float()
    v = model.embedding(model.feature_table[batch.numbers])
    edges_per_atom = torch.bincount(batch.centre, minlength=len(v)).tolist()
    for t in range(model.steps):
        fc = model.fc_full[0 if model.shared else t]
        own = v.repeat_interleave(torch.tensor(edges_per_atom), dim=0)
        z = model.bn1[t](fc(torch.cat([own, v[batch.nbr_idx], u], dim=1)))
        nbr_filter, nbr_core = z.chunk(2, dim=1)
        messages = torch.sigmoid(nbr_filter) * F.softplus(nbr_core)
        summed = torch.stack([m.sum(dim=0) for m in messages.split(edges_per_atom)])
        v = F.softplus(v + model.bn2[t](summed))
    pooled = torch.stack([v[batch.crystal == c].mean(dim=0) for c in range(batch.n_crystals)])
    head = model.heads[0]
    h = F.softplus(head.conv_to_fc(F.softplus(pooled)))
    for fc in head.fcs:
        h = F.softplus(fc(h))
    return head.fc_out(h)


def test_parameter_budget_matches_the_paper():
    shared = CrystalGraphNet(feature_table=random_table(), steps=3, shared=True)
    stacked = CrystalGraphNet(feature_table=random_table(), steps=3, shared=False)
    assert shared.conv_parameter_count() == 22_912
    assert stacked.conv_parameter_count() == 66_432
    assert round(100 * shared.conv_parameter_count() / stacked.conv_parameter_count(), 1) == 34.5
    assert sum(p.numel() for p in shared.parameters()) == 37_313
    assert sum(p.numel() for p in stacked.parameters()) == 80_833
    # Weight tying means depth is free: more steps add only BatchNorms.
    deeper = CrystalGraphNet(feature_table=random_table(), steps=6, shared=True)
    assert deeper.conv_parameter_count() - shared.conv_parameter_count() == 3 * 384


def test_architecture_rebuilds_the_same_network():
    model = CrystalGraphNet(feature_table=random_table(), steps=4, shared=False, h_fea_len=32, n_h=2)
    arch = json.loads(json.dumps(model.architecture()))
    rebuilt = CrystalGraphNet(feature_table=model.feature_table, **arch)
    rebuilt.load_state_dict(model.state_dict())
    assert "SR-CGCNN" not in repr(rebuilt) and "steps=4" in repr(rebuilt)


def test_gaussian_expansion_is_cgcnns():
    model = CrystalGraphNet(feature_table=random_table())
    d = np.array([[0.0, 1.234, 3.9, 7.99, 9.0]], dtype=np.float32)
    centres = np.arange(0.0, 8.0 + 0.2, 0.2)  # CGCNN GaussianDistance(dmin=0, dmax=radius, step=0.2)
    want = np.exp(-((d.astype(np.float64)[..., None] - centres) ** 2) / 0.2**2)
    got = model._gaussians(torch.from_numpy(d)).numpy()
    assert got.shape == (1, 5, 41)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule", ["knn-ties", "cgcnn"])
@pytest.mark.parametrize("shared", [True, False])
def test_split_weights_equal_plain_concatenation(shared, rule):
    """The fast path (per-atom blocks of fc_full, edge term once) computes CGCNN's layer, values and gradients,
    on atoms of any degree (none to 16 edges) and on CGCNN's padded graphs."""
    graphs = random_graphs([5, 2, 8, 3], seed=3, rule=rule)
    batch = collate(**graphs)
    torch.manual_seed(0)
    fast = CrystalGraphNet(feature_table=random_table(), shared=shared, n_h=2)
    plain = copy.deepcopy(fast)
    target = torch.randn(batch.n_crystals)
    for model, forward in ((fast, fast.forward), (plain, lambda b: plain_forward(plain, b))):
        model.train()
        ((forward(batch) - target) ** 2).mean().backward()
    for (name, p_fast), p_plain in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-4, atol=1e-5, msg=name)
    for b_fast, b_plain in zip(fast.buffers(), plain.buffers()):  # same batch statistics were recorded
        torch.testing.assert_close(b_fast, b_plain, rtol=1e-5, atol=1e-6)
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(batch), plain_forward(plain, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_prediction_does_not_depend_on_atom_order(shared):
    graphs = random_graphs([6, 4, 7], seed=5)  # no CGCNN padding: its index 0 names a different atom once permuted
    rng = np.random.default_rng(9)
    sizes = graphs["n_atoms"]
    first = np.cumsum(sizes) - sizes
    perm = np.concatenate([f + rng.permutation(k) for f, k in zip(first, sizes)])  # new atom -> old atom
    new_of_old = np.argsort(perm)
    edge_start = np.cumsum(graphs["n_edges"]) - graphs["n_edges"]
    edges = np.concatenate([np.arange(edge_start[a], edge_start[a] + graphs["n_edges"][a]) for a in perm])
    start = np.repeat(np.repeat(first, sizes), graphs["n_edges"])[edges]  # unchanged by a permutation within each crystal
    permuted = {
        "n_atoms": sizes,
        "atomic_numbers": graphs["atomic_numbers"][perm],
        "n_edges": graphs["n_edges"][perm],
        "nbr_idx": (new_of_old[graphs["nbr_idx"][edges] + start] - start).astype(np.int32),
        "nbr_dist": graphs["nbr_dist"][edges],
    }
    model = trained_looking(CrystalGraphNet(feature_table=random_table(), shared=shared))
    with torch.no_grad():
        torch.testing.assert_close(model(collate(**permuted)), model(collate(**graphs)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", ["knn-ties", "cgcnn"])
def test_batch_predictions_equal_one_by_one_and_ignore_batch_mates(rule):
    graphs = random_graphs([3, 8, 1, 5, 2], seed=7, rule=rule)
    others = random_graphs([4, 6], seed=8, rule=rule)
    model = trained_looking(CrystalGraphNet(feature_table=random_table()))
    with torch.no_grad():
        together = model(collate(**graphs))
        alone = torch.cat([model(collate(**crystal(graphs, i))) for i in range(5)])
        with_strangers = model(collate(**concat(others, crystal(graphs, 1), crystal(others, 0))))
    assert together.shape == (5, 1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_strangers[2], together[1], rtol=1e-5, atol=1e-6)


def test_collate_offsets_neighbours_into_the_batch():
    graphs = random_graphs([2, 3, 1], seed=1)
    batch = collate(**graphs)
    assert batch.n_crystals == 3
    assert batch.crystal.tolist() == [0, 0, 1, 1, 1, 2]
    assert batch.numbers.dtype == batch.centre.dtype == batch.nbr_idx.dtype == batch.crystal.dtype == torch.long
    assert batch.nbr_dist.dtype == torch.float32
    assert batch.centre.tolist() == np.repeat(np.arange(6), graphs["n_edges"]).tolist()  # ascending, CSR
    offsets = np.repeat([0, 0, 2, 2, 2, 5], graphs["n_edges"])
    np.testing.assert_array_equal(batch.nbr_idx.numpy(), graphs["nbr_idx"] + offsets)
    np.testing.assert_array_equal(batch.nbr_dist.numpy(), graphs["nbr_dist"])
    assert (batch.crystal[batch.nbr_idx] == batch.crystal[batch.centre]).all()  # never leaves its crystal
    np.testing.assert_array_equal(batch.numbers.numpy(), graphs["atomic_numbers"])
    moved = batch.to("cpu")
    assert moved.n_crystals == 3 and torch.equal(moved.nbr_idx, batch.nbr_idx) and torch.equal(moved.centre, batch.centre)
    with pytest.raises(ValueError, match="n_atoms sums to 6"):
        collate(graphs["n_atoms"], graphs["atomic_numbers"][:-1], graphs["n_edges"], graphs["nbr_idx"], graphs["nbr_dist"])
    with pytest.raises(ValueError, match=f"n_edges to {graphs['n_edges'].sum()}"):
        collate(graphs["n_atoms"], graphs["atomic_numbers"], graphs["n_edges"], graphs["nbr_idx"][:-1], graphs["nbr_dist"][:-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory and device transfer need CUDA")
def test_batch_moves_to_the_gpu():
    batch = collate(**random_graphs([3, 4], seed=2)).pin_memory()
    assert batch.nbr_idx.is_pinned()
    model = trained_looking(CrystalGraphNet(feature_table=random_table())).to("cuda")
    with torch.no_grad():
        on_gpu = model(batch.to("cuda", non_blocking=True)).cpu()
        on_cpu = model.cpu()(batch)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


def test_pack_by_atoms_respects_the_limit_and_keeps_order():
    rng = np.random.default_rng(0)
    n_atoms = rng.integers(1, 60, 500)
    n_atoms[[10, 11, 200]] = 150  # larger than the limit: one batch each
    runs = pack_by_atoms(n_atoms, max_atoms=100)
    assert [i for run in runs for i in range(run.start, run.stop)] == list(range(500))
    for run in runs:
        total = n_atoms[run].sum()
        assert total <= 100 or run.stop - run.start == 1
        if run.stop < len(n_atoms):  # greedy: the next structure would not have fitted
            assert total + n_atoms[run.stop] > 100
    assert slice(10, 11) in runs and slice(11, 12) in runs and slice(200, 201) in runs
    assert pack_by_atoms(np.array([], dtype=np.int32), 100) == []
    assert pack_by_atoms(np.array([3, 3, 3]), 6) == [slice(0, 2), slice(2, 3)]
    with pytest.raises(ValueError):
        pack_by_atoms(n_atoms, 0)


def _edge_inputs(seed: int = 0, dtype=torch.float64):
    """Per-node terms a, b and per-edge terms c of 40 nodes with 0-16 edges each (CSR: centre ascending)."""
    gen = torch.Generator().manual_seed(seed)
    n_atoms, width = 40, 16
    a, b = (torch.randn(n_atoms, width, generator=gen, dtype=dtype, requires_grad=True) for _ in range(2))
    n_edges = torch.randint(10, 17, (n_atoms,), generator=gen)
    n_edges[:8] = torch.randint(0, 10, (8,), generator=gen)  # short of neighbours, one without any
    n_edges[3] = 0
    centre = torch.repeat_interleave(torch.arange(n_atoms), n_edges)
    c = torch.randn(len(centre), width, generator=gen, dtype=dtype, requires_grad=True)
    nbr = torch.randint(0, n_atoms, (len(centre),), generator=gen)
    bn = torch.nn.BatchNorm1d(width).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.uniform_(-0.5, 0.5, generator=gen)
    return a, b, c, centre, nbr, bn


def _run_edges(block, inputs, upstream: torch.Tensor, counts: torch.Tensor | None):
    a, b, c, centre, nbr, bn = inputs
    out = block(a, b, c, centre, nbr, bn, counts)
    out.backward(upstream)
    leaves = (a, b, c, bn.weight, bn.bias)
    return out.detach(), [t.grad for t in leaves], (bn.running_mean.clone(), bn.running_var.clone())


@pytest.mark.parametrize("merged", [False, True])
def test_fused_edge_block_equals_autograd_with_batchnorm(merged):
    """The hand-written forward and backward (run eagerly here) against nn.BatchNorm1d + gate under autograd:
    output, the gradient of every input, and the BatchNorm running statistics after the step; `merged`:
    rows standing for 1-4 atoms each, against batch_stats's weighted BatchNorm under autograd."""
    from srscreen.model.edge_block import GatedEdges, _GatedEdges, edge_forward

    gen = torch.Generator().manual_seed(9)
    upstream = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    counts = torch.randint(1, 5, (40,), generator=gen).double() if merged else None
    ref = _run_edges(GatedEdges(), _edge_inputs(), upstream, counts)
    fused = _run_edges(lambda a, b, c, centre, nbr, bn, n: _GatedEdges.apply(a, b, c, centre, nbr, bn.weight, bn.bias, bn,
                                                                            edge_forward, n),
                       _edge_inputs(), upstream, counts)
    torch.testing.assert_close(fused[0], ref[0], rtol=1e-10, atol=1e-10)
    for got, want in zip(fused[1], ref[1]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for got, want in zip(fused[2], ref[2]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_compiled_training_step_equals_eager():
    """`compile_training` (torch.compile of the fused forward) gives the eager model's loss and gradients."""
    graphs = random_graphs([3, 5, 2, 4], seed=4)
    batch = collate(**graphs)
    eager = CrystalGraphNet(feature_table=random_table(), steps=3)
    compiled = copy.deepcopy(eager)
    compiled.compile_training()
    grads = []
    for net in (eager, compiled):
        net.train()
        with really_compiled() if net is compiled else nullcontext():
            loss = net(batch).square().mean()
            loss.backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-5, msg=name)
    for bn_c, bn_e in zip(compiled.bn1, eager.bn1):
        torch.testing.assert_close(bn_c.running_var, bn_e.running_var, rtol=1e-4, atol=1e-6)
    assert compiled.gated_edges.fwd.compiled is not None, "the step fell back to eager"


@pytest.mark.parametrize("rule", ["knn-ties", "cgcnn"])
def test_dense_block_layout_predicts_what_the_plain_layout_predicts(rule):
    """Evaluation sums each node's first max_nbr messages over a dense block (`collate(dense_width=)`):
    the same predictions as scattering every edge, with nodes above, at and below max_nbr edges."""
    graphs = random_graphs([3, 5, 8, 2], seed=4, rule=rule)
    model = CrystalGraphNet(feature_table=random_table(), steps=3, radius=RADIUS).double().eval()
    plain, dense = collate(**graphs), collate(**graphs, dense_width=MAX_NBR)
    assert dense.dense_width == MAX_NBR and dense.nbr_idx.shape[0] >= plain.nbr_idx.shape[0]
    if rule == "knn-ties":
        assert dense.dense_real is not None, "the test graphs must hold a node with fewer than max_nbr edges"
    double = lambda b: replace(b, nbr_dist=b.nbr_dist.double())  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(model(double(dense)), model(double(plain)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="evaluation"):
        model.train()(double(dense))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fallback", [False, True])
def test_in_place_gate_equals_the_gate(dtype, fallback, monkeypatch):
    """Inference's in-place gate (no edge-sized temporaries) gives the training gate's numbers bit for bit,
    on a view as the scratch buffer hands it, and so does its fallback for a torch without softplus's out=."""
    from srscreen.model.edge_block import gate, gate_

    if fallback:
        def missing(*args, **kwargs):
            raise TypeError("softplus() got an unexpected keyword argument 'out'")
        monkeypatch.setattr(torch._C._nn, "softplus", missing)
    y = torch.randn(300, 2 * 24, generator=torch.Generator().manual_seed(0), dtype=dtype) * 12
    buffer = torch.zeros(400, 2 * 24, dtype=dtype)
    view = buffer[50:350]
    view.copy_(y)
    want = gate(y)
    got = gate_(view)
    assert got.data_ptr() == view.data_ptr()  # in y's own memory
    assert torch.equal(got, want)
