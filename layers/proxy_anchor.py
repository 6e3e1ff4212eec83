"""Proxy Anchor loss, and the proxy initialisation the proxy-based losses share."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from layers.loss_inputs import (
    check_positive,
    check_sizes,
    cosine_to_rows,
    cosine_to_rows_backward,
    loss_dtype,
)
from layers.term import LossTerm

# Above this bound on the exponent, exp() of a sum over a batch could overflow in fp32 (e^88 ~ 1.7e38), so
# the negative side is shifted by its column maximum; below it the shift (two extra passes) is skipped.
_SAFE_EXPONENT = 60.0


def init_proxies(num_classes: int, feat_dim: int) -> nn.Parameter:
    """C x d proxies as in the Proxy Anchor codebase: randn, then kaiming_normal_ (fan_out).

    The randn draw is overwritten, but it is kept so that the random stream (and so a seeded run) follows
    the reference code.
    """
    proxies = nn.Parameter(torch.randn(num_classes, feat_dim))
    nn.init.kaiming_normal_(proxies, mode="fan_out")
    return proxies


class _ProxyAnchorNegatives(torch.autograd.Function):
    """From normalised features x and raw proxies P: the negative side of Proxy Anchor,

        neg = (1/C) sum_j log(1 + sum_{i: y_i != j} e^{alpha (s_ij + delta)}),

    and the n positive similarities s_{i, y_i} (the positive side, small, is left to autograd).

    Written as one Function because the n x C matrix is the whole cost at SOP scale: autograd's version
    runs about 15 passes over it (mask, exp, their backward, a dense scatter of the positive gradient,
    the column normalisation), this one about 6. With E_ij = e^{alpha s_ij - shift_j} (0 for i's own class)
    and t_j = 1 / (e^{-shift_j - alpha delta} + sum_i E_ij):

        neg_j = shift_j + alpha delta - log t_j,     d neg_j / d s_ij = alpha E_ij t_j.

    shift_j is 0 when |s| <= 1 cannot overflow the sum, else the column maximum of alpha (s + delta),
    at least 0, minus alpha delta. A column with no negative (single-class batch) gives exactly 0 with a
    zero gradient.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, alpha: float, delta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_classes = proxies.shape[0]
        rows = torch.arange(x.shape[0], device=x.device)
        cos, inv_norm = cosine_to_rows(x, proxies)
        s_pos = cos[rows, labels]
        expo = cos * alpha
        expo.index_put_((rows, labels), expo.new_tensor(float("-inf")))
        if alpha * (1.0 + abs(delta)) <= _SAFE_EXPONENT:
            col = expo.exp_().sum(0)
            # log(1 + e^{alpha delta} col) with log1p, accurate for the tiny sums of an easy batch
            scaled = col * math.exp(alpha * delta)
            neg = torch.log1p(scaled).sum() / num_classes
            weight = math.exp(alpha * delta) / (1.0 + scaled)
        else:
            shift = expo.amax(0).add_(alpha * delta).clamp_min_(0.0)
            col = expo.sub_(shift - alpha * delta).exp_().sum(0)
            total = col + torch.exp(-shift)
            neg = (torch.log(total) + shift).sum() / num_classes
            weight = total.reciprocal()
        ctx.save_for_backward(x, proxies, labels, inv_norm, cos, expo, weight)
        ctx.alpha = alpha
        return neg, s_pos

    @staticmethod
    @once_differentiable
    def backward(
        ctx, grad_neg: torch.Tensor, grad_pos: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        x, proxies, labels, inv_norm, cos, expo, weight = ctx.saved_tensors
        rows = torch.arange(x.shape[0], device=x.device)
        # dL/ds scaled by 1/|p_j| for cosine_to_rows_backward; own-class entries of expo are 0, so the
        # positive gradient is written there, not added
        column = weight * inv_norm * (grad_neg * ctx.alpha / proxies.shape[0])
        grad_scaled = expo * column
        grad_scaled.index_put_((rows, labels), grad_pos * inv_norm[labels])
        grad_x, grad_p = cosine_to_rows_backward(grad_scaled, x, proxies, inv_norm, cos, ctx.needs_input_grad)
        return grad_x, grad_p, None, None, None


def proxy_anchor_terms(
    x: torch.Tensor,
    proxies: torch.Tensor,
    labels: torch.Tensor,
    alpha_pos: float,
    margin_pos: float | torch.Tensor,
    alpha_neg: float,
    delta_neg: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two sides of Proxy Anchor from normalised features x and raw proxies (s = cosine similarity):

    pos = (1/|P+|) sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha_pos (s(x,p) - margin_p)})
    neg = (1/C)    sum_{p}       log(1 + sum_{x in X_p-} e^{ alpha_neg (s(x,p) + delta_neg)})

    margin_pos is a scalar or one margin per sample (the margin of its class, AMLoss). Also returns the
    sorted classes present in the batch (P+). Both log(1 + sum) give exactly 0 with a zero (not NaN)
    gradient when the sum is empty.
    """
    neg, s_pos = _ProxyAnchorNegatives.apply(x, proxies, labels, alpha_neg, delta_neg)
    # Positive side: only the n entries s(x_i, p_{y_i}) matter, grouped by class into a small k x (n + 1)
    # grid (k <= n classes in the batch); the extra column of zeros is the "1 +", so no row is all -inf.
    n = s_pos.shape[0]
    classes, group = torch.unique(labels, return_inverse=True)
    pos_exponent = (margin_pos - s_pos) * alpha_pos
    grid = pos_exponent.new_full((classes.numel(), n + 1), float("-inf"))
    grid[:, n] = 0.0
    grid = grid.index_put((group, torch.arange(n, device=s_pos.device)), pos_exponent)
    pos = torch.logsumexp(grid, dim=1).mean()
    return pos, neg, classes


class ProxyAnchorLoss(LossTerm):
    """Proxy Anchor loss (Kim, Kim, Cho, Kwak: "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020).

    With s(x, p) the cosine similarity of a sample and a proxy, P+ the proxies of the classes present in
    the batch, X_p+ the samples of p's class and X_p- the others:

        L = (1/|P+|) sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha (s(x,p) - delta)})
          + (1/C)    sum_{p}       log(1 + sum_{x in X_p-} e^{ alpha (s(x,p) + delta)})

    alpha = 32, delta = 0.1. `proxies` (C x d) are learnable (randn then kaiming_normal_ fan_out, as the
    paper's code); the paper trains them with a 100x learning rate: they are in the optimizer group 'proxy'
    (`parameter_groups`), whose learning rate is BASE_LR * PROXY_LR_FACTOR. Single-class batch: the
    negative side of that class is empty (0), the rest still counts.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 32.0, delta: float = 0.1):
        super().__init__()
        check_sizes(num_classes, feat_dim)
        check_positive("alpha", alpha)
        check_positive("delta", delta, allow_zero=True)
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.delta = float(delta)
        self.proxies = init_proxies(self.num_classes, feat_dim)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The proxies in 'proxy' (the paper's 100x learning rate)."""
        return self._groups_with({"proxy": [self.proxies]})

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if feats.shape[0] == 0:
            return feats.sum() * 0.0
        dtype = loss_dtype(feats)
        x = F.normalize(feats.to(dtype), dim=1)
        pos, neg, _ = proxy_anchor_terms(
            x, self.proxies.to(dtype), labels, self.alpha, self.delta, self.alpha, self.delta
        )
        return pos + neg

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, delta={self.delta}"
