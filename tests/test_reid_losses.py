"""Re-ID staple losses: tri-n (BatchHardTripletLoss(normalize=True)), pairwise Circle, pairwise CosFace, Center.

References and why they coincide with ours:

* tri-n vs pytorch-metric-learning 2.x: LpDistance(normalize_embeddings=True) L2-normalises the rows
  (F.normalize) and takes torch.cdist, i.e. the chord distance sqrt(2 - 2 cos) we use; BatchHardMiner returns,
  for every anchor with both a positive (self excluded) and a negative, its farthest positive and closest
  negative; TripletMarginLoss gives relu(d_ap - d_an + margin) (softplus with smooth_loss=True) per mined
  triplet and MeanReducer averages over all mined triplets, zeros included: our mean over valid anchors.
* Circle vs PML CircleLoss(m=margin, gamma=scale) with its defaults: CosineSimilarity normalises the rows; with
  no miner every pair is used, the self pair removed by index (diagonal of the positive mask cleared); the
  weights relu(1 + m - s_p), relu(s_n + m) are detached, Delta_p = 1 - m, Delta_n = m, and the per-anchor value
  is softplus(LSE_p + LSE_n) - our formula. Anchors without a positive or a negative are set to 0 there and the
  default AvgNonZeroReducer averages the values > 0. Every valid anchor's value is > 0: each logit is bounded
  below by -gamma m^2 (a_p (s_p - 1 + m) = m^2 - (1 - s_p)^2 <= m^2, a_n (s_n - m) = s_n^2 - m^2 >= -m^2), so
  L_i >= softplus(-2 gamma m^2) >= softplus(-32) ~ 1e-14 for the settings below, never 0 in fp32/fp64. Hence
  "mean of the non-zero values" is exactly our "mean over valid anchors", and the default reducer is kept.
* Pairwise CosFace (no PML counterpart) and Center loss (none either) against loop-by-definition references
  written here (plain Python loops over anchors and pairs / samples).

Every loss is also gradchecked in float64, run on batches with nothing to work on (zero loss, finite zero
gradient), and trained for 30 Adam steps on learnable features.
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
from torch.testing import assert_close

from layers.center import CenterLoss
from layers.circle import CirclePairLoss, circle_pair_loss
from layers.pairwise_cosface import PairwiseCosFaceLoss
from layers.triplet import BatchHardTripletLoss, chord_distances, euclidean_distances

F32_TOL = {"atol": 1e-5, "rtol": 1e-5}


def _pk_labels(p: int, k: int) -> torch.Tensor:
    return torch.arange(p).repeat_interleave(k)


def _features(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


# irregular batch: labels 7 and 9 appear once (anchors with no positive, left out of every mean)
IRREGULAR_LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 1, 0, 9, 4, 4, 7])


def _value_and_grad(loss_fn, base: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = base.clone().requires_grad_(True)
    loss = loss_fn(x, labels)
    loss.backward()
    return loss.detach(), x.grad


def _assert_zero_with_finite_grad(loss_fn, labels: torch.Tensor, d: int = 5) -> None:
    x = _features(len(labels), d, 0).requires_grad_(True)
    loss = loss_fn(x, labels)
    assert loss.dim() == 0 and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def _train_decreases(
    loss_fn, labels: torch.Tensor, d: int = 8, steps: int = 30, lr: float = 0.05, extra_params: tuple = ()
) -> list[float]:
    x = torch.nn.Parameter(_features(len(labels), d, 11))
    opt = torch.optim.Adam([x, *extra_params], lr=lr)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(x, labels)
        values.append(loss.item())
        loss.backward()
        assert torch.isfinite(x.grad).all()
        opt.step()
    return values


# ------------------------------------------------------------------------------------------------
# tri-n: BatchHardTripletLoss(normalize=True)
# ------------------------------------------------------------------------------------------------
def _pml_tri_n(feats: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    distance = LpDistance(normalize_embeddings=True)
    miner = pml_miners.BatchHardMiner(distance=distance)
    loss_fn = pml_losses.TripletMarginLoss(
        margin=0.0 if margin is None else margin,
        smooth_loss=margin is None,
        distance=distance,
        reducer=MeanReducer(),
    )
    return loss_fn(feats, labels, miner(feats, labels))


def test_chord_distances():
    x = _features(7, 5, 0, torch.float64) * 3.0
    f = F.normalize(x, dim=1)
    d = chord_distances(x)
    off = ~torch.eye(7, dtype=torch.bool)
    assert_close(d[off], torch.cdist(f, f)[off], atol=1e-10, rtol=0)
    assert_close(d[off], (2 - 2 * f @ f.t()).sqrt()[off], atol=1e-12, rtol=0)
    assert torch.all(torch.diagonal(d) <= 1e-6)  # sqrt of the 1e-12 clamp
    assert d.max() <= 2.0 + 1e-12


@pytest.mark.parametrize("margin", [0.1, 0.3, None])
@pytest.mark.parametrize("labels", [_pk_labels(4, 4), IRREGULAR_LABELS], ids=["pk", "irregular"])
def test_tri_n_matches_pytorch_metric_learning(margin, labels):
    base = _features(16, 32, 0, torch.float64)
    loss_fn = BatchHardTripletLoss(margin=margin, normalize=True)
    ours, ours_grad = _value_and_grad(loss_fn, base, labels)
    ref, ref_grad = _value_and_grad(lambda f, y: _pml_tri_n(f, y, margin), base, labels)
    assert ours.dtype == torch.float64 and ours.dim() == 0
    assert ours.item() > 0
    assert_close(ours, ref)
    assert_close(ours_grad, ref_grad)
    # the fp32 path against the same fp64 reference
    ours32, grad32 = _value_and_grad(loss_fn, base.float(), labels)
    assert ours32.dtype == torch.float32
    assert_close(ours32.double(), ref, **F32_TOL)
    assert_close(grad32.double(), ref_grad, **F32_TOL)


def test_tri_n_is_scale_invariant_and_tri_is_unchanged():
    labels = _pk_labels(4, 4)
    x = _features(16, 8, 3)
    tri_n = BatchHardTripletLoss(0.3, normalize=True)
    assert tri_n(x * 7.5, labels).item() == pytest.approx(tri_n(x, labels).item(), abs=1e-6)
    # the plain loss: defaults, positional margin and normalize=False all give raw Euclidean distances
    plain = BatchHardTripletLoss(0.3)(x, labels)
    assert not BatchHardTripletLoss().normalize
    assert plain.item() == pytest.approx(BatchHardTripletLoss(margin=0.3, normalize=False)(x, labels).item())
    d = euclidean_distances(x)
    same = labels[:, None] == labels[None, :]
    hp = d.masked_fill(~same, -1).amax(1)
    hn = d.masked_fill(same, math.inf).amin(1)
    assert plain.item() == pytest.approx(F.relu(hp - hn + 0.3).mean().item(), abs=1e-5)
    assert plain.item() != pytest.approx(tri_n(x, labels).item(), abs=1e-3)


@pytest.mark.parametrize("margin", [0.3, None])
def test_tri_n_gradcheck_float64(margin):
    labels = _pk_labels(3, 3)
    # well separated directions: the hardest positive/negative (argmax/argmin) stay put under eps = 1e-6
    x = (_features(9, 4, 0, torch.float64) * 3.0).requires_grad_(True)
    loss_fn = BatchHardTripletLoss(margin=margin, normalize=True)
    assert loss_fn(x, labels).item() > 0
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels), (x,), eps=1e-6, atol=1e-6)


def test_tri_n_edge_cases():
    loss_fn = BatchHardTripletLoss(0.3, normalize=True)
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([0, 1, 2, 3]))  # no positives
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([5, 5, 5, 5]))  # one class: no negatives
    # coinciding features (zero chord distance) and a zero vector keep a finite gradient
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    loss = loss_fn(x, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_tri_n_bf16_input_computes_in_float32():
    x = _features(16, 8, 2)
    labels = _pk_labels(4, 4)
    loss = BatchHardTripletLoss(0.3, normalize=True)(x.bfloat16(), labels)
    assert loss.dtype == torch.float32
    ref = BatchHardTripletLoss(0.3, normalize=True)(x.bfloat16().float(), labels)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)


def test_tri_n_decreases():
    labels = _pk_labels(4, 4)
    values = _train_decreases(BatchHardTripletLoss(0.3, normalize=True), labels)
    assert values[0] > 0.3
    assert values[-1] < 0.5 * values[0]


@pytest.mark.parametrize(
    "kwargs", [{"margin": -0.1}, {"margin": math.nan}, {"margin": "0.3"}, {"normalize": "yes"}, {"normalize": 1}]
)
def test_triplet_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        BatchHardTripletLoss(**kwargs)


# ------------------------------------------------------------------------------------------------
# CirclePairLoss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("margin,scale", [(0.25, 256.0), (0.4, 80.0), (0.25, 128.0)])
@pytest.mark.parametrize("labels", [_pk_labels(4, 4), IRREGULAR_LABELS], ids=["pk", "irregular"])
def test_circle_matches_pytorch_metric_learning(margin, scale, labels):
    base = _features(16, 32, 4, torch.float64)
    ours, ours_grad = _value_and_grad(CirclePairLoss(margin=margin, scale=scale), base, labels)
    pml = pml_losses.CircleLoss(m=margin, gamma=scale)  # default reducer: see the module docstring
    ref, ref_grad = _value_and_grad(pml, base, labels)
    assert ours.dtype == torch.float64 and ours.dim() == 0
    assert_close(ours, ref)
    assert_close(ours_grad, ref_grad)
    ours32, grad32 = _value_and_grad(CirclePairLoss(margin=margin, scale=scale), base.float(), labels)
    assert ours32.dtype == torch.float32
    assert_close(ours32.double(), ref, **F32_TOL)
    assert_close(grad32.double(), ref_grad, atol=1e-4, rtol=1e-4)  # logits up to ~1000: fp32 rounding x scale


def test_circle_defaults():
    loss_fn = CirclePairLoss()
    assert loss_fn.margin == 0.25 and loss_fn.scale == 256.0
    assert list(loss_fn.parameters()) == []


def test_circle_gradcheck_float64():
    # a_p, a_n are constants for the gradient; freezing them at x0 (weight_feats) makes the forward value a
    # function whose true derivative is the loss's gradient, so gradcheck applies
    labels = IRREGULAR_LABELS[:12]
    x0 = _features(12, 4, 5, torch.float64)
    x = x0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f: circle_pair_loss(f, labels, 0.25, 16.0, weight_feats=x0), (x,), eps=1e-6, atol=1e-6
    )
    # ...and at x0 that gradient is the module's (which takes the weights from its own detached input)
    module_value, module_grad = _value_and_grad(CirclePairLoss(0.25, 16.0), x0, labels)
    frozen_value, frozen_grad = _value_and_grad(
        lambda f, y: circle_pair_loss(f, y, 0.25, 16.0, weight_feats=x0), x0, labels
    )
    assert_close(module_value, frozen_value)
    assert_close(module_grad, frozen_grad)


def test_circle_edge_cases():
    loss_fn = CirclePairLoss()
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([0, 1, 2, 3]))
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([5, 5, 5, 5]))
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([3]))
    # some anchors without a positive: their all-masked rows must not leak NaN into the gradient
    x = _features(16, 8, 6).requires_grad_(True)
    loss = loss_fn(x, IRREGULAR_LABELS)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(x.grad).all()
    assert x.grad[IRREGULAR_LABELS == 9].abs().sum() > 0  # still a negative of the other anchors


def test_circle_bf16_input_computes_in_float32():
    x = _features(16, 8, 2).bfloat16()
    loss = CirclePairLoss()(x, _pk_labels(4, 4))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_circle_decreases():
    values = _train_decreases(CirclePairLoss(margin=0.25, scale=64.0), _pk_labels(4, 4))
    assert values[-1] < 0.5 * values[0]


@pytest.mark.parametrize(
    "kwargs", [{"scale": -1.0}, {"scale": 0.0}, {"margin": -0.25}, {"scale": math.inf}, {"margin": None}]
)
def test_circle_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CirclePairLoss(**kwargs)


# ------------------------------------------------------------------------------------------------
# PairwiseCosFaceLoss
# ------------------------------------------------------------------------------------------------
def _reference_pairwise_cosface(
    feats: torch.Tensor, labels: torch.Tensor, scale: float, margin: float, include_self: bool = False
) -> torch.Tensor:
    """Literal formula: per anchor softplus(LSE_p[-s (cos_ap - m)] + LSE_n[s cos_an]), mean over anchors with
    a positive and a negative. include_self=True is NAMA's variant (the anchor is one of its positives)."""
    labels = labels.tolist()
    n = len(labels)

    def cos(i: int, j: int) -> torch.Tensor:
        return (feats[i] * feats[j]).sum() / (feats[i].norm() * feats[j].norm())

    terms = []
    for a in range(n):
        pos = [j for j in range(n) if labels[j] == labels[a] and (j != a or include_self)]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not [j for j in pos if j != a] or not neg:
            continue
        lse_p = torch.logsumexp(torch.stack([-scale * (cos(a, p) - margin) for p in pos]), 0)
        lse_n = torch.logsumexp(torch.stack([scale * cos(a, k) for k in neg]), 0)
        terms.append(F.softplus(lse_p + lse_n))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("scale,margin", [(32.0, 0.3), (16.0, 0.1), (64.0, 0.35)])
