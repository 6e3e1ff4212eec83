"""Proxy-based losses (layers/proxy_nca.py, layers/proxy_anchor.py, layers/amloss.py).

References:

* Proxy-NCA against pytorch-metric-learning 2.x `ProxyNCALoss(C, d, softmax_scale=9, reducer=MeanReducer())`.
  PML takes LpDistance(power=2) between L2-normalised embeddings and L2-normalised proxies, i.e.
  ||x^ - p^||^2, computes softmax(-scale * D) over all C proxies per sample, takes -log of the probability
  mass on the sample's own proxy and averages over the samples (MeanReducer; its default, passed explicitly).
  That is our formula; ours evaluates it as cross-entropy on 2 * scale * cos, which is the same softmax since
  ||x^ - p^||^2 = 2 - 2 cos. (PML drops samples whose probability underflows to exactly 0; with |logits|
  <= 4 * scale this never happens at the scales tested.)
* Proxy Anchor against PML `ProxyAnchorLoss(C, d, margin=delta, alpha=alpha)` with its default
  DivisorReducer: its positive terms log(1 + sum_{x in X_p+} e^{-alpha (cos - delta)}) (one per proxy, 0 for
  a proxy without positives) are summed and divided by the number of proxies with positives, its negative
  terms log(1 + sum_{x in X_p-} e^{alpha (cos + delta)}) are summed and divided by C: exactly the spec's
  formula. The proxies are copied from ours, so values and gradients (features and proxies) must agree.
* AMLoss has no PML counterpart: a loop-by-definition reference below follows the spec's three sums
  literally (values and autograd gradients w.r.t. features, proxies and margins), and with pp_weight = 0,
  every margin = delta and alpha_pos = alpha_neg it must coincide with Proxy Anchor.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.reducers import MeanReducer
from torch.func import functional_call

from layers.amloss import AMLoss
from layers.loss_inputs import matmul_normalized_rows
from layers.proxy_anchor import ProxyAnchorLoss
from layers.proxy_nca import ProxyNCALoss

F64 = dict(atol=1e-10, rtol=1e-9)
F32 = dict(atol=2e-5, rtol=2e-5)
# classes 3 and 5 have no sample, 6 has one: proxies without positives and a singleton class
LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2, 4, 4, 4, 0, 6])
NUM_CLASSES = 7


@pytest.fixture(autouse=True)
def _one_thread():
    """Everything here is tiny: intra-op threads only add synchronisation, which on an oversubscribed
    machine (CI workers sharing cores) made 30 Adam steps on a 40 x 16 batch take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _features(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def _set_proxies(loss_fn: torch.nn.Module, seed: int, dtype=torch.float64) -> torch.nn.Module:
    loss_fn = loss_fn.to(dtype)
    with torch.no_grad():
        loss_fn.proxies.copy_(_features(*loss_fn.proxies.shape, seed, dtype))
    return loss_fn


def _value_and_grads(loss_fn: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor):
    x = feats.clone().requires_grad_(True)
    loss_fn.zero_grad(set_to_none=True)
    loss = loss_fn(x, labels)
    loss.backward()
    return loss.detach(), x.grad, {name: p.grad for name, p in loss_fn.named_parameters()}


def _compare_with_pml(ours: torch.nn.Module, pml: torch.nn.Module, feats, labels, tol):
    pml.proxies.data = ours.proxies.detach().clone()  # PML casts its proxies to the input dtype in place
    v_ours, gx_ours, gp_ours = _value_and_grads(ours, feats, labels)
    v_pml, gx_pml, gp_pml = _value_and_grads(pml, feats, labels)
    assert v_ours.dtype == feats.dtype and v_ours.dim() == 0
    torch.testing.assert_close(v_ours, v_pml, **tol)
    torch.testing.assert_close(gx_ours, gx_pml, **tol)
    torch.testing.assert_close(gp_ours["proxies"], gp_pml["proxies"], **tol)
    assert gx_ours.abs().sum() > 0 and gp_ours["proxies"].abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------
def test_matmul_normalized_rows_matches_explicit_normalisation():
    a, p = _features(6, 5, 0), _features(9, 5, 1) * 3.0
    out = matmul_normalized_rows(a, p)
    torch.testing.assert_close(out, a @ torch.nn.functional.normalize(p, dim=1).t(), **F64)
    assert torch.autograd.gradcheck(matmul_normalized_rows, (a.requires_grad_(True), p.requires_grad_(True)))


@pytest.mark.parametrize("cls", [ProxyNCALoss, ProxyAnchorLoss, AMLoss])
def test_proxy_init_and_parameter_names(cls):
    torch.manual_seed(0)
    loss_fn = cls(num_classes=400, feat_dim=64)
    names = {name for name, _ in loss_fn.named_parameters()}
    assert names == ({"proxies", "margins"} if cls is AMLoss else {"proxies"})
    assert loss_fn.proxies.shape == (400, 64) and loss_fn.proxies.dtype == torch.float32
    # kaiming_normal_(mode="fan_out") on a C x d tensor: std = sqrt(2 / C)
    assert loss_fn.proxies.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    # the randn draw before kaiming is kept (the seeded random stream follows the reference code)
    torch.manual_seed(0)
    torch.randn(400, 64)
    expected = torch.empty(400, 64)
    torch.nn.init.kaiming_normal_(expected, mode="fan_out")
    assert torch.equal(loss_fn.proxies.detach(), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ProxyNCALoss(0, 8),
        lambda: ProxyNCALoss(4, 0),
        lambda: ProxyNCALoss(4, 8, scale=-1.0),
        lambda: ProxyNCALoss(4, 8, scale=0.0),
        lambda: ProxyAnchorLoss(4, 8, alpha=0.0),
        lambda: ProxyAnchorLoss(4, 8, delta=-0.1),
        lambda: ProxyAnchorLoss(4, 8, alpha=float("nan")),
        lambda: AMLoss(4, 8, alpha_pos=-32.0),
        lambda: AMLoss(4, 8, alpha_neg=0.0),
        lambda: AMLoss(4, 8, delta_neg=-0.1),
        lambda: AMLoss(4, 8, margin_init=-0.1),
        lambda: AMLoss(4, 8, pp_delta=float("inf")),
        lambda: AMLoss(4, 8, pp_weight=-1.0),
    ],
)
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------------------------------------------
# Proxy-NCA
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [9.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_nca_matches_pml_float64(scale, seed):
    ours = _set_proxies(ProxyNCALoss(NUM_CLASSES, 5, scale=scale), seed + 10)
    pml = pml_losses.ProxyNCALoss(NUM_CLASSES, 5, softmax_scale=scale, reducer=MeanReducer())
    _compare_with_pml(ours, pml, _features(12, 5, seed), LABELS, F64)


def test_proxy_nca_matches_pml_float32_and_single_class():
    ours = _set_proxies(ProxyNCALoss(NUM_CLASSES, 16), 3, torch.float32)
    pml = pml_losses.ProxyNCALoss(NUM_CLASSES, 16, softmax_scale=9.0, reducer=MeanReducer())
    _compare_with_pml(ours, pml, _features(12, 16, 4, torch.float32), LABELS, F32)
    _compare_with_pml(ours, pml, _features(5, 16, 5, torch.float32), torch.full((5,), 2), F32)


def test_proxy_nca_loop_definition():
    ours = _set_proxies(ProxyNCALoss(NUM_CLASSES, 5, scale=9.0), 7)
    feats = _features(12, 5, 8)
    x = torch.nn.functional.normalize(feats, dim=1)
    p = torch.nn.functional.normalize(ours.proxies.detach(), dim=1)
    total = 0.0
    for i, y in enumerate(LABELS.tolist()):
        logits = [-9.0 * float(((x[i] - p[j]) ** 2).sum()) for j in range(NUM_CLASSES)]
        total -= logits[y] - math.log(sum(math.exp(v) for v in logits))
    assert ours(feats, LABELS).item() == pytest.approx(total / len(LABELS), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Proxy Anchor
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,delta", [(32.0, 0.1), (8.0, 0.3), (100.0, 0.1)])  # 100: the shifted branch
@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_anchor_matches_pml_float64(alpha, delta, seed):
    ours = _set_proxies(ProxyAnchorLoss(NUM_CLASSES, 5, alpha=alpha, delta=delta), seed + 20)
    pml = pml_losses.ProxyAnchorLoss(NUM_CLASSES, 5, margin=delta, alpha=alpha)
    _compare_with_pml(ours, pml, _features(12, 5, seed), LABELS, F64)


@pytest.mark.parametrize("alpha", [32.0, 100.0])
def test_proxy_anchor_matches_pml_float32(alpha):
    ours = _set_proxies(ProxyAnchorLoss(NUM_CLASSES, 16, alpha=alpha), 3, torch.float32)
    pml = pml_losses.ProxyAnchorLoss(NUM_CLASSES, 16, margin=0.1, alpha=alpha)
    feats = _features(12, 16, 4, torch.float32)
    # an easy batch too (features at their proxies): tiny sums, where log1p matters
    easy = ours.proxies.detach()[LABELS] + 0.01 * feats
    for batch in (feats, easy):
        v, gx, gp = _value_and_grads(ours, batch, LABELS)
        pml.proxies.data = ours.proxies.detach().clone()
        v_ref, gx_ref, gp_ref = _value_and_grads(pml, batch, LABELS)
        torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=1e-5)
        scale = gx_ref.abs().max()
        torch.testing.assert_close(gx / scale, gx_ref / scale, atol=1e-5, rtol=1e-4)
        scale = gp_ref["proxies"].abs().max()
        torch.testing.assert_close(gp["proxies"] / scale, gp_ref["proxies"] / scale, atol=1e-5, rtol=1e-4)


def test_proxy_anchor_single_class_batch():
    # the negative side of the batch's class is empty (its column is all -inf before the "1 +")
    labels = torch.full((6,), 3)
    for alpha in (32.0, 100.0):
        ours = _set_proxies(ProxyAnchorLoss(5, 4, alpha=alpha), 1)
        pml = pml_losses.ProxyAnchorLoss(5, 4, margin=0.1, alpha=alpha)
        _compare_with_pml(ours, pml, _features(6, 4, 2), labels, F64)
        v, gx, gp = _value_and_grads(ours, _features(6, 4, 2), labels)
        assert torch.isfinite(v) and torch.isfinite(gx).all() and torch.isfinite(gp["proxies"]).all()


# ------------------------------------------------------------------------------------------------
# AMLoss
# ------------------------------------------------------------------------------------------------
def _reference_amloss(feats, labels, proxies, margins, alpha_pos, alpha_neg, delta_neg, pp_delta, pp_weight):
    """The spec's three sums, one term at a time."""
    labels = labels.tolist()
    num_classes = proxies.shape[0]

    def cos(a, b):
        return (a * b).sum() / (a.norm() * b.norm())

    present = sorted(set(labels))
    l_pos = 0.0
    for p in present:
        inner = 0.0
        for i, y in enumerate(labels):
            if y == p:
                inner = inner + torch.exp(-alpha_pos * (cos(feats[i], proxies[p]) - margins[p]))
        l_pos = l_pos + torch.log(1 + inner)
    l_pos = l_pos / len(present)
    l_neg = 0.0
    for p in range(num_classes):
        inner = torch.zeros((), dtype=feats.dtype)
        for i, y in enumerate(labels):
            if y != p:
                inner = inner + torch.exp(alpha_neg * (cos(feats[i], proxies[p]) + delta_neg))
        l_neg = l_neg + torch.log(1 + inner)
    l_neg = l_neg / num_classes
    l_pp = 0.0
    for i in range(num_classes):
        inner = 0.0
        for j in range(num_classes):
            if j != i:
                inner = inner + torch.exp(cos(proxies[i], proxies[j]) - margins[i] + pp_delta)
        l_pp = l_pp + torch.log(1 + inner)
    l_pp = l_pp / num_classes
    return l_pos + l_neg + pp_weight * l_pp


def _amloss(seed: int, dtype=torch.float64, **kwargs) -> AMLoss:
    loss_fn = _set_proxies(AMLoss(NUM_CLASSES, 5, **kwargs), seed, dtype)
    with torch.no_grad():
        loss_fn.margins.copy_(0.05 + 0.3 * torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(seed)))
    return loss_fn


