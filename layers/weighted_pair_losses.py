"""Pair losses on given similarities and masks, plain and with per-pair weights: what MMSI's meta step needs
(engine/methods/mmsi.py), in the forms of MMSI's released code (Jiang, Liu, Dai, Hu, Huang, Yao, Xie, Shao:
"Deep Metric Learning Based on Meta-Mining Strategy With Semiglobal Information", IEEE TNNLS, 2024).

Every function takes a similarity matrix s (anchors x keys: a batch against itself, or a validation batch
against the feature memory) and boolean masks of the same shape, so one code path serves the batch and the
semi-global (memory) losses. Pair weights w have the shape of s; only the kept pairs' entries matter. They are
plain torch (no custom autograd Function), so torch.func transforms and double backward go through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layers.multi_similarity import multi_similarity_mining

PAIR_LOSS_KINDS = ("contrastive", "ms")


def normalized_similarities(anchors: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities of the L2-normalised rows: anchors x keys (keys = anchors when None)."""
    a = F.normalize(anchors, dim=1)
    k = a if keys is None else F.normalize(keys, dim=1)
    return a @ k.T


def label_masks(
    anchor_labels: torch.Tensor, key_labels: torch.Tensor | None = None, key_valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) masks: same / different label. For a batch against itself (key_labels None) the
    self pair is removed by index; for keys from a memory, `key_valid` marks the filled entries."""
    if key_labels is None:
        same = anchor_labels[:, None] == anchor_labels[None, :]
        eye = torch.eye(len(anchor_labels), dtype=torch.bool, device=anchor_labels.device)
        return same & ~eye, ~same
    same = anchor_labels[:, None] == key_labels[None, :]
    valid = torch.ones_like(same) if key_valid is None else key_valid[None, :].expand_as(same)
    return same & valid, ~same & valid


def mined_pairs(
    kind: str, sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs a loss of `kind` trains on (computed without gradient): contrastive keeps every positive and
    the negatives with s > margin; ms keeps what the Multi-Similarity miner keeps (mining margin `margin`)."""
    with torch.no_grad():
        s = sim.detach()
        if kind == "contrastive":
            return pos_mask.clone(), neg_mask & (s > margin)
        if kind == "ms":
            return multi_similarity_mining(s, pos_mask, neg_mask, margin)
    raise ValueError(f"unknown pair loss kind {kind!r}; expected one of {PAIR_LOSS_KINDS}")


def contrastive_on_pairs(sim: torch.Tensor, pos_keep: torch.Tensor, neg_keep: torch.Tensor) -> torch.Tensor:
    """Contrastive loss (MMSI's sum form) on kept pairs: (1/n) sum_i [ sum_{kept p} (1 - s_ip) + sum_{kept k} s_ik ]
    with n the number of anchors (rows)."""
    zero = sim.new_zeros(())
    per_pair = torch.where(pos_keep, 1 - sim, zero) + torch.where(neg_keep, sim, zero)
    return per_pair.sum() / sim.shape[0]


def ms_on_pairs(
    sim: torch.Tensor,
    pos_keep: torch.Tensor,
    neg_keep: torch.Tensor,
    pos_scale: float,
    neg_scale: float,
    thresh: float,
    coef: float,
) -> torch.Tensor:
    """Multi-Similarity loss (Wang et al., CVPR 2019; coef = 2 in MMSI's code) on kept pairs:
    (1/n) sum_i (c/a) log(1 + sum_{kept p} e^{-a (s_ip - l)}) + (c/b) log(1 + sum_{kept k} e^{b (s_ik - l)})."""
    return weighted_ms(sim, pos_keep, neg_keep, None, pos_scale, neg_scale, thresh, coef, "in_exponent")


def weighted_contrastive(
    sim: torch.Tensor, pos_keep: torch.Tensor, neg_keep: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """WCon, MMSI's weighted contrastive loss: (1/n) sum_i [ - sum_{kept p} w_ip (s_ip + 1) + sum_{kept k} w_ik s_ik ].
    With every w = 1 it is the contrastive loss minus 2 |P| / n: the same gradient."""
    zero = sim.new_zeros(())
    per_pair = torch.where(pos_keep, -weights * (sim + 1), zero) + torch.where(neg_keep, weights * sim, zero)
    return per_pair.sum() / sim.shape[0]


def weighted_ms(
    sim: torch.Tensor,
    pos_keep: torch.Tensor,
    neg_keep: torch.Tensor,
    weights: torch.Tensor | None,
    pos_scale: float,
    neg_scale: float,
    thresh: float,
    coef: float,
    placement: str,
) -> torch.Tensor:
    """WMS, MMSI's weighted Multi-Similarity loss, with a = pos_scale, b = neg_scale, l = thresh, c = coef:
    placement 'in_exponent' (MMSI's code): (1/n) sum_i (c/a) log(1 + sum_p e^{-a (w_ip s_ip - l)})
                                                    + (c/b) log(1 + sum_k e^{b (w_ik s_ik - l)});
    placement 'outside':                    (1/n) sum_i (c/a) log(1 + sum_p w_ip e^{-a (s_ip - l)})
                                                    + (c/b) log(1 + sum_k w_ik e^{b (s_ik - l)}).
    `weights` None means every w = 1 (the plain MS loss). Sums run over kept pairs; an anchor with nothing kept
    contributes log(1) = 0 (and a finite, zero gradient)."""
    n = sim.shape[0]
    outside = weights is not None and placement == "outside"
    s = sim if weights is None or outside else weights * sim
    signed = torch.tensor([-pos_scale, neg_scale], dtype=sim.dtype, device=sim.device)
    z = (s - thresh)[None] * signed[:, None, None]  # 2 x n x m
    keep = torch.stack((pos_keep, neg_keep))
    minus_inf = torch.full((), float("-inf"), dtype=sim.dtype, device=sim.device)
    if outside:
        # log(1 + sum w e^z) = m + log(e^-m + sum w e^{z - m}), m = max(0, max kept z): finite at w = 0 with a
        # finite gradient w.r.t. w (a log w term would give 0 * inf there)
        top = torch.where(keep, z, minus_inf).amax(2, keepdim=True).clamp_min(0).detach()
        scaled = torch.where(keep, weights[None] * torch.exp(torch.where(keep, z, top) - top), sim.new_zeros(()))
        per_anchor = top.squeeze(2) + torch.log(torch.exp(-top.squeeze(2)) + scaled.sum(2))
    else:
        # "1 +" as one extra column of zeros: every row keeps a finite entry, so nothing kept gives log 1 = 0
        z = torch.cat((torch.where(keep, z, minus_inf), sim.new_zeros(2, n, 1)), dim=2)
        per_anchor = z.logsumexp(2)  # 2 x n
    return (per_anchor.sum(1) * (coef / signed.abs())).sum() / n
