"""The network: CGCNN (Xie & Grossman 2018) and SR-CGCNN, whose convolution weights are tied across steps.

The maths is CGCNN's (txie-93/cgcnn model.py), step t for atom i with neighbours j:
    z_ij = [v_i, v_j, u_ij] W_t + b_t
    v_i <- softplus(v_i + BN2_t(sum_j sigmoid(BN1_t(z_ij)_filter) * softplus(BN1_t(z_ij)_core)))
With shared=True one (W, b) serves every step; each step keeps its own BN1_t, BN2_t.

Several targets share the trunk (embedding and convolutions) and pool once; each target has its own
CGCNN head (conv_to_fc, fcs, fc_out), so one forward serves every column (MT-CGCNN's layout). With
`scale_head`, each target also has a second head of the same shape that predicts the log of a Laplace
scale of its error; it reads the pooled features detached, so learning it never moves the trunk or the
mean heads (a model trained with it predicts exactly what it would without it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from srscreen.errors import OptionError
from srscreen.data.batch import GraphBatch
from srscreen.model.batch_norm import batch_norm
from srscreen.model.edge_block import GatedEdges, gate_, gate_sum


class Head(nn.Module):
    """CGCNN's head for one output: pooled features -> conv_to_fc -> n_h - 1 hidden layers -> one number."""

    def __init__(self, atom_fea_len: int, h_fea_len: int, n_h: int) -> None:
        super().__init__()
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fcs = nn.ModuleList(nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1))
        self.fc_out = nn.Linear(h_fea_len, 1)

    def layers(self) -> list[nn.Linear]:
        return [self.conv_to_fc, *self.fcs, self.fc_out]

    def forward(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        h = F.softplus(self.conv_to_fc(crystal_fea))
        for fc in self.fcs:
            h = F.softplus(fc(h))
        return self.fc_out(h).squeeze(-1)


class CrystalGraphNet(nn.Module):
    """SR-CGCNN (`shared=True`) or CGCNN (`shared=False`) regressing `n_targets` properties per crystal.

    The element feature table is a buffer, so a saved model carries the features it was trained with.
    Parameter names follow CGCNN's where the two coincide (embedding; each head's conv_to_fc, fcs,
    fc_out, in `heads.k`); convolution weights live in `fc_full.k` (one entry when shared),
    normalisation in `bn1.t`, `bn2.t`. Heads 0..n_targets-1 give the targets, normalised; with
    `scale_head`, heads n_targets..2*n_targets-1 give the log of each one's normalised Laplace scale.
    """

    def __init__(
        self,
        *,
        feature_table: torch.Tensor | np.ndarray,
        steps: int = 3,
        shared: bool = True,
        atom_fea_len: int = 64,
        h_fea_len: int = 128,
        n_h: int = 1,
        radius: float = 8.0,
        gaussian_step: float = 0.2,
        n_targets: int = 1,
        scale_head: bool = False,
    ) -> None:
        super().__init__()
        if steps < 1 or n_h < 1 or n_targets < 1:
            raise OptionError(f"`steps`, `n_h` and the number of targets must be at least 1, not steps={steps}, "
                              f"n_h={n_h}, n_targets={n_targets}")
        table = torch.as_tensor(feature_table).detach().to("cpu", torch.float32)
        if table.ndim != 2:
            raise ValueError(f"feature_table must be 2-D (element, feature), got shape {tuple(table.shape)}")
        self.steps, self.shared = steps, shared
        self.atom_fea_len, self.h_fea_len, self.n_h = atom_fea_len, h_fea_len, n_h
        self.radius, self.gaussian_step = radius, gaussian_step
        self.n_targets, self.scale_head = n_targets, scale_head

        self.register_buffer("feature_table", table.clone())
        # CGCNN's GaussianDistance: centres np.arange(0, radius + step, step), width = step.
        n_gaussians = int(round(radius / gaussian_step)) + 1
        centres = torch.arange(n_gaussians, dtype=torch.float64) * gaussian_step
        self.register_buffer("gaussian_centres", centres.float(), persistent=False)

        fea = atom_fea_len
        self.embedding = nn.Linear(table.shape[1], fea)
        self.fc_full = nn.ModuleList(nn.Linear(2 * fea + n_gaussians, 2 * fea) for _ in range(1 if shared else steps))
        self.bn1 = nn.ModuleList(nn.BatchNorm1d(2 * fea) for _ in range(steps))
        self.bn2 = nn.ModuleList(nn.BatchNorm1d(fea) for _ in range(steps))
        self.heads = nn.ModuleList(Head(fea, h_fea_len, n_h) for _ in range(n_targets * (2 if scale_head else 1)))
        self.gated_edges = GatedEdges()

    def compile_training(self) -> None:
        """Fuse the training-mode edge block with torch.compile (falls back to eager if compiling fails)."""
        self.gated_edges = GatedEdges(compiled=True)

    def architecture(self) -> dict:
        """Constructor arguments except the table: with the state dict, enough to rebuild the model."""
        return {
            "steps": self.steps,
            "shared": self.shared,
            "atom_fea_len": self.atom_fea_len,
            "h_fea_len": self.h_fea_len,
            "n_h": self.n_h,
            "radius": self.radius,
            "gaussian_step": self.gaussian_step,
            "n_targets": self.n_targets,
            "scale_head": self.scale_head,
        }

    def conv_parameter_count(self) -> int:
        """Trainable parameters of the convolutions (fc_full and the BatchNorms): the paper's comparison."""
        modules = [*self.fc_full, *self.bn1, *self.bn2]
        return sum(p.numel() for m in modules for p in m.parameters())

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Normalised outputs per crystal, shape (n_crystals, heads): the targets, then (with
        `scale_head`) the log of their scales."""
        crystal_fea = self.crystal_features(batch)
        targets = [head(crystal_fea) for head in self.heads[: self.n_targets]]
        scales = [head(crystal_fea.detach()) for head in self.heads[self.n_targets :]]
        return torch.stack([*targets, *scales], dim=1)

    def crystal_features(self, batch: GraphBatch) -> torch.Tensor:
        """The trunk's pooled features per crystal, (n_crystals, atom_fea_len), which every head reads:
        a learnt description of each crystal (for a similarity, a map of a database, a Gaussian process)."""
        fea = self.atom_fea_len
        # Embedding the ~100-row table then indexing equals embedding each atom's features, and is cheaper.
        v = self.embedding(self.feature_table).index_select(0, batch.numbers)
        gaussians = self._gaussians(batch.nbr_dist)
        n_nodes = v.shape[0]
        centre, nbr = batch.centre, batch.nbr_idx
        # Nodes that are classes of equivalent atoms count once per atom in training's batch statistics.
        counts = (None if batch.atom_node is None or not self.training else
                  torch.bincount(batch.atom_node, minlength=n_nodes).to(v.dtype))

        # [v_i, v_j, u_ij] W splits into v_i W_self + v_j W_nbr + u_ij W_edge: the first two are computed per
        # atom and gathered, never building the (E, 2F + G) concatenation; the edge term (with the bias)
        # depends only on distances, so it is computed once per weight set, i.e. once per forward when shared.
        edge_terms = [F.linear(gaussians, fc.weight[:, 2 * fea :], fc.bias) for fc in self.fc_full]
        scratch = _edge_scratch(edge_terms[0], batch)
        for t in range(self.steps):
            k = 0 if self.shared else t
            w = self.fc_full[k].weight
            self_term, nbr_term = F.linear(v, torch.cat([w[:, :fea], w[:, fea : 2 * fea]])).split(2 * fea, dim=1)
            if self.bn1[t].training:  # batch statistics: the fused block with its own backward
                if batch.dense_width:
                    raise ValueError("a batch collated with dense_width is for evaluation; train on collate(..., 0)")
                summed = self.gated_edges(nbr_term, self_term, edge_terms[k], centre, nbr, self.bn1[t], counts)
            else:  # BN1 is affine here: folded into the per-atom terms and one multiply-add, saving two edge passes
                scale, shift = _affine(self.bn1[t])
                summed = _evaluated_edges(torch.addcmul(shift, self_term, scale), nbr_term * scale, edge_terms[k],
                                          scale, batch, scratch)
            v = F.softplus(v + batch_norm(summed, self.bn2[t], counts))
        if batch.atom_node is not None:  # nodes were classes of equivalent atoms: back to atoms for pooling
            v = v.index_select(0, batch.atom_node)

        return F.softplus(self._mean_per_crystal(v, batch))

    def _gaussians(self, distances: torch.Tensor) -> torch.Tensor:
        """CGCNN's GaussianDistance, exp(-(d - mu)^2 / step^2), expanded on the distances' device.

        The exponent is floored at -30 (exp(-30) ~ 1e-13, below CGCNN's own padding value exp(-25) and
        nothing against the O(1) features): far centres would otherwise give float32 denormals, here
        and in the gradients they scale, and denormal arithmetic is ~100x slower on x86 CPUs
        (measured: a 2-3x slower training step).
        """
        exponent = (distances.unsqueeze(-1) - self.gaussian_centres).square_().div_(-(self.gaussian_step**2))
        return exponent.clamp_(min=-30.0).exp_()

    @staticmethod
    def _mean_per_crystal(v: torch.Tensor, batch: GraphBatch) -> torch.Tensor:
        sums = v.new_zeros(batch.n_crystals, v.shape[1]).index_add_(0, batch.crystal, v)
        counts = torch.bincount(batch.crystal, minlength=batch.n_crystals).clamp_(min=1)
        return sums / counts.unsqueeze(1).to(v.dtype)

    def __repr__(self) -> str:
        kind = "SR-CGCNN" if self.shared else "CGCNN"
        settings = ", ".join(f"{k}={v}" for k, v in self.architecture().items())
        return f"CrystalGraphNet[{kind}]({settings}, parameters={sum(p.numel() for p in self.parameters())})"


def _edge_scratch(edge_term: torch.Tensor, batch: GraphBatch) -> torch.Tensor | None:
    """Memory that `_evaluated_edges` reuses in every step of one forward on a dense batch: (2, edges, width)."""
    return edge_term.new_empty((2, *edge_term.shape)) if batch.dense_width else None


def _evaluated_edges(own: torch.Tensor, nbr_term: torch.Tensor, edge_term: torch.Tensor, scale: torch.Tensor,
                     batch: GraphBatch, scratch: torch.Tensor | None) -> torch.Tensor:
    """Summed gated messages with BN1 folded in: z_ij = own_i + nbr_term_j + edge_term_ij * scale.

    On a batch with a dense block (`collate`'s dense_width), each node's first K messages are summed
    over the block, its own term broadcast; the rest are gathered and scattered. That layout is for
    evaluation, so there the edge tensors live in `scratch` (`_edge_scratch`) and the gate runs in place:
    no new edge-sized tensor in any step (10-15% faster on CPU, the same numbers).
    """
    n_nodes, k = own.shape[0], batch.dense_width
    if not k:
        z = torch.addcmul(own.index_select(0, batch.centre), edge_term, scale) + nbr_term.index_select(0, batch.nbr_idx)
        return gate_sum(z, batch.centre, n_nodes)
    dense, width = n_nodes * k, own.shape[1]
    # One edge tensor for both parts, so that the gather, the add and the gate run once over all edges.
    z, gathered = scratch
    torch.addcmul(own.unsqueeze(1), edge_term[:dense].view(n_nodes, k, width), scale, out=z[:dense].view(n_nodes, k, width))
    extra = batch.centre[dense:]
    if len(extra):
        torch.addcmul(own.index_select(0, extra), edge_term[dense:], scale, out=z[dense:])
    z += torch.index_select(nbr_term, 0, batch.nbr_idx, out=gathered)
    messages = gate_(z)
    block = messages[:dense].view(n_nodes, k, -1)
    if batch.dense_real is not None:
        block.mul_(batch.dense_real.unsqueeze(2))
    summed = block.sum(dim=1)
    if len(extra):
        summed.index_add_(0, extra, messages[dense:])
    return summed


def _affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as x * scale + shift."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale
