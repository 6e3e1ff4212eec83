"""NAMA's uncertainty head: a per-sample margin offset u learned as a function of the feature norm.

Huang, He, Yang, Gao, Sang: "Norm-Aware Margin Assignment" (NAMA). Each sample gets an offset u, a learned
function of the L2 norm a = ||f|| of its feature; the uc losses add it to their margin. A re-balance keeps the
mean offset of a training batch at zero, so the mean margin stays at SOLVER.MARGIN and only the spread across
samples is learned.

The pipeline of `UncertaintyHead.forward(feat)`:

1. a = ||feat||_2 per row (returned as well, for the norm regulariser); `log_` uses log(max(a, 1e-12)).
2. x = standardise(a or log a) with `self.standardise = BatchNorm1d(1)`, affine frozen at weight 1, bias 0:
   batch statistics in training, running statistics in eval. A training batch of ONE sample has no batch
   variance (BatchNorm1d refuses it), so it is standardised with the running statistics instead, which are
   then left unchanged.
3. u_raw = F(x), F chosen by the `f_base` string (`MODEL.F_BASE`), see below.
4. Re-balance. Training: u = u_raw - mean_batch(clamp(u_raw, -0.5, 0.5)), the mean NOT detached, and the
   buffer `ema_mean` tracks that mean: ema <- (1 - r) ema + r mean (r = ema_rate, no gradient).
   Eval: u = u_raw - ema_mean.

Everything runs in float32 with autocast off (float64 input stays float64, so gradcheck works).

Grammar of `f_base` (parsed by `parse_f_base`):

    f_base := ["log_"] body
    body   := "nn_" N             N >= 2 frozen knots, a learnable piecewise-linear function   (nn_128)
            | "tlr" ["_" N]       odd powers 1, 3, ..., <= N: floor((N + 1) / 2) terms; bare = N 9 (5 terms)
            | "lgd" ["_" N]       the same degrees in the Legendre basis                       (lgd_7)
            | "tlr_all" ["_" N]   all powers 1..N (even ones included); bare = N 9              (tlr_all_5)
            | "lgd_all" ["_" N]   all Legendre degrees 1..N; bare = N 9                         (lgd_all)

N is a positive decimal integer without leading zeros (N >= 1 for the polynomials). Degree 0 is never used:
the re-balance removes any constant anyway.

The families:

- `nn_N`: z = clamp(0.1 x, -0.4, 0.4), then z <- 0.1 z + 0.9 z.detach(): the value is unchanged and the
  gradient into x is scaled by 0.1, so dz/dx = 0.1 * 0.1 = 0.01 for |x| < 4 and 0 outside (the clamp).
  h_i = LeakyReLU_0.1(z + b_i) with frozen knots b = linspace(-0.8, 0.8, N) (buffer `knots`), and
  u_raw = N^-1/2 sum_i w_i h_i with the learnable `weight` w (N,), init normal(0, std 1e-4 / sqrt(N)).
- `tlr*` / `lgd*`: u_raw = sum_j k_j P_j(t), learnable `coef` k (terms,) initialised to ZERO (u_raw is
  linear in k, so there is no symmetry to break, and training starts from the plain margin), with
  t = clamp(x, -3, 3) / 3 and P_j(t) = t^d_j (`tlr`) or the Legendre polynomial of degree d_j (`lgd`).
  Why the clamp and the 1/3: a standardised norm beyond 3 is an outlier, and on [-1, 1] every basis
  function is bounded by 1 (outside it x^9 and P_9 explode: P_9(3) ~ 1.5e6), so no degree dominates the
  gradient or the weight decay. On |x| <= 3 this is the polynomial sum_j (k_j / 3^d_j) x^d_j in x itself
  (`tlr`); beyond, F is constant (no gradient into x).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_POLY_N = 9  # bare `tlr` / `lgd` / `*_all`: degree 9, i.e. 5 odd terms
POLY_CLIP = 3.0  # polynomials see t = clamp(x, -3, 3) / 3 in [-1, 1]
NORM_EPS = 1e-12  # log_ variants: log of a zero feature's norm stays finite
REBALANCE_CLIP = 0.5  # the batch mean is taken over clamp(u_raw, -0.5, 0.5)

_F_BASE_RE = re.compile(r"(log_)?(nn|tlr|lgd)(_all)?(?:_([1-9][0-9]*))?")

F_BASE_FORMS = (
    "[log_]nn_N (N >= 2 knots), [log_]tlr[_N], [log_]lgd[_N] (odd degrees <= N, bare = 9), "
    "[log_]tlr_all[_N], [log_]lgd_all[_N] (all degrees 1..N, bare = 9); "
    "e.g. nn_128, log_nn_64, tlr, tlr_7, lgd_all_5, log_tlr"
)


@dataclass(frozen=True)
class FBase:
    """A parsed `F_BASE`: the function family, its size n (knots for nn, max degree otherwise), log a or a."""

    family: str
    n: int
    use_log: bool
    all_powers: bool

    @property
    def degrees(self) -> tuple[int, ...]:
        """Polynomial degrees used (empty for `nn`): 1, 3, ..., <= n, or 1..n with `all_powers`."""
        if self.family == "nn":
            return ()
        return tuple(range(1, self.n + 1, 1 if self.all_powers else 2))


def parse_f_base(text: str) -> FBase:
    """Parse an `F_BASE` string (grammar in the module docstring); ValueError listing the valid forms."""
    if not isinstance(text, str):
        # ValueError, not TypeError: a bad config value is reported the same way whatever its type
        raise ValueError(f"F_BASE must be a string, got {text!r}; valid forms: {F_BASE_FORMS}")  # noqa: TRY004
    match = _F_BASE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown F_BASE {text!r}; valid forms: {F_BASE_FORMS}")
    log_prefix, family, all_suffix, digits = match.groups()
    if family == "nn":
        # the piecewise-linear family has no degrees to add and needs its knot count spelt out
        if all_suffix is not None or digits is None:
            raise ValueError(f"unknown F_BASE {text!r}: nn needs a knot count, nn_N; valid forms: {F_BASE_FORMS}")
        n = int(digits)
        if n < 2:
            raise ValueError(f"F_BASE {text!r}: nn_N needs N >= 2 knots; valid forms: {F_BASE_FORMS}")
    else:
        n = DEFAULT_POLY_N if digits is None else int(digits)
    return FBase(family=family, n=n, use_log=log_prefix is not None, all_powers=all_suffix is not None)


def legendre_basis(t: torch.Tensor, max_degree: int) -> list[torch.Tensor]:
    """[P_0(t), ..., P_max_degree(t)] by Bonnet's recurrence (k + 1) P_{k+1} = (2k + 1) t P_k - k P_{k-1}.

    The recurrence is stable on [-1, 1], where every |P_k| <= 1.
    """
    polys = [torch.ones_like(t), t]
    for k in range(1, max_degree):
        polys.append(((2 * k + 1) * t * polys[k] - k * polys[k - 1]) / (k + 1))
    return polys[: max_degree + 1]


class UncertaintyHead(nn.Module):
    """NAMA's margin assignment module (MAM): feat (n, d) -> (u (n,), a (n,)), see the module docstring.

    u_a is the margin offset of sample a (a learned function F of its standardised feature norm, re-balanced
    to mean zero over the training batch), a = ||feat_a||_2 (connected to the graph, for the norm
    regulariser). Huang, He, Yang, Gao, Sang: "Norm-Aware Margin Assignment".

    Learnable parameters, all directly in this module (the optimizer groups them under WEIGHT_DECAY_POLY):
    `weight` (N,) for `nn_N`, `coef` (terms,) for the polynomial families. Buffers: `knots` (nn), `ema_mean`
    and the frozen `standardise` BatchNorm1d's running statistics. The shapes depend on F_BASE, so a
    checkpoint of nn_64 does not load into nn_128.
    """

    def __init__(self, f_base: str = "nn_128", ema_rate: float = 0.01):
        super().__init__()
        self.spec = parse_f_base(f_base)
        if isinstance(ema_rate, bool) or not isinstance(ema_rate, (int, float)):
            raise ValueError(f"uncertainty head ema_rate must be a number in (0, 1], got {ema_rate!r}")  # noqa: TRY004
        if not math.isfinite(ema_rate) or not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"uncertainty head ema_rate must be in (0, 1], got {ema_rate}")
        self.f_base = f_base
        self.ema_rate = float(ema_rate)

        self.standardise = nn.BatchNorm1d(1)
        # a pure standardisation: the scale/shift of x is F's business, not the BN's
        nn.init.ones_(self.standardise.weight)
        nn.init.zeros_(self.standardise.bias)
        self.standardise.weight.requires_grad_(False)
        self.standardise.bias.requires_grad_(False)

        if self.spec.family == "nn":
            n = self.spec.n
            self.register_buffer("knots", torch.linspace(-0.8, 0.8, n))
            self.weight = nn.Parameter(torch.randn(n) * (1e-4 / math.sqrt(n)))
        else:
            self.register_buffer("degree_list", torch.tensor(self.spec.degrees, dtype=torch.float32), persistent=False)
            self.coef = nn.Parameter(torch.zeros(len(self.spec.degrees)))
        self.register_buffer("ema_mean", torch.zeros(()))

    def extra_repr(self) -> str:
        return f"f_base={self.f_base!r}, ema_rate={self.ema_rate}"

    def standardise_norm(self, value: torch.Tensor) -> torch.Tensor:
        """x = (value - mean) / sqrt(var + eps) * 1 + 0 with `self.standardise`'s eps, momentum and buffers.

        Training (and more than one sample): mean and biased variance of the batch, and the running
        estimates move as BatchNorm1d moves them (momentum, unbiased variance; momentum None = cumulative
        average). Eval, or a training batch of one sample (no variance to estimate): the running estimates,
        left unchanged. Written out rather than calling the module because BatchNorm1d refuses float64
        input with float32 buffers (gradcheck) and a training batch of one; the result and its gradient are
        BatchNorm1d's (tested against it).
        """
        bn = self.standardise
        if bn.training and value.shape[0] > 1:
            mean = value.mean()
            var = value.var(unbiased=False)
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                var_unbiased = var.detach() * (value.shape[0] / (value.shape[0] - 1))
                bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype).reshape(1), momentum)
                bn.running_var.lerp_(var_unbiased.to(bn.running_var.dtype).reshape(1), momentum)
        else:
            mean = bn.running_mean.to(value.dtype)[0]
            var = bn.running_var.to(value.dtype)[0]
        x = (value - mean) * torch.rsqrt(var + bn.eps)
        return x * bn.weight.to(value.dtype) + bn.bias.to(value.dtype)

    def raw_offset(self, x: torch.Tensor) -> torch.Tensor:
        """u_raw = F(x) of the standardised norm x (n,), in x's dtype."""
        if self.spec.family == "nn":
            z = torch.clamp(0.1 * x, -0.4, 0.4)
            # same value, a tenth of the gradient into x (dz/dx = 0.01 inside the clamp)
            z = 0.1 * z + 0.9 * z.detach()
            h = F.leaky_relu(z[:, None] + self.knots.to(x.dtype)[None, :], negative_slope=0.1)
            return (h @ self.weight.to(x.dtype)) / math.sqrt(self.spec.n)
        t = torch.clamp(x, -POLY_CLIP, POLY_CLIP) / POLY_CLIP
        if self.spec.family == "tlr":
            basis = t[:, None] ** self.degree_list.to(x.dtype)[None, :]
        else:
            polys = legendre_basis(t, self.spec.n)
            basis = torch.stack([polys[d] for d in self.spec.degrees], dim=1)
        return basis @ self.coef.to(x.dtype)

    def rebalance(self, u_raw: torch.Tensor) -> torch.Tensor:
        """Training: u_raw - mean(clamp(u_raw, +-0.5)) (mean kept in the graph) and the EMA update;
        eval: u_raw - ema_mean."""
        if not self.training:
            return u_raw - self.ema_mean.to(u_raw.dtype)
        # the clamp keeps a few extreme offsets from dragging every other sample's offset
        batch_mean = torch.clamp(u_raw, -REBALANCE_CLIP, REBALANCE_CLIP).mean()
        with torch.no_grad():
            self.ema_mean.lerp_(batch_mean.detach().to(self.ema_mean.dtype), self.ema_rate)
        return u_raw - batch_mean

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feat.dim() != 2 or feat.shape[0] == 0:
            raise ValueError(f"uncertainty head expects a non-empty (n, d) feature batch, got {tuple(feat.shape)}")
        # the offset enters margins of losses computed in fp32: keep fp16/bf16 rounding out of it
        with torch.autocast(device_type=feat.device.type, enabled=False):
            f = feat if feat.dtype == torch.float64 else feat.float()
            a = torch.linalg.vector_norm(f, dim=1)
            value = torch.log(a.clamp_min(NORM_EPS)) if self.spec.use_log else a
            x = self.standardise_norm(value)
            u = self.rebalance(self.raw_offset(x))
        return u, a


__all__ = ["FBase", "UncertaintyHead", "legendre_basis", "parse_f_base"]
