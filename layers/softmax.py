"""Linear classifier with (label-smoothed) cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layers.term import LossTerm


class SoftmaxClassifierLoss(LossTerm):
    """Cross-entropy on a bias-free linear classifier, with label smoothing (Szegedy et al., "Rethinking the
    Inception Architecture", CVPR 2016; used for re-ID by Luo et al., "Bag of Tricks", 2019).

    logits z = W f (W: C x d, init N(0, 0.001^2)); with q_y = 1 - eps + eps/C and q_j = eps/C otherwise,

        L = -(1/n) sum_i sum_j q_j log softmax(z_i)_j

    eps = 0.1 when label smoothing is on, 0 otherwise (plain cross-entropy).
    """

    inputs = ("neck_feat",)

    def __init__(self, feat_dim: int, num_classes: int, label_smoothing: float = 0.1):
        super().__init__()
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.label_smoothing = label_smoothing

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(feats.float(), self.classifier.weight.float())
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing), logits
