"""Pair-based losses (layers/contrastive.py, layers/multi_similarity.py, layers/soft_contrastive.py).

References:
- Multi-Similarity, coef = 1, is checked against pytorch-metric-learning 2.x. PML's MultiSimilarityMiner
  (CosineSimilarity, epsilon) keeps, per anchor and with the self pair removed by index, the positives with
  s - eps < max over negatives and the negatives with s + eps > min over positives: our miner's rule. PML's
  MultiSimilarityLoss(alpha, beta, base) computes per anchor (1/alpha) log(1 + sum_p e^{-alpha (s - base)})
  + (1/beta) log(1 + sum_n e^{beta (s - base)}) over the mined pairs, each side set to 0 when nothing is
  mined there, as one "element" loss per row of the n x n matrix; MeanReducer then divides by all n rows,
  anchors with nothing mined included. That is our L = sum_i L_i / n with pos_scale = alpha,
  neg_scale = beta, thresh = base, mining_margin = epsilon; the comparison batches are built to contain
  anchors with nothing mined so that this part of the definition is exercised. (PML's loss returns 0 when
  the miner leaves at most one pair of each kind; the batches here mine many.)
- Contrastive: PML's ContrastiveLoss charges relu(s - m) for a negative where MMSI charges s [s > m], so the
  values differ by m per active negative and the loss is checked against a loop reference; the gradients
  coincide and are compared with PML's as a second, independent check.
- Multi-Similarity with coef = 2, the MS miner, Soft contrastive and the ASMS / AT-ASMS masks and tolerances:
  loop-by-definition references below (Python loops over anchors and pairs, following the spec literally).
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.reducers import MeanReducer, SumReducer
from torch.testing import assert_close

from layers.contrastive import ContrastiveLoss
from layers.loss_inputs import cosine_similarities, pair_masks
from layers.multi_similarity import MultiSimilarityLoss, multi_similarity_mining
from layers.soft_contrastive import SoftContrastiveLoss, asms_mining, at_asms_tolerances


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """The tensors here are tiny: a second intra-op thread only adds synchronisation, which on a loaded
    2-core machine costs tens of ms per op (30 s for this file instead of a few). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------
# Inputs and loop-by-definition references
# ------------------------------------------------------------------------------------------------
def _pk_labels(p: int, k: int) -> torch.Tensor:
    return torch.arange(p).repeat_interleave(k)