@pytest.mark.parametrize("block", [1024, 3, 1])  # L_pp in strips of `block` proxies: 1, 3 (3 + 3 + 1), 7
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(alpha_pos=48.0, alpha_neg=16.0, delta_neg=0.2, pp_delta=0.3, pp_weight=0.7),
        dict(alpha_pos=8.0, alpha_neg=100.0, pp_weight=0.0),
    ],
)
def test_amloss_matches_loop_reference(kwargs, block):
    loss_fn = _amloss(30, **kwargs)
    loss_fn._pp_block = block
    feats = _features(12, 5, 31)
    value, gx, grads = _value_and_grads(loss_fn, feats, LABELS)

    x = feats.clone().requires_grad_(True)
    proxies = loss_fn.proxies.detach().clone().requires_grad_(True)
    margins = loss_fn.margins.detach().clone().requires_grad_(True)
    params = dict(alpha_pos=32.0, alpha_neg=32.0, delta_neg=0.1, pp_delta=0.1, pp_weight=1.0) | kwargs
    ref = _reference_amloss(x, LABELS, proxies, margins, **params)
    ref.backward()
    torch.testing.assert_close(value, ref.detach(), **F64)
    torch.testing.assert_close(gx, x.grad, **F64)
    torch.testing.assert_close(grads["proxies"], proxies.grad, **F64)
    torch.testing.assert_close(grads["margins"], margins.grad, **F64)
    assert grads["margins"].abs().sum() > 0


