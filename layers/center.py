"""Center loss (re-ID staple from reid-strong-baseline)."""

from __future__ import annotations

import math

import torch
from torch import nn

from layers.term import LossTerm, OwnOptimizerSpec


class CenterLoss(LossTerm):
    """Center loss (Wen, Zhang, Li, Qiao: "A Discriminative Feature Learning Approach for Deep Face
    Recognition", ECCV 2016), in the form reid-strong-baseline uses (Luo et al., "Bag of Tricks and A Strong
    Baseline for Deep Person Re-identification", CVPRW 2019):

        L = (1/n) sum_i || f_i - c_{y_i} ||^2

    with one learnable center c_k per class in `self.centers` (C x d, initialised randn). Unlike the paper
    there is no 1/2 factor (reid-strong-baseline's scaling; it also clamps each squared distance into
    [1e-12, 1e12], which we do not: the exact value is finite for finite inputs).

    The centers train in an optimizer of their own, 'centers' (`own_optimizers`): SGD with lr `center_lr`
    (0.5 in reid-strong-baseline), whose step first multiplies the centers' gradient by 1/`loss_weight`, the
    weight the criterion gives this term (5e-4 in reid-strong-baseline; applied by the criterion, not here):
    the weight then scales only the features' gradient, not the centers' update (the paper's
    alpha-controlled center update). The solver builds that optimizer; nothing here touches it.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, num_classes: int, feat_dim: int, center_lr: float = 0.5, loss_weight: float = 1.0):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("feat_dim", feat_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"center loss {name} must be a positive integer, got {value!r}")
        for name, value in (("center_lr", center_lr), ("loss_weight", loss_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"center loss {name} must be a finite number, got {value!r}")
        if center_lr < 0:
            raise ValueError(f"center loss center_lr must be >= 0, got {center_lr}")
        if loss_weight <= 0:
            raise ValueError(f"center loss loss_weight must be > 0 (its gradient is divided by it), got {loss_weight}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.center_lr, self.loss_weight = center_lr, loss_weight
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def own_optimizers(self) -> dict[str, OwnOptimizerSpec]:
        """'centers': plain SGD, the gradient divided by the term's weight in the total before each step."""
        # built on demand: the spec must hold the current Parameter object (a device move may replace it)
        return {
            "centers": OwnOptimizerSpec((self.centers,), "SGD", lr=self.center_lr, grad_factor=1.0 / self.loss_weight)
        }

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