def _features(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def _clustered(p: int, k: int, d: int, spread: float, seed: int, tight_first: float | None = None) -> torch.Tensor:
    """p classes of k points around random centres; `tight_first` shrinks class 0 so its anchors mine nothing."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(p, d, generator=g, dtype=torch.float64)
    noise = torch.randn(p * k, d, generator=g, dtype=torch.float64) * spread
    if tight_first is not None:
        noise[:k] *= tight_first
    return centres.repeat_interleave(k, 0) + noise


def _loop_sims(x: torch.Tensor) -> list[list[torch.Tensor]]:
    """s_ij = <x_i, x_j> / (|x_i| |x_j|), pair by pair (differentiable scalars)."""
    n = len(x)
    norms = [torch.sqrt((x[i] * x[i]).sum()) for i in range(n)]
    return [[(x[i] * x[j]).sum() / (norms[i] * norms[j]) for j in range(n)] for i in range(n)]


def _groups(labels: list[int], i: int) -> tuple[list[int], list[int]]:
    pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
    neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
    return pos, neg


def _ref_contrastive(x: torch.Tensor, labels: torch.Tensor, margin: float, reduction: str) -> torch.Tensor:
    labels, n = labels.tolist(), len(labels)
    s = _loop_sims(x)
    pos_terms, neg_terms = [], []  # one entry per ordered pair of that kind
    for i in range(n):
        pos, neg = _groups(labels, i)
        pos_terms += [1 - s[i][p] for p in pos]
        neg_terms += [s[i][k] if s[i][k].item() > margin else s[i][k] * 0.0 for k in neg]
    zero = x.sum() * 0.0
    if reduction == "sum":
        return (sum(pos_terms, zero) + sum(neg_terms, zero)) / n
    pos_mean = sum(pos_terms, zero) / len(pos_terms) if pos_terms else zero
    neg_mean = sum(neg_terms, zero) / len(neg_terms) if neg_terms else zero
    return pos_mean + neg_mean


def _ref_ms_mining(s: list[list[float]], labels: list[int], eps: float) -> tuple[set, set]:
    pos_keep, neg_keep = set(), set()
    for i in range(len(labels)):
        pos, neg = _groups(labels, i)
        if pos:
            hardest_pos = min(s[i][p] for p in pos)
            neg_keep |= {(i, k) for k in neg if s[i][k] + eps > hardest_pos}
        if neg:
            hardest_neg = max(s[i][k] for k in neg)
            pos_keep |= {(i, p) for p in pos if s[i][p] - eps < hardest_neg}
    return pos_keep, neg_keep


def _ref_ms(x, labels, pos_scale, neg_scale, thresh, eps, coef) -> torch.Tensor:
    labels, n = labels.tolist(), len(labels)
    s = _loop_sims(x)
    pos_keep, neg_keep = _ref_ms_mining([[v.item() for v in row] for row in s], labels, eps)
    total = x.sum() * 0.0
    for i in range(n):
        pos_sum = sum(
            (torch.exp(-pos_scale * (s[i][p] - thresh)) for p in range(n) if (i, p) in pos_keep), x.sum() * 0.0
        )
        neg_sum = sum(
            (torch.exp(neg_scale * (s[i][k] - thresh)) for k in range(n) if (i, k) in neg_keep), x.sum() * 0.0
        )
        total = total + coef / pos_scale * torch.log(1 + pos_sum) + coef / neg_scale * torch.log(1 + neg_sum)
    return total / n


def _ref_at_asms(s: list[list[float]], labels: list[int], m: float) -> tuple[float, float, float, float]:
    mined_neg, all_pos = 0, 0
    for i in range(len(labels)):
        pos, neg = _groups(labels, i)
        all_pos += len(pos)
        if pos:
            hardest_pos = min(s[i][p] for p in pos)
            mined_neg += sum(1 for k in neg if s[i][k] > hardest_pos - m)
    r = mined_neg / all_pos if all_pos else 0.0
    if r > 1:
        tau = 1.0 / (1.0 + math.exp(-r)) / 2
        return m * (1 + tau), m / 10 * (1 - tau), r, tau
    return m, m / 10, r, 0.0


def _ref_asms(s: list[list[float]], labels: list[int], g_pos: float, g_neg: float) -> tuple[set, set]:
    pos_keep, neg_keep = set(), set()
    for i in range(len(labels)):
        pos, neg = _groups(labels, i)
        if neg:
            hardest_neg = max(s[i][k] for k in neg)
            pos_keep |= {(i, p) for p in pos if s[i][p] < hardest_neg + g_pos}
        if pos:
            hardest_pos = min(s[i][p] for p in pos)
            neg_keep |= {(i, k) for k in neg if s[i][k] > hardest_pos - g_neg}
    return pos_keep, neg_keep


def _ref_soft_contrastive(x, labels, pos_scale, neg_scale, thresh, mining, margin, each_side=False) -> torch.Tensor:
    """The spec's L = sum_i L_i / n with L_i = 0 unless anchor i keeps a positive AND a negative (SoftCon.py).

    each_side=True is the rule before issue 13: every non-empty kept side counted on its own.
    """
    labels, n = labels.tolist(), len(labels)
    s = _loop_sims(x)
    sv = [[v.item() for v in row] for row in s]
    if mining == "none":
        pos_keep = {(i, p) for i in range(n) for p in _groups(labels, i)[0]}
        neg_keep = {(i, k) for i in range(n) for k in _groups(labels, i)[1]}
    else:
        g_pos, g_neg = (margin, margin / 10) if mining == "asms" else _ref_at_asms(sv, labels, margin)[:2]
        pos_keep, neg_keep = _ref_asms(sv, labels, g_pos, g_neg)
    total = x.sum() * 0.0
    for i in range(n):
        kept_pos = [torch.log1p(torch.exp(-pos_scale * (s[i][p] - thresh))) for p in range(n) if (i, p) in pos_keep]
        kept_neg = [torch.log1p(torch.exp(neg_scale * (s[i][k] - thresh))) for k in range(n) if (i, k) in neg_keep]
        if not each_side and not (kept_pos and kept_neg):
            continue  # SoftCon.py: an anchor missing either side is skipped as a whole
        if kept_pos:
            total = total + 2 / pos_scale * sum(kept_pos) / len(kept_pos)
        if kept_neg:
            total = total + 2 / neg_scale * sum(kept_neg) / len(kept_neg)
    return total / n  # skipped anchors still count in n


def _kept_sides(x: torch.Tensor, labels: torch.Tensor, mining: str, margin: float = 0.1):
    """(keeps a positive, keeps a negative) per anchor, from the module's own miner for `mining`."""
    s = cosine_similarities(x.detach())
    pos_mask, neg_mask = pair_masks(labels)
    if mining == "none":
        pos_keep, neg_keep = pos_mask, neg_mask
    else:
        g_pos, g_neg = (
            (margin, margin / 10) if mining == "asms" else at_asms_tolerances(s, pos_mask, neg_mask, margin)[:2]
        )
        pos_keep, neg_keep = asms_mining(s, pos_mask, neg_mask, g_pos, g_neg)
    return pos_keep.any(1), neg_keep.any(1)


def _angled_batch(phis: list[float], isolated: tuple[int, int] | None = None, noise: float = 0.002) -> torch.Tensor:
    """8 classes x 4 images in 16-d, built so that every anchor's hardest pair is known in closed form.

    Image j of class c is cos(phi_c) e_c + sin(phi_c) e_{8+j}: two images of class c meet at cos^2(phi_c),
    image j of class c and image j of class c' at sin(phi_c) sin(phi_c'), images with different j at 0.
    `isolated` = (c, j) moves that image's second component to e_12, which no other image uses. A fixed-seed
    noise of std `noise` (similarities move by about 0.01) keeps the batch free of exact ties.
    """
    x = torch.zeros(32, 16, dtype=torch.float64)
    for c, phi in enumerate(phis):
        for j in range(4):
            x[4 * c + j, c] = math.cos(phi)
            x[4 * c + j, 12 if (c, j) == isolated else 8 + j] = math.sin(phi)
    g = torch.Generator().manual_seed(0)
    return x + noise * torch.randn(32, 16, generator=g, dtype=torch.float64)


def _as_pairs(mask: torch.Tensor) -> set:
    return {tuple(ij) for ij in mask.nonzero().tolist()}


def _value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------
def test_cosine_similarities_and_masks():
    x = _features(6, 5, 0)
    x[3] = x[0]  # a duplicate of the same identity stays a positive: the self pair goes by index
    labels = torch.tensor([0, 1, 1, 0, 2, 2])
    s = cosine_similarities(x)
    ref = torch.tensor([[v.item() for v in row] for row in _loop_sims(x)], dtype=torch.float64)
    assert_close(s, ref)
    pos_mask, neg_mask = pair_masks(labels)
    assert pos_mask[0, 3] and pos_mask[3, 0] and not pos_mask[0, 0]
    assert _as_pairs(pos_mask) == {(0, 3), (3, 0), (1, 2), (2, 1), (4, 5), (5, 4)}
    assert not (pos_mask & neg_mask).any() and not neg_mask.diagonal().any()
    assert int(neg_mask.sum()) == 36 - 6 - 6


# ------------------------------------------------------------------------------------------------
# ContrastiveLoss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("margin,seed", [(0.5, 0), (0.1, 1), (-0.2, 2), (0.8, 3)])
def test_contrastive_matches_loop_reference(reduction, margin, seed):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 4])
    x = _features(10, 4, seed)
    loss_fn = ContrastiveLoss(margin=margin, reduction=reduction)
    value, grad = _value_and_grad(lambda f: loss_fn(f, labels), x)  # noqa: B023 (called at once)
    ref_value, ref_grad = _value_and_grad(lambda f: _ref_contrastive(f, labels, margin, reduction), x)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)
    # float32 agrees with the float64 reference to float32 precision
    value32, grad32 = _value_and_grad(lambda f: loss_fn(f, labels), x.float())
    assert value32.dtype == torch.float32
    assert_close(value32.double(), ref_value, atol=1e-5, rtol=1e-5)
    assert_close(grad32.double(), ref_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_contrastive_gradient_matches_pml(reduction):
    labels = _pk_labels(4, 3)
    x = _features(12, 6, 7)
    margin = 0.2
    ours = ContrastiveLoss(margin=margin, reduction=reduction)
    pml = pml_losses.ContrastiveLoss(
        pos_margin=1.0,
        neg_margin=margin,
        distance=CosineSimilarity(),
        reducer=SumReducer() if reduction == "sum" else MeanReducer(),
    )
    value, grad = _value_and_grad(lambda f: ours(f, labels), x)
    pml_value, pml_grad = _value_and_grad(lambda f: pml(f, labels), x)
    s = cosine_similarities(x)
    pos_mask, neg_mask = pair_masks(labels)
    active = int((neg_mask & (s > margin)).sum())
    assert 0 < active < int(neg_mask.sum())
    if reduction == "sum":
        # PML sums relu(1 - s) and relu(s - m) over all pairs; MMSI charges s, not s - m, and divides by n
        assert_close(value, (pml_value + margin * active) / 12)
        assert_close(grad, pml_grad / 12)
    else:
        assert_close(value, pml_value + margin * active / int(neg_mask.sum()))
        assert_close(grad, pml_grad)


def test_contrastive_hand_computed():
    # two 2-d points per class on the unit circle: all cosines known exactly
    angles = torch.tensor([0.0, 0.5, 2.0, 2.5], dtype=torch.float64)
    x = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * 3.0  # the scale must not matter
    labels = torch.tensor([0, 0, 1, 1])
    cos = lambda a: math.cos(a)  # noqa: E731
    pos = 2 * (1 - cos(0.5)) * 2  # pairs (0,1), (1,0), (2,3), (3,2)
    negs = [cos(2.0), cos(2.5), cos(1.5), cos(2.0)] * 2  # s of (0,2), (0,3), (1,2), (1,3), both orders
    margin = 0.0
    active = [v for v in negs if v > margin]  # only cos(1.5) = 0.0707 > 0, twice
    assert len(active) == 2
    assert ContrastiveLoss(margin, "sum")(x, labels).item() == pytest.approx((pos + sum(active)) / 4)
    assert ContrastiveLoss(margin, "mean")(x, labels).item() == pytest.approx(pos / 4 + sum(active) / 8)


# ------------------------------------------------------------------------------------------------
# MultiSimilarityLoss and its miner
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_ms_mining_matches_loop_and_pml(eps, seed):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # label 3 has no positive
    x = _features(12, 5, seed)
    s = cosine_similarities(x)
    pos_keep, neg_keep = multi_similarity_mining(s, *pair_masks(labels), eps)
    ref_pos, ref_neg = _ref_ms_mining(s.tolist(), labels.tolist(), eps)
    assert _as_pairs(pos_keep) == ref_pos and _as_pairs(neg_keep) == ref_neg
    assert ref_pos and ref_neg
    assert not pos_keep[9].any() and not neg_keep[9].any()  # no positive: nothing to compare negatives with
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=eps)(x, labels)
    assert set(zip(a1.tolist(), p.tolist())) == ref_pos
    assert set(zip(a2.tolist(), n.tolist())) == ref_neg


