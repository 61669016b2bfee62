"""One convolution step's edge block in training mode: a forward torch.compile can fuse, a hand-written backward.

    z_ij = a_j + b_i + c_ij                      (gathered neighbour term, own term, edge term)
    y    = BN(z)                                 (batch statistics over all edges)
    out_i = sum_j sigmoid(y_ij,filter) * softplus(y_ij,core)

Edges are CSR (`centre`, `nbr`: each edge's own node and its neighbour), so atoms may have any number.

With `counts`, row i stands for counts[i] equivalent atoms (`equivalent_atoms`), and its edges count
that many times in the batch statistics (`batch_stats`).

This is where training spends its time: every line touches an edges x 2F tensor, and autograd runs it
as ~15 separate passes. `edge_forward` and `edge_backward` are plain functions, so torch.compile can
fuse the forward into a few loops: SR-CGCNN-3 epochs 2x faster on 2 CPU cores (benchmarks/train.py).
They equal `nn.BatchNorm1d` + the gate under autograd to float tolerance (tests/test_model.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from srscreen.model.batch_norm import batch_norm, update_running_stats, weighted_stats
from srscreen.model.compiled import Compiled


def _messages(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, centre: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """z = a[nbr] + b[centre] + c as (edges, 2F), out of place (autograd copies views changed in place)."""
    return a.index_select(0, nbr) + (b.index_select(0, centre) + c)


def edge_forward(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, centre: torch.Tensor, nbr: torch.Tensor,
                 weight: torch.Tensor, bias: torch.Tensor, eps: float,
                 edge_counts: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(messages, zhat, slopes, mean, invstd): each edge's gated message and what the backward needs.

    `slopes` holds d message / d y for a unit upstream gradient, [s(1-s) softplus(core), s sigmoid(core)]:
    computed here, inside the fused loop, the backward needs no transcendental functions.
    """
    z = _messages(a, b, c, centre, nbr)
    if edge_counts is None:
        zhat, mean, invstd = torch.native_batch_norm(z, None, None, None, None, True, 0.0, eps)
    else:
        zhat, mean, invstd = weighted_stats(z, edge_counts, eps)
    filt, core = torch.addcmul(bias, zhat, weight).chunk(2, dim=1)
    s, p = torch.sigmoid(filt), F.softplus(core)
    slopes = torch.cat([s * (1.0 - s) * p, s * torch.sigmoid(core)], dim=1)
    return s * p, zhat, slopes, mean, invstd


