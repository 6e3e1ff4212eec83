"""Margin loss (Wu et al. 2017) and the distance-weighted sampler (layers/margin_loss.py,
layers/distance_weighted.py).

References:
- the loss on fixed triplets against a loop-by-definition implementation written here (normalise, per-triplet
  hinge terms, count of non-zero terms), for a fixed beta and for learned per-class betas with nu > 0;
- the same triplets fed to pytorch-metric-learning's MarginLoss as its indices_tuple. PML 2.x's default
  reducer for MarginLoss is a DivisorReducer whose divisor is #(pos hinge > 0) + #(neg hinge > 0): the sum of
  relu(d_ap - beta + margin) + relu(beta - d_an + margin) over the triplets divided by the count of non-zero
  hinge terms, i.e. our definition (we pass DivisorReducer() explicitly so a change of PML's default cannot
  silently change the comparison). Its LpDistance normalises the embeddings and uses torch.cdist, which
  differs from our sqrt(||x - y||^2 + 1e-8) by < 1e-8 at these distances. Its beta regulariser is
  nu * beta[label of anchor] summed over triplets and divided by the same divisor, which is our
  nu * sum |beta_a| for positive betas; it is zero for a fixed beta, where we forbid nu > 0;
- the sampler's weights against a loop over the spec's formula; its output structure; its draw frequencies
  against the normalised weights (simple absolute tolerance over many seeded draws).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.reducers import DivisorReducer
from torch import nn

from layers.distance_weighted import distance_weighted_triplets, distance_weights
from layers.margin_loss import MarginLoss


def _pk_labels(p: int, k: int) -> torch.Tensor:
    return torch.arange(p).repeat_interleave(k)


def _clustered(labels: torch.Tensor, d: int, seed: int, spread: float, dtype=torch.float64) -> torch.Tensor:
    """Features around one random centre per class: distances then spread over the whole hinge range."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(int(labels.max()) + 1, d, generator=g, dtype=dtype)
    return centers[labels] + spread * torch.randn(len(labels), d, generator=g, dtype=dtype)


