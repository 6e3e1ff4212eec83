"""AMLoss: Proxy Anchor with a learnable per-class margin and a proxy-to-proxy term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from layers.loss_inputs import check_positive, check_sizes, loss_dtype
from layers.proxy_anchor import init_proxies, proxy_anchor_terms
from layers.term import LossTerm, OwnOptimizerSpec, StepLRSpec


class _ProxyProxyTerm(torch.autograd.Function):
    """L_pp = (1/C) sum_i log(1 + sum_{j != i} e^{s(p_i, p_j) - m_i + delta}) from normalised proxies.

    It is C x C (128M entries for SOP, where it costs far more than the rest of the loss), so instead of
    autograd's version (the full C x C exp output, a C x C gradient per matmul operand, two C x C x d GEMMs
    backward) it uses the symmetry of S = P^ P^^T: E_ij = e^{s_ij} (0 on the diagonal; in [1/e, e], so no
    overflow) is computed and kept only for j >= the first row of i's block of `block` rows (about half of
    the matrix), the row sums r_i = sum_j E_ij taking the missing part from the columns. Then
    u_i = delta - m_i + log r_i and L_pp = (1/C) sum_i log(1 + e^{u_i}). With c_i = sigmoid(u_i) / (C r_i)
    = dL/dr_i and W = E * (c_i + c_j) (symmetric): dL/dP^ = W P^, one strip and its transpose at a time,
    and dL/dm_i = -sigmoid(u_i) / C.
    """

    @staticmethod
    def forward(ctx, p_hat: torch.Tensor, margins: torch.Tensor, delta: float, block: int) -> torch.Tensor:
        num_classes = p_hat.shape[0]
        row_sum = p_hat.new_zeros(num_classes)
        strips = []
        for start in range(0, num_classes, block):
            stop = min(start + block, num_classes)
            # rows start:stop against columns start:C; the columns before are in earlier strips' transposes
            strip = (p_hat[start:stop] @ p_hat[start:].t()).exp_()
            strip.diagonal().zero_()  # (i, i): the proxy itself
            row_sum[start:stop] += strip.sum(1)
            row_sum[stop:] += strip[:, stop - start :].sum(0)
            strips.append(strip)
        # row_sum >= (C - 1) / e > 0 for C >= 2 (the caller skips C = 1)
        u = delta - margins + torch.log(row_sum)
        ctx.save_for_backward(p_hat, row_sum, u, *strips)
        ctx.block = block
        return torch.logaddexp(u, torch.zeros_like(u)).sum() / num_classes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        p_hat, row_sum, u, *strips = ctx.saved_tensors
        num_classes = p_hat.shape[0]
        weight = torch.sigmoid(u) * (grad_out / num_classes)
        grad_margins = -weight if ctx.needs_input_grad[1] else None
        grad_p = None
        if ctx.needs_input_grad[0]:
            c = weight / row_sum
            grad_p = torch.zeros_like(p_hat)
            for strip, start in zip(strips, range(0, num_classes, ctx.block)):
                stop = start + strip.shape[0]
                w = (c[start:stop, None] + c[None, start:]).mul_(strip)
                grad_p[start:stop].addmm_(w, p_hat[start:])
                grad_p[stop:].addmm_(w[:, stop - start :].t(), p_hat[start:stop])
        return grad_p, grad_margins, None, None


class AMLoss(LossTerm):
    """AMLoss (Wang, Liu, Lang, Zhou, Shan: "Learnable dynamic margin in deep metric learning", Pattern
    Recognition 132, 2022): Proxy Anchor with a learnable margin per class and a proxy-to-proxy term.

    s = cosine similarity, P+ the proxies of the classes in the batch, X_p+ / X_p- the samples of / not of
    p's class, m_c the learnable margin of class c, C the number of classes:

        L_pos = (1/|P+|) sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha_pos (s(x,p) - m_p)})
        L_neg = (1/C)    sum_{p}       log(1 + sum_{x in X_p-} e^{ alpha_neg (s(x,p) + delta_neg)})
        L_pp  = (1/C)    sum_i         log(1 + sum_{j != i} e^{s(p_i,p_j) - m_i + pp_delta})   (no scale)
        L     = L_pos + L_neg + pp_weight * L_pp

    alpha_pos = alpha_neg = 32 (48 in the CUB/Cars recipes), delta_neg = 0.1, margins initialised at 0.1,
    pp_delta = 0.1, pp_weight = 1. With pp_weight = 0, every margin = delta_neg and alpha_pos = alpha_neg it
    is Proxy Anchor (alpha, delta). Learnable parameters: `proxies` (C x d; randn then kaiming_normal_
    fan_out; group 'proxy', the 100x learning rate of Proxy Anchor) and `margins` (C,), which train in an
    optimizer of their own, 'margins' (`own_optimizers`): AdamW (lr `margin_lr` 1e-4, weight decay
    `margin_weight_decay` 1e-4) with a StepLR (`margin_decay_step` 10 epochs, `margin_decay_gamma` 0.5), as
    the AMLoss code trains them. Proxies and margins stay trainable during warm-up. The solver builds those
    optimizers; nothing here touches them.

    L_pp is over all C proxies at every step: a C x C matrix (at SOP, C = 11,318: about half of it, 0.3 GB
    in fp32, kept for the backward pass, and 1.5 C x C x d GEMMs per step); pp_weight = 0 skips it.

    Statistic `avg_margin`: the mean margin of the classes present in the batch (the proxies of P+, whose
    margins the positive side uses this step), not of all C classes.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ("avg_margin",)
    # rows per strip of the proxy-to-proxy matrix: large enough for efficient GEMMs, small enough that the
    # symmetry saves most of the other half (55% of the matrix computed at C = 11,318)
    _pp_block: int = 1024

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        alpha_pos: float = 32.0,
        alpha_neg: float = 32.0,
        delta_neg: float = 0.1,
        margin_init: float = 0.1,
        pp_delta: float = 0.1,
        pp_weight: float = 1.0,
        margin_lr: float = 1e-4,
        margin_weight_decay: float = 1e-4,
        margin_decay_step: int = 10,
        margin_decay_gamma: float = 0.5,
    ):
        super().__init__()
        check_sizes(num_classes, feat_dim)
        check_positive("alpha_pos", alpha_pos)
        check_positive("alpha_neg", alpha_neg)
        check_positive("delta_neg", delta_neg, allow_zero=True)
        check_positive("margin_init", margin_init, allow_zero=True)
        check_positive("pp_delta", pp_delta, allow_zero=True)
        check_positive("pp_weight", pp_weight, allow_zero=True)
        check_positive("margin_lr", margin_lr, allow_zero=True)
        check_positive("margin_weight_decay", margin_weight_decay, allow_zero=True)
        check_positive("margin_decay_step", margin_decay_step)
        check_positive("margin_decay_gamma", margin_decay_gamma, allow_zero=True)
        self.num_classes = int(num_classes)
        self.alpha_pos = float(alpha_pos)
        self.alpha_neg = float(alpha_neg)
        self.delta_neg = float(delta_neg)
        self.pp_delta = float(pp_delta)
        self.pp_weight = float(pp_weight)
        self.proxies = init_proxies(self.num_classes, feat_dim)
        self.margins = nn.Parameter(torch.full((self.num_classes,), float(margin_init)))
        # kept as given (not converted): the solver passes them on to AdamW / StepLR unchanged
        self.margin_lr, self.margin_weight_decay = margin_lr, margin_weight_decay
        self.margin_schedule = StepLRSpec(margin_decay_step, margin_decay_gamma)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The proxies in 'proxy' (the margins train in their own optimizer)."""
        return self._groups_with({"proxy": [self.proxies]})

    def own_optimizers(self) -> dict[str, OwnOptimizerSpec]:
        """'margins': AdamW with a StepLR, the hyper-parameters given to the constructor."""
        # built on demand: the spec must hold the current Parameter objects (a device move may replace them)
        return {
            "margins": OwnOptimizerSpec(
                (self.margins,),
                "AdamW",
                lr=self.margin_lr,
                weight_decay=self.margin_weight_decay,
                schedule=self.margin_schedule,
            )
        }

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if feats.shape[0] == 0:
            self.stats = {"avg_margin": self.margins.detach().float().mean()}
            return feats.sum() * 0.0
        dtype = loss_dtype(feats)
        proxies = self.proxies.to(dtype)
        margins = self.margins.to(dtype)
        x = F.normalize(feats.to(dtype), dim=1)
        pos, neg, classes = proxy_anchor_terms(
            x, proxies, labels, self.alpha_pos, margins[labels], self.alpha_neg, self.delta_neg
        )
        loss = pos + neg
        if self.pp_weight > 0 and self.num_classes > 1:
            loss = loss + self.pp_weight * _ProxyProxyTerm.apply(
                F.normalize(proxies, dim=1), margins, self.pp_delta, self._pp_block
            )
        self.stats = {"avg_margin": self.margins.detach()[classes].float().mean()}
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha_pos={self.alpha_pos}, alpha_neg={self.alpha_neg}, "
            f"delta_neg={self.delta_neg}, pp_delta={self.pp_delta}, pp_weight={self.pp_weight}"
        )