@pytest.mark.parametrize("labels", [_pk_labels(3, 4), IRREGULAR_LABELS[:12]], ids=["pk", "irregular"])
def test_pairwise_cosface_matches_loop_reference(scale, margin, labels):
    base = _features(12, 6, 7, torch.float64)
    ours, ours_grad = _value_and_grad(PairwiseCosFaceLoss(scale=scale, margin=margin), base, labels)
    ref, ref_grad = _value_and_grad(lambda f, y: _reference_pairwise_cosface(f, y, scale, margin), base, labels)
    assert ours.dtype == torch.float64 and ours.dim() == 0
    assert_close(ours, ref)
    assert_close(ours_grad, ref_grad)
    ours32, grad32 = _value_and_grad(PairwiseCosFaceLoss(scale=scale, margin=margin), base.float(), labels)
    assert ours32.dtype == torch.float32
    assert_close(ours32.double(), ref, **F32_TOL)
    assert_close(grad32.double(), ref_grad, **F32_TOL)


def test_pairwise_cosface_excludes_self_pair():
    labels = _pk_labels(3, 3)
    x = _features(9, 6, 8, torch.float64)
    # a small scale, so that the self term exp(-s (1 - m)) is not negligible next to the real positives
    ours = PairwiseCosFaceLoss(scale=2.0, margin=0.3)(x, labels)
    nama = _reference_pairwise_cosface(x, labels, 2.0, 0.3, include_self=True)
    assert ours.item() == pytest.approx(_reference_pairwise_cosface(x, labels, 2.0, 0.3).item(), rel=1e-12)
    assert ours.item() < nama.item() - 0.01  # the extra positive term can only raise LSE_p
    loss_fn = PairwiseCosFaceLoss()
    assert loss_fn.scale == 32.0 and loss_fn.margin == 0.3


