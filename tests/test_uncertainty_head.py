"""NAMA's uncertainty head (modeling/uncertainty.py) against loop-by-definition references.

No library has this head, so every reference here is written from the spec (the NAMA spec,
"The uncertainty head"): plain Python loops over the samples and knots for the piecewise-linear `nn_N`,
explicit powers and numpy.polynomial.legendre for `tlr` / `lgd`, the textbook BatchNorm formulas
(biased batch variance to normalise, unbiased one in the running estimate, momentum 0.1, eps 1e-5) for the
standardisation, and the spec's re-balance u = u_raw - mean(clamp(u_raw, -0.5, 0.5)) and EMA update.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre as np_legendre
from torch.func import functional_call

from modeling.uncertainty import FBase, UncertaintyHead, legendre_basis, parse_f_base

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _features(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Rows with clearly different norms (0.5 .. 3 times a random direction of norm ~sqrt(d))."""
    g = _gen(seed)
    scale = 0.5 + 2.5 * torch.rand(n, 1, generator=g, dtype=dtype)
    return torch.randn(n, d, generator=g, dtype=dtype) * scale


def _head(f_base: str, seed: int = 0, scale: float = 0.5, ema_rate: float = 0.01) -> UncertaintyHead:
    """A head with non-trivial learnable values (the real init is ~1e-4 or zero: too flat to test with)."""
    head = UncertaintyHead(f_base, ema_rate=ema_rate)
    name = "weight" if head.spec.family == "nn" else "coef"
    with torch.no_grad():
        getattr(head, name).copy_(scale * torch.randn(getattr(head, name).shape, generator=_gen(seed)))
    return head


def _learnable(head: UncertaintyHead) -> torch.Tensor:
    return head.weight if head.spec.family == "nn" else head.coef


# ---------------------------------------------------------------- references (loops over the definition)


def _ref_nn(x: list[float], w: list[float]) -> list[float]:
    n_knots = len(w)
    out = []
    for xv in x:
        z = min(max(0.1 * xv, -0.4), 0.4)
        total = 0.0
        for i in range(n_knots):
            b = -0.8 + 1.6 * i / (n_knots - 1)
            v = z + b
            total += w[i] * (v if v > 0 else 0.1 * v)
        out.append(total / math.sqrt(n_knots))
    return out


def _ref_nn_grad_x(x: list[float], w: list[float]) -> list[float]:
    """d u_raw / d x: the clamp's 0.1 slope times the spec's extra 0.1 = 0.01 inside |x| < 4, else 0."""
    n_knots = len(w)
    out = []
    for xv in x:
        if abs(0.1 * xv) >= 0.4:
            out.append(0.0)
            continue
        z = 0.1 * xv
        slope = 0.0
        for i in range(n_knots):
            b = -0.8 + 1.6 * i / (n_knots - 1)
            slope += w[i] * (1.0 if z + b > 0 else 0.1)
        out.append(0.01 * slope / math.sqrt(n_knots))
    return out


def _ref_poly(x: list[float], coef: list[float], spec: FBase) -> list[float]:
    out = []
    for xv in x:
        t = min(max(xv, -3.0), 3.0) / 3.0
        total = 0.0
        for k, deg in zip(coef, spec.degrees):
            if spec.family == "tlr":
                total += k * t**deg
            else:
                onehot = [0.0] * deg + [1.0]
                total += k * float(np_legendre.legval(t, onehot))
        out.append(total)
    return out


def _ref_raw(head: UncertaintyHead, x: torch.Tensor) -> torch.Tensor:
    xs = x.detach().double().tolist()
    params = _learnable(head).detach().double().tolist()
    vals = _ref_nn(xs, params) if head.spec.family == "nn" else _ref_poly(xs, params, head.spec)
    return torch.tensor(vals, dtype=torch.float64)


def _ref_norms(feat: torch.Tensor) -> torch.Tensor:
    return torch.tensor([math.sqrt(sum(v * v for v in row)) for row in feat.tolist()], dtype=torch.float64)


def _ref_batch_standardise(v: torch.Tensor) -> torch.Tensor:
    vals = v.tolist()
    mean = sum(vals) / len(vals)
    var = sum((t - mean) ** 2 for t in vals) / len(vals)
    return torch.tensor([(t - mean) / math.sqrt(var + BN_EPS) for t in vals], dtype=torch.float64)


