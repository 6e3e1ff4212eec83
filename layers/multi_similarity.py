"""Multi-Similarity loss with its hard-pair miner."""

from __future__ import annotations

import math

import torch

from layers.loss_inputs import compute_dtype, cosine_similarities, pair_masks
from layers.term import LossTerm


def multi_similarity_mining(
    sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, margin: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Multi-Similarity miner: boolean n x n masks (pos_keep, neg_keep) of the informative pairs.

    Negative k of anchor i is kept if  s_ik + margin > min_{p in P_i} s_ip,
    positive p of anchor i is kept if  s_ip - margin < max_{k in N_i} s_ik.
    An anchor without positives keeps no negative (the min over an empty set is +inf) and one without
    negatives keeps no positive.
    """
    min_pos = sim.masked_fill(~pos_mask, float("inf")).amin(1, keepdim=True)
    max_neg = sim.masked_fill(~neg_mask, float("-inf")).amax(1, keepdim=True)
    pos_keep = pos_mask & (sim - margin < max_neg)
    neg_keep = neg_mask & (sim + margin > min_pos)
    return pos_keep, neg_keep


class MultiSimilarityLoss(LossTerm):
    """Multi-Similarity loss (Wang, Han, Huang, Dong, Scott: "Multi-Similarity Loss with General Pair
    Weighting for Deep Metric Learning", CVPR 2019) on the pairs kept by `multi_similarity_mining`
    (eps = mining_margin). With s the cosine similarities of the L2-normalised features, a = pos_scale,
    b = neg_scale, lambda = thresh, c = coef:

        L_i = (c/a) log(1 + sum_{kept p} e^{-a (s_ip - lambda)}) + (c/b) log(1 + sum_{kept k} e^{b (s_ik - lambda)})
        L   = (1/n) sum_i L_i        (all n anchors count, an anchor with nothing kept contributes 0)

    coef = 1 is the MS paper; coef = 2 (default) is MMSI's code (Jiang et al., "Deep Metric Learning Based on
    Meta-Mining Strategy With Semiglobal Information", IEEE TNNLS, 2024), which multiplies both terms by 2.
    Naming: pos_scale scales the positive term and neg_scale the negative one, i.e. they are
    pytorch-metric-learning's `alpha` and `beta`; the spec's (and MMSI's) alpha/beta notation is the other way
    round (there alpha = 40 is the negative scale).

    stats: pos_pairs / neg_pairs, the mean number of kept positives / negatives per anchor.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ("pos_pairs", "neg_pairs")

    def __init__(
        self,
        pos_scale: float = 2.0,
        neg_scale: float = 40.0,
        thresh: float = 0.5,
        mining_margin: float = 0.1,
        coef: float = 2.0,
    ):
        super().__init__()
        for name, value in (("pos_scale", pos_scale), ("neg_scale", neg_scale), ("coef", coef)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"MultiSimilarityLoss: {name} must be a positive number, got {value!r}")
        if not math.isfinite(thresh):
            raise ValueError(f"MultiSimilarityLoss: thresh must be a finite number, got {thresh!r}")
        if not (math.isfinite(mining_margin) and mining_margin >= 0):
            raise ValueError(f"MultiSimilarityLoss: mining_margin must be >= 0, got {mining_margin!r}")
        self.pos_scale, self.neg_scale = float(pos_scale), float(neg_scale)
        self.thresh, self.mining_margin, self.coef = float(thresh), float(mining_margin), float(coef)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # an enclosing autocast region would run the similarity product in half precision
        with torch.autocast(feats.device.type, enabled=False):
            sim = cosine_similarities(compute_dtype(feats))
            n = len(labels)
            pos_mask, neg_mask = pair_masks(labels)
            with torch.no_grad():
                pos_keep, neg_keep = multi_similarity_mining(sim, pos_mask, neg_mask, self.mining_margin)
            # Both sides at once as a 2 x n x n stack: z_0 = -a (s - lambda), z_1 = b (s - lambda).
            signed = torch.tensor([-self.pos_scale, self.neg_scale], dtype=sim.dtype, device=sim.device)
            z = (sim - self.thresh) * signed[:, None, None]
            keep = torch.stack((pos_keep, neg_keep))
            # The "1 +" inside the log is e^0 placed on the diagonal, a pair that is never kept (self is excluded
            # by index): every row then has one finite entry, so logsumexp and its gradient stay finite even for
            # anchors with nothing kept, which come out as log(1) = 0 exactly.
            fill = torch.full((n, n), float("-inf"), dtype=sim.dtype, device=sim.device).fill_diagonal_(0.0)
            per_anchor = torch.where(keep, z, fill).logsumexp(2)  # 2 x n
            loss = (per_anchor.sum(1) * (self.coef / signed.abs())).sum() / n
            self.stats = {
                "pos_pairs": pos_keep.sum().to(sim.dtype).detach() / n,
                "neg_pairs": neg_keep.sum().to(sim.dtype).detach() / n,
            }
            return loss
