"""Losses (layers/): batch-hard triplet, label-smoothed softmax, the composite criterion and build_loss.

The triplet loss is checked against pytorch-metric-learning 2.x: BatchHardMiner picks, for every anchor that
has both a positive and a negative, the farthest positive and the closest negative (LpDistance, no
normalisation, torch.cdist); TripletMarginLoss then takes relu(d_ap - d_an + margin) (softplus with
smooth_loss=True) per mined triplet and MeanReducer averages over all of them, zeros included. That is
exactly our definition (mean over valid anchors), so values and gradients must agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import MeanReducer

from config.errors import ConfigError, UserError
from config.loading import load_config
from layers import build_loss
from layers.composite import CompositeLoss
from layers.softmax import SoftmaxClassifierLoss
from layers.triplet import BatchHardTripletLoss, euclidean_distances


def _pk_labels(p: int, k: int) -> torch.Tensor:
    return torch.arange(p).repeat_interleave(k)


def _features(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def _reference_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Loop-by-definition: mean over anchors with a positive and a negative of the hinge/softplus term."""
    labels = labels.tolist()
    n = len(labels)
    terms = []
    for a in range(n):
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        d_ap = torch.stack([torch.sqrt(((feats[a] - feats[j]) ** 2).sum()) for j in pos]).max()
        d_an = torch.stack([torch.sqrt(((feats[a] - feats[j]) ** 2).sum()) for j in neg]).min()
        gap = d_ap - d_an
        terms.append(F.softplus(gap) if margin is None else torch.clamp(gap + margin, min=0.0))
    return torch.stack(terms).mean()


def _pml_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    distance = LpDistance(normalize_embeddings=False)
    miner = pml_miners.BatchHardMiner(distance=distance)
    loss_fn = pml_losses.TripletMarginLoss(
        margin=0.0 if margin is None else margin,
        smooth_loss=margin is None,
        distance=distance,
        reducer=MeanReducer(),
    )
    return loss_fn(feats, labels, miner(feats, labels))


# ------------------------------------------------------------------------------------------------
# BatchHardTripletLoss
# ------------------------------------------------------------------------------------------------
def test_euclidean_distances():
    x = _features(7, 5, 0, torch.float64)
    d = euclidean_distances(x)
    assert torch.allclose(d, torch.cdist(x, x), atol=1e-6)
    assert torch.all(torch.diagonal(d) <= 1e-6)


@pytest.mark.parametrize("margin", [0.3, 1.0, None])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_pytorch_metric_learning(margin, seed):
    labels = _pk_labels(4, 4)
    base = _features(16, 32, seed)
    ours_x = base.clone().requires_grad_(True)
    pml_x = base.clone().requires_grad_(True)
    ours = BatchHardTripletLoss(margin=margin)(ours_x, labels)
    pml = _pml_triplet(pml_x, labels, margin)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert ours.item() == pytest.approx(pml.item(), abs=1e-5, rel=1e-5)
    assert ours.item() > 0
    ours.backward()
    pml.backward()
    assert torch.allclose(ours_x.grad, pml_x.grad, atol=1e-5, rtol=1e-4)
    assert ours_x.grad.abs().sum() > 0


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_matches_loop_reference(margin):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 1, 0])
    base = _features(12, 6, 5)
    x = base.clone().requires_grad_(True)
    xr = base.clone().double().requires_grad_(True)
    ours = BatchHardTripletLoss(margin=margin)(x, labels)
    ref = _reference_triplet(xr, labels, margin)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    ours.backward()
    ref.backward()
    assert torch.allclose(x.grad.double(), xr.grad, atol=1e-5, rtol=1e-4)


def test_triplet_soft_margin_value():
    # two identities, hand-placed on a line: d_ap and d_an known exactly
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap 1, d_an 3; anchor 1: d_ap 1, d_an 2; anchor 2: d_ap 4, d_an 2; anchor 3: d_ap 4, d_an 6
    gaps = torch.tensor([1 - 3, 1 - 2, 4 - 2, 4 - 6], dtype=torch.float64)
    soft = BatchHardTripletLoss(margin=None)(x, labels)
    assert soft.item() == pytest.approx(F.softplus(gaps).mean().item(), abs=1e-6)
    hard = BatchHardTripletLoss(margin=0.5)(x, labels)
    assert hard.item() == pytest.approx(torch.clamp(gaps + 0.5, min=0).mean().item(), abs=1e-6)
    assert hard.item() == pytest.approx((0 + 0 + 2.5 + 0) / 4, abs=1e-6)


def test_triplet_anchors_without_positive_excluded():
    # label 9 appears once: that anchor has no positive and must not count in the mean
    labels = torch.tensor([0, 0, 1, 1, 9])
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0], [0.5]])
    loss = BatchHardTripletLoss(margin=0.5)(x, labels)
    # anchor 0: d_ap 1, d_an min(3, 0.5) = 0.5 -> 1.0; anchor 1: d_ap 1, d_an 0.5 -> 1.0
    # anchor 2: d_ap 4, d_an 2 -> 2.5; anchor 3: d_ap 4, d_an 6 -> 0
    # (counting the positive-less anchor 4 in the mean would give 4.5 / 5)
    assert loss.item() == pytest.approx((1.0 + 1.0 + 2.5 + 0.0) / 4, abs=1e-6)
    assert loss.item() == pytest.approx(_reference_triplet(x.double(), labels, 0.5).item(), abs=1e-6)
    assert loss.item() == pytest.approx(_pml_triplet(x, labels, 0.5).item(), abs=1e-6)


