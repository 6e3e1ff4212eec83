"""Batch-hard triplet loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of x, sqrt clamped at 1e-12 for a finite gradient."""
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(1e-12)
    return d2.sqrt()


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans, Beyer, Leibe: "In Defense of the Triplet Loss for Person
    Re-Identification", 2017).

    For each anchor a of the batch, with d Euclidean distances of the (unnormalised) features,
    P(a) its positives (same label, a excluded) and N(a) its negatives:

        L = (1/n) sum_a [ max_{p in P(a)} d(a, p) - min_{k in N(a)} d(a, k) + m ]_+

    and with `margin=None` the soft-margin form  log(1 + exp(max_p d(a,p) - min_k d(a,k))).
    Anchors with no positive or no negative in the batch are left out of the mean.
    """

    def __init__(self, margin: float | None = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # fp16/bf16 are raised to fp32 (losses compute in fp32); float64 stays float64
        dist = euclidean_distances(feats if feats.dtype == torch.float64 else feats.float())
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask, neg_mask = same & ~eye, ~same
        valid = pos_mask.any(1) & neg_mask.any(1)
        if not valid.any():
            return feats.sum() * 0.0
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)
        gap = (hardest_pos - hardest_neg)[valid]
        if self.margin is None:
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()