def _random_triplets(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (anchor, positive) pair with one uniformly chosen negative, built with plain loops."""
    rng = random.Random(seed)
    lab = labels.tolist()
    a_idx, p_idx, n_idx = [], [], []
    for a in range(len(lab)):
        negs = [j for j in range(len(lab)) if lab[j] != lab[a]]
        for p in range(len(lab)):
            if p != a and lab[p] == lab[a] and negs:
                a_idx.append(a)
                p_idx.append(p)
                n_idx.append(rng.choice(negs))
    return torch.tensor(a_idx), torch.tensor(p_idx), torch.tensor(n_idx)


def _reference_margin(feats, labels, anchors, positives, negatives, alpha, beta, nu, learn_beta):
    """Loop over triplets following the formula literally; beta is a float or a per-class tensor."""
    unit = [feats[i] / torch.sqrt((feats[i] ** 2).sum()) for i in range(len(feats))]

    def dist(i, j):
        return torch.sqrt(((unit[i] - unit[j]) ** 2).sum() + 1e-8)

    total, nonzero = 0.0, 0
    for a, p, n in zip(anchors.tolist(), positives.tolist(), negatives.tolist()):
        b = beta[labels[a]] if learn_beta else beta
        pos = torch.clamp(dist(a, p) - b + alpha, min=0.0)
        neg = torch.clamp(b - dist(a, n) + alpha, min=0.0)
        nonzero += int(pos.item() > 0) + int(neg.item() > 0)
        total = total + pos + neg + (nu * abs(b) if learn_beta else 0.0)
    return total / nonzero if nonzero else total


def _per_class_betas(num_classes: int) -> torch.Tensor:
    return torch.linspace(0.9, 1.35, num_classes, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# the loss on fixed triplets
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("learn_beta,nu", [(False, 0.0), (True, 0.0), (True, 0.05)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_triplets_match_loop_reference(learn_beta, nu, seed):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4])
    base = _clustered(labels, 8, seed, spread=0.8)
    a, p, n = _random_triplets(labels, seed)
    loss_fn = MarginLoss(num_classes=5, alpha=0.2, beta=1.2, learn_beta=learn_beta, nu=nu).double()
    if learn_beta:
        with torch.no_grad():
            loss_fn.beta.copy_(_per_class_betas(5))
        ref_beta = _per_class_betas(5).requires_grad_(True)
    else:
        ref_beta = 1.2
    x = base.clone().requires_grad_(True)
    xr = base.clone().requires_grad_(True)
    ours = loss_fn.forward_triplets(x, labels, a, p, n)
    ref = _reference_margin(xr, labels, a, p, n, 0.2, ref_beta, nu, learn_beta)
    torch.testing.assert_close(ours, ref)
    active = loss_fn.stats["active_terms"].item()
    assert 0.1 < active < 0.9, "the case must mix active and inactive hinge terms to test the divisor"
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, xr.grad)
    if learn_beta:
        torch.testing.assert_close(loss_fn.beta.grad, ref_beta.grad)
        assert loss_fn.beta.grad[labels[a].unique()].abs().sum() > 0


@pytest.mark.parametrize("learn_beta,nu", [(False, 0.0), (True, 0.0), (True, 0.05)])
def test_fixed_triplets_match_pytorch_metric_learning(learn_beta, nu):
    labels = _pk_labels(6, 3)
    base = _clustered(labels, 16, 3, spread=0.9)
    a, p, n = _random_triplets(labels, 3)
    ours_fn = MarginLoss(num_classes=6, alpha=0.2, beta=1.2, learn_beta=learn_beta, nu=nu).double()
    pml_fn = pml_losses.MarginLoss(
        margin=0.2,
        nu=nu,
        beta=1.2,
        learn_beta=learn_beta,
        num_classes=6 if learn_beta else None,
        reducer=DivisorReducer(),
    ).double()
    if learn_beta:
        with torch.no_grad():
            ours_fn.beta.copy_(_per_class_betas(6))
            pml_fn.beta.copy_(_per_class_betas(6))
    x = base.clone().requires_grad_(True)
    xp = base.clone().requires_grad_(True)
    ours = ours_fn.forward_triplets(x, labels, a, p, n)
    pml = pml_fn(xp, labels, (a, p, n))
    torch.testing.assert_close(ours, pml)
    ours.backward()
    pml.backward()
    torch.testing.assert_close(x.grad, xp.grad)
    if learn_beta:
        torch.testing.assert_close(ours_fn.beta.grad, pml_fn.beta.grad)


@pytest.mark.parametrize("learn_beta", [False, True])
def test_sampled_triplets_match_pytorch_metric_learning_fp32(learn_beta):
    # realistic shape: 512-d, P x K batch; the triplets our forward samples, replayed through PML
    labels = _pk_labels(10, 4)
    base = _clustered(labels, 512, 4, spread=1.0, dtype=torch.float32)
    ours_fn = MarginLoss(num_classes=10, learn_beta=learn_beta)
    ours_fn.generator = torch.Generator().manual_seed(0)
    triplets = distance_weighted_triplets(F.normalize(base, dim=1), labels, generator=torch.Generator().manual_seed(0))
    pml_fn = pml_losses.MarginLoss(
        margin=0.2,
        nu=0.0,
        beta=1.2,
        learn_beta=learn_beta,
        num_classes=10 if learn_beta else None,
        reducer=DivisorReducer(),
    )
    x = base.clone().requires_grad_(True)
    xp = base.clone().requires_grad_(True)
    ours = ours_fn(x, labels)
    pml = pml_fn(xp, labels, triplets)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    torch.testing.assert_close(ours, pml, rtol=1e-5, atol=1e-6)
    ours.backward()
    pml.backward()
    torch.testing.assert_close(x.grad, xp.grad, rtol=1e-4, atol=1e-6)
    if learn_beta:
        torch.testing.assert_close(ours_fn.beta.grad, pml_fn.beta.grad, rtol=1e-5, atol=1e-6)


def _hinge_arguments(loss_fn, x, labels, a, p, n):
    f = F.normalize(x, dim=1)
    d_ap = ((f[a] - f[p]) ** 2).sum(1).add(1e-8).sqrt()
    d_an = ((f[a] - f[n]) ** 2).sum(1).add(1e-8).sqrt()
    beta = loss_fn.beta[labels[a]] if loss_fn.learn_beta else loss_fn.beta
    return torch.cat([d_ap - beta + loss_fn.alpha, beta - d_an + loss_fn.alpha])


class _TripletsOf(nn.Module):
    """Lets functional_call swap in beta as a gradcheck input while the triplets stay fixed."""

    def __init__(self, loss_fn: MarginLoss, labels, a, p, n):
        super().__init__()
        self.loss_fn = loss_fn
        self.args = (labels, a, p, n)

    def forward(self, x):
        labels, a, p, n = self.args
        return self.loss_fn.forward_triplets(x, labels, a, p, n)


@pytest.mark.parametrize("learn_beta,nu", [(False, 0.0), (True, 0.1)])
def test_gradcheck_float64_fixed_triplets(learn_beta, nu):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    x = _clustered(labels, 5, 7, spread=0.7).requires_grad_(True)
    a, p, n = _random_triplets(labels, 7)
    loss_fn = MarginLoss(num_classes=3, learn_beta=learn_beta, nu=nu).double()
    if learn_beta:
        with torch.no_grad():
            loss_fn.beta.copy_(torch.tensor([1.0, 1.2, 1.3], dtype=torch.float64))
    with torch.no_grad():
        args = _hinge_arguments(loss_fn, x, labels, a, p, n)
    # away from the kinks (and a stable count of active terms) under the finite-difference step
    assert args.abs().min() > 1e-3 and (args > 0).any() and (args < 0).any()
    wrapper = _TripletsOf(loss_fn, labels, a, p, n)
    if learn_beta:
        beta = loss_fn.beta.detach().clone().requires_grad_(True)

        def fn(feats, b):
            return torch.func.functional_call(wrapper, {"loss_fn.beta": b}, (feats,))

        assert torch.autograd.gradcheck(fn, (x, beta), eps=1e-6, atol=1e-6)
    else:
        assert torch.autograd.gradcheck(wrapper, (x,), eps=1e-6, atol=1e-6)


def test_all_hinge_terms_zero_gives_connected_zero():
    # two tight, antipodal clusters: d_ap ~ 0 < beta - alpha, d_an ~ 2 > beta + alpha
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[1.0, 0.01, 0.0], [1.0, -0.01, 0.0], [-1.0, 0.0, 0.01], [-1.0, 0.0, -0.01]])
    x.requires_grad_(True)
    a, p, n = _random_triplets(labels, 0)
    for learn_beta in (False, True):
        loss_fn = MarginLoss(num_classes=2, learn_beta=learn_beta)
        loss = loss_fn.forward_triplets(x, labels, a, p, n)
        assert loss.item() == 0.0 and loss.requires_grad
        assert loss_fn.stats["active_terms"].item() == 0.0
        x.grad = None
        loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() == 0


def test_triplet_ordering_and_stats():
    labels = torch.tensor([0, 0, 1, 1, 1])
    x = _clustered(labels, 6, 2, spread=1.0, dtype=torch.float32)
    a, p, n = _random_triplets(labels, 2)
    loss_fn = MarginLoss(num_classes=2, learn_beta=True)
    with torch.no_grad():
        loss_fn.beta.copy_(torch.tensor([1.0, 1.4]))
    loss_fn.forward_triplets(x, labels, a, p, n)
    assert set(loss_fn.stats) == set(MarginLoss.stat_names)
    for value in loss_fn.stats.values():
        assert value.dim() == 0 and not value.requires_grad
    # 2 triplets with beta 1.0 (class 0 anchors) and 6 with beta 1.4
    assert loss_fn.stats["beta"].item() == pytest.approx((2 * 1.0 + 6 * 1.4) / 8, abs=1e-6)
    args = _hinge_arguments(loss_fn, x, labels, a, p, n)
    assert loss_fn.stats["active_terms"].item() == pytest.approx((args > 0).float().mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------
# edge cases of the full forward (sampler + loss)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [7, 7, 7, 7, 7]], ids=["no-positive", "single-class"])
@pytest.mark.parametrize("learn_beta", [False, True])
def test_batch_without_triplets_is_connected_zero(labels, learn_beta):
    labels = torch.tensor(labels)
    x = _clustered(labels, 8, 0, spread=1.0, dtype=torch.float32).requires_grad_(True)
    loss_fn = MarginLoss(num_classes=8, learn_beta=learn_beta)
    loss = loss_fn(x, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    assert set(loss_fn.stats) == set(MarginLoss.stat_names)
    assert loss_fn.stats["active_terms"].item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() == 0
    if learn_beta:
        assert torch.isfinite(loss_fn.beta.grad).all()


def test_identical_features_finite():
    # every distance 0: the sampler clamps at cutoff, the loss's sqrt has its 1e-8
    labels = _pk_labels(3, 2)
    x = torch.ones(6, 16, requires_grad=True)
    loss = MarginLoss(num_classes=3)(x, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_dtypes():
    labels = _pk_labels(4, 3)
    base = _clustered(labels, 32, 1, spread=1.0, dtype=torch.float32)
    loss_fn = MarginLoss(num_classes=4)
    assert loss_fn(base.half(), labels).dtype == torch.float32
    assert loss_fn(base.bfloat16(), labels).dtype == torch.float32
    assert loss_fn(base.double(), labels).dtype == torch.float64


def test_seeded_forward_is_deterministic():
    labels = _pk_labels(8, 4)
    x = _clustered(labels, 64, 5, spread=1.0, dtype=torch.float32)
    loss_fn = MarginLoss(num_classes=8)
    values = []
    for _ in range(2):
        loss_fn.generator = torch.Generator().manual_seed(123)
        values.append(loss_fn(x, labels).item())
    assert values[0] == values[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"num_classes": 3, "alpha": -0.1},
        {"num_classes": 3, "beta": 0.0},
        {"num_classes": 3, "beta": float("nan")},
        {"num_classes": 3, "nu": -1.0},
        {"num_classes": 3, "nu": 0.1},  # nu needs learn_beta
        {"num_classes": 3, "cutoff": 0.0},
        {"num_classes": 3, "cutoff": 1.5, "nonzero_loss_cutoff": 1.4},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        MarginLoss(**kwargs)


def test_parameters_and_buffers():
    fixed = MarginLoss(num_classes=5, beta=1.1)
    assert list(fixed.parameters()) == []
    assert "beta" in dict(fixed.named_buffers()) and fixed.beta.item() == pytest.approx(1.1)
    learned = MarginLoss(num_classes=5, beta=1.1, learn_beta=True)
    params = dict(learned.named_parameters())
    assert list(params) == ["beta"] and params["beta"].shape == (5,)
    assert torch.allclose(params["beta"], torch.full((5,), 1.1))


# ------------------------------------------------------------------------------------------------
# the sampler
# ------------------------------------------------------------------------------------------------
def _reference_weights(dist, labels, d_emb, cutoff, nonzero_loss_cutoff):
    """Loop over the spec's formula, with the documented uniform fallback."""
    n = len(labels)
    lab = labels.tolist()
    w = [[0.0] * n for _ in range(n)]
    for i in range(n):
        negs = [j for j in range(n) if lab[j] != lab[i]]
        log_w = {}
        for j in negs:
            d = max(dist[i][j].item(), cutoff)
            if d <= nonzero_loss_cutoff:
                log_w[j] = (2 - d_emb) * math.log(d) - ((d_emb - 3) / 2) * math.log(max(1 - d * d / 4, 1e-8))
        if log_w:
            top = max(log_w.values())
            for j, value in log_w.items():
                w[i][j] = math.exp(value - top)
        else:
            for j in negs:
                w[i][j] = 1.0
    return torch.tensor(w, dtype=torch.float64)


@pytest.mark.parametrize("d_emb", [3, 5, 512])
def test_distance_weights_match_loop(d_emb):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    n = len(labels)
    # symmetric distances spanning below cutoff, the kept band and beyond nonzero_loss_cutoff
    dist = torch.rand(n, n, generator=g, dtype=torch.float64) * 1.6 + 0.2
    dist = (dist + dist.t()) / 2
    dist.fill_diagonal_(0.0)
    # anchor 6 (label 3): every negative beyond 1.4 -> uniform fallback over its negatives
    dist[6, :6] = dist[:6, 6] = torch.linspace(1.45, 1.9, 6, dtype=torch.float64)
    ours = distance_weights(dist, labels, d_emb, 0.5, 1.4)
    ref = _reference_weights(dist, labels, d_emb, 0.5, 1.4)
    torch.testing.assert_close(ours, ref)
    same = labels[:, None] == labels[None, :]
    assert (ours[same] == 0).all(), "self and positives must get weight 0"
    assert torch.equal(ours[6], (labels != 3).double())
    assert (ours[:6, 6] == 0).all(), "pairs beyond nonzero_loss_cutoff get 0 unless the row falls back"
    assert torch.isfinite(ours).all() and (ours.amax(1) == 1).all()


def test_distance_weights_antipodal_finite():
    labels = torch.tensor([0, 1])
    dist = torch.tensor([[0.0, 2.0000001], [2.0000001, 0.0]])
    w = distance_weights(dist, labels, 512, 0.5, 2.5)
    assert torch.isfinite(w).all() and torch.equal(w, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


@pytest.mark.parametrize("d_emb", [16, 512])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampler_structure(d_emb, seed):
    # mixed class sizes: singletons (3, 5) have no positive and must be skipped
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6])
    feats = F.normalize(_clustered(labels, d_emb, seed, spread=1.2, dtype=torch.float32), dim=1)
    a, p, n = distance_weighted_triplets(feats, labels, generator=torch.Generator().manual_seed(seed))
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert len(a) == len(p) == len(n)
    weights = distance_weights(torch.cdist(feats, feats), labels, d_emb, 0.5, 1.4)
    lab = labels.tolist()
    expected_anchors = [i for i in range(len(lab)) if lab.count(lab[i]) > 1]
    assert sorted(set(a.tolist())) == expected_anchors
    assert torch.all(a[1:] >= a[:-1]), "triplets are grouped by anchor"
    for anchor in expected_anchors:
        rows = a == anchor
        positives = [j for j in range(len(lab)) if j != anchor and lab[j] == lab[anchor]]
        assert p[rows].tolist() == positives, "all positives, each once"
        negatives = n[rows].tolist()
        assert len(negatives) == len(positives), "#neg == #pos"
        assert all(lab[j] != lab[anchor] for j in negatives), "positives and self are never negatives"
        assert all(weights[anchor, j] > 0 for j in negatives)
        if int((weights[anchor] > 0).sum()) >= len(positives):
            assert len(set(negatives)) == len(negatives), "without replacement when enough candidates"