def _ref_rebalance(u_raw: torch.Tensor) -> tuple[torch.Tensor, float]:
    vals = u_raw.tolist()
    mean = sum(min(max(t, -0.5), 0.5) for t in vals) / len(vals)
    return torch.tensor([t - mean for t in vals], dtype=torch.float64), mean


# ---------------------------------------------------------------- parse_f_base


@pytest.mark.parametrize(
    ("text", "expected", "degrees"),
    [
        ("nn_128", FBase("nn", 128, False, False), ()),
        ("log_nn_64", FBase("nn", 64, True, False), ()),
        ("nn_2", FBase("nn", 2, False, False), ()),
        ("tlr", FBase("tlr", 9, False, False), (1, 3, 5, 7, 9)),
        ("tlr_7", FBase("tlr", 7, False, False), (1, 3, 5, 7)),
        ("tlr_8", FBase("tlr", 8, False, False), (1, 3, 5, 7)),
        ("tlr_1", FBase("tlr", 1, False, False), (1,)),
        ("log_tlr", FBase("tlr", 9, True, False), (1, 3, 5, 7, 9)),
        ("lgd", FBase("lgd", 9, False, False), (1, 3, 5, 7, 9)),
        ("lgd_5", FBase("lgd", 5, False, False), (1, 3, 5)),
        ("lgd_all_5", FBase("lgd", 5, False, True), (1, 2, 3, 4, 5)),
        ("tlr_all", FBase("tlr", 9, False, True), tuple(range(1, 10))),
        ("log_lgd_all_3", FBase("lgd", 3, True, True), (1, 2, 3)),
    ],
)
def test_parse_f_base_accepts(text, expected, degrees):
    spec = parse_f_base(text)
    assert spec == expected
    assert spec.degrees == degrees
    if spec.family != "nn":
        assert len(spec.degrees) == (spec.n if spec.all_powers else (spec.n + 1) // 2)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nn",
        "nn_1",
        "nn_0",
        "nn_all_8",
        "log_nn",
        "NN_128",
        "mlp_3",
        "log_",
        "tlr_",
        "tlr_0",
        "lgd_07",
        "nn_128 ",
        " tlr",
        "log_log_nn_8",
        "tlr-7",
        "tlr_all_",
        "lgd_all_0",
        "tlr_7_all",
        128,
        None,
    ],
)
def test_parse_f_base_rejects_with_valid_forms(text):
    with pytest.raises(ValueError) as err:
        parse_f_base(text)
    msg = str(err.value)
    assert repr(text) in msg
    for example in ("nn_128", "log_nn_64", "tlr", "tlr_7", "lgd_all_5", "log_tlr"):
        assert example in msg


def test_parse_f_base_is_frozen():
    spec = parse_f_base("nn_8")
    with pytest.raises(AttributeError):
        spec.n = 3  # type: ignore[misc]


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_constructor_rejects_bad_ema_rate(rate):
    with pytest.raises(ValueError, match="ema_rate"):
        UncertaintyHead("nn_8", ema_rate=rate)


def test_constructor_rejects_bad_f_base():
    with pytest.raises(ValueError, match="lgd_all_5"):
        UncertaintyHead("nn_one")


# ---------------------------------------------------------------- structure, state dict


def test_parameters_buffers_and_init():
    head = UncertaintyHead("nn_4096")
    assert [name for name, p in head.named_parameters() if p.requires_grad] == ["weight"]
    assert head.weight.shape == (4096,)
    # init normal with std 1e-4/sqrt(N): the sample std of 4096 draws is within a few percent
    torch.testing.assert_close(head.weight.std().item(), 1e-4 / 64, rtol=0.05, atol=0.0)
    torch.testing.assert_close(head.knots, torch.linspace(-0.8, 0.8, 4096))
    assert "knots" in dict(head.named_buffers()) and "knots" not in dict(head.named_parameters())
    assert head.ema_mean.shape == () and head.ema_mean.item() == 0.0

    bn = head.standardise
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.num_features == 1
    assert bn.weight.item() == 1.0 and bn.bias.item() == 0.0
    assert not bn.weight.requires_grad and not bn.bias.requires_grad

    poly = UncertaintyHead("lgd_all_5")
    assert [name for name, p in poly.named_parameters() if p.requires_grad] == ["coef"]
    assert poly.coef.shape == (5,) and torch.count_nonzero(poly.coef) == 0
    assert UncertaintyHead("tlr").coef.shape == (5,)


