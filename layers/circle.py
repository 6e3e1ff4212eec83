"""Circle loss, pairwise form, and the per-anchor softplus(LSE_p + LSE_n) reduction it shares with the
pairwise CosFace loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layers.loss_inputs import check_positive, cosine_similarities
from layers.term import LossTerm


def anchor_softplus_lse(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor | None:
    """Mean over valid anchors i of softplus( LSE_{p in P_i} pos_logits[i, p] + LSE_{k in N_i} neg_logits[i, k] ).

    P_i: same label as i, i itself excluded by index; N_i: other labels. An anchor is valid when both are
    non-empty. Returns None when no anchor is valid (the caller returns its graph-connected zero).
    pos_logits / neg_logits are n x n; only their entries on P / N are read.
    """
    n = labels.numel()
    same = labels[:, None] == labels[None, :]
    pos = same.clone()
    pos.fill_diagonal_(False)
    neg = ~same
    valid = pos.any(1) & neg.any(1)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return None
    if n_valid < n:
        # A row with nothing kept would be an all -inf logsumexp, whose backward is 0 * NaN = NaN even
        # though the row is dropped afterwards: open such rows entirely (finite, then excluded below).
        dropped = ~valid[:, None]
        pos = pos | dropped
        neg = neg | dropped
    lse = pos_logits.masked_fill(~pos, float("-inf")).logsumexp(1) + neg_logits.masked_fill(
        ~neg, float("-inf")
    ).logsumexp(1)
    per_anchor = F.softplus(lse)
    if n_valid < n:
        return per_anchor.masked_fill(~valid, 0.0).sum() / n_valid
    return per_anchor.mean()


def circle_pair_loss(
    feats: torch.Tensor, labels: torch.Tensor, margin: float, scale: float, weight_feats: torch.Tensor | None = None
) -> torch.Tensor:
    """The pairwise Circle loss of `CirclePairLoss` as a function.

    The self-paced weights a_p, a_n are constants for the gradient (the paper's definition). They are taken
    from `weight_feats` when given, from `feats` (detached) otherwise: fixing them from a separate tensor
    makes the forward value itself a function whose derivative is the loss's gradient, which is what a
    numerical gradient check needs.
    """
    sim = cosine_similarities(feats)
    with torch.no_grad():
        wsim = sim if weight_feats is None else cosine_similarities(weight_feats).to(sim.dtype)
        a_p = (1.0 + margin - wsim).clamp_min_(0.0)
        a_n = (wsim + margin).clamp_min_(0.0)
    pos_logits = (-scale) * a_p * (sim - (1.0 - margin))
    neg_logits = scale * a_n * (sim - margin)
    loss = anchor_softplus_lse(pos_logits, neg_logits, labels)
    return sim.sum() * 0.0 if loss is None else loss


class CirclePairLoss(LossTerm):
    """Circle loss, pairwise-label form (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei: "Circle Loss: A Unified
    Perspective of Pair Similarity Optimization", CVPR 2020), on cosine similarities s of L2-normalised
    features. For an anchor i with positives P_i (same label, i itself excluded by index) and negatives N_i:

        L_i = softplus( LSE_{n in N_i}[ gamma a_n (s_n - Delta_n) ] + LSE_{p in P_i}[ -gamma a_p (s_p - Delta_p) ] )
        a_p = relu(1 + m - s_p),  a_n = relu(s_n + m)   (both detached: weights, not part of the gradient)
        Delta_p = 1 - m,  Delta_n = m,  LSE = log-sum-exp,  gamma = `scale`, m = `margin`

    and L = mean of L_i over the anchors that have at least one positive and one negative (a batch with none
    gives a zero connected to the graph). Defaults m = 0.25, gamma = 256 are the paper's face-recognition
    setting (it uses gamma = 128 for re-ID).
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, margin: float = 0.25, scale: float = 256.0):
        super().__init__()
        self.margin = check_positive("circle margin", margin, allow_zero=True)
        self.scale = check_positive("circle scale", scale)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return circle_pair_loss(feats, labels, self.margin, self.scale)