def test_triplet_no_valid_anchor_is_zero_with_gradient():
    x = _features(4, 3, 0).requires_grad_(True)
    loss = BatchHardTripletLoss(margin=0.3)(x, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    single = BatchHardTripletLoss(margin=0.3)(x, torch.tensor([5, 5, 5, 5]))
    assert single.item() == 0.0


def test_triplet_keeps_float64():
    x = _features(9, 4, 0, torch.float64)
    loss = BatchHardTripletLoss(margin=0.3)(x, _pk_labels(3, 3))
    assert loss.dtype == torch.float64, "a float64 input is computed in float32 (feats.float() downcasts)"
    ref = _reference_triplet(x, _pk_labels(3, 3), 0.3)
    assert abs(loss.item() - ref.item()) < 1e-12


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_gradcheck_float64(margin):
    labels = _pk_labels(3, 3)
    # well separated points so the hardest positive/negative (argmax/argmin) are stable under eps = 1e-6
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(9, 4, generator=g, dtype=torch.float64) * 3.0).requires_grad_(True)
    loss_fn = BatchHardTripletLoss(margin=margin)
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels), (x,), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# SoftmaxClassifierLoss
# ------------------------------------------------------------------------------------------------
def _reference_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    n, c = logits.shape
    target = (1 - eps) * F.one_hot(labels, c).double() + eps / c
    return -(target * torch.log_softmax(logits.double(), dim=1)).sum(1).mean()


@pytest.mark.parametrize("eps", [0.1, 0.0])
def test_softmax_label_smoothing_matches_hand_written(eps):
    torch.manual_seed(0)
    loss_fn = SoftmaxClassifierLoss(feat_dim=8, num_classes=5, label_smoothing=eps)
    assert loss_fn.classifier.bias is None
    assert loss_fn.classifier.weight.shape == (5, 8)
    assert 0.0005 < loss_fn.classifier.weight.std().item() < 0.002  # N(0, 0.001^2) init
    with torch.no_grad():
        loss_fn.classifier.weight.normal_(std=0.5)
    feats = _features(10, 8, 1)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    loss, logits = loss_fn(feats, labels)
    assert torch.allclose(logits, feats @ loss_fn.classifier.weight.t(), atol=1e-6)
    ref = _reference_smoothed_ce(logits.detach(), labels, eps)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-6)
    if eps == 0.0:
        assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-6)
    else:
        assert loss.item() != pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-4)


def test_build_loss_label_smoothing_switch():
    on = build_loss(load_config(None, ["MODEL.IF_LABELSMOOTH", "on"]), 7, 16)
    off = build_loss(load_config(None, ["MODEL.IF_LABELSMOOTH", "off"]), 7, 16)
    assert on.cls_term.label_smoothing == pytest.approx(0.1)
    assert off.cls_term.label_smoothing == 0.0
    assert on.cls_term.classifier.weight.shape == (7, 16)
    assert on.metric_terms["triplet"].margin == pytest.approx(0.3)
    with pytest.raises(ConfigError):
        build_loss(load_config(None, ["MODEL.IF_LABELSMOOTH", "maybe"]), 7, 16)


# ------------------------------------------------------------------------------------------------
# CompositeLoss / build_loss
# ------------------------------------------------------------------------------------------------
def _outputs(n=16, d=12, seed=0, dtype=torch.float32):
    return {"feat": _features(n, d, seed, dtype), "neck_feat": _features(n, d, seed + 100, dtype)}


