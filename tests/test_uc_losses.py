"""NAMA's uncertainty-aware losses (layers/uc_losses.py) and the norm regulariser (layers/norm_regularizer.py).

pytorch-metric-learning has no per-sample-margin loss, so every uc loss is checked against a loop-by-definition
reference written here (plain Python loops over anchors, positives and negatives, or over samples and classes,
following nama.md's formulas literally, in float64), for the value and the gradients w.r.t. the features, the
offsets u and the class weights. Where a uc loss reduces to a loss PML has, it is also checked against PML:

* `tri-hard` with u = 0 is the batch-hard triplet on L2-normalised features: PML's BatchHardMiner picks, for every
  anchor with a positive and a negative, the farthest positive and the closest negative under
  LpDistance(normalize_embeddings=True) (the chord distance), TripletMarginLoss takes relu(d_ap - d_an + m) and
  MeanReducer averages over those anchors: our definition exactly.
* `uc-cls` "cos" with u = 0 has the target logit s (cos_y + m) and the others s cos_j: PML's CosFaceLoss with
  margin -m (it subtracts its margin from the target cosine and scales by s), W stored transposed (d x C).
* `uc-cls` "arc" with u = 0 has the target logit s cos(theta_y + m) and the others s cos_j: PML's ArcFaceLoss
  (margin in degrees) as long as theta_y + m <= pi, where PML switches to its fallback; random features in a few
  dimensions stay far from that region.
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

from layers.norm_regularizer import (
    RegType,
    gradient_only,
    norm_regularizer,
    parse_reg_type,
)
from layers.uc_losses import UcClsHead, UcTripletLoss

TRI_FORMS = ("tri-n", "tri-hard", "pair-n")
CLS_FORMS = ("arc", "cos", "angle")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(n: int, d: int, seed: int, u_std: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = torch.randn(n, generator=g, dtype=torch.float64) * u_std
    return x, u - u.mean()


LABELS_12 = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 1, 0])


# ------------------------------------------------------------------------------------------------
# loop-by-definition references (float64)
# ------------------------------------------------------------------------------------------------
def _pair_distance(fa: torch.Tensor, fb: torch.Tensor, angle: bool) -> torch.Tensor:
    chord = torch.sqrt(((fa / fa.norm() - fb / fb.norm()) ** 2).sum())
    return 2.0 * torch.asin(chord / 2.0) if angle else chord


def _ref_uc_triplet(x, labels, u, scale, margin, form):
    """Mean over anchors with a positive and a negative of the per-anchor term of nama.md, by plain loops."""
    labels = labels.tolist()
    n = len(labels)
    terms = []
    for a in range(n):
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        dist = {j: _pair_distance(x[a], x[j], form == "pair-n") for j in pos + neg}
        if form == "tri-hard":
            p = max(pos, key=lambda j: (dist[j] - u[j]).item())
            k = min(neg, key=lambda j: (dist[j] + u[j]).item())
            terms.append(torch.clamp(dist[p] - dist[k] + margin - 2 * u[a] - u[p] - u[k], min=0.0))
        else:
            total = 0.0
            for p in pos:
                for k in neg:
                    total = total + torch.exp(scale * (dist[p] - dist[k] + margin - 2 * u[a] - u[p] - u[k]))
            terms.append(torch.log(1.0 + total) / scale)
    return torch.stack(terms).mean()


def _ref_avg_margin(labels, u, margin):
    labels = labels.tolist()
    n = len(labels)
    vals = []
    for a in range(n):
        pos = [u[j].item() for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [u[j].item() for j in range(n) if labels[j] != labels[a]]
        if pos and neg:
            vals.append(margin - (2 * u[a].item() + sum(pos) / len(pos) + sum(neg) / len(neg)))
    return sum(vals) / len(vals)


def _ref_plain_soft_triplet(x, labels, scale, margin):
    """(1/s) log(1 + sum_p sum_n exp(s (d_ap - d_an + m))), the smooth all-pairs triplet without offsets."""
    labels = labels.tolist()
    n = len(labels)
    terms = []
    for a in range(n):
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        total = 0.0
        for p in pos:
            for k in neg:
                gap = _pair_distance(x[a], x[p], False) - _pair_distance(x[a], x[k], False)
                total = total + torch.exp(scale * (gap + margin))
        terms.append(torch.log(1.0 + total) / scale)
    return torch.stack(terms).mean()


def _ref_uc_cls(x, w, labels, u, scale, margin, form, eps=0.0):
    """Per sample, per class margin logits of nama.md, then label-smoothed cross-entropy, by plain loops."""
    n, c = x.shape[0], w.shape[0]
    losses = []
    for i in range(n):
        y = int(labels[i])
        z = []
        for j in range(c):
            cos = (x[i] @ w[j]) / (x[i].norm() * w[j].norm())
            theta = torch.acos(cos)
            if form == "arc":
                z.append(scale * torch.cos(theta + u[i] + margin) if j == y else scale * torch.cos(theta - u[i]))
            elif form == "cos":
                z.append(scale * (cos - u[i] + margin) if j == y else scale * (cos + u[i]))
            else:
                z.append(
                    scale * (math.pi / 2 - theta - u[i] + margin) if j == y else scale * (math.pi / 2 - theta + u[i])
                )
        logp = torch.log_softmax(torch.stack(z), 0)
        q = [(1 - eps) * (j == y) + eps / c for j in range(c)]
        losses.append(-sum(q[j] * logp[j] for j in range(c)))
    return torch.stack(losses).mean()


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


# ------------------------------------------------------------------------------------------------
# UcTripletLoss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", TRI_FORMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_uc_triplet_matches_loop_reference(form, seed):
    x0, u0 = _inputs(12, 5, seed)
    scale, margin = 8.0, 0.2
    x, u = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    xr, ur = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    loss_fn = UcTripletLoss(scale=scale, margin=margin, form=form)
    ours = loss_fn(x, LABELS_12, u)
    ref = _ref_uc_triplet(xr, LABELS_12, ur, scale, margin, form)
    assert ours.dtype == torch.float64 and ours.dim() == 0
    assert ours.item() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for g, gr in zip(_grads(ours, x, u), _grads(ref, xr, ur)):
        torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-10)
    assert set(loss_fn.stats) == set(UcTripletLoss.stat_names) == {"avg_margin"}
    assert not loss_fn.stats["avg_margin"].requires_grad and loss_fn.stats["avg_margin"].dim() == 0
    assert loss_fn.stats["avg_margin"].item() == pytest.approx(_ref_avg_margin(LABELS_12, u0, margin), abs=1e-12)


@pytest.mark.parametrize("form", TRI_FORMS)
def test_uc_triplet_float32_default_scale(form):
    # the library defaults (s = 32, m = 0.2) in fp32 against the fp64 loop
    x0, u0 = _inputs(12, 6, 3, u_std=0.1)
    x, u = x0.float().requires_grad_(True), u0.float().requires_grad_(True)
    xr, ur = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    ours = UcTripletLoss(form=form)(x, LABELS_12, u)
    ref = _ref_uc_triplet(xr, LABELS_12, ur, 32.0, 0.2, form)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    for g, gr in zip(_grads(ours, x, u), _grads(ref, xr, ur)):
        torch.testing.assert_close(g.double(), gr, rtol=1e-4, atol=1e-5)


def test_uc_tri_n_large_scale_stays_finite():
    # s (d_ap - d_an + m) up to ~600: the factorised log-sum-exp must not overflow in fp32
    x0, u0 = _inputs(12, 4, 4, u_std=0.2)
    x = x0.float().requires_grad_(True)
    ours = UcTripletLoss(scale=256.0, margin=0.5, form="tri-n")(x, LABELS_12, u0.float())
    ref = _ref_uc_triplet(x0, LABELS_12, u0, 256.0, 0.5, "tri-n")
    assert torch.isfinite(ours)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ours.backward()
    assert torch.isfinite(x.grad).all()


def test_uc_tri_n_without_offsets_is_the_smooth_triplet():
    x0, _ = _inputs(12, 5, 7)
    zero = torch.zeros(12, dtype=torch.float64)
    loss_fn = UcTripletLoss(scale=10.0, margin=0.3, form="tri-n")
    with_zero = loss_fn(x0, LABELS_12, zero)
    # unit rows: the chord distance is the Euclidean one, as the plain reference computes it
    ref = _ref_plain_soft_triplet(F.normalize(x0, dim=1), LABELS_12, 10.0, 0.3)
    torch.testing.assert_close(with_zero, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss_fn(x0, LABELS_12, None), with_zero, rtol=0, atol=0)
    assert loss_fn.stats["avg_margin"].item() == pytest.approx(0.3)


@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_uc_tri_hard_without_offsets_matches_pytorch_metric_learning(margin):
    labels = torch.arange(4).repeat_interleave(4)
    x0 = torch.randn(16, 32, generator=_gen(11))
    x, xp = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    ours = UcTripletLoss(margin=margin, form="tri-hard")(x, labels, torch.zeros(16))
    distance = LpDistance(normalize_embeddings=True)
    miner = pml_miners.BatchHardMiner(distance=distance)
    pml = pml_losses.TripletMarginLoss(margin=margin, distance=distance, reducer=MeanReducer())(
        xp, labels, miner(xp, labels)
    )
    assert ours.item() > 0
    torch.testing.assert_close(ours, pml, rtol=1e-5, atol=1e-6)
    ours.backward()
    pml.backward()
    torch.testing.assert_close(x.grad, xp.grad, rtol=1e-4, atol=1e-6)


def test_uc_offsets_move_the_margin_the_right_way():
    # a larger offset means a larger margin for that sample: a smaller loss term
    x0, _ = _inputs(12, 5, 2)
    loss_fn = UcTripletLoss(scale=8.0, margin=0.2)
    base = loss_fn(x0, LABELS_12, torch.zeros(12, dtype=torch.float64))
    shifted = loss_fn(x0, LABELS_12, torch.full((12,), 0.05, dtype=torch.float64))
    assert shifted < base
    assert loss_fn.stats["avg_margin"].item() == pytest.approx(0.2 - 4 * 0.05)


@pytest.mark.parametrize("form", TRI_FORMS)
def test_uc_triplet_gradcheck_float64(form):
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    # well separated points and a margin that keeps every hinge active: no kink within eps = 1e-6
    x0, u0 = _inputs(7, 3, 5, u_std=0.03)
    x = (x0 * 2.0).requires_grad_(True)
    u = u0.clone().requires_grad_(True)
    loss_fn = UcTripletLoss(scale=4.0, margin=1.0, form=form)
    assert torch.autograd.gradcheck(lambda f, o: loss_fn(f, labels, o), (x, u), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", TRI_FORMS)
def test_uc_triplet_anchors_without_positives(form):
    # labels 7 and 8 appear once: those anchors have no positive and must not count in the mean
    labels = torch.tensor([0, 0, 1, 1, 7, 2, 2, 8])
    x0, u0 = _inputs(8, 4, 6)
    x, u = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    xr, ur = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    loss_fn = UcTripletLoss(scale=8.0, margin=0.2, form=form)
    ours = loss_fn(x, labels, u)
    ref = _ref_uc_triplet(xr, labels, ur, 8.0, 0.2, form)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    grads = _grads(ours, x, u)
    assert all(torch.isfinite(g).all() for g in grads)
    for g, gr in zip(grads, _grads(ref, xr, ur)):
        torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-10)
    assert loss_fn.stats["avg_margin"].item() == pytest.approx(_ref_avg_margin(labels, u0, 0.2), abs=1e-12)


@pytest.mark.parametrize("form", TRI_FORMS)
@pytest.mark.parametrize(
    "labels", [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 3, 3, 3, 3])], ids=["no-positives", "single-class"]
)
def test_uc_triplet_nothing_to_work_on_is_connected_zero(form, labels):
    x = torch.randn(5, 4, generator=_gen(0)).requires_grad_(True)
    u = torch.zeros(5, requires_grad=True)
    loss_fn = UcTripletLoss(margin=0.3, form=form)
    loss = loss_fn(x, labels, u)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(u.grad, torch.zeros_like(u))
    assert set(loss_fn.stats) == {"avg_margin"}
    assert loss_fn.stats["avg_margin"].item() == pytest.approx(0.3)


@pytest.mark.parametrize("form", TRI_FORMS)
def test_uc_triplet_bf16_input_computed_in_fp32(form):
    x0, u0 = _inputs(12, 6, 8)
    xb, ub = x0.bfloat16(), u0.bfloat16()
    loss_fn = UcTripletLoss(form=form)
    ours = loss_fn(xb, LABELS_12, ub)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, loss_fn(xb.float(), LABELS_12, ub.float()), rtol=0, atol=0)
    x = xb.clone().requires_grad_(True)
    loss_fn(x, LABELS_12, ub).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("form", TRI_FORMS)
def test_uc_triplet_decreases_with_learnable_feats_and_offsets(form):
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(5)
    x = torch.randn(20, 8, requires_grad=True)
    raw = torch.zeros(20, requires_grad=True)
    loss_fn = UcTripletLoss(form=form)
    opt = torch.optim.Adam([x, raw], lr=0.05)
    losses = []
    for _ in range(30):
        u = raw - raw.mean()  # the head's re-balance: offsets of mean zero
        loss = loss_fn(x, labels, u)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert raw.detach().abs().sum() > 0  # the offsets were trained too
    assert losses[-1] < 0.5 * losses[0]


def test_uc_triplet_argument_checks():
    assert UcTripletLoss.inputs == ("feat", "uc")
    for kwargs in (
        {"scale": 0.0},
        {"scale": -1.0},
        {"scale": float("inf")},
        {"margin": -0.1},
        {"margin": float("nan")},
        {"form": "tri"},
        {"form": "uc-tri-n"},
    ):
        with pytest.raises(ValueError):
            UcTripletLoss(**kwargs)
    with pytest.raises(ValueError, match="tri-n, tri-hard, pair-n"):
        UcTripletLoss(form="quad")
    with pytest.raises(ValueError, match="uc must be a Tensor"):
        UcTripletLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.zeros(4, 1))


# ------------------------------------------------------------------------------------------------
# UcClsHead
# ------------------------------------------------------------------------------------------------
def _cls_case(seed: int, n: int = 8, d: int = 5, c: int = 4):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    u = torch.randn(n, generator=g, dtype=torch.float64) * 0.05
    labels = torch.randint(0, c, (n,), generator=g)
    return x, w, u - u.mean(), labels


@pytest.mark.parametrize("form", CLS_FORMS)
@pytest.mark.parametrize(("margin", "eps"), [(0.0, 0.0), (0.2, 0.0), (0.1, 0.1)])
def test_uc_cls_matches_loop_reference(form, margin, eps):
    x0, w0, u0, labels = _cls_case(1)
    head = UcClsHead(5, 4, scale=16.0, margin=margin, form=form, label_smoothing=eps).double()
    with torch.no_grad():
        head.weight.copy_(w0)
    x, u = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    xr, ur, wr = (t.clone().requires_grad_(True) for t in (x0, u0, w0))
    loss, logits = head(x, labels, u)
    ref = _ref_uc_cls(xr, wr, labels, ur, 16.0, margin, form, eps)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for g, gr in zip(_grads(loss, x, u, head.weight), _grads(ref, xr, ur, wr)):
        torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-10)
    # logits for accuracy: s cos, no margin, no offset
    torch.testing.assert_close(logits, 16.0 * F.normalize(x0, dim=1) @ F.normalize(w0, dim=1).t())
    assert set(head.stats) == set(UcClsHead.stat_names) == {"avg_margin"}
    effect = margin if form == "arc" else -margin
    assert head.stats["avg_margin"].item() == pytest.approx(2 * u0.mean().item() + effect, abs=1e-12)


@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_uc_cls_cos_without_offsets_is_cosface_like(margin):
    x0, w0, _, labels = _cls_case(2)
    head = UcClsHead(5, 4, scale=16.0, margin=margin, form="cos").double()
    with torch.no_grad():
        head.weight.copy_(w0)
    loss, _ = head(x0, labels, torch.zeros(8, dtype=torch.float64))
    # CosFace-like: target s (cos_y + m) (m eases the margin here), others s cos_j
    cos = F.normalize(x0, dim=1) @ F.normalize(w0, dim=1).t()
    cosface_like = F.cross_entropy(16.0 * (cos + margin * F.one_hot(labels, 4).double()), labels)
    torch.testing.assert_close(loss, cosface_like, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("form", "margin"), [("cos", 0.0), ("cos", 0.25), ("arc", 0.0), ("arc", 0.3)])
def test_uc_cls_without_offsets_matches_pytorch_metric_learning(form, margin):
    g = _gen(3)
    x0 = torch.randn(10, 16, generator=g)
    labels = torch.randint(0, 6, (10,), generator=g)
    head = UcClsHead(16, 6, scale=16.0, margin=margin, form=form)
    with torch.no_grad():
        head.weight.normal_(generator=g)
    if form == "cos":
        pml = pml_losses.CosFaceLoss(
            num_classes=6, embedding_size=16, margin=-margin, scale=16.0, reducer=MeanReducer()
        )
    else:
        pml = pml_losses.ArcFaceLoss(
            num_classes=6, embedding_size=16, margin=math.degrees(margin), scale=16.0, reducer=MeanReducer()
        )
    with torch.no_grad():
        pml.W.copy_(head.weight.t())
    x, xp = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    ours, _ = head(x, labels, torch.zeros(10))
    ref = pml(xp, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, xp.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, pml.W.grad.t(), rtol=1e-4, atol=1e-6)


def test_uc_cls_margin_directions():
    # m adds to the margin in "arc" (larger loss) and eases it in "cos" / "angle" (smaller loss)
    x0, w0, u0, labels = _cls_case(4)
    for form, harder in (("arc", True), ("cos", False), ("angle", False)):
        values = []
        for margin in (0.0, 0.2):
            head = UcClsHead(5, 4, scale=16.0, margin=margin, form=form).double()
            with torch.no_grad():
                head.weight.copy_(w0)
            values.append(head(x0, labels, u0)[0].item())
        assert (values[1] > values[0]) == harder, form
    # and a larger offset is a larger margin in every form
    for form in CLS_FORMS:
        head = UcClsHead(5, 4, scale=16.0, form=form).double()
        with torch.no_grad():
            head.weight.copy_(w0)
        zero = head(x0, labels, torch.zeros(8, dtype=torch.float64))[0]
        assert head(x0, labels, torch.full((8,), 0.05, dtype=torch.float64))[0] > zero, form


@pytest.mark.parametrize("form", CLS_FORMS)
def test_uc_cls_gradcheck_float64(form):
    x0, w0, u0, labels = _cls_case(5, n=5, d=3, c=3)
    head = UcClsHead(3, 3, scale=4.0, margin=0.1, form=form, label_smoothing=0.1).double()

    def fn(x, u, w):
        return torch.func.functional_call(head, {"weight": w}, (x, labels, u))[0]

    inputs = tuple(t.clone().requires_grad_(True) for t in (x0, u0, w0))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", CLS_FORMS)
def test_uc_cls_single_class_and_extreme_cosines_are_finite(form):
    head = UcClsHead(4, 3, form=form)
    # features exactly on their class weight (cos = 1) and opposite another one (cos = -1)
    x = head.weight.detach()[[0, 0, 0]].clone().requires_grad_(True)
    u = torch.zeros(3, requires_grad=True)
    loss, _ = head(x, torch.tensor([0, 0, 0]), u)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(u.grad).all()
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("form", CLS_FORMS)
def test_uc_cls_bf16_input_computed_in_fp32(form):
    x0, _, u0, labels = _cls_case(6)
    head = UcClsHead(5, 4, form=form)
    xb, ub = x0.bfloat16(), u0.bfloat16()
    loss, logits = head(xb, labels, ub)
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32
    torch.testing.assert_close(loss, head(xb.float(), labels, ub.float())[0], rtol=0, atol=0)


@pytest.mark.parametrize("form", CLS_FORMS)
def test_uc_cls_decreases_on_toy_problem(form):
    torch.manual_seed(0)
    labels = torch.arange(5).repeat_interleave(4)
    x = torch.randn(20, 8, requires_grad=True)
    raw = torch.zeros(20, requires_grad=True)
    head = UcClsHead(8, 5, form=form)
    opt = torch.optim.Adam([x, raw, head.weight], lr=0.05)
    losses = []
    for _ in range(30):
        loss, logits = head(x, labels, raw - raw.mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (logits.argmax(1) == labels).float().mean() == 1.0


def test_uc_cls_argument_checks():
    assert UcClsHead.inputs == ("neck_feat", "uc")
    head = UcClsHead(6, 3)
    assert head.weight.shape == (3, 6) and head.form == "angle" and head.scale == 16.0 and head.margin == 0.0
    for kwargs in (
        {"scale": 0.0},
        {"margin": -0.1},
        {"form": "clsuc"},
        {"label_smoothing": 1.0},
        {"label_smoothing": -0.1},
        {"feat_dim": 0},
        {"num_classes": 0},
        {"feat_dim": 2.5},
    ):
        with pytest.raises(ValueError):
            UcClsHead(**{"feat_dim": 6, "num_classes": 3, **kwargs})
    with pytest.raises(ValueError, match="arc, cos, angle"):
        UcClsHead(6, 3, form="sphere")
    with pytest.raises(ValueError, match="uc must be a Tensor"):
        head(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), torch.zeros(3))


# ------------------------------------------------------------------------------------------------
# norm regulariser
# ------------------------------------------------------------------------------------------------
REG_TYPES = ("exp_3", "exp_1", "exp_0.5", "exp_10", "arc", "quad")


@pytest.mark.parametrize("reg_type", REG_TYPES)
@pytest.mark.parametrize(("lower", "upper"), [(10.0, 110.0), (1.0, 3.0)])
def test_norm_regularizer_minimum_at_upper(reg_type, lower, upper):
    grid = torch.linspace(0.5 * lower, 2.0 * upper, 801, dtype=torch.float64)
    grid = torch.cat([grid, torch.tensor([upper], dtype=torch.float64)])
    values = torch.stack([norm_regularizer(a.view(1), lower, upper, reg_type) for a in grid])
    assert grid[values.argmin()].item() == pytest.approx(upper)
    # derivative sign: negative below u (pulls norms up), positive above, zero at u
    a = grid.clone().requires_grad_(True)
    (norm_regularizer(a, lower, upper, reg_type) * len(a)).backward()
    below, above = grid < upper - 1e-9, grid > upper + 1e-9
    assert (a.grad[below] < 0).all() and (a.grad[above] > 0).all()
    assert a.grad[-1].abs().item() < 1e-12
    # same slope dg/dx = -1 at a = l for every form (arc is rescaled for it)
    at_l = torch.tensor([lower], dtype=torch.float64, requires_grad=True)
    norm_regularizer(at_l, lower, upper, reg_type).backward()
    assert at_l.grad.item() * (upper - lower) == pytest.approx(-1.0, rel=1e-9)


def _g_at(reg_type, x, lower=10.0, upper=110.0):
    a = torch.tensor([lower + x * (upper - lower)], dtype=torch.float64)
    return norm_regularizer(a, lower, upper, reg_type).item()


@pytest.mark.parametrize("k", [3.0, 1.0, 0.5])
def test_norm_regularizer_exp_values_by_hand(k):
    name = f"exp_{k:g}"
    # x = 0: (1/k + 0) / (1 - e^-k); x = 1: (e^-k/k + e^-k) / (1 - e^-k)
    assert _g_at(name, 0.0) == pytest.approx((1 / k) / (1 - math.exp(-k)), rel=1e-12)
    assert _g_at(name, 1.0) == pytest.approx(math.exp(-k) * (1 / k + 1) / (1 - math.exp(-k)), rel=1e-12)
    if k == 3.0:
        assert _g_at(name, 0.0) == pytest.approx(0.350799, abs=1e-6)
        assert _g_at(name, 1.0) == pytest.approx(0.069861, abs=1e-6)
        assert _g_at(name, 0.0) == pytest.approx(_g_at("exp_3.0", 0.0))


def test_norm_regularizer_arc_and_quad_values_by_hand():
    assert _g_at("quad", 0.0) == pytest.approx(0.5)
    assert _g_at("quad", 1.0) == 0.0
    assert _g_at("quad", 0.5) == pytest.approx(0.125)
    # arc = l^2 (a - u)^2 / (a (u - l)^2 (u + l)): l / (u + l) at a = l, 0 at a = u
    assert _g_at("arc", 0.0) == pytest.approx(10.0 / 120.0, rel=1e-12)
    assert _g_at("arc", 1.0) == pytest.approx(0.0, abs=1e-15)
    # it is MagFace's 1/a + a/u^2 up to a positive factor and the constant 2/u
    c = 10.0**2 * 110.0**2 / (100.0**2 * 120.0)
    for a in (10.0, 37.0, 110.0, 200.0):
        magface = 1 / a + a / 110.0**2
        got = norm_regularizer(torch.tensor([a], dtype=torch.float64), 10.0, 110.0, "arc").item()
        assert got == pytest.approx(c * (magface - 2 / 110.0), rel=1e-10, abs=1e-15)


def test_norm_regularizer_is_the_batch_mean_and_keeps_dtypes():
    a = torch.tensor([5.0, 30.0, 60.0, 150.0], dtype=torch.float64)
    each = [norm_regularizer(v.view(1), 10.0, 110.0).item() for v in a]
    assert norm_regularizer(a, 10.0, 110.0).item() == pytest.approx(sum(each) / 4, rel=1e-12)
    assert norm_regularizer(a, 10.0, 110.0).dtype == torch.float64
    low = norm_regularizer(a.bfloat16(), 10.0, 110.0, "quad")
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(norm_regularizer(a.bfloat16().float(), 10.0, 110.0, "quad").item())
    empty = torch.zeros(0, requires_grad=True)
    out = norm_regularizer(empty, 10.0, 110.0)
    assert out.item() == 0.0
    out.backward()


def test_norm_regularizer_arc_near_zero_norm_is_finite():
    a = torch.tensor([0.0, 1e-30, 50.0], requires_grad=True)
    g = norm_regularizer(a, 10.0, 110.0, "arc")
    g.backward()
    assert torch.isfinite(g) and torch.isfinite(a.grad).all()


def test_gradient_only_adds_gradient_not_value():
    a = torch.tensor([20.0, 80.0, 130.0], dtype=torch.float64, requires_grad=True)
    g = norm_regularizer(a, 10.0, 110.0, "exp_3")
    term = gradient_only(2.0 * g)
    assert term.item() == 0.0
    (grad_term,) = torch.autograd.grad(term, a)
    (grad_g,) = torch.autograd.grad(2.0 * norm_regularizer(a, 10.0, 110.0, "exp_3"), a)
    torch.testing.assert_close(grad_term, grad_g, rtol=0, atol=0)


def test_parse_reg_type():
    assert parse_reg_type("exp_3") == RegType("exp", 3.0)
    assert parse_reg_type("exp_2.5") == RegType("exp", 2.5)
    assert parse_reg_type("exp_0.5").k == 0.5
    assert parse_reg_type("arc") == RegType("arc", None)
    assert parse_reg_type("quad") == RegType("quad", None)
    for bad in (
        "exp",
        "exp_",
        "exp_0",
        "exp_0.0",
        "exp_-1",
        "exp_inf",
        "exp_nan",
        "exp_1e3",
        "exp_3x",
        "cubic",
        "",
        " quad",
        "ARC",
        None,
        3,
    ):
        with pytest.raises(ValueError, match=r"valid forms: exp_<k>.*arc, quad"):
            parse_reg_type(bad)
    with pytest.raises(ValueError, match="valid forms"):
        norm_regularizer(torch.ones(2), 10.0, 110.0, "log")


def test_norm_regularizer_bound_checks():
    a = torch.ones(3)
    for lower, upper in ((110.0, 10.0), (10.0, 10.0), (-1.0, 10.0), (float("nan"), 10.0), (0.0, float("inf"))):
        with pytest.raises(ValueError, match="bound"):
            norm_regularizer(a, lower, upper)
    with pytest.raises(ValueError, match="lower > 0"):
        norm_regularizer(a, 0.0, 10.0, "arc")
    assert torch.isfinite(norm_regularizer(a, 0.0, 10.0, "exp_3"))
