"""Ensembles: N members of one architecture run as one batched network, and their calibrated spread.

`EnsembleNet` runs N trained `CrystalGraphNet`s as one network M times as wide: every node and edge
row holds all members' features side by side, so the Gaussian expansion, the gathers, the gated
messages and their sums over neighbours, and the pooling run once for all members (the network's own
`_evaluated_edges` does the edges), the distance and element terms are one matrix product each, and
only the per-member products of node features are batched (`bmm`). Edge features are laid out
[filter parts of all members | core parts of all members], so the gate's split in halves splits
every member at once. It computes what each member's eval-mode forward computes (tests/test_ensemble.py)
and is faster than the members one after another (README, "Ensembles and uncertainty").

Spread (`ModelFile.values` computes it): the members' sample standard deviation (ddof=1, the usual
deep-ensemble estimate), with any scale heads' variance added: the raw spread. `calibration_scale` turns it
into a standard deviation, scale·raw, fitted on validation errors so that the shares within 1 and 2 std
come nearest a Gaussian's 68.3% and 95.4%.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from srscreen.data.batch import GraphBatch
from srscreen.errors import InputError
from srscreen.model.network import CrystalGraphNet, _affine, _edge_scratch, _evaluated_edges

SPREAD_DDOF = 1


class EnsembleNet(nn.Module):
    """N members of one architecture as one network, for evaluation only: forward(batch) ->
    (members, crystals, heads), each member's normalised outputs as its own network computes them in eval mode."""

    def __init__(self, members: Sequence[CrystalGraphNet]) -> None:
        super().__init__()
        first = members[0]
        if any(m.architecture() != first.architecture() for m in members) or any(
                not torch.equal(m.feature_table, first.feature_table) for m in members):
            raise ValueError("ensemble members differ in architecture or element feature table")
        self.n_members, self.steps, self.shared = len(members), first.steps, first.shared
        self.gaussian_step, fea = first.gaussian_step, first.atom_fea_len
        self.register_buffer("gaussian_centres", first.gaussian_centres.clone(), persistent=False)
        with torch.no_grad():
            # (elements, M*F): the element table embedded by every member, gathered per node.
            self.register_buffer("embedded", torch.cat([m.embedding(m.feature_table) for m in members], dim=1))
            weight_sets = range(len(first.fc_full))
            # Edge terms u_ij W_edge + b of every member in one product: (K, G, 2MF) and (K, 2MF).
            self.register_buffer("edge_w", torch.stack([_halves([m.fc_full[k].weight[:, 2 * fea :].t() for m in members])
                                                        for k in weight_sets]))
            self.register_buffer("edge_b", torch.stack([_halves([m.fc_full[k].bias for m in members])
                                                        for k in weight_sets]))
            # Own and neighbour terms per member: (K, M, F, 4F), columns [own filter, own core, nbr filter, nbr core].
            self.register_buffer("node_w", torch.stack([torch.stack([m.fc_full[k].weight[:, : 2 * fea].reshape(2 * fea, 2, fea)
                                                                     .permute(2, 1, 0).reshape(fea, 4 * fea) for m in members])
                                                        for k in weight_sets]))
            # Eval-mode BatchNorms as scale and shift per step: BN1 (T, 2, 2MF), BN2 (T, 2, MF).
            self.register_buffer("bn1", torch.stack([torch.stack([_halves([_affine(m.bn1[t])[i] for m in members])
                                                                  for i in (0, 1)]) for t in range(self.steps)]))
            self.register_buffer("bn2", torch.stack([torch.stack([torch.cat([_affine(m.bn2[t])[i] for m in members])
                                                                  for i in (0, 1)]) for t in range(self.steps)]))
            # Every head of every member, member-major (M*H of them): weights (M*H, in, out), biases
            # (M*H, 1, out), layer by layer.
            heads = [head.layers() for m in members for head in m.heads]
            for i in range(len(heads[0])):
                self.register_buffer(f"head_w{i}", torch.stack([layers[i].weight.t() for layers in heads]))
                self.register_buffer(f"head_b{i}", torch.stack([layers[i].bias for layers in heads]).unsqueeze(1))
        self.n_layers, self.n_heads = len(heads[0]), len(first.heads)
        self.eval()

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        m = self.n_members
        v = self.embedded.index_select(0, batch.numbers)  # (N, MF)
        n_nodes, fea = v.shape[0], v.shape[1] // m
        gaussians = CrystalGraphNet._gaussians(self, batch.nbr_dist)  # same centres and width as each member's
        edge_terms = [torch.addmm(b, gaussians, w) for w, b in zip(self.edge_w, self.edge_b)]
        scratch = _edge_scratch(edge_terms[0], batch)
        for t in range(self.steps):
            k = 0 if self.shared else t
            # (M, N, 4F) -> own and neighbour terms as (N, 2, M, F) views: [filters of all | cores of all]
            terms = torch.bmm(v.view(n_nodes, m, fea).transpose(0, 1), self.node_w[k])
            own, nbr = terms.view(m, n_nodes, 2, 2, fea).permute(2, 1, 3, 0, 4)
            scale, shift = (x.view(2, m, fea) for x in self.bn1[t])
            # BN1 folded in as in CrystalGraphNet, written node-major (out=: elementwise ops keep a permuted layout).
            own_scaled, nbr_scaled = torch.empty(2, n_nodes, 2, m, fea, dtype=v.dtype, device=v.device)
            torch.addcmul(shift, own, scale, out=own_scaled)
            torch.mul(nbr, scale, out=nbr_scaled)
            summed = _evaluated_edges(own_scaled.view(n_nodes, -1), nbr_scaled.view(n_nodes, -1), edge_terms[k],
                                      self.bn1[t][0], batch, scratch)
            v = F.softplus(v + torch.addcmul(self.bn2[t][1], summed, self.bn2[t][0]))
        if batch.atom_node is not None:
            v = v.index_select(0, batch.atom_node)
        h = F.softplus(CrystalGraphNet._mean_per_crystal(v, batch)).view(-1, m, fea).transpose(0, 1)  # (M, C, F)
        h = h.repeat_interleave(self.n_heads, dim=0)  # (M*H, C, F): each member's features for each of its heads
        for i in range(self.n_layers):
            h = torch.baddbmm(getattr(self, f"head_b{i}"), h, getattr(self, f"head_w{i}"))
            if i < self.n_layers - 1:
                h = F.softplus(h)
        return h.view(m, self.n_heads, -1).transpose(1, 2)  # (M, C, H), each member as its own forward gives it


