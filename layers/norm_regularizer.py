"""MagFace-style feature-norm regulariser of NAMA (`SOLVER.NORM_LU`, `SOLVER.REG_TYPE`, `SOLVER.MAG_G`).

Meng, Zhao, Jiang, Li: "MagFace: A Universal Representation for Face Recognition and Quality Assessment",
CVPR 2021, pulls feature norms a up towards an upper bound with a convex g(a) minimal at a = u_a; NAMA
(Huang, He, Yang, Gao, Sang: "Norm-Aware Margin Assignment") uses it with several shapes of g. With the
bounds [l, u] = `SOLVER.NORM_LU` (seed: [10, 110]) and x = (a - l) / (u - l):

    exp_k (k > 0, default exp_3):  g = (e^(-k x) / k + e^(-k) x) / (1 - e^(-k))
    arc:   MagFace's 1/a + a/u^2, rescaled: g = c (1/a + a/u^2 - 2/u) = c (a - u)^2 / (a u^2),
           c = l^2 u^2 / ((u - l)^2 (u + l))
    quad:  g = (1 - x)^2 / 2

and the regulariser is the batch mean of g(a). Every form has its minimum at a = u (x = 1), where
dg/dx = 0, and the slope dg/dx = -1 at a = l (x = 0): exp_k and quad have it by construction, and the
rescaling constant c of `arc` is chosen for it (MagFace's raw g, at l = 10, u = 110, has dg/dx ~ -0.99 there
only by chance of the bounds), and its minimum 2/u is subtracted so g(u) = 0 as for quad. So the three
forms push norms below u with comparable strength. Values: exp_k(0) = 1 / (k (1 - e^-k)),
exp_k(1) = e^-k (1 + 1/k) / (1 - e^-k); arc(l) = l / (u + l), arc(u) = 0; quad(0) = 1/2, quad(1) = 0.
Norms are not clamped into [l, u] (MagFace clamps them): beyond u every form grows again, so it keeps pulling
norms back towards u. `arc` needs l > 0 and clamps a at 1e-6 u from below so 1/a stays finite.

How NAMA adds it: only its gradient reaches the loss, `loss + g - g.detach()`, which leaves the logged loss
value unchanged; `gradient_only(w * g)` builds that zero-valued term (w = `SOLVER.MAG_G`), and g itself is
logged separately.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch


class RegType(NamedTuple):
    """A parsed `SOLVER.REG_TYPE`: kind 'exp' (with its k), 'arc' or 'quad' (k None)."""

    kind: str
    k: float | None = None


_VALID_FORMS = "exp_<k> with k a positive number (e.g. exp_3, the default; exp_2.5), arc, quad"
_EXP_RE = re.compile(r"exp_([0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_reg_type(text: str) -> RegType:
    """Parse a regulariser name ('exp_3', 'arc', 'quad'); ValueError listing the valid forms otherwise."""
    if not isinstance(text, str):
        # ValueError, not TypeError: a bad config value is reported the same way whatever its type
        raise ValueError(f"norm regulariser type must be a string; valid forms: {_VALID_FORMS}; got {text!r}")  # noqa: TRY004
    if text in ("arc", "quad"):
        return RegType(text)
    match = _EXP_RE.fullmatch(text)
    if match is not None:
        k = float(match.group(1))
        if k > 0 and math.isfinite(k):
            return RegType("exp", k)
    raise ValueError(f"unknown norm regulariser type {text!r}; valid forms: {_VALID_FORMS}")


def _check_bounds(lower: float, upper: float) -> tuple[float, float]:
    for name, value in (("lower", lower), ("upper", upper)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"norm regulariser {name} bound must be a finite number, got {value!r}")
    if not 0 <= lower < upper:
        raise ValueError(f"norm regulariser bounds must satisfy 0 <= lower < upper, got [{lower}, {upper}]")
    return float(lower), float(upper)


def norm_regularizer(a: torch.Tensor, lower: float, upper: float, reg_type: str = "exp_3") -> torch.Tensor:
    """The batch mean of g(a) (see the module docstring for g) for the feature norms a (Tensor[n]).

    Computed in fp32 (float64 stays float64); an empty batch gives a zero connected to the graph.
    """
    lower, upper = _check_bounds(lower, upper)
    kind = parse_reg_type(reg_type)
    if kind.kind == "arc" and lower <= 0:
        raise ValueError(f"the 'arc' norm regulariser needs lower > 0, got [{lower}, {upper}]")
    a = a if a.dtype == torch.float64 else a.float()
    if a.numel() == 0:
        return a.sum() * 0.0
    span = upper - lower
    if kind.kind == "exp":
        k = kind.k
        # -expm1(-k) is 1 - e^-k without cancellation for a small k
        g = (torch.exp(-k * (a - lower) / span) / k + math.exp(-k) * (a - lower) / span) / -math.expm1(-k)
    elif kind.kind == "quad":
        g = 0.5 * (1.0 - (a - lower) / span).square()
    else:
        c = lower**2 / (span**2 * (upper + lower))
        safe_a = a.clamp_min(1e-6 * upper)
        g = c * (safe_a - upper).square() / safe_a
    return g.mean()


def gradient_only(value: torch.Tensor) -> torch.Tensor:
    """value - value.detach(): zero in value, with value's gradient (how NAMA adds the regulariser)."""
    return value - value.detach()
