"""Cosine classification heads with margins (layers/margin_heads.py): ArcFace, CosFace, NormFace, Circle.

References:
- pytorch-metric-learning 2.x for ArcFace, CosFace and NormFace. PML's LargeMarginSoftmaxLoss family keeps
  W as d x C (we copy our C x d weight transposed), computes cos = normalize(f) @ normalize(W columns) with
  CosineSimilarity, replaces the target cosine by cos(theta + m) (ArcFaceLoss, margin given in degrees) or
  cos - m (CosFaceLoss), multiplies every logit by `scale` and takes nn.CrossEntropyLoss(reduction="none");
  NormalizedSoftmaxLoss divides normalize(f) @ normalize(W) by `temperature` (= 1 / s). None of them has a
  weight regulariser by default, miner weights are all 1 without a miner, and the MeanReducer (passed
  explicitly) averages the per-sample losses: our (label_smoothing = 0) definition exactly, so values and
  gradients (features and weights) must agree. One caveat: PML's ArcFaceLoss switches to s (cos - m sin m)
  when theta > pi - m, where we keep cos(theta + m); the comparison inputs are asserted to stay below
  pi - m, and a separate test pins our behaviour beyond it.
- Circle (classification form) and label smoothing: loop-by-definition references written below, following
  the formulas of the docstrings element by element in float64.
- Gradients: torch.autograd.gradcheck in float64 for ArcFace, CosFace, NormFace. Circle's self-paced
  weights a_p, a_n are constants for the gradient by definition (detached, as in the paper), so autograd's
  gradient is not the total derivative and gradcheck does not apply as such; its gradient is checked against
  central finite differences of the loop reference with a_p, a_n frozen at the evaluation point instead.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.reducers import MeanReducer

from layers.margin_heads import ArcFaceHead, CircleClsHead, CosFaceHead, NormSoftmaxHead

HEADS = (ArcFaceHead, CosFaceHead, NormSoftmaxHead, CircleClsHead)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add synchronisation, which on a loaded machine costs
    seconds per test (OpenMP workers waiting for a core). Restored afterwards for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int, d: int, c: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, c, (n,), generator=g)
    return feats, labels


def _head(cls, d: int, c: int, seed: int, dtype=torch.float32, **kwargs):
    """A head with weights of std 1 (the default 0.01 init is irrelevant to the cosine, kept for the test
    of the init), its parameter in `dtype` (float64 for exact weight gradients)."""
    head = cls(d, c, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=g))
    return head


def _cosines(feats: torch.Tensor, weight: torch.Tensor) -> list[list[torch.Tensor]]:
    """cos_ij one element at a time (float64 autograd graph)."""
    rows = []
    for i in range(feats.shape[0]):
        fi = feats[i] / torch.sqrt((feats[i] ** 2).sum())
        row = []
        for j in range(weight.shape[0]):
            wj = weight[j] / torch.sqrt((weight[j] ** 2).sum())
            row.append((fi * wj).sum())
        rows.append(row)
    return rows


def _reference_logits(
    kind, cos: list[list[torch.Tensor]], labels: list[int], s: float, m: float, frozen: list[list[float]] | None = None
) -> list[list[torch.Tensor]]:
    """z_ij of each head by its docstring formula. For Circle, `frozen` gives the cosines from which a_p and
    a_n are taken (default: the detached current ones)."""
    z = []
    for i, row in enumerate(cos):
        zi = []
        for j, c in enumerate(row):
            a_cos = frozen[i][j] if frozen is not None else c.item()
            target = j == labels[i]
            if kind is ArcFaceHead:
                zi.append(s * torch.cos(torch.acos(c) + m) if target else s * c)
            elif kind is CosFaceHead:
                zi.append(s * (c - m) if target else s * c)
            elif kind is NormSoftmaxHead:
                zi.append(s * c)
            elif target:  # Circle, the own class
                zi.append(s * max(1.0 + m - a_cos, 0.0) * (c - (1.0 - m)))
            else:
                zi.append(s * max(a_cos + m, 0.0) * (c - m))
        z.append(zi)
    return z


def _reference_ce(z: list[list[torch.Tensor]], labels: list[int], eps: float) -> torch.Tensor:
    """-(1/n) sum_i sum_j q_ij log softmax(z_i)_j with q_ij = (1 - eps)[j = y_i] + eps / C, by loops."""
    total = 0.0
    for i, zi in enumerate(z):
        c = len(zi)
        top = max(v.item() for v in zi)
        log_norm = top + torch.log(sum(torch.exp(v - top) for v in zi))
        for j, v in enumerate(zi):
            q = (1.0 - eps) * (j == labels[i]) + eps / c
            total = total - q * (v - log_norm)
    return total / len(z)


def _reference_loss(kind, feats, weight, labels, s, m, eps, frozen=None) -> torch.Tensor:
    lab = labels.tolist()
    return _reference_ce(_reference_logits(kind, _cosines(feats, weight), lab, s, m, frozen), lab, eps)


def _pml(kind, c: int, d: int, s: float, m: float):
    if kind is ArcFaceHead:
        return pml_losses.ArcFaceLoss(c, d, margin=math.degrees(m), scale=s, reducer=MeanReducer())
    if kind is CosFaceHead:
        return pml_losses.CosFaceLoss(c, d, margin=m, scale=s, reducer=MeanReducer())
    return pml_losses.NormalizedSoftmaxLoss(c, d, temperature=1.0 / s, reducer=MeanReducer())


def _kwargs(kind, s: float, m: float, eps: float = 0.0) -> dict:
    kw = {"scale": s, "label_smoothing": eps}
    if kind is not NormSoftmaxHead:
        kw["margin"] = m
    return kw


# ------------------------------------------------------------------------------------------------
# against pytorch-metric-learning
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,s,m",
    [
        (ArcFaceHead, 30.0, 0.5),
        (ArcFaceHead, 64.0, 0.3),
        (CosFaceHead, 30.0, 0.35),
        (CosFaceHead, 16.0, 0.1),
        (NormSoftmaxHead, 30.0, 0.0),
        (NormSoftmaxHead, 20.0, 0.0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning(kind, s, m, dtype, seed):
    n, d, c = 24, 16, 7
    feats, labels = _data(n, d, c, seed, dtype)
    ours = _head(kind, d, c, seed, dtype, **_kwargs(kind, s, m))
    pml = _pml(kind, c, d, s, m)
    with torch.no_grad():
        pml.W.data = ours.weight.detach().t().clone().to(dtype)
    if kind is ArcFaceHead:  # stay where PML's ArcFace uses cos(theta + m) too (see the module docstring)
        cos_y = F.cosine_similarity(feats.double(), ours.weight.detach().double()[labels], dim=1)
        assert torch.acos(cos_y).max().item() < math.pi - m - 0.05

    x_ours = feats.clone().requires_grad_(True)
    x_pml = feats.clone().requires_grad_(True)
    loss, logits = ours(x_ours, labels)
    ref = pml(x_pml, labels)
    assert loss.dim() == 0 and loss.dtype == dtype
    tol = {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 2e-5}
    torch.testing.assert_close(loss, ref, **tol)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(x_ours.grad, x_pml.grad, **tol)
    torch.testing.assert_close(ours.weight.grad, pml.W.grad.t(), **tol)
    assert x_ours.grad.abs().sum() > 0 and ours.weight.grad.abs().sum() > 0
    # PML's logits without margin are ours (get_logits: cos * scale, or the normalised dot / temperature)
    torch.testing.assert_close(logits.detach(), pml.get_logits(feats).detach(), **tol)


# ------------------------------------------------------------------------------------------------
# loop-by-definition references: Circle, label smoothing (every head)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("kind", HEADS)
def test_matches_loop_reference(kind, eps):
    n, d, c, s = 10, 6, 5, 30.0
    m = {ArcFaceHead: 0.5, CosFaceHead: 0.35, NormSoftmaxHead: 0.0, CircleClsHead: 0.25}[kind]
    feats, labels = _data(n, d, c, 3)
    head = _head(kind, d, c, 3, torch.float64, **_kwargs(kind, s, m, eps))
    x = feats.clone().requires_grad_(True)
    loss, _ = head(x, labels)
    xr = feats.clone().requires_grad_(True)
    wr = head.weight.detach().double().clone().requires_grad_(True)
    ref = _reference_loss(kind, xr, wr, labels, s, m, eps)
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=1e-10)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(head.weight.grad, wr.grad, atol=1e-10, rtol=1e-8)
    if eps > 0:
        unsmoothed = _reference_loss(kind, feats, head.weight.detach().double(), labels, s, m, 0.0)
        assert abs(loss.item() - unsmoothed.item()) > 1e-3


def test_circle_is_the_papers_log_one_plus_sum():
    # Sun et al.'s classification form: L_i = log(1 + sum_{j != y} exp(z_ij - z_iy)), literally
    n, d, c, s, m = 8, 5, 6, 24.0, 0.25
    feats, labels = _data(n, d, c, 4)
    head = _head(CircleClsHead, d, c, 4, scale=s, margin=m)
    cos = _cosines(feats, head.weight.detach().double())
    terms = []
    for i in range(n):
        y = labels[i].item()
        cy = cos[i][y].item()
        sp = s * max(1 + m - cy, 0.0) * (cy - (1 - m))
        total = 1.0
        for j in range(c):
            if j != y:
                cj = cos[i][j].item()
                total += math.exp(s * max(cj + m, 0.0) * (cj - m) - sp)
        terms.append(math.log(total))
    loss, _ = head(feats, labels)
    assert loss.item() == pytest.approx(sum(terms) / n, rel=1e-10, abs=1e-10)


def test_circle_gradient_against_finite_differences():
    # central differences of the definition with a_p, a_n frozen at the evaluation point (they are
    # constants for the gradient); float64, features and weights
    n, d, c, s, m = 5, 4, 3, 8.0, 0.25
    feats, labels = _data(n, d, c, 7)
    head = _head(CircleClsHead, d, c, 7, torch.float64, scale=s, margin=m)
    w0 = head.weight.detach().double().clone()
    frozen = [[v.item() for v in row] for row in _cosines(feats, w0)]
    x = feats.clone().requires_grad_(True)
    loss, _ = head(x, labels)
    loss.backward()

    def surrogate(f: torch.Tensor, w: torch.Tensor) -> float:
        return _reference_loss(CircleClsHead, f, w, labels, s, m, 0.0, frozen).item()

    h = 1e-6
    for tensor, grad in ((feats, x.grad), (w0, head.weight.grad)):
        numeric = torch.zeros_like(tensor)
        for idx in range(tensor.numel()):
            plus, minus = tensor.clone(), tensor.clone()
            plus.view(-1)[idx] += h
            minus.view(-1)[idx] -= h
            args_p = (plus, w0) if tensor is feats else (feats, plus)
            args_m = (minus, w0) if tensor is feats else (feats, minus)
            numeric.view(-1)[idx] = (surrogate(*args_p) - surrogate(*args_m)) / (2 * h)
        torch.testing.assert_close(grad.double(), numeric, atol=1e-6, rtol=1e-5)


def test_arcface_beyond_pi_minus_m_keeps_the_plain_formula():
    # a feature almost opposite to its class weight: theta > pi - m, where PML would switch formulas
    m, s = 0.5, 30.0
    head = ArcFaceHead(3, 2, scale=s, margin=m)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    feats = torch.tensor([[-0.95, 0.1, 0.05], [0.3, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    cos = F.normalize(feats.detach(), dim=1) @ head.weight.detach().double().t()
    assert torch.acos(cos[0, 0]).item() > math.pi - m
    z = (s * cos).clone()
    z[0, 0] = s * torch.cos(torch.acos(cos[0, 0]) + m)
    z[1, 1] = s * torch.cos(torch.acos(cos[1, 1]) + m)
    loss, _ = head(feats, labels)
    torch.testing.assert_close(loss, F.cross_entropy(z, labels), atol=1e-12, rtol=1e-12)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


# ------------------------------------------------------------------------------------------------
# gradcheck, logits for accuracy, dtypes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("kind", [ArcFaceHead, CosFaceHead, NormSoftmaxHead])
def test_gradcheck_float64(kind, eps):
    n, d, c = 6, 4, 3
    feats, labels = _data(n, d, c, 11)
    head = _head(kind, d, c, 11, **_kwargs(kind, 4.0, 0.3, eps))
    w = head.weight.detach().double().clone().requires_grad_(True)
    x = feats.clone().requires_grad_(True)

    def fn(f: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # the head's parameter replaced by the gradcheck input, so both Jacobians are checked
        return torch.func.functional_call(head, {"weight": weight}, (f, labels))[0]

    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", HEADS)
def test_returned_logits_are_scaled_cosines_without_margin(kind):
    n, d, c, s = 12, 8, 4, 30.0
    feats, labels = _data(n, d, c, 5, torch.float32)
    head = _head(kind, d, c, 5, **_kwargs(kind, s, 0.3, 0.1))
    _, logits = head(feats, labels)
    expected = s * F.normalize(feats, dim=1) @ F.normalize(head.weight.detach(), dim=1).t()
    assert logits.shape == (n, c) and logits.dtype == torch.float32
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-5)
    # a feature equal to a class weight is classified as that class, whatever the margin
    _, own = head(head.weight.detach()[[2, 0, 3]] * 5.0, torch.tensor([2, 0, 3]))
    assert own.argmax(1).tolist() == [2, 0, 3]


@pytest.mark.parametrize("kind", HEADS)
def test_dtypes(kind):
    feats, labels = _data(6, 8, 3, 0, torch.float32)
    head = _head(kind, 8, 3, 0)
    ref, _ = head(feats, labels)
    assert ref.dtype == torch.float32
    loss64, logits64 = head(feats.double(), labels)
    assert loss64.dtype == torch.float64 and logits64.dtype == torch.float64
    low, low_logits = head(feats.bfloat16(), labels)
    assert low.dtype == torch.float32 and low_logits.dtype == torch.float32
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto, auto_logits = head(feats, labels)
    assert auto.dtype == torch.float32 and auto_logits.dtype == torch.float32
    torch.testing.assert_close(auto, ref)


# ------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", HEADS)
def test_edge_cases_are_finite(kind):
    d, c = 6, 4
    head = _head(kind, d, c, 2)
    w = head.weight.detach()
    cases = {
        # one class in the whole batch (no "negative" sample): still a valid classification batch
        "single class": (torch.randn(5, d), torch.full((5,), 2)),
        # one sample
        "single sample": (torch.randn(1, d), torch.tensor([1])),
        # a feature exactly on its class weight (cos = 1: arccos has an infinite slope there), one exactly
        # opposite (cos = -1) and an all-zero feature (normalised to 0)
        "degenerate": (torch.stack([w[0] * 3.0, -w[1], torch.zeros(d)]), torch.tensor([0, 1, 3])),
    }
    for name, (feats, labels) in cases.items():
        x = feats.clone().requires_grad_(True)
        head.zero_grad()
        loss, logits = head(x, labels)
        assert torch.isfinite(loss) and loss.item() >= 0, name
        assert torch.isfinite(logits).all(), name
        loss.backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all(), name
    # a class weight that is all zero (normalised to zero, as F.normalize does): cosine 0, finite gradients
    with torch.no_grad():
        head.weight[1].zero_()
    x = torch.randn(4, d, requires_grad=True)
    head.zero_grad()
    loss, logits = head(x, torch.tensor([0, 1, 2, 1]))
    assert torch.equal(logits[:, 1].detach(), torch.zeros(4)) and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    # an empty batch: a zero connected to the graph, a finite (zero) gradient
    x = torch.randn(0, d, requires_grad=True)
    loss, logits = head(x, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and logits.shape == (0, c)
    loss.backward()
    assert x.grad is not None and x.grad.shape == (0, d)


# ------------------------------------------------------------------------------------------------
# training signal, parameters, arguments
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", HEADS)
def test_loss_decreases_on_toy_problem(kind):
    torch.manual_seed(0)
    n, d_in, d, c = 60, 10, 16, 5
    labels = torch.arange(c).repeat(n // c)
    inputs = 2.0 * torch.randn(c, d_in)[labels] + 0.5 * torch.randn(n, d_in)  # separable clusters
    model = torch.nn.Linear(d_in, d)
    head = kind(d, c, scale=16.0)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.05)
    losses, accs = [], []
    for _ in range(30):
        loss, logits = head(model(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append((logits.argmax(1) == labels).float().mean().item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert accs[-1] > 0.9


@pytest.mark.parametrize("kind", HEADS)
def test_weight_parameter_and_defaults(kind):
    torch.manual_seed(0)
    head = kind(512, 100)
    names = [name for name, _ in head.named_parameters()]
    assert names == ["weight"]
    assert head.weight.shape == (100, 512)
    assert 0.009 < head.weight.std().item() < 0.011  # N(0, 0.01^2)
    assert head.scale == 30.0 and head.label_smoothing == 0.0
    expected_margin = {ArcFaceHead: 0.5, CosFaceHead: 0.35, NormSoftmaxHead: 0.0, CircleClsHead: 0.25}[kind]
    assert head.margin == expected_margin
    assert head.stat_names == () and head.stats == {}


def test_argument_validation():
    for kind in HEADS:
        with pytest.raises(ValueError, match="scale"):
            kind(8, 4, scale=-1.0)
        with pytest.raises(ValueError, match="scale"):
            kind(8, 4, scale=0.0)
        with pytest.raises(ValueError, match="label_smoothing"):
            kind(8, 4, label_smoothing=1.0)
        with pytest.raises(ValueError, match="label_smoothing"):
            kind(8, 4, label_smoothing=-0.1)
        with pytest.raises(ValueError, match="feat_dim"):
            kind(0, 4)
        with pytest.raises(ValueError, match="num_classes"):
            kind(8, 0)
    for kind in (ArcFaceHead, CosFaceHead, CircleClsHead):
        with pytest.raises(ValueError, match="margin"):
            kind(8, 4, margin=-0.1)
    with pytest.raises(ValueError, match="margin"):
        ArcFaceHead(8, 4, margin=2.0)
    with pytest.raises(ValueError, match="margin"):
        CircleClsHead(8, 4, margin=1.0)
    with pytest.raises(TypeError):
        NormSoftmaxHead(8, 4, margin=0.1)  # NormFace has no margin