def _halves(per_member: list[torch.Tensor]) -> torch.Tensor:
    """Members' (..., 2F) tensors, each [filter | core], side by side as (..., 2MF): all filters, then all cores."""
    filters, cores = zip(*(x.chunk(2, dim=-1) for x in per_member))
    return torch.cat([*filters, *cores], dim=-1)


# Shares of errors within 1 and 2 std of a Gaussian, and the windows a calibrated spread must keep them in
# (issue 24: 55-80% at 1 std, 88-99% at 2); a miss counts in units of the room the window leaves on its side.
ONE_STD, TWO_STD = 0.6827, 0.9545
ONE_STD_WINDOW, TWO_STD_WINDOW = (0.55, 0.80), (0.88, 0.99)


def calibration_scale(errors: np.ndarray, raw: np.ndarray) -> float:
    """The scale s for std = s·raw whose shares of errors within 1 and 2 std come nearest a Gaussian's
    (68.3%, 95.4%), each miss counted in units of the room its window leaves on that side (1 std: 11.7
    points above, 13.3 below; 2 std: 3.6 above, 7.5 below). Crystal models' errors have heavier tails
    than a Gaussian, so no scale matches both: the Gaussian likelihood's s² = mean((error/raw)²), fitted
    to the tails, covered 85-91% of the campaign's screen models' test errors at 1 std; this one puts them
    inside both windows, as far from either edge as the tails allow (tolerances of 12 and 5 points either
    side left v3's band gap at 79.9% at 1 std on its test crystals, 0.1 from the edge, with 2.5 to spare at
    2 std). Exact Gaussian errors of std `raw` give about 1; rows without a spread (raw 0) say nothing
    about the scale and are left out."""
    e, raw = np.abs(np.asarray(errors, dtype=np.float64)), np.asarray(raw, dtype=np.float64)
    usable = np.isfinite(e) & np.isfinite(raw) & (raw > 0)
    if not usable.any():
        raise InputError("cannot calibrate: no validation crystal with a spread (members that never disagree)")
    ratio = np.sort(e[usable] / raw[usable])
    candidates = np.unique(np.quantile(ratio, np.linspace(0.4, 0.97, 115), method="higher"))
    candidates = candidates[candidates > 0]
    if not len(candidates):
        raise InputError("cannot calibrate: every validation error is 0")

    def miss(scale: float) -> float:
        one, two = np.searchsorted(ratio, [scale, 2 * scale], side="right") / len(ratio)
        return float(np.hypot(_in_window(one, ONE_STD, ONE_STD_WINDOW), _in_window(two, TWO_STD, TWO_STD_WINDOW)))

    return float(min(candidates, key=miss))


def _in_window(share: float, gaussian: float, window: tuple[float, float]) -> float:
    """How far `share` is from the Gaussian share, in units of the distance to the window's edge on its side."""
    edge = window[1] if share > gaussian else window[0]
    return (share - gaussian) / abs(edge - gaussian)


def uncertainty_metrics(errors: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """How well the spread ranks and sizes the errors (README, "Ensembles and uncertainty"):
    Spearman correlation of |error| with std, the fractions of errors within 1 and 2 std (0.683 and
    0.954 if the errors were Gaussian with that std), and the MAE of the 10% most and the 10% least
    confident predictions."""
    errors, std = np.abs(np.asarray(errors, dtype=np.float64)), np.asarray(std, dtype=np.float64)
    tenth = max(1, len(errors) // 10)
    by_std = np.argsort(std, kind="stable")
    return {
        "spearman": _spearman(errors, std),
        "within_1std": float(np.mean(errors <= std)),
        "within_2std": float(np.mean(errors <= 2 * std)),
        "mae_most_confident_10pct": float(errors[by_std[:tenth]].mean()),
        "mae_least_confident_10pct": float(errors[by_std[-tenth:]].mean()),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank), without scipy at import time; NaN, quietly,
    where it is undefined (fewer than 2 rows, or either side constant, as metals' band-gap errors of 0 are)."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