def test_sampler_with_replacement_when_few_candidates():
    # anchor 0 (class 0, 3 positives) has one negative within 1.4 (index 4) and one far away (index 5)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    feats = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [0.95, 0.31, 0.0],
            [0.95, -0.31, 0.0],
            [0.95, 0.0, 0.31],
            [0.1, 1.0, 0.0],  # d ~ 1.34 from anchor 0: the only negative within 1.4
            [-1.0, 0.0, 0.0],  # antipodal to anchor 0: d = 2
        ]
    )
    feats = F.normalize(feats, dim=1)
    weights = distance_weights(torch.cdist(feats, feats), labels, 3, 0.5, 1.4)
    assert (weights[0] > 0).nonzero().flatten().tolist() == [4]
    for seed in range(5):
        a, _, n = distance_weighted_triplets(feats, labels, generator=torch.Generator().manual_seed(seed))
        assert n[a == 0].tolist() == [4, 4, 4]


def test_sampler_determinism_and_no_grad():
    labels = _pk_labels(6, 3)
    feats = F.normalize(_clustered(labels, 32, 9, spread=1.0, dtype=torch.float32), dim=1).requires_grad_(True)
    first = distance_weighted_triplets(feats, labels, generator=torch.Generator().manual_seed(7))
    again = distance_weighted_triplets(feats, labels, generator=torch.Generator().manual_seed(7))
    other = [distance_weighted_triplets(feats, labels, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    for x, y in zip(first, again):
        assert torch.equal(x, y) and not x.requires_grad
    assert any(not torch.equal(first[2], o[2]) for o in other)


def test_sampler_frequencies_follow_weights():
    # 2 images per class: one positive per anchor, hence exactly one weighted draw per anchor and call
    torch.manual_seed(0)
    labels = _pk_labels(4, 2)
    d_emb = 4
    feats = F.normalize(_clustered(labels, d_emb, 11, spread=0.6, dtype=torch.float64), dim=1)
    dist = torch.cdist(feats, feats)
    weights = distance_weights(dist, labels, d_emb, 0.5, 1.4)
    probs = weights / weights.sum(1, keepdim=True)
    assert (probs > 0.1).sum() >= 12, "the case must have several plausible negatives per anchor"
    draws = 1500
    counts = torch.zeros(8, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for _ in range(draws):
        a, _, n = distance_weighted_triplets(feats, labels, generator=g)
        counts[a, n] += 1
    freqs = counts / draws
    # binomial std <= 0.013 at 1500 draws: 0.05 is ~4 sigma, and zero-weight entries must never appear
    assert (freqs - probs).abs().max() < 0.05
    assert (counts[probs == 0] == 0).all()


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("learn_beta", [False, True])
def test_loss_decreases_on_toy_problem(learn_beta):
    labels = _pk_labels(5, 4)
    g = torch.Generator().manual_seed(0)
    feats = nn.Parameter(torch.randn(20, 16, generator=g))
    # a small nu: once no hinge term is active the loss is the undivided nu term (see MarginLoss)
    loss_fn = MarginLoss(num_classes=5, learn_beta=learn_beta, nu=0.001 if learn_beta else 0.0)
    loss_fn.generator = torch.Generator().manual_seed(1)
    groups = [{"params": [feats], "lr": 0.05}]
    if learn_beta:
        # as the solver does it: the betas in their own group, Adam lr 0.1, no weight decay
        groups.append({"params": [loss_fn.beta], "lr": 0.1, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups)
    a_all, p_all, n_all = _random_triplets(labels, 0)

    def held_out() -> float:
        with torch.no_grad():
            return loss_fn.forward_triplets(feats, labels, a_all, p_all, n_all).item()

    start = held_out()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(feats, labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert held_out() < 0.5 * start
    assert sum(losses[-5:]) < sum(losses[:5])
    if learn_beta:
        # as the classes separate (and with the nu pull) the learned boundaries move down from 1.2
        assert loss_fn.beta.mean().item() < 1.15
        assert torch.isfinite(loss_fn.beta).all()