def test_pairwise_cosface_gradcheck_float64():
    x = _features(12, 4, 9, torch.float64).requires_grad_(True)
    loss_fn = PairwiseCosFaceLoss(scale=8.0, margin=0.3)
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, IRREGULAR_LABELS[:12]), (x,), eps=1e-6, atol=1e-6)


def test_pairwise_cosface_edge_cases():
    loss_fn = PairwiseCosFaceLoss()
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([0, 1, 2, 3]))
    _assert_zero_with_finite_grad(loss_fn, torch.tensor([5, 5, 5, 5]))
    x = _features(16, 8, 6).requires_grad_(True)
    loss = loss_fn(x, IRREGULAR_LABELS)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # large logits (scale 1000, identical positives) stay finite
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    big = PairwiseCosFaceLoss(scale=1000.0, margin=0.3)(y, torch.tensor([0, 0, 1, 1]))
    big.backward()
    assert torch.isfinite(big) and torch.isfinite(y.grad).all()


def test_pairwise_cosface_decreases():
    values = _train_decreases(PairwiseCosFaceLoss(scale=16.0, margin=0.3), _pk_labels(4, 4))
    assert values[-1] < 0.5 * values[0]


@pytest.mark.parametrize("kwargs", [{"scale": -32.0}, {"scale": 0}, {"margin": -0.3}, {"margin": math.nan}])
def test_pairwise_cosface_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PairwiseCosFaceLoss(**kwargs)


