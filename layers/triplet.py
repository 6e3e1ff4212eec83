"""Batch-hard triplet loss, on raw features (`tri`) or on L2-normalised ones (`tri-n`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layers.term import LossTerm


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of x, sqrt clamped at 1e-12 for a finite gradient."""
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(1e-12)
    return d2.sqrt()


def chord_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise chord distances ||x_i/||x_i|| - x_j/||x_j|| || = sqrt(2 - 2 cos(x_i, x_j)).

    The squared norms of unit rows are 1 by construction, so 2 - 2 cos saves the norm terms of
    `euclidean_distances`; the same 1e-12 clamp keeps the sqrt's gradient finite for coinciding rows.
    """
    f = F.normalize(x, dim=1)
    return (2.0 - 2.0 * (f @ f.t())).clamp_min(1e-12).sqrt()


class BatchHardTripletLoss(LossTerm):
    """Batch-hard triplet loss (Hermans, Beyer, Leibe: "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv:1703.07737, 2017).

    For each anchor a of the batch, with d the pairwise distances, P(a) its positives (same label, a itself
    excluded) and N(a) its negatives:

        L = (1/n_valid) sum_a [ max_{p in P(a)} d(a, p) - min_{k in N(a)} d(a, k) + m ]_+

    and with `margin=None` the soft-margin form  log(1 + exp(max_p d(a,p) - min_k d(a,k))).
    Anchors with no positive or no negative in the batch are left out of the mean (n_valid counts the
    others); a batch without any such anchor gives a zero loss that is still connected to the graph.

    `normalize=False` (`tri`): d(a, b) = ||f_a - f_b||, Euclidean distances of the raw features.
    `normalize=True` (NAMA's `tri-n`; Huang, He, Yang, Gao, Sang, "Norm-Aware Margin Assignment"):
    d(a, b) = || f_a/||f_a|| - f_b/||f_b|| || = sqrt(2 - 2 cos(f_a, f_b)), the chord distance of the
    L2-normalised features (in [0, 2], so the margin is on that scale).
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, margin: float | None = 0.3, normalize: bool = False):
        super().__init__()
        if margin is not None:
            if isinstance(margin, bool) or not isinstance(margin, (int, float)):
                raise ValueError(f"triplet margin must be a number or None (soft margin), got {margin!r}")
            if not math.isfinite(margin) or margin < 0:
                raise ValueError(f"triplet margin must be finite and >= 0 (None for the soft margin), got {margin}")
        if not isinstance(normalize, bool):
            # ValueError, not TypeError: every loss reports a bad constructor argument the same way
            raise ValueError(f"triplet normalize must be True or False, got {normalize!r}")  # noqa: TRY004
        self.margin = margin
        self.normalize = normalize

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # fp16/bf16 are raised to fp32 (losses compute in fp32); float64 stays float64
        x = feats if feats.dtype == torch.float64 else feats.float()
        dist = chord_distances(x) if self.normalize else euclidean_distances(x)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask, neg_mask = same & ~eye, ~same
        valid = pos_mask.any(1) & neg_mask.any(1)
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)
        # masks rather than a selection of the valid anchors: no data-dependent shape, no host synchronisation
        gap = torch.where(valid, hardest_pos - hardest_neg, torch.zeros_like(hardest_pos))
        per_anchor = F.softplus(gap) if self.margin is None else F.relu(gap + self.margin)
        return (per_anchor * valid).sum() / valid.sum().clamp(min=1)