def edge_backward(grad: torch.Tensor, zhat: torch.Tensor, slopes: torch.Tensor, invstd: torch.Tensor,
                  centre: torch.Tensor, nbr: torch.Tensor, weight: torch.Tensor,
                  share: float | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients (a, b, c, weight, bias) of the summed messages. `share` is each edge's weight in the
    batch statistics: 1 / edges, or per edge (edges, 1) its count over the total count."""
    n_nodes, half = grad.shape
    n_edges, width = zhat.shape
    dy = (slopes.view(n_edges, 2, half) * grad.index_select(0, centre).view(n_edges, 1, half)).view(n_edges, width)
    d_bias = dy.sum(0)
    d_weight = (dy * zhat).sum(0)
    scale = weight * invstd
    # dz = scale (dy - share (d_bias + zhat d_weight)): the mean's and the variance's part of the gradient.
    per_edge = isinstance(share, torch.Tensor)
    corr = -scale if per_edge else -scale * share
    dz = torch.addcmul(d_bias * corr, zhat, d_weight * corr)
    if per_edge:
        dz.mul_(share)
    dz.addcmul_(dy, scale)
    d_a = dz.new_zeros((n_nodes, width)).index_add_(0, nbr, dz)
    d_b = dz.new_zeros((n_nodes, width)).index_add_(0, centre, dz)
    return d_a, d_b, dz, d_weight, d_bias


class _GatedEdges(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c, centre, nbr, weight, bias, bn: nn.BatchNorm1d, fwd: Callable, counts):
        edge_counts = None if counts is None else counts.index_select(0, centre)
        messages, zhat, slopes, mean, invstd = fwd(a, b, c, centre, nbr, weight, bias, bn.eps, edge_counts)
        n_edges = zhat.shape[0]
        if edge_counts is None:
            n, ctx.share = n_edges, 1.0 / n_edges
        else:
            n = float(edge_counts.sum())
            ctx.share = (edge_counts / n).unsqueeze(1)
        update_running_stats(bn, mean, invstd.double().pow(-2) - bn.eps, n)
        ctx.save_for_backward(zhat, slopes, invstd, centre, nbr, weight)
        return neighbour_sum(messages, centre, b.shape[0])

    @staticmethod
    def backward(ctx, grad):
        zhat, slopes, invstd, centre, nbr, weight = ctx.saved_tensors
        d_a, d_b, d_c, d_weight, d_bias = edge_backward(grad.contiguous(), zhat, slopes, invstd, centre, nbr,
                                                        weight, ctx.share)
        return d_a, d_b, d_c, None, None, d_weight, d_bias, None, None, None


def neighbour_sum(messages: torch.Tensor, centre: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Per node, the sum of its edges' messages: (edges, F) -> (nodes, F)."""
    return messages.new_zeros((n_nodes, messages.shape[1])).index_add_(0, centre, messages)


def gate(y: torch.Tensor) -> torch.Tensor:
    """CGCNN's gate on normalised messages: (..., 2F) -> (..., F)."""
    filt, core = y.chunk(2, dim=-1)
    return torch.sigmoid(filt) * F.softplus(core)


def gate_(y: torch.Tensor) -> torch.Tensor:
    """`gate(y)` computed in y's own memory, which it overwrites; the result is a view of y's filter half.
    Inference only (autograd cannot go through it): no new edge-sized tensors, the same numbers."""
    filt, core = y.chunk(2, dim=-1)
    try:  # F.softplus(core) with its defaults, written in place (its out= form is not public API)
        torch._C._nn.softplus(core, 1.0, 20.0, out=core)
    except (AttributeError, TypeError, RuntimeError):  # a torch without it: the same numbers, one temporary
        core.copy_(F.softplus(core))
    return filt.sigmoid_().mul_(core)


def gate_sum(y: torch.Tensor, centre: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """CGCNN's gate summed over neighbours: (edges, 2F) normalised messages -> (nodes, F)."""
    return neighbour_sum(gate(y), centre, n_nodes)


def reference_edges(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, centre: torch.Tensor, nbr: torch.Tensor,
                    bn: nn.BatchNorm1d, counts: torch.Tensor | None = None) -> torch.Tensor:
    """The same block as plain autograd operations: the faster of the two when not compiled."""
    z = _messages(a, b, c, centre, nbr)
    y = batch_norm(z, bn, None if counts is None else counts.index_select(0, centre))
    return gate_sum(y, centre, b.shape[0])


class GatedEdges:
    """The training-mode edge block: plain autograd, or with `compiled` the fused forward and backward.

    Only the fused forward is compiled: compiled, it is ~2x faster than eager, while inductor's code for
    the backward's column sums and scatter-add measured slower than PyTorch's eager kernels. Eager, the
    fused forward (which also computes the backward's slopes) is slower than plain autograd.
    """

    def __init__(self, compiled: bool = False) -> None:
        self.fwd: Callable | None = Compiled(edge_forward) if compiled else None

    def __call__(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, centre: torch.Tensor, nbr: torch.Tensor,
                 bn: nn.BatchNorm1d, counts: torch.Tensor | None = None) -> torch.Tensor:
        if self.fwd is None:
            return reference_edges(a, b, c, centre, nbr, bn, counts)
        return _GatedEdges.apply(a, b, c, centre, nbr, bn.weight, bn.bias, bn, self.fwd, counts)
