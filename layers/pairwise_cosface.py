"""Pairwise CosFace loss (NAMA's metric `cosface`)."""

from __future__ import annotations

import torch

from layers.circle import anchor_softplus_lse
from layers.loss_inputs import check_positive, cosine_similarities
from layers.term import LossTerm


class PairwiseCosFaceLoss(LossTerm):
    """Pairwise CosFace loss: the unified pairwise form of Sun et al. ("Circle Loss: A Unified Perspective of
    Pair Similarity Optimization", CVPR 2020, eq. 1 with the CosFace margin), as NAMA's `cosface` metric loss
    (Huang, He, Yang, Gao, Sang, "Norm-Aware Margin Assignment"). With cos the cosine similarities of the
    L2-normalised features, for an anchor a with positives P_a and negatives N_a:

        L_a = softplus( LSE_{p in P_a}[ -s (cos_ap - m) ] + LSE_{k in N_a}[ s cos_ak ] )

    L = mean of L_a over the anchors with at least one positive and one negative (a batch with none gives
    a zero connected to the graph). s = `scale`, m = `margin`, LSE = log-sum-exp.

    Difference from NAMA: P_a EXCLUDES the self pair (a, a) here. NAMA's positives include it, which adds a
    constant exp(-s (1 - m)) term to every anchor's positive sum (it carries no gradient since cos_aa = 1,
    but it changes the value and dilutes the real positives' share of the gradient, and it would make an
    anchor with no other positive contribute a loss). Excluding it matches Circle loss and the triplet.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, scale: float = 32.0, margin: float = 0.3):
        super().__init__()
        self.scale = check_positive("pairwise cosface scale", scale)
        self.margin = check_positive("pairwise cosface margin", margin, allow_zero=True)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = cosine_similarities(feats)
        pos_logits = (-self.scale) * (sim - self.margin)
        neg_logits = self.scale * sim
        loss = anchor_softplus_lse(pos_logits, neg_logits, labels)
        return sim.sum() * 0.0 if loss is None else loss
