"""One convolution step's edge block in training mode: a forward torch.compile can fuse, a hand-written backward.

    z_ij = a_j + b_i + c_ij                      (gathered neighbour term, own term, edge term)
    y    = BN(z)                                 (batch statistics over all edges)
    out_i = sum_j sigmoid(y_ij,filter) * softplus(y_ij,core)

This is where training spends its time: every line touches an edges x 2F tensor, and autograd runs it
as ~15 separate passes. `edge_forward` and `edge_backward` are plain functions, so torch.compile can
fuse the forward into a few loops: SR-CGCNN-3 epochs 1.5x faster on 2 CPU cores (benchmarks/train.py).
They equal `nn.BatchNorm1d` + the gate under autograd to float tolerance (tests/test_model.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import Compiled


def _messages(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """z = a[nbr] + b + c as (atoms, neighbours, 2F), out of place (autograd copies views changed in place)."""
    n_atoms, n_nbr, width = c.shape
    return a.index_select(0, nbr).view(n_atoms, n_nbr, width) + (b.unsqueeze(1) + c)


def edge_forward(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, nbr: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """(out, zhat, slopes, mean, invstd): the step's summed messages and what the backward needs.

    `slopes` holds d out / d y for a unit upstream gradient, [s(1-s) softplus(core), s sigmoid(core)]:
    computed here, inside the fused loop, the backward needs no transcendental functions.
    """
    n_atoms, n_nbr, width = c.shape
    z = _messages(a, b, c, nbr)
    zhat, mean, invstd = torch.native_batch_norm(z.view(-1, width), None, None, None, None, True, 0.0, eps)
    filt, core = torch.addcmul(bias, zhat, weight).view(n_atoms, n_nbr, width).chunk(2, dim=2)
    s, p = torch.sigmoid(filt), F.softplus(core)
    slopes = torch.cat([s * (1.0 - s) * p, s * torch.sigmoid(core)], dim=2)
    return (s * p).sum(dim=1), zhat, slopes, mean, invstd


def edge_backward(grad: torch.Tensor, zhat: torch.Tensor, slopes: torch.Tensor, invstd: torch.Tensor,
                  nbr: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients (a, b, c, weight, bias) of `edge_forward`'s output."""
    n_atoms, half = grad.shape
    n_edges, width = zhat.shape
    dy = (slopes.view(n_atoms, -1, 2, half) * grad.view(n_atoms, 1, 1, half)).view(n_edges, width)
    d_bias = dy.sum(0)
    d_weight = (dy * zhat).sum(0)
    scale = weight * invstd
    dz = torch.addcmul(d_bias * (-scale / n_edges), zhat, d_weight * (-scale / n_edges)).addcmul_(dy, scale)
    d_a = torch.zeros((n_atoms, width), dtype=dz.dtype, device=dz.device).index_add_(0, nbr, dz)
    dz3 = dz.view(n_atoms, -1, width)
    return d_a, dz3.sum(1), dz3, d_weight, d_bias


class _GatedEdges(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c, nbr, weight, bias, bn: nn.BatchNorm1d, fwd: Callable):
        out, zhat, slopes, mean, invstd = fwd(a, b, c, nbr, weight, bias, bn.eps)
        with torch.no_grad():  # nn.BatchNorm1d's running statistics: momentum average, unbiased variance
            n = zhat.shape[0]
            var = (invstd.double().pow(-2) - bn.eps).to(mean.dtype) * (n / max(n - 1, 1))
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var, momentum)
        ctx.save_for_backward(zhat, slopes, invstd, nbr, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        zhat, slopes, invstd, nbr, weight = ctx.saved_tensors
        d_a, d_b, d_c, d_weight, d_bias = edge_backward(grad.contiguous(), zhat, slopes, invstd, nbr, weight)
        return d_a, d_b, d_c, None, d_weight, d_bias, None, None


def gate_sum(y: torch.Tensor) -> torch.Tensor:
    """CGCNN's gate summed over neighbours: (atoms, neighbours, 2F) normalised messages -> (atoms, F)."""
    filt, core = y.chunk(2, dim=2)
    return (torch.sigmoid(filt) * F.softplus(core)).sum(dim=1)


def reference_edges(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, nbr: torch.Tensor,
                    bn: nn.BatchNorm1d) -> torch.Tensor:
    """The same block as plain autograd operations: the faster of the two when not compiled."""
    n_atoms, n_nbr, width = c.shape
    z = _messages(a, b, c, nbr)
    return gate_sum(bn(z.view(-1, width)).view(n_atoms, n_nbr, width))


class GatedEdges:
    """The training-mode edge block: plain autograd, or with `compiled` the fused forward and backward.

    Only the fused forward is compiled: compiled, it is ~2x faster than eager, while inductor's code for
    the backward's column sums and scatter-add measured slower than PyTorch's eager kernels. Eager, the
    fused forward (which also computes the backward's slopes) is slower than plain autograd.
    """

    def __init__(self, compiled: bool = False) -> None:
        self.fwd: Callable | None = Compiled(edge_forward) if compiled else None

    def __call__(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, nbr: torch.Tensor,
                 bn: nn.BatchNorm1d) -> torch.Tensor:
        if self.fwd is None:
            return reference_edges(a, b, c, nbr, bn)
        return _GatedEdges.apply(a, b, c, nbr, bn.weight, bn.bias, bn, self.fwd)