# ------------------------------------------------------------------------------------------------
# CenterLoss
# ------------------------------------------------------------------------------------------------
def _reference_center(feats: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(1/n) sum_i ||f_i - c_{y_i}||^2, one sample and one coordinate at a time."""
    total = feats.new_zeros(())
    for i, y in enumerate(labels.tolist()):
        for k in range(feats.shape[1]):
            total = total + (feats[i, k] - centers[y, k]) ** 2
    return total / feats.shape[0]


def test_center_init():
    torch.manual_seed(0)
    loss_fn = CenterLoss(num_classes=200, feat_dim=64)
    names = dict(loss_fn.named_parameters())
    assert list(names) == ["centers"]
    assert loss_fn.centers.shape == (200, 64) and loss_fn.centers.requires_grad
    assert abs(loss_fn.centers.mean().item()) < 0.02  # randn
    assert loss_fn.centers.std().item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    "labels", [torch.tensor([0, 0, 1, 1, 2, 4, 4, 1]), torch.tensor([3] * 8)], ids=["mixed", "single-class"]
)
def test_center_matches_loop_reference(labels):
    torch.manual_seed(1)
    loss_fn = CenterLoss(num_classes=5, feat_dim=6)
    base = _features(8, 6, 10)
    x = base.clone().requires_grad_(True)
    ours = loss_fn(x, labels)
    ours.backward()
    xr = base.double().requires_grad_(True)
    cr = loss_fn.centers.detach().double().requires_grad_(True)
    ref = _reference_center(xr, labels, cr)
    ref.backward()
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert_close(ours.double(), ref.detach(), **F32_TOL)
    assert_close(x.grad.double(), xr.grad, **F32_TOL)
    assert_close(loss_fn.centers.grad.double(), cr.grad, **F32_TOL)
    # classes absent from the batch get no gradient
    absent = torch.ones(5, dtype=torch.bool)
    absent[labels] = False
    assert torch.equal(loss_fn.centers.grad[absent], torch.zeros_like(loss_fn.centers.grad[absent]))


def test_center_gradcheck_float64():
    torch.manual_seed(2)
    loss_fn = CenterLoss(num_classes=4, feat_dim=3).double()
    x = _features(6, 3, 12, torch.float64).requires_grad_(True)
    centers = loss_fn.centers.detach().clone().requires_grad_(True)
    labels = torch.tensor([0, 1, 1, 3, 0, 0])
    # functional_call swaps the centers parameter for an explicit input, so both gradients are checked
    assert torch.autograd.gradcheck(
        lambda f, c: torch.func.functional_call(loss_fn, {"centers": c}, (f, labels)), (x, centers), eps=1e-6, atol=1e-6
    )


def test_center_dtypes():
    torch.manual_seed(3)
    loss_fn = CenterLoss(num_classes=3, feat_dim=4)
    labels = torch.tensor([0, 1, 2, 2])
    x = _features(4, 4, 13)
    assert loss_fn(x.bfloat16(), labels).dtype == torch.float32
    loss64 = loss_fn(x.double(), labels)  # fp32 centers, fp64 features: computed in fp64
    assert loss64.dtype == torch.float64
    assert loss64.item() == pytest.approx(
        _reference_center(x.double(), labels, loss_fn.centers.double()).item(), rel=1e-12
    )


def test_center_edge_cases():
    loss_fn = CenterLoss(num_classes=3, feat_dim=5)
    _assert_zero_with_finite_grad(loss_fn, torch.zeros(0, dtype=torch.long))
    x = _features(4, 5, 0).requires_grad_(True)
    loss = loss_fn(x, torch.tensor([0, 1, 2, 1]))  # no positive pairs: still a valid center loss
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="feat"):
        loss_fn(_features(4, 6, 0), torch.tensor([0, 1, 2, 1]))


def test_center_decreases():
    torch.manual_seed(4)
    loss_fn = CenterLoss(num_classes=4, feat_dim=8)
    values = _train_decreases(loss_fn, _pk_labels(4, 4), extra_params=tuple(loss_fn.parameters()))
    assert values[-1] < 0.8 * values[0]


@pytest.mark.parametrize("args", [(0, 8), (4, 0), (-1, 8), (4.0, 8), (True, 8)])
def test_center_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        CenterLoss(*args)
