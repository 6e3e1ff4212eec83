"""Center loss (re-ID staple from reid-strong-baseline)."""

from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    """Center loss (Wen, Zhang, Li, Qiao: "A Discriminative Feature Learning Approach for Deep Face
    Recognition", ECCV 2016), in the form reid-strong-baseline uses (Luo et al., "Bag of Tricks and A Strong
    Baseline for Deep Person Re-identification", CVPRW 2019):

        L = (1/n) sum_i || f_i - c_{y_i} ||^2

    with one learnable center c_k per class in `self.centers` (C x d, initialised randn). Unlike the paper
    there is no 1/2 factor (reid-strong-baseline's scaling; it also clamps each squared distance into
    [1e-12, 1e12], which we do not: the exact value is finite for finite inputs).

    Applied elsewhere, not here: the loss weight (5e-4 in reid-strong-baseline) and the centers' own SGD
    optimizer (lr 0.5), whose step first rescales the centers' gradient by 1/weight so that the weight only
    scales the features' gradient, not the centers' update (the paper's alpha-controlled center update).
    """

    stat_names: tuple[str, ...] = ()

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("feat_dim", feat_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"center loss {name} must be a positive integer, got {value!r}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 2 or feats.shape[1] != self.feat_dim:
            raise ValueError(f"center loss expects features of shape (n, {self.feat_dim}), got {tuple(feats.shape)}")
        dtype = torch.float64 if feats.dtype == torch.float64 else torch.float32
        x = feats.to(dtype)
        if x.shape[0] == 0:
            return x.sum() * 0.0
        # gather only the batch's centers: C can be ~11k, and an n x C distance matrix (the usual
        # implementation) costs C/n times more than the n rows the loss actually reads
        diff = x - self.centers[labels].to(dtype)
        return diff.pow(2).sum() / x.shape[0]