def test_amloss_reduces_to_proxy_anchor():
    am = AMLoss(NUM_CLASSES, 5, alpha_pos=24.0, alpha_neg=24.0, delta_neg=0.15, pp_weight=0.0).double()
    pa = _set_proxies(ProxyAnchorLoss(NUM_CLASSES, 5, alpha=24.0, delta=0.15), 40)
    with torch.no_grad():
        am.proxies.copy_(pa.proxies)
        am.margins.fill_(0.15)
    feats = _features(12, 5, 41)
    v_am, gx_am, g_am = _value_and_grads(am, feats, LABELS)
    v_pa, gx_pa, g_pa = _value_and_grads(pa, feats, LABELS)
    torch.testing.assert_close(v_am, v_pa, **F64)
    torch.testing.assert_close(gx_am, gx_pa, **F64)
    torch.testing.assert_close(g_am["proxies"], g_pa["proxies"], **F64)


def test_amloss_avg_margin_stat():
    loss_fn = _amloss(50, dtype=torch.float32)
    assert AMLoss.stat_names == ("avg_margin",)
    loss_fn(_features(12, 5, 51, torch.float32), LABELS)
    assert set(loss_fn.stats) == set(AMLoss.stat_names)
    stat = loss_fn.stats["avg_margin"]
    assert stat.dim() == 0 and not stat.requires_grad
    # the margins of the classes present in the batch (0, 1, 2, 4, 6), not all 7
    present = torch.tensor([0, 1, 2, 4, 6])
    assert stat.item() == pytest.approx(loss_fn.margins.detach()[present].mean().item(), rel=1e-6)