def _pml_ms(x, labels, pos_scale, neg_scale, thresh, eps):
    miner = pml_miners.MultiSimilarityMiner(epsilon=eps)
    loss = pml_losses.MultiSimilarityLoss(alpha=pos_scale, beta=neg_scale, base=thresh, reducer=MeanReducer())
    return loss(x, labels, miner(x, labels))


@pytest.mark.parametrize(
    "pos_scale,neg_scale,thresh,eps", [(2.0, 40.0, 0.5, 0.1), (2.0, 50.0, 0.5, 0.1), (1.0, 10.0, 0.3, 0.2)]
)
@pytest.mark.parametrize("spread,seed", [(1.0, 1), (3.0, 0), (3.0, 1)])
def test_ms_coef1_matches_pml(pos_scale, neg_scale, thresh, eps, spread, seed):
    labels = _pk_labels(4, 4)
    x = _clustered(4, 4, 8, spread, seed, tight_first=0.05)
    # the tight class mines nothing: those anchors contribute 0 and still count in the denominator
    pos_keep, neg_keep = multi_similarity_mining(cosine_similarities(x), *pair_masks(labels), eps)
    idle = ~pos_keep.any(1) & ~neg_keep.any(1)
    assert idle.any() and not idle.all()
    loss_fn = MultiSimilarityLoss(pos_scale=pos_scale, neg_scale=neg_scale, thresh=thresh, mining_margin=eps, coef=1.0)
    value, grad = _value_and_grad(lambda f: loss_fn(f, labels), x)
    pml_value, pml_grad = _value_and_grad(lambda f: _pml_ms(f, labels, pos_scale, neg_scale, thresh, eps), x)
    assert value.dtype == torch.float64
    assert_close(value, pml_value)
    assert_close(grad, pml_grad)
    assert value.item() > 0 and grad.abs().sum() > 0
    # and in float32, to float32 precision
    value32, grad32 = _value_and_grad(lambda f: loss_fn(f, labels), x.float())
    pml32, pml_grad32 = _value_and_grad(lambda f: _pml_ms(f, labels, pos_scale, neg_scale, thresh, eps), x.float())
    assert_close(value32, pml32, atol=1e-5, rtol=1e-5)
    assert_close(grad32, pml_grad32, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("coef", [2.0, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_ms_matches_loop_reference(coef, seed):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 1])
    x = _features(12, 4, seed)
    loss_fn = MultiSimilarityLoss(coef=coef)  # spec defaults: pos 2, neg 40, thresh 0.5, eps 0.1
    value, grad = _value_and_grad(lambda f: loss_fn(f, labels), x)
    ref_value, ref_grad = _value_and_grad(lambda f: _ref_ms(f, labels, 2.0, 40.0, 0.5, 0.1, coef), x)
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)
    assert value.item() > 0