def test_state_dict_shapes_depend_on_f_base():
    small, big = UncertaintyHead("nn_64"), UncertaintyHead("nn_128")
    sd_small, sd_big = small.state_dict(), big.state_dict()
    assert set(sd_small) == {
        "standardise.weight",
        "standardise.bias",
        "standardise.running_mean",
        "standardise.running_var",
        "standardise.num_batches_tracked",
        "knots",
        "weight",
        "ema_mean",
    }
    assert sd_small["weight"].shape == (64,) and sd_big["weight"].shape == (128,)
    assert sd_small["knots"].shape == (64,) and sd_big["knots"].shape == (128,)
    with pytest.raises(RuntimeError, match="size mismatch"):
        big.load_state_dict(sd_small)
    with pytest.raises(RuntimeError, match="size mismatch"):
        UncertaintyHead("tlr_7").load_state_dict(UncertaintyHead("tlr").state_dict())
    with pytest.raises(RuntimeError):
        UncertaintyHead("tlr").load_state_dict(sd_small)
    # the same F_BASE round-trips, buffers included
    small.ema_mean.fill_(0.25)
    other = UncertaintyHead("nn_64")
    other.load_state_dict(small.state_dict())
    torch.testing.assert_close(other.weight, small.weight)
    assert other.ema_mean.item() == 0.25


# ---------------------------------------------------------------- standardisation


def test_standardise_batch_stats_in_train_running_stats_in_eval():
    head = _head("nn_16").double()
    feat = _features(12, 8, seed=1)
    a = _ref_norms(feat)
    head.train()
    x_train = head.standardise_norm(a)
    torch.testing.assert_close(x_train, _ref_batch_standardise(a))
    # running estimates: momentum 0.1, unbiased variance, from mean 0 / var 1
    mean = a.mean().item()
    var_unbiased = a.var(unbiased=True).item()
    bn = head.standardise
    torch.testing.assert_close(bn.running_mean.item(), (1 - BN_MOMENTUM) * 0.0 + BN_MOMENTUM * mean)
    torch.testing.assert_close(bn.running_var.item(), (1 - BN_MOMENTUM) * 1.0 + BN_MOMENTUM * var_unbiased)
    assert bn.num_batches_tracked.item() == 1

    head.eval()
    rm, rv = bn.running_mean.item(), bn.running_var.item()
    x_eval = head.standardise_norm(a)
    torch.testing.assert_close(x_eval, (a - rm) / math.sqrt(rv + BN_EPS))
    assert bn.running_mean.item() == rm and bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_standardise_agrees_with_torch_batchnorm1d(momentum):
    """torch's own BatchNorm1d(1) as a second reference, over a few train steps then eval."""
    head = UncertaintyHead("nn_8").double()
    head.standardise.momentum = momentum
    ref = torch.nn.BatchNorm1d(1, momentum=momentum).double()
    head.train()
    ref.train()
    for seed in (40, 41, 42):
        v = _ref_norms(_features(9, 5, seed=seed)).requires_grad_(True)
        x = head.standardise_norm(v)
        x_ref = ref(v[:, None])[:, 0]
        torch.testing.assert_close(x, x_ref)
        g = torch.randn(9, generator=_gen(seed), dtype=torch.float64)
        torch.testing.assert_close(torch.autograd.grad(x, v, g)[0], torch.autograd.grad(x_ref, v, g)[0])
    torch.testing.assert_close(head.standardise.running_mean, ref.running_mean)
    torch.testing.assert_close(head.standardise.running_var, ref.running_var)
    assert head.standardise.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    head.eval()
    ref.eval()
    v = _ref_norms(_features(5, 5, seed=43))
    torch.testing.assert_close(head.standardise_norm(v), ref(v[:, None])[:, 0])


def test_standardise_float64_input_updates_float32_buffers():
    head = _head("nn_8")  # float32 buffers
    a = _ref_norms(_features(10, 6, seed=2))
    head.train()
    x = head.standardise_norm(a)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, _ref_batch_standardise(a))
    assert head.standardise.running_mean.dtype == torch.float32
    torch.testing.assert_close(head.standardise.running_mean.item(), BN_MOMENTUM * a.mean().item())


def test_forward_train_matches_reference_and_affine_stays_frozen():
    head = _head("nn_32", seed=3).double()
    feat = _features(15, 10, seed=4).requires_grad_(True)
    head.train()
    u, a = head(feat)
    torch.testing.assert_close(a, _ref_norms(feat.detach()))
    u_raw = _ref_raw(head, _ref_batch_standardise(_ref_norms(feat.detach())))
    torch.testing.assert_close(u, _ref_rebalance(u_raw)[0])
    (u.square().sum() + a.sum()).backward()
    assert head.standardise.weight.grad is None and head.standardise.bias.grad is None
    assert head.weight.grad is not None and torch.isfinite(feat.grad).all()
    assert head.standardise.weight.item() == 1.0 and head.standardise.bias.item() == 0.0