def test_proxies_without_positives():
    # classes 3 and 5 have no sample: their proxies only see the negative side, their margins nothing
    # (pp_weight = 0); their gradients are finite and the other classes' margins do learn
    loss_fn = _amloss(55, pp_weight=0.0)
    _, gx, grads = _value_and_grads(loss_fn, _features(12, 5, 56), LABELS)
    assert torch.isfinite(gx).all() and all(torch.isfinite(g).all() for g in grads.values())
    absent, present = torch.tensor([3, 5]), torch.tensor([0, 1, 2, 4, 6])
    assert torch.equal(grads["margins"][absent], torch.zeros(2, dtype=torch.float64))
    assert (grads["margins"][present] != 0).all()
    assert (grads["proxies"][absent].abs().sum(1) > 0).all()


def test_amloss_single_class_batch_and_one_class():
    labels = torch.full((6,), 3)
    loss_fn = _amloss(60)
    value, gx, grads = _value_and_grads(loss_fn, _features(6, 5, 61), labels)
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in (gx, *grads.values()))
    x = _features(6, 5, 61).requires_grad_(True)
    ref = _reference_amloss(x, labels, loss_fn.proxies.detach(), loss_fn.margins.detach(), 32.0, 32.0, 0.1, 0.1, 1.0)
    torch.testing.assert_close(value, ref.detach(), **F64)
    # a single class overall: no j != i in L_pp, and no negatives at all
    one = AMLoss(1, 4).double()
    value, gx, grads = _value_and_grads(one, _features(3, 4, 62), torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(grads["proxies"]).all()


# ------------------------------------------------------------------------------------------------
# All three: gradcheck, edge cases, dtypes, training
# ------------------------------------------------------------------------------------------------
def _all_losses(num_classes: int, feat_dim: int) -> list[torch.nn.Module]:
    return [
        ProxyNCALoss(num_classes, feat_dim),
        ProxyAnchorLoss(num_classes, feat_dim),
        AMLoss(num_classes, feat_dim, alpha_pos=24.0, alpha_neg=40.0),
        ProxyAnchorLoss(num_classes, feat_dim, alpha=100.0),
    ]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("labels", [[0, 0, 1, 2, 2, 2], [3, 3, 3, 3]])
def test_gradcheck_float64(index, labels):
    torch.manual_seed(index)
    loss_fn = _all_losses(5, 4)[index].double()
    if isinstance(loss_fn, AMLoss):
        loss_fn._pp_block = 2  # L_pp in three strips (2 + 2 + 1 proxies)
    labels = torch.tensor(labels)
    feats = _features(len(labels), 4, 70 + index).requires_grad_(True)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in loss_fn.named_parameters()}
    names = list(params)

    def fn(f, *tensors):
        return functional_call(loss_fn, dict(zip(names, tensors)), (f, labels))

    assert torch.autograd.gradcheck(fn, (feats, *params.values()))


