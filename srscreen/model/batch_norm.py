"""BatchNorm's batch statistics when a row stands for several identical atoms.

Training on classes of equivalent atoms (`equivalent_atoms`) convolves one row per class; for the
network to compute exactly what it would on every atom, each row must count as many times in the
batch mean and variance as its class has atoms. These functions are nn.BatchNorm1d's training mode
with such counts, and its running-statistics update.
"""

from __future__ import annotations

import torch
from torch import nn


def weighted_stats(x: torch.Tensor, counts: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """(x normalised, mean, 1/std) over rows of `x` (rows, features), row i counted `counts[i]` times."""
    total = counts.sum()
    w = counts.unsqueeze(1)
    mean = (x * w).sum(0) / total
    centred = x - mean
    invstd = torch.rsqrt((centred.square() * w).sum(0) / total + eps)
    return centred * invstd, mean, invstd


def update_running_stats(bn: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
    """nn.BatchNorm1d's update after a batch of `n` rows: momentum averages of the mean and of the
    unbiased variance (`var` is the biased one the batch was normalised with)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_((var * (n / max(n - 1, 1))).to(bn.running_var.dtype), momentum)


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d, counts: torch.Tensor | None) -> torch.Tensor:
    """`bn(x)`, where in training mode row i stands for `counts[i]` rows (None: one each)."""
    if counts is None or not bn.training:
        return bn(x)
    xhat, mean, invstd = weighted_stats(x, counts, bn.eps)
    update_running_stats(bn, mean.detach(), invstd.detach().double().pow(-2) - bn.eps, float(counts.sum()))
    return torch.addcmul(bn.bias, xhat, bn.weight)