def test_ms_coef_scales_the_loss():
    labels = _pk_labels(3, 4)
    x = _features(12, 6, 4)
    one = MultiSimilarityLoss(coef=1.0)(x, labels)
    assert_close(MultiSimilarityLoss()(x, labels), 2 * one)  # MMSI's default coef 2


def test_ms_stats():
    labels = _pk_labels(3, 4)
    x = _features(12, 6, 5)
    loss_fn = MultiSimilarityLoss()
    assert loss_fn.stats == {}
    x.requires_grad_(True)
    loss_fn(x, labels)
    assert tuple(loss_fn.stats) == MultiSimilarityLoss.stat_names == ("pos_pairs", "neg_pairs")
    pos_keep, neg_keep = multi_similarity_mining(cosine_similarities(x.detach()), *pair_masks(labels), 0.1)
    assert loss_fn.stats["pos_pairs"].item() == pytest.approx(pos_keep.sum().item() / 12)
    assert loss_fn.stats["neg_pairs"].item() == pytest.approx(neg_keep.sum().item() / 12)
    assert all(v.dim() == 0 and not v.requires_grad for v in loss_fn.stats.values())


# ------------------------------------------------------------------------------------------------
# SoftContrastiveLoss, ASMS, AT-ASMS
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("g_pos,g_neg", [(0.1, 0.01), (0.2, 0.05), (0.0, 0.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_asms_mining_matches_loop(g_pos, g_neg, seed):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    s = cosine_similarities(_features(12, 5, seed))
    pos_keep, neg_keep = asms_mining(s, *pair_masks(labels), g_pos, g_neg)
    ref_pos, ref_neg = _ref_asms(s.tolist(), labels.tolist(), g_pos, g_neg)
    assert _as_pairs(pos_keep) == ref_pos and _as_pairs(neg_keep) == ref_neg
    assert ref_pos and ref_neg
    # tensor tolerances (AT-ASMS's) give the same masks
    t_pos, t_neg = asms_mining(
        s, *pair_masks(labels), torch.tensor(g_pos, dtype=s.dtype), torch.tensor(g_neg, dtype=s.dtype)
    )
    assert torch.equal(t_pos, pos_keep) and torch.equal(t_neg, neg_keep)


@pytest.mark.parametrize("spread,seed,branch", [(3.0, 1, "r>1"), (3.0, 0, "r>1"), (0.3, 0, "r<=1"), (0.6, 1, "r<=1")])
@pytest.mark.parametrize("margin", [0.1, 0.2])
def test_at_asms_tolerances_match_loop(spread, seed, branch, margin):
    labels = _pk_labels(4, 4)
    s = cosine_similarities(_clustered(4, 4, 8, spread, seed, tight_first=0.05))
    g_pos, g_neg, r, tau = at_asms_tolerances(s, *pair_masks(labels), margin)
    ref = _ref_at_asms(s.tolist(), labels.tolist(), margin)
    assert (ref[2] > 1) == (branch == "r>1")
    for got, want in zip((g_pos, g_neg, r, tau), ref):
        assert got.dim() == 0
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    if branch == "r>1":
        assert g_pos.item() > margin and g_neg.item() < margin / 10 and 0.25 < tau.item() < 0.5
    else:
        assert (g_pos.item(), g_neg.item(), tau.item()) == pytest.approx((margin, margin / 10, 0.0))


def test_at_asms_without_positives_is_asms():
    labels = torch.arange(6)
    g_pos, g_neg, r, tau = at_asms_tolerances(cosine_similarities(_features(6, 4, 0)), *pair_masks(labels), 0.1)
    assert (g_pos.item(), g_neg.item(), r.item(), tau.item()) == pytest.approx((0.1, 0.01, 0.0, 0.0))


_SOFT_CASES = [
    # (mining, spread, seed): random batches (AT-ASMS in its r > 1 branch) and clustered ones (r <= 1)
    ("at_asms", 3.0, 1),
    ("at_asms", 0.6, 1),
    ("asms", 3.0, 0),
    ("asms", 1.0, 1),
    ("none", 3.0, 0),
    ("none", 0.6, 2),
]


@pytest.mark.parametrize("mining,spread,seed", _SOFT_CASES)
def test_soft_contrastive_matches_loop_reference(mining, spread, seed):
    labels = _pk_labels(4, 4)
    x = _clustered(4, 4, 8, spread, seed, tight_first=0.05)
    loss_fn = SoftContrastiveLoss(mining=mining)  # spec defaults: pos 2, neg 40, thresh 0.7, margin 0.1
    value, grad = _value_and_grad(lambda f: loss_fn(f, labels), x)
    ref_value, ref_grad = _value_and_grad(lambda f: _ref_soft_contrastive(f, labels, 2.0, 40.0, 0.7, mining, 0.1), x)
    assert value.dtype == torch.float64
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)
    assert value.item() > 0
    value32, grad32 = _value_and_grad(lambda f: loss_fn(f, labels), x.float())
    assert_close(value32.double(), ref_value, atol=1e-5, rtol=1e-5)
    assert_close(grad32.double(), ref_grad, atol=1e-5, rtol=1e-4)


def _labelled_clusters(labels: torch.Tensor, d: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(int(labels.max()) + 1, d, generator=g, dtype=torch.float64)
    return centres[labels] + spread * torch.randn(len(labels), d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("mining", ["at_asms", "asms", "none"])
@pytest.mark.parametrize("spread,seed", [(1.0, 0), (0.7, 2), (1.0, 4)])
def test_soft_contrastive_skips_one_sided_anchors_like_loop_reference(mining, spread, seed):
    # classes of 1 to 4 images: the singletons are one-sided even unmined, ASMS's asymmetric tolerances make more
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6, 7, 7, 7, 7])
    x = _labelled_clusters(labels, 8, spread, seed)
    has_pos, has_neg = _kept_sides(x, labels, mining)
    assert (has_pos ^ has_neg).any() and (has_pos & has_neg).any()  # both kinds of anchor are exercised
    loss_fn = SoftContrastiveLoss(mining=mining)
    value, grad = _value_and_grad(lambda f: loss_fn(f, labels), x)
    ref_value, ref_grad = _value_and_grad(lambda f: _ref_soft_contrastive(f, labels, 2.0, 40.0, 0.7, mining, 0.1), x)
    # float64 and a tight tolerance: unmined, the singletons' negatives weigh little at alpha = 40, lambda = 0.7
    # (the old rule is 2e-6 to 5e-4 above the new one there, 30 % to 106 % above it mined), still far outside it
    assert_close(value, ref_value, rtol=1e-12, atol=1e-14)
    assert_close(grad, ref_grad)
    old_value = _ref_soft_contrastive(x, labels, 2.0, 40.0, 0.7, mining, 0.1, each_side=True)
    assert (old_value - ref_value).item() > 1e-9  # 1000 x the tolerance above: this batch tells the rules apart


def test_soft_contrastive_one_sided_anchors_pin_the_rule():
    # Classes 0-5 at phi = 50 deg: hardest positive cos^2 = 0.41 below hardest negative sin^2 = 0.59, both sides
    # kept. Classes 6-7 at phi_1 chosen so that the hardest negative (an image of classes 0-5 with the same j,
    # sin(phi_1) sin(50 deg)) lies 0.07 below the hardest positive cos^2(phi_1): inside (g_neg, g_pos) for
    # ASMS (0.01, 0.1) and for AT-ASMS (~0.0055, ~0.145; r ~ 2.1 here), so these anchors keep their positives
    # and no negative. Image 3 of class 7 is isolated: its gap 0.56 exceeds g_pos and it keeps nothing at all.
    # That makes 7 of 32 anchors one-sided, 1 empty, 24 two-sided.
    b, gap = math.sin(math.radians(50.0)), 0.07
    phi_1 = math.asin((-b + math.sqrt(b * b + 4 * (1 - gap))) / 2)  # cos^2 - b sin = gap, a quadratic in sin
    labels = _pk_labels(8, 4)
    x = _angled_batch([math.radians(50.0)] * 6 + [phi_1] * 2, isolated=(7, 3))
    has_pos, has_neg = _kept_sides(x, labels, "at_asms")
    one_sided = has_pos ^ has_neg
    assert one_sided.double().mean().item() >= 0.15  # 7 / 32 = 21.9 %
    assert torch.equal(one_sided, has_pos & ~has_neg)  # g_pos > g_neg: a one-sided anchor keeps its positives
    assert (~has_pos & ~has_neg).sum().item() == 1
    loss_fn = SoftContrastiveLoss(mining="at_asms")
    value, grad = _value_and_grad(lambda f: loss_fn(f, labels), x)
    ref_value, ref_grad = _value_and_grad(lambda f: _ref_soft_contrastive(f, labels, 2.0, 40.0, 0.7, "at_asms", 0.1), x)
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)
    # the old rule (each non-empty side counted) charges the one-sided anchors' positives: ~24 % more here
    old_value = _ref_soft_contrastive(x, labels, 2.0, 40.0, 0.7, "at_asms", 0.1, each_side=True)
    assert (old_value - value).item() / value.item() > 0.10
    # the mining statistics are those of the batch as before: the rule changes the loss, not the miner
    r_ref = _ref_at_asms(cosine_similarities(x).tolist(), labels.tolist(), 0.1)
    got = tuple(loss_fn.stats[k].item() for k in ("g_pos", "g_neg", "r", "tau"))
    assert got == pytest.approx(r_ref) and r_ref[2] > 1


@pytest.mark.parametrize(
    "mining,labels",
    [
        ("at_asms", _pk_labels(8, 4)),
        ("asms", _pk_labels(8, 4)),
        ("none", torch.arange(32)),  # no positive anywhere
        ("none", torch.zeros(32, dtype=torch.long)),  # no negative anywhere
    ],
    ids=["at_asms", "asms", "none-no_positive", "none-no_negative"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_soft_contrastive_all_one_sided_is_exactly_zero(mining, labels, dtype):
    # every class at phi with cos^2 - sin^2 = cos(2 phi) = 0.07: each anchor's hardest negative lies 0.07 below
    # its hardest positive, inside (g_neg, g_pos) for ASMS and AT-ASMS: positives kept, no negative anywhere
    x = _angled_batch([math.acos(0.07) / 2] * 8)
    has_pos, has_neg = _kept_sides(x, labels, mining)
    assert (has_pos ^ has_neg).all()
    assert _ref_soft_contrastive(x, labels, 2.0, 40.0, 0.7, mining, 0.1, each_side=True).item() > 0.0
    value, grad = _value_and_grad(lambda f: SoftContrastiveLoss(mining=mining)(f, labels), x.to(dtype))
    assert value.item() == 0.0 and value.dtype == dtype
    assert torch.equal(grad, torch.zeros_like(grad))  # zeros, not NaN


@pytest.mark.parametrize("thresh,pos_scale,neg_scale,margin", [(0.5, 1.0, 20.0, 0.2), (0.9, 3.0, 60.0, 0.05)])
def test_soft_contrastive_other_hyper_parameters(thresh, pos_scale, neg_scale, margin):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 1])
    x = _features(12, 4, 6)
    for mining in ("at_asms", "asms"):
        loss_fn = SoftContrastiveLoss(pos_scale, neg_scale, thresh, mining, margin)
        value, grad = _value_and_grad(lambda f, loss_fn=loss_fn: loss_fn(f, labels), x)
        ref_value, ref_grad = _value_and_grad(
            lambda f: _ref_soft_contrastive(f, labels, pos_scale, neg_scale, thresh, mining, margin),  # noqa: B023
            x,
        )
        assert_close(value, ref_value)
        assert_close(grad, ref_grad)


@pytest.mark.parametrize("mining", ["at_asms", "asms", "none"])
def test_soft_contrastive_stats(mining):
    labels = _pk_labels(4, 4)
    x = _clustered(4, 4, 8, 3.0, 1)
    loss_fn = SoftContrastiveLoss(mining=mining, margin=0.1)
    assert loss_fn.stats == {}
    loss_fn(x.requires_grad_(True), labels)
    assert tuple(loss_fn.stats) == SoftContrastiveLoss.stat_names == ("r", "tau", "g_pos", "g_neg")
    assert all(v.dim() == 0 and not v.requires_grad for v in loss_fn.stats.values())
    got = tuple(loss_fn.stats[k].item() for k in ("g_pos", "g_neg", "r", "tau"))
    if mining == "at_asms":
        expected = _ref_at_asms(cosine_similarities(x.detach()).tolist(), labels.tolist(), 0.1)
        assert expected[2] > 1
    elif mining == "asms":
        expected = (0.1, 0.01, 0.0, 0.0)
    else:
        expected = (0.0, 0.0, 0.0, 0.0)
    assert got == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# All three: gradcheck, edge cases, dtypes, training, argument checks
# ------------------------------------------------------------------------------------------------
_ALL_LOSSES = [
    ("contrastive-sum", lambda: ContrastiveLoss(margin=0.3, reduction="sum")),
    ("contrastive-mean", lambda: ContrastiveLoss(margin=0.3, reduction="mean")),
    ("ms-coef2", lambda: MultiSimilarityLoss()),
    ("ms-coef1", lambda: MultiSimilarityLoss(coef=1.0, neg_scale=50.0)),
    ("softcon-at_asms", lambda: SoftContrastiveLoss(mining="at_asms")),
    ("softcon-asms", lambda: SoftContrastiveLoss(mining="asms")),
    ("softcon-none", lambda: SoftContrastiveLoss(mining="none")),
]
_IDS = [name for name, _ in _ALL_LOSSES]
_MAKERS = [make for _, make in _ALL_LOSSES]


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_gradcheck_float64(make):
    # a fixed seed whose mining decisions and hinge activations sit well away from their thresholds
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 1])
    x = _features(8, 4, 11).requires_grad_(True)
    loss_fn = make()
    assert loss_fn(x, labels).item() > 0
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
@pytest.mark.parametrize("case", ["no_positive", "single_class", "single_sample"])
def test_degenerate_batches_have_finite_gradients(make, case):
    labels = {
        "no_positive": torch.arange(6),
        "single_class": torch.zeros(6, dtype=torch.long),
        "single_sample": torch.tensor([3]),
    }[case]
    x = _features(len(labels), 5, 2, torch.float32).requires_grad_(True)
    loss_fn = make()
    loss = loss_fn(x, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    name = _IDS[_MAKERS.index(make)]
    if case == "single_sample" or not name.startswith("contrastive"):
        # nothing to work on: no pair at all, the miner needs both a positive and a negative per anchor, or
        # (soft contrastive, mined or not) an anchor missing either side contributes nothing
        assert loss.item() == 0.0
        assert torch.equal(x.grad, torch.zeros_like(x))
    else:
        # pairs of one kind remain and still train (contrastive's other side)
        expected = _ref_contrastive(x.detach().double(), labels, 0.3, name.split("-")[1])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    for stat in loss_fn.stats.values():
        assert torch.isfinite(stat)


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_dtypes(make):
    labels = _pk_labels(3, 3)
    x64 = _features(9, 6, 1)
    loss_fn = make()
    assert loss_fn(x64, labels).dtype == torch.float64
    ref = loss_fn(x64.float(), labels)
    assert ref.dtype == torch.float32
    for low in (torch.bfloat16, torch.float16):
        x = x64.to(low)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss_fn(x, labels)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(loss_fn(x.float(), labels).item(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_decreases_under_adam(make):
    torch.manual_seed(0)
    labels = _pk_labels(5, 4)
    model = torch.nn.Linear(16, 8)
    data = torch.randn(20, 16) + 0.5 * torch.randn(5, 16).repeat_interleave(4, 0)
    loss_fn = make()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    values = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(data), labels)
        values.append(loss.item())
        loss.backward()
        opt.step()
    assert values[0] > 0
    assert values[-1] < 0.5 * values[0], values


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: ContrastiveLoss(reduction="avg"), "reduction"),
        (lambda: ContrastiveLoss(margin=float("nan")), "margin"),
        (lambda: MultiSimilarityLoss(pos_scale=-2.0), "pos_scale"),
        (lambda: MultiSimilarityLoss(neg_scale=0.0), "neg_scale"),
        (lambda: MultiSimilarityLoss(coef=-1.0), "coef"),
        (lambda: MultiSimilarityLoss(mining_margin=-0.1), "mining_margin"),
        (lambda: MultiSimilarityLoss(thresh=float("inf")), "thresh"),
        (lambda: SoftContrastiveLoss(mining="hard"), "mining"),
        (lambda: SoftContrastiveLoss(pos_scale=0.0), "pos_scale"),
        (lambda: SoftContrastiveLoss(neg_scale=-40.0), "neg_scale"),
        (lambda: SoftContrastiveLoss(margin=-0.1), "margin"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_defaults_and_interface():
    con = ContrastiveLoss()
    assert (con.margin, con.reduction) == (0.5, "sum")
    assert con.stat_names == () and con.stats == {}
    ms = MultiSimilarityLoss()
    assert (ms.pos_scale, ms.neg_scale, ms.thresh, ms.mining_margin, ms.coef) == (2.0, 40.0, 0.5, 0.1, 2.0)
    soft = SoftContrastiveLoss()
    assert (soft.pos_scale, soft.neg_scale, soft.thresh, soft.mining, soft.margin) == (2.0, 40.0, 0.7, "at_asms", 0.1)
    for loss_fn in (con, ms, soft):
        assert isinstance(loss_fn, torch.nn.Module) and list(loss_fn.parameters()) == []