@pytest.mark.parametrize("index", range(4))
def test_empty_batch_is_connected_zero(index):
    loss_fn = _all_losses(5, 4)[index]
    feats = torch.zeros(0, 4, requires_grad=True)
    loss = loss_fn(feats, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.dim() == 0
    loss.backward()
    assert feats.grad is not None and feats.grad.shape == (0, 4)


@pytest.mark.parametrize("index", range(4))
def test_far_from_positives_and_easy_batches_are_finite(index):
    # features exactly on their proxies (all exponents at their extremes) and exactly opposite
    torch.manual_seed(0)
    loss_fn = _all_losses(6, 8)[index]
    labels = torch.tensor([0, 0, 1, 1, 5])
    for sign in (1.0, -1.0):
        feats = (sign * 5.0 * loss_fn.proxies.detach()[labels]).requires_grad_(True)
        loss_fn.zero_grad(set_to_none=True)
        loss = loss_fn(feats, labels)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(feats.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in loss_fn.parameters())


@pytest.mark.parametrize("index", range(4))
def test_dtypes(index):
    loss_fn = _all_losses(5, 8)[index]
    labels = torch.tensor([0, 0, 1, 1, 4])
    feats = _features(5, 8, 80, torch.float32)
    ref = loss_fn(feats, labels)
    low = loss_fn(feats.bfloat16(), labels)
    assert ref.dtype == torch.float32 and low.dtype == torch.float32
    assert low.item() == pytest.approx(loss_fn(feats.bfloat16().float(), labels).item(), rel=1e-6)
    assert loss_fn.double()(feats.double(), labels).dtype == torch.float64


@pytest.mark.parametrize("index", range(4))
def test_loss_decreases_on_toy_problem(index):
    torch.manual_seed(index)
    num_classes, in_dim, feat_dim = 5, 10, 16
    centers = 2.0 * torch.randn(num_classes, in_dim)
    labels = torch.arange(num_classes).repeat_interleave(8)
    data = centers[labels] + torch.randn(len(labels), in_dim)
    model = torch.nn.Linear(in_dim, feat_dim)
    loss_fn = _all_losses(num_classes, feat_dim)[index]
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=0.02)
    values = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(data), labels)
        values.append(loss.item())
        loss.backward()
        opt.step()
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < 0.6 * values[0]
