"""Contrastive loss on cosine similarities (MMSI's form)."""

from __future__ import annotations

import math

import torch

from layers.loss_inputs import compute_dtype, cosine_similarities, pair_masks
from layers.term import LossTerm


class ContrastiveLoss(LossTerm):
    """Contrastive loss (Hadsell, Chopra, LeCun: "Dimensionality Reduction by Learning an Invariant Mapping",
    CVPR 2006) in the form of MMSI's code (Jiang, Liu, Dai, Hu, Huang, Yao, Xie, Shao: "Deep Metric Learning
    Based on Meta-Mining Strategy With Semiglobal Information", IEEE TNNLS, 2024): on cosine similarities s
    of the L2-normalised features, with P_i / N_i the positives (self excluded by index) / negatives of
    anchor i and m = margin,

    reduction "sum" (MMSI):
        L = (1/n) sum_i [ sum_{p in P_i} (1 - s_ip) + sum_{k in N_i, s_ik > m} s_ik ]

    reduction "mean":
        L = mean_{(i,p): p in P_i} (1 - s_ip) + mean_{(i,k): k in N_i} s_ik [s_ik > m]

    where each mean runs over all the batch's ordered pairs of that kind (a kind with no pair contributes 0).
    Unlike the usual hinge relu(s - m), an active negative contributes s itself (MMSI), so the values differ
    from pytorch-metric-learning's ContrastiveLoss by m per active negative while the gradients coincide.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, margin: float = 0.5, reduction: str = "sum"):
        super().__init__()
        if not math.isfinite(margin):
            raise ValueError(f"ContrastiveLoss: margin must be a finite number, got {margin!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"ContrastiveLoss: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.margin = float(margin)
        self.reduction = reduction

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # an enclosing autocast region would run the similarity product in half precision
        with torch.autocast(feats.device.type, enabled=False):
            sim = cosine_similarities(compute_dtype(feats))
            pos_mask, neg_mask = pair_masks(labels)
            active_neg = neg_mask & (sim > self.margin)
            # Both terms are linear in s, so the loss is one weighted sum  sum(W * S) + c  with W = a [active neg]
            # - b [pos] and c = b |P|: a single reduction instead of two masked ones, and no NaN path when a
            # kind of pair is missing.
            num_pos = pos_mask.sum(dtype=sim.dtype)
            if self.reduction == "sum":
                a = b = 1.0 / len(labels)
            else:
                a = 1.0 / neg_mask.sum(dtype=sim.dtype).clamp_min(1.0)
                b = 1.0 / num_pos.clamp_min(1.0)
            weights = active_neg.to(sim.dtype) * a - pos_mask.to(sim.dtype) * b
            return (sim * weights).sum() + num_pos * b
