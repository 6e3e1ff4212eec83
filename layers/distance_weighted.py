"""Distance-weighted negative sampling (Wu, Manmatha, Smola, Krähenbühl: "Sampling Matters in Deep Embedding
Learning", ICCV 2017), as used with the margin loss in Divide-and-Conquer (Sanakoyeu et al., CVPR 2019 /
TPAMI 2021).

On the unit sphere of R^k the distance d between two uniformly spread points has density
q(d) ~ d^(k-2) (1 - d^2/4)^((k-3)/2). Drawing negatives with probability ~ 1/q(d) spreads the sampled
distances over the whole range instead of concentrating them around sqrt(2), which is what makes this
sampler work; the formulas below therefore assume L2-normalised features.
"""

from __future__ import annotations

import torch

# 1 - d^2/4 reaches 0 for antipodal points (and goes slightly negative through rounding); keep log finite
_MIN_ONE_MINUS_QUARTER_D2 = 1e-8


def check_sampler_cutoffs(cutoff: float, nonzero_loss_cutoff: float) -> None:
    """ValueError unless 0 < cutoff < nonzero_loss_cutoff and cutoff < 2 (distances on the unit sphere)."""
    if not 0.0 < cutoff < 2.0:
        raise ValueError(f"cutoff must lie in (0, 2) (distances between unit vectors), got {cutoff}")
    if not nonzero_loss_cutoff > cutoff:
        raise ValueError(
            f"nonzero_loss_cutoff ({nonzero_loss_cutoff}) must be larger than cutoff ({cutoff}), "
            "otherwise every negative would get weight 0"
        )


def distance_weights(
    dist: torch.Tensor,
    labels: torch.Tensor,
    d_emb: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> torch.Tensor:
    """Unnormalised sampling weights w (n x n) of negative j for anchor i.

    With d = max(dist, cutoff) and k = d_emb:

        log w_ij = (2 - k) log d_ij - ((k - 3) / 2) log(1 - d_ij^2 / 4)
        w_ij     = exp(log w_ij - max_{j' allowed} log w_ij')  for allowed j,  0 otherwise,

    where "allowed" means a negative (different label; self and positives therefore get 0) with
    d_ij <= nonzero_loss_cutoff. Fallback (documented deviation from a pure 0): an anchor that has negatives
    but none of them allowed gets w = 1 on all of its negatives (uniform), so it still yields triplets; in
    a fresh 512-d embedding nearly all distances are about sqrt(2) > 1.4 and every anchor would otherwise be
    dropped. Rows without any negative are all zero. The row maximum is 1 wherever a row is non-zero.
    """
    d = dist.clamp_min(cutoff)
    one_minus = (1.0 - 0.25 * d * d).clamp_min(_MIN_ONE_MINUS_QUARTER_D2)
    log_w = (2.0 - d_emb) * torch.log(d) - ((d_emb - 3.0) / 2.0) * torch.log(one_minus)
    negative = labels[:, None] != labels[None, :]
    allowed = negative & (d <= nonzero_loss_cutoff)
    # max over allowed entries only: a far (excluded) pair must not shift the scale of the kept ones
    log_w = log_w.masked_fill(~allowed, float("-inf"))
    row_max = log_w.amax(1, keepdim=True)
    has_allowed = allowed.any(1, keepdim=True)
    # rows without an allowed entry have row_max = -inf; subtract 0 there to avoid -inf - -inf = nan
    w = torch.exp(log_w - torch.where(has_allowed, row_max, torch.zeros_like(row_max)))
    return torch.where(has_allowed, w, negative.to(w.dtype))


def unit_pairwise_distances(feats_normalized: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n x n) between rows through their Gram matrix (one matmul, no n x n x d tensor)."""
    f = feats_normalized
    if f.dtype not in (torch.float32, torch.float64):
        # log w reaches several hundred at d_emb = 512: half precision would garble the weights
        f = f.float()
    sq = (f * f).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * (f @ f.t())).clamp_min(0.0).sqrt()


@torch.no_grad()
def distance_weighted_triplets(
    feats_normalized: torch.Tensor,
    labels: torch.Tensor,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplets (anchors, positives, negatives), int64 index tensors of equal length.

    feats_normalized: n x d, rows of unit norm. Every anchor with at least one positive (and one negative)
    contributes all of its positives, in index order, each paired with one negative drawn by
    torch.multinomial over its row of `distance_weights`: #neg = #pos, without replacement when the row has
    at least #pos non-zero weights, with replacement otherwise. Anchors without a positive are skipped.
    Triplets come sorted by anchor. No gradient flows through the sampling.
    """
    check_sampler_cutoffs(cutoff, nonzero_loss_cutoff)  # before the distance matrix is paid for
    dist = unit_pairwise_distances(feats_normalized)
    return triplets_from_distances(dist, labels, feats_normalized.shape[1], cutoff, nonzero_loss_cutoff, generator)


@torch.no_grad()
def triplets_from_distances(
    dist: torch.Tensor,
    labels: torch.Tensor,
    d_emb: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`distance_weighted_triplets` from precomputed distances of unit vectors in R^d_emb (lets a loss that
    already has the distance matrix skip a second one)."""
    check_sampler_cutoffs(cutoff, nonzero_loss_cutoff)
    n = dist.shape[0]
    device = labels.device
    empty = torch.empty(0, dtype=torch.long, device=device)
    if n < 2:
        return empty, empty, empty.clone()
    weights = distance_weights(dist, labels, d_emb, cutoff, nonzero_loss_cutoff)

    same = labels[:, None] == labels[None, :]
    pos_mask = same.fill_diagonal_(False)
    pos_count = pos_mask.sum(1)
    cand_count = (weights > 0).sum(1)
    rows = torch.nonzero((pos_count > 0) & (cand_count > 0)).flatten()
    if rows.numel() == 0:
        return empty, empty, empty.clone()

    # torch.multinomial draws the same number of samples for every row and, without replacement, silently
    # returns zero-weight categories once a row runs out of non-zero ones: so rows are grouped by
    # (#pos, enough candidates). In a P x K batch there is a single group, i.e. one call.
    k_rows = pos_count[rows]
    enough = cand_count[rows] >= k_rows
    group_key = k_rows * 2 + enough.long()
    max_k = int(k_rows.max())
    draws = torch.zeros(n, max_k, dtype=torch.long, device=device)
    for key in torch.unique(group_key).tolist():
        k, with_replacement = key // 2, key % 2 == 0
        sel = rows[group_key == key]
        draws[sel, :k] = torch.multinomial(weights[sel], k, replacement=with_replacement, generator=generator)

    anchors, positives = torch.nonzero(pos_mask, as_tuple=True)
    # j-th positive of an anchor takes its j-th drawn negative; nonzero() lists pairs row-major
    first_pair = torch.cumsum(pos_count, 0) - pos_count
    rank = torch.arange(anchors.numel(), device=device) - first_pair[anchors]
    sampled = torch.zeros(n, dtype=torch.bool, device=device)
    sampled[rows] = True
    keep = sampled[anchors]
    anchors, positives, rank = anchors[keep], positives[keep], rank[keep]
    return anchors, positives, draws[anchors, rank]


__all__ = [
    "check_sampler_cutoffs",
    "distance_weighted_triplets",
    "distance_weights",
    "triplets_from_distances",
    "unit_pairwise_distances",
]