def test_forward_eval_uses_running_stats_and_ema_and_changes_nothing():
    head = _head("nn_16", seed=5).double()
    head.train()
    head(_features(20, 6, seed=6))
    head.eval()
    state = {k: v.clone() for k, v in head.state_dict().items()}
    feat = _features(7, 6, seed=7)
    u, _ = head(feat)
    bn = head.standardise
    x = (_ref_norms(feat) - bn.running_mean.item()) / math.sqrt(bn.running_var.item() + BN_EPS)
    torch.testing.assert_close(u, _ref_raw(head, x) - head.ema_mean.item())
    u2, _ = head(feat)
    torch.testing.assert_close(u2, u)
    for k, v in head.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_batch_of_one_in_training_uses_running_stats():
    head = _head("nn_16", seed=8).double()
    head.train()
    head(_features(9, 5, seed=9))
    bn = head.standardise
    rm, rv, tracked = bn.running_mean.item(), bn.running_var.item(), bn.num_batches_tracked.item()
    feat = _features(1, 5, seed=10).requires_grad_(True)
    u, a = head(feat)
    assert u.shape == (1,) and a.shape == (1,)
    x = (_ref_norms(feat.detach()) - rm) / math.sqrt(rv + BN_EPS)
    torch.testing.assert_close(head.standardise_norm(a.detach()), x)
    torch.testing.assert_close(u, _ref_rebalance(_ref_raw(head, x))[0])
    assert (bn.running_mean.item(), bn.running_var.item(), bn.num_batches_tracked.item()) == (rm, rv, tracked)
    u.sum().backward()
    assert torch.isfinite(feat.grad).all()


# ---------------------------------------------------------------- nn_N: knots, piecewise-linear, 0.1 gradient


@pytest.mark.parametrize("n_knots", [2, 5, 16])
def test_nn_piecewise_linear_matches_loop_reference(n_knots):
    head = _head(f"nn_{n_knots}", seed=n_knots, scale=1.0).double()
    # standardised norms across the whole range, including beyond the clamp at |x| = 4
    x = torch.cat([torch.linspace(-7.0, 7.0, 57, dtype=torch.float64), torch.tensor([-3.99, 3.99, 0.0])])
    torch.testing.assert_close(head.raw_offset(x), _ref_raw(head, x))