def test_composite_weights_and_parts():
    cfg = load_config(None, ["SOLVER.CLS_LOSS_WEIGHT", "0.5", "SOLVER.TRI_LOSS_WEIGHT", "2.0", "SOLVER.MARGIN", "0.7"])
    torch.manual_seed(0)
    criterion = build_loss(cfg, num_classes=4, feat_dim=12)
    assert isinstance(criterion, CompositeLoss)
    with torch.no_grad():
        criterion.cls_term.classifier.weight.normal_(std=0.3)
    outputs, labels = _outputs(), _pk_labels(4, 4)
    total, parts = criterion(outputs, {"label": labels})
    cls, logits = criterion.cls_term(outputs["neck_feat"], labels)
    metric = BatchHardTripletLoss(margin=0.7)(outputs["feat"], labels)
    assert total.item() == pytest.approx(0.5 * cls.item() + 2.0 * metric.item(), abs=1e-5)
    assert parts["cls_loss"].item() == pytest.approx(cls.item(), abs=1e-6)
    assert parts["triplet_loss"].item() == pytest.approx(metric.item(), abs=1e-6)
    assert parts["acc"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert set(parts) | {"loss"} == set(criterion.part_names)
    assert criterion.part_names == ("loss", "cls_loss", "acc", "triplet_loss")
    assert all(not v.requires_grad for v in parts.values())
    assert total.requires_grad


def test_composite_single_terms():
    only_metric = build_loss(load_config(None, ["MODEL.CLS_LOSS_TYPE", "none"]), 4, 12)
    assert only_metric.cls_term is None
    assert only_metric.part_names == ("loss", "triplet_loss")
    outputs, labels = _outputs(), _pk_labels(4, 4)
    total, parts = only_metric(outputs, {"label": labels})
    assert set(parts) | {"loss"} == set(only_metric.part_names)
    assert total.item() == pytest.approx(BatchHardTripletLoss(0.3)(outputs["feat"], labels).item(), abs=1e-6)

    only_cls = build_loss(load_config(None, ["MODEL.METRIC_LOSS_TYPE", "none"]), 4, 12)
    assert len(only_cls.metric_terms) == 0
    assert only_cls.part_names == ("loss", "cls_loss", "acc")
    total, parts = only_cls(outputs, {"label": labels})
    assert set(parts) | {"loss"} == set(only_cls.part_names)
    assert total.item() == pytest.approx(only_cls.cls_term(outputs["neck_feat"], labels)[0].item(), abs=1e-6)


def test_composite_under_bf16_autocast_is_float32():
    torch.manual_seed(0)
    criterion = build_loss(load_config(None, []), num_classes=4, feat_dim=12)
    outputs = _outputs(dtype=torch.bfloat16)
    labels = _pk_labels(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = criterion(outputs, {"label": labels})
    assert total.dtype == torch.float32
    assert torch.isfinite(total)
    assert all(v.dtype == torch.float32 for v in parts.values())
    # identical to the fp32 computation on the same (upcast) values
    ref, _ = criterion({k: v.float() for k, v in outputs.items()}, {"label": labels})
    assert total.item() == pytest.approx(ref.item(), abs=1e-6)


def _train(criterion_fn, params, steps=15, lr=0.1):
    opt = torch.optim.SGD(params, lr=lr)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        loss = criterion_fn()
        values.append(loss.item())
        loss.backward()
        opt.step()
    return values


def test_triplet_decreases_under_sgd():
    labels = _pk_labels(4, 4)
    x = torch.nn.Parameter(_features(16, 8, 3))
    loss_fn = BatchHardTripletLoss(margin=0.3)
    values = _train(lambda: loss_fn(x, labels), [x], lr=0.5, steps=20)
    assert values[0] > 0.3
    assert values[-1] < 0.5 * values[0]


def test_softmax_decreases_under_sgd():
    torch.manual_seed(0)
    labels = _pk_labels(4, 4)
    x = torch.nn.Parameter(_features(16, 8, 4))
    loss_fn = SoftmaxClassifierLoss(8, 4, label_smoothing=0.1)
    values = _train(lambda: loss_fn(x, labels)[0], [x, *loss_fn.parameters()], lr=1.0, steps=30)
    assert values[0] == pytest.approx(math.log(4), abs=0.05)  # tiny init weights: near-uniform logits
    assert values[-1] < 0.8 * values[0]


def test_composite_decreases_under_sgd():
    torch.manual_seed(0)
    labels = _pk_labels(4, 4)
    feat = torch.nn.Parameter(_features(16, 8, 5))
    neck = torch.nn.Parameter(_features(16, 8, 6))
    criterion = build_loss(load_config(None, []), 4, 8)
    values = _train(
        lambda: criterion({"feat": feat, "neck_feat": neck}, {"label": labels})[0],
        [feat, neck, *criterion.parameters()],
        lr=0.5,
        steps=30,
    )
    assert values[-1] < 0.7 * values[0]


# ------------------------------------------------------------------------------------------------
# Config errors
# ------------------------------------------------------------------------------------------------
def test_bad_metric_loss_type():
    with pytest.raises(ConfigError) as excinfo:
        build_loss(load_config(None, ["MODEL.METRIC_LOSS_TYPE", "contrastiv"]), 4, 8)
    message = str(excinfo.value)
    assert "MODEL.METRIC_LOSS_TYPE" in message and "'triplet'" in message and "'none'" in message
    assert "contrastiv" in message and "'contrastive'" in message and "pml:<LossClass>" in message


def test_bad_cls_loss_type():
    with pytest.raises(ConfigError) as excinfo:
        build_loss(load_config(None, ["MODEL.CLS_LOSS_TYPE", "arcfac"]), 4, 8)
    message = str(excinfo.value)
    assert "MODEL.CLS_LOSS_TYPE" in message and "'softmax'" in message and "'none'" in message


def test_both_none():
    cfg = load_config(None, ["MODEL.CLS_LOSS_TYPE", "none", "MODEL.METRIC_LOSS_TYPE", "none"])
    with pytest.raises(ConfigError) as excinfo:
        build_loss(cfg, 4, 8)
    assert isinstance(excinfo.value, UserError)
    assert "MODEL.CLS_LOSS_TYPE" in str(excinfo.value) and "MODEL.METRIC_LOSS_TYPE" in str(excinfo.value)
