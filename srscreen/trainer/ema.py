"""Exponential moving average of a network's weights, validated and kept instead of the raw weights."""

from __future__ import annotations

import torch

from srscreen.model.network import CrystalGraphNet


@torch.no_grad()
def ema_update(ema: CrystalGraphNet, model: CrystalGraphNet, decay: float, step: int) -> None:
    """Exponential moving average of the weights and of the BatchNorm running statistics.

    The statistics are averaged like the weights (copying them paired averaged weights with the
    statistics of the latest ones, which made the validated average jump between epochs); integer
    buffers (batch counts) are copied. The decay ramps up as (1 + step) / (10 + step), so early
    averages do not drag the random initialisation along for thousands of steps.
    """
    decay = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if e.is_floating_point():
            e.lerp_(b, 1.0 - decay)
        else:
            e.copy_(b)
