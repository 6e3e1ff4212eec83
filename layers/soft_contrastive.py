"""Soft contrastive loss with asymmetric pair mining (ASMS) and its adaptive-tolerance variant (AT-ASMS)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layers.loss_inputs import compute_dtype, cosine_similarities, pair_masks
from layers.term import LossTerm

MINING_MODES = ("asms", "at_asms", "none")


def _row_extremes(
    sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(min_{p in P_i} s_ip, max_{k in N_i} s_ik) as n x 1 columns; +inf / -inf for an empty side."""
    min_pos = sim.masked_fill(~pos_mask, float("inf")).amin(1, keepdim=True)
    max_neg = sim.masked_fill(~neg_mask, float("-inf")).amax(1, keepdim=True)
    return min_pos, max_neg


def _mine(
    sim: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    min_pos: torch.Tensor,
    max_neg: torch.Tensor,
    g_pos: float | torch.Tensor,
    g_neg: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return pos_mask & (sim < max_neg + g_pos), neg_mask & (sim > min_pos - g_neg)


def asms_mining(
    sim: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    g_pos: float | torch.Tensor,
    g_neg: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric sample mining (DDTAS): boolean n x n masks (pos_keep, neg_keep).

    Positive p of anchor i is kept if  s_ip < max_{k in N_i} s_ik + g_pos,
    negative k of anchor i is kept if  s_ik > min_{p in P_i} s_ip - g_neg.
    ASMS proper uses g_pos = m and g_neg = m / 10; an anchor with no negative keeps no positive and one with
    no positive keeps no negative. g_pos / g_neg may be 0-d tensors (AT-ASMS's per-batch tolerances).
    """
    min_pos, max_neg = _row_extremes(sim, pos_mask, neg_mask)
    return _mine(sim, pos_mask, neg_mask, min_pos, max_neg, g_pos, g_neg)


def _at_asms_from_extremes(
    sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, min_pos: torch.Tensor, margin: float
) -> tuple[torch.Tensor, ...]:
    # A counts the negatives a symmetric first pass (tolerance m) would keep, over all anchors
    mined_neg = (neg_mask & (sim > min_pos - margin)).sum(dtype=sim.dtype)
    all_pos = pos_mask.sum(dtype=sim.dtype)
    # no positive in the batch means A = 0 too: r = 0 (the ASMS branch) instead of 0/0
    r = mined_neg / all_pos.clamp_min(1.0)
    # torch.where keeps this free of a device->host sync on the branch
    tau = torch.where(r > 1, torch.sigmoid(r) / 2, torch.zeros_like(r))
    g_pos = margin * (1 + tau)
    g_neg = (margin / 10) * (1 - tau)
    return g_pos, g_neg, r, tau


def at_asms_tolerances(
    sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adaptive tolerances of AT-ASMS (DDTAS), as 0-d tensors (g_pos, g_neg, r, tau).

    A = number of negatives kept by a first pass with tolerance m on both sides (s_ik > min P_i - m, all
    anchors), B = number of positive pairs of the batch, r = A / B (r = 0 when B = 0). If r > 1:
    tau = sigmoid(r) / 2, g_pos = m (1 + tau), g_neg = (m / 10)(1 - tau); otherwise ASMS's g_pos = m,
    g_neg = m / 10 with tau = 0. The final pairs are then `asms_mining(sim, ..., g_pos, g_neg)`.
    """
    min_pos = sim.masked_fill(~pos_mask, float("inf")).amin(1, keepdim=True)
    return _at_asms_from_extremes(sim, pos_mask, neg_mask, min_pos, margin)


def soft_contrastive_on_pairs(
    sim: torch.Tensor,
    pos_keep: torch.Tensor,
    neg_keep: torch.Tensor,
    pos_scale: float,
    neg_scale: float,
    thresh: float | torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The soft contrastive loss of SoftContrastiveLoss on given similarities and kept pairs (its formula), with
    `thresh` a number or an n x 1 column of per-anchor thresholds (DDTAS's threshold generator) and `weights`
    optional per-pair factors of each pair's term (its pair-weight generator; None = 1)."""
    # Both sides at once as a 2 x n x m stack: z_0 = -beta (s - lambda), z_1 = alpha (s - lambda).
    signed = torch.tensor([-pos_scale, neg_scale], dtype=sim.dtype, device=sim.device)
    z = (sim - thresh)[None] * signed[:, None, None]
    keep = torch.stack((pos_keep, neg_keep))
    # SoftCon.py skips an anchor whose kept positives or kept negatives are empty, so its other side is
    # dropped from the mask too; the batch size below still divides. One mask op, no host sync.
    keep = keep & keep.any(2).all(0)[None, :, None]
    terms = F.softplus(z) if weights is None else F.softplus(z) * weights[None]
    # torch.where (not a product with the mask) so unkept entries carry no gradient at all; a skipped
    # anchor divides 0 by the clamped count 1 on both sides and contributes exactly 0, never 0/0.
    sums = torch.where(keep, terms, torch.zeros((), dtype=sim.dtype, device=sim.device)).sum(2)
    means = sums / keep.sum(2, dtype=sim.dtype).clamp_min(1.0)  # 2 x n
    return (means.sum(1) * (2.0 / signed.abs())).sum() / sim.shape[0]


class SoftContrastiveLoss(LossTerm):
    """Soft contrastive loss of DDTAS (Jiang, Yao, Liu, Shen, Nie, Hua: "Dual Dynamic Threshold Adjustment
    Strategy", ACM TOMM, 2024; `losses/SoftCon.py` of its code), on cosine similarities s of the L2-normalised
    features,
    over the pairs kept by the miner (`mining`: "at_asms" (default), "asms", or "none" = all pairs).
    With beta = pos_scale, alpha = neg_scale, lambda = thresh:

        L_i = (2/beta)  mean_{p in P~_i} softplus(-beta (s_ip - lambda))
            + (2/alpha) mean_{k in N~_i} softplus(alpha (s_ik - lambda))     if P~_i and N~_i are both non-empty,
        L_i = 0                                                               otherwise,
        L   = (1/n) sum_{i=1..n} L_i

    where P~_i / N~_i are anchor i's kept positives / negatives. An anchor with an empty kept side contributes
    nothing at all (not even its non-empty side) yet still counts in n, as SoftCon.py `continue`s on such an
    anchor and divides by the batch size. The rule acts on the loss only: the kept pairs and the mining
    statistics below are the miner's, unchanged.
    ASMS keeps positive p if s_ip < max N_i + m and negative k if s_ik > min P_i - m/10 (m = margin);
    AT-ASMS adapts the two tolerances to the batch (see `at_asms_tolerances`).

    stats (the same four names for every mode, so logging is uniform): r, tau, g_pos, g_neg; ASMS reports
    r = tau = 0 with its fixed tolerances, "none" reports zeros.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ("r", "tau", "g_pos", "g_neg")

    def __init__(
        self,
        pos_scale: float = 2.0,
        neg_scale: float = 40.0,
        thresh: float = 0.7,
        mining: str = "at_asms",
        margin: float = 0.1,
    ):
        super().__init__()
        for name, value in (("pos_scale", pos_scale), ("neg_scale", neg_scale)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SoftContrastiveLoss: {name} must be a positive number, got {value!r}")
        if not math.isfinite(thresh):
            raise ValueError(f"SoftContrastiveLoss: thresh must be a finite number, got {thresh!r}")
        if mining not in MINING_MODES:
            raise ValueError(f"SoftContrastiveLoss: mining must be one of {MINING_MODES}, got {mining!r}")
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"SoftContrastiveLoss: margin must be >= 0, got {margin!r}")
        self.pos_scale, self.neg_scale, self.thresh = float(pos_scale), float(neg_scale), float(thresh)
        self.mining, self.margin = mining, float(margin)

    def _select(
        self, sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """(pos_keep, neg_keep, (r, tau, g_pos, g_neg)) for the configured mining mode."""
        if self.mining == "none":
            zero = sim.new_zeros(())
            return pos_mask, neg_mask, (zero, zero, zero, zero)
        min_pos, max_neg = _row_extremes(sim, pos_mask, neg_mask)
        if self.mining == "asms":
            g_pos, g_neg = self.margin, self.margin / 10
            zero = sim.new_zeros(())
            stats = (zero, zero, sim.new_tensor(g_pos), sim.new_tensor(g_neg))
        else:
            g_pos, g_neg, r, tau = _at_asms_from_extremes(sim, pos_mask, neg_mask, min_pos, self.margin)
            stats = (r, tau, g_pos, g_neg)
        pos_keep, neg_keep = _mine(sim, pos_mask, neg_mask, min_pos, max_neg, g_pos, g_neg)
        return pos_keep, neg_keep, stats

    def mine(
        self, sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The kept pairs of `sim` (computed without gradient) and the mining statistics by name."""
        with torch.no_grad():
            pos_keep, neg_keep, stats = self._select(sim.detach(), pos_mask, neg_mask)
        return pos_keep, neg_keep, dict(zip(self.stat_names, (s.detach() for s in stats)))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # an enclosing autocast region would run the similarity product in half precision
        with torch.autocast(feats.device.type, enabled=False):
            sim = cosine_similarities(compute_dtype(feats))
            pos_mask, neg_mask = pair_masks(labels)
            with torch.no_grad():
                pos_keep, neg_keep, stats = self._select(sim.detach(), pos_mask, neg_mask)
            loss = soft_contrastive_on_pairs(sim, pos_keep, neg_keep, self.pos_scale, self.neg_scale, self.thresh)
            self.stats = dict(zip(self.stat_names, (s.detach() for s in stats)))
            return loss