def test_nn_gradient_into_x_is_scaled_by_a_tenth():
    head = _head("nn_16", seed=11, scale=1.0).double()
    # away from the clamp (|x| = 4) and from the knots' kinks (z = -b_i)
    x = torch.tensor([-6.0, -3.3, -1.7, -0.55, 0.2, 0.9, 2.15, 3.7, 5.5], dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(head.raw_offset(x).sum(), x)
    w = head.weight.detach().tolist()
    torch.testing.assert_close(grad_x, torch.tensor(_ref_nn_grad_x(x.tolist(), w), dtype=torch.float64))
    # the value is the plain clamp's: the scaling touches the gradient only
    torch.testing.assert_close(head.raw_offset(x.detach()), _ref_raw(head, x))
    # the weights' gradient is not scaled: d u_raw / d w_i = h_i / sqrt(N)
    head.weight.grad = None
    head.raw_offset(x.detach())[2].backward()
    z = 0.1 * x[2].item()
    h = [(z + b) if z + b > 0 else 0.1 * (z + b) for b in torch.linspace(-0.8, 0.8, 16).tolist()]
    torch.testing.assert_close(head.weight.grad, torch.tensor(h, dtype=torch.float64) / 4.0)


# ---------------------------------------------------------------- polynomials


def test_legendre_basis_matches_numpy():
    t = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    polys = legendre_basis(t, 12)
    assert len(polys) == 13
    for deg, p in enumerate(polys):
        expected = np_legendre.legval(t.numpy(), np.eye(13)[deg])
        torch.testing.assert_close(p, torch.from_numpy(expected))
    assert len(legendre_basis(t, 1)) == 2


@pytest.mark.parametrize("f_base", ["tlr", "tlr_7", "tlr_all_4", "lgd", "lgd_6", "lgd_all_5", "tlr_1"])
def test_polynomial_bases_match_explicit_formulas(f_base):
    head = _head(f_base, seed=12, scale=1.0).double()
    x = torch.cat([torch.linspace(-5.0, 5.0, 41, dtype=torch.float64), torch.tensor([-2.999, 2.999])])
    torch.testing.assert_close(head.raw_offset(x), _ref_raw(head, x))
    # flat beyond the clip: no gradient into x there
    xg = torch.tensor([-4.0, 4.5], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(head.raw_offset(xg).sum(), xg)
    assert torch.count_nonzero(g) == 0


def test_tlr_is_odd_and_lgd_all_is_not():
    x = torch.linspace(0.1, 2.5, 9, dtype=torch.float64)
    odd = _head("lgd_7", seed=13).double()
    torch.testing.assert_close(odd.raw_offset(-x), -odd.raw_offset(x))
    full = _head("lgd_all_4", seed=13).double()
    assert not torch.allclose(full.raw_offset(-x), -full.raw_offset(x))


# ---------------------------------------------------------------- re-balance and EMA


def test_training_offsets_have_the_clamped_mean_removed_and_keep_its_gradient():
    head = _head("nn_8", seed=14, scale=6.0).double()  # large weights: some |u_raw| > 0.5
    feat = _features(16, 6, seed=15)
    head.train()
    u, _ = head(feat)
    x = _ref_batch_standardise(_ref_norms(feat))
    u_raw = _ref_raw(head, x)
    assert (u_raw.abs() > 0.5).any() and (u_raw.abs() < 0.5).any()
    expected, clamped_mean = _ref_rebalance(u_raw)
    torch.testing.assert_close(u, expected)
    assert abs(clamped_mean - u_raw.mean().item()) > 1e-3  # the clamp made a difference

    # the mean is not detached: d(sum u)/dw = sum_i du_raw_i/dw - n * mean_i(1[|u_raw_i| < .5] du_raw_i/dw)
    head.weight.grad = None
    u.sum().backward()
    z = (0.1 * x).clamp(-0.4, 0.4)
    hs = torch.nn.functional.leaky_relu(z[:, None] + torch.linspace(-0.8, 0.8, 8, dtype=torch.float64), 0.1)
    hs = hs / math.sqrt(8)
    inside = (u_raw.abs() < 0.5).double()
    torch.testing.assert_close(head.weight.grad, hs.sum(0) - (inside[:, None] * hs).sum(0))


def test_small_offsets_sum_to_zero_in_training():
    head = _head("lgd_all_5", seed=16, scale=0.05).double()
    feat = _features(11, 4, seed=17)
    head.train()
    u, _ = head(feat)
    torch.testing.assert_close(u.sum().item(), 0.0, atol=1e-12, rtol=0.0)
    (g,) = torch.autograd.grad(u.sum(), head.coef)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-12, rtol=0.0)


def test_ema_tracks_the_clamped_batch_mean_and_is_used_in_eval():
    rate = 0.25
    head = _head("nn_8", seed=18, scale=4.0, ema_rate=rate).double()
    head.train()
    means = []
    for seed in (19, 20, 21):
        feat = _features(10, 5, seed=seed)
        head(feat)
        means.append(_ref_rebalance(_ref_raw(head, _ref_batch_standardise(_ref_norms(feat))))[1])
    ema = 0.0
    for m in means:
        ema = (1 - rate) * ema + rate * m
    torch.testing.assert_close(head.ema_mean.item(), ema)
    assert abs(ema) > 1e-3
    assert not head.ema_mean.requires_grad

    head.eval()
    feat = _features(6, 5, seed=22)
    u, _ = head(feat)
    bn = head.standardise
    x = (_ref_norms(feat) - bn.running_mean.item()) / math.sqrt(bn.running_var.item() + BN_EPS)
    torch.testing.assert_close(u, _ref_raw(head, x) - ema)
    torch.testing.assert_close(head.ema_mean.item(), ema)


# ---------------------------------------------------------------- log_ variant, dtypes, edge cases


def test_log_variant_standardises_log_norm():
    head = _head("log_nn_16", seed=23, scale=2.0).double()
    feat = _features(14, 6, seed=24)
    head.train()
    u, a = head(feat)
    torch.testing.assert_close(a, _ref_norms(feat))
    x = _ref_batch_standardise(torch.log(_ref_norms(feat)))
    torch.testing.assert_close(u, _ref_rebalance(_ref_raw(head, x))[0])
    # log_ changes the result (the norms are spread enough for the log to bend them)
    plain = _head("nn_16", seed=23, scale=2.0).double()
    assert not torch.allclose(plain(feat)[0], u)


@pytest.mark.parametrize("f_base", ["log_nn_8", "nn_8", "log_tlr", "lgd_all_3"])
def test_zero_feature_row_and_equal_norms_stay_finite(f_base):
    head = _head(f_base, seed=25)
    head.train()
    feat = torch.randn(6, 5, generator=_gen(26))
    feat[2] = 0.0
    feat.requires_grad_(True)
    u, a = head(feat)
    (u.square().sum() + a.sum()).backward()
    assert torch.isfinite(u).all() and torch.isfinite(a).all() and torch.isfinite(feat.grad).all()
    # a batch whose norms are all equal has zero batch variance: x = 0 for all, still finite
    same = torch.nn.functional.normalize(torch.randn(4, 5, generator=_gen(27)), dim=1).requires_grad_(True)
    u, a = head(same)
    u.sum().backward()
    assert torch.isfinite(u).all() and torch.isfinite(same.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_input_computes_in_fp32(dtype):
    head = _head("nn_16", seed=28)
    feat = _features(8, 6, seed=29, dtype=torch.float32)
    u, a = head(feat.to(dtype))
    assert u.dtype == torch.float32 and a.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u2, a2 = head(feat)
    assert u2.dtype == torch.float32 and a2.dtype == torch.float32
    torch.testing.assert_close(a2, feat.norm(dim=1))
    u64, a64 = head(feat.double())
    assert u64.dtype == torch.float64 and a64.dtype == torch.float64


def test_forward_rejects_bad_shapes():
    head = UncertaintyHead("nn_8")
    with pytest.raises(ValueError, match="non-empty"):
        head(torch.randn(5))
    with pytest.raises(ValueError, match="non-empty"):
        head(torch.randn(0, 4))


# ---------------------------------------------------------------- gradcheck and a toy fit


@pytest.mark.parametrize(
    ("f_base", "scale"), [("nn_16", 3.0), ("log_nn_8", 3.0), ("tlr", 0.3), ("lgd_all_5", 0.3), ("log_lgd_7", 0.3)]
)
def test_gradcheck_train_mode(f_base, scale):
    """On the learnable weights for every family; on the features too for the polynomials only, because
    `nn_N`'s gradient into x is deliberately a tenth of the true derivative (checked just below)."""
    head = _head(f_base, seed=30, scale=scale)
    head.train()
    name = "weight" if head.spec.family == "nn" else "coef"
    w = _learnable(head).detach().double().requires_grad_(True)
    feat = _features(7, 4, seed=31).requires_grad_(head.spec.family != "nn")

    def fn(w_: torch.Tensor, feat_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(head, {name: w_}, (feat_,))

    assert torch.autograd.gradcheck(fn, (w, feat), eps=1e-6, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("f_base", ["nn_16", "log_nn_8"])
def test_nn_feature_gradient_is_a_tenth_of_the_finite_difference(f_base):
    head = _head(f_base, seed=34, scale=3.0)
    head.train()
    feat = _features(6, 4, seed=35)
    analytic = torch.autograd.functional.jacobian(lambda f: head(f)[0], feat)
    eps = 1e-6
    numeric = torch.zeros_like(analytic)
    for i in range(feat.shape[0]):
        for j in range(feat.shape[1]):
            step = torch.zeros_like(feat)
            step[i, j] = eps
            with torch.no_grad():
                numeric[:, i, j] = (head(feat + step)[0] - head(feat - step)[0]) / (2 * eps)
    assert numeric.abs().max() > 1e-3
    torch.testing.assert_close(analytic, 0.1 * numeric, atol=1e-8, rtol=1e-5)
    # the norm output is not scaled
    torch.testing.assert_close(
        torch.autograd.functional.jacobian(lambda f: head(f)[1], feat).sum(1), feat / feat.norm(dim=1, keepdim=True)
    )


@pytest.mark.parametrize("f_base", ["nn_32", "tlr", "lgd_all_5"])
def test_head_fits_a_norm_dependent_target(f_base):
    torch.manual_seed(32)
    head = UncertaintyHead(f_base)
    head.train()
    feat = _features(40, 8, seed=33, dtype=torch.float32)
    x = _ref_batch_standardise(_ref_norms(feat.double())).float()
    target = 0.2 * torch.tanh(x)
    target = target - target.mean()
    opt = torch.optim.Adam([_learnable(head)], lr=0.05)
    losses = []
    for _ in range(30):
        u, _ = head(feat)
        loss = (u - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
