"""NAMA's uncertainty-aware (per-sample margin) losses: `uc-tri-n` and its variants, and `uc-cls`.

Huang, He, Yang, Gao, Sang: "Norm-Aware Margin Assignment" (NAMA). The uncertainty head gives every sample i
of the batch a margin offset u_i (a learned function of its feature norm, re-balanced to mean ~0 over the
batch, with gradients flowing into it). Both losses here take it as a third argument,

    loss(feats, labels, uc)        uc: Tensor[n] of offsets u_i (None: all zero)

and declare it among their `inputs` (("feat", "uc"), ("neck_feat", "uc")), which is how the composite
criterion knows to pass the model's 'uc' output (layers/term.py). A larger u_i means a larger margin for
sample i (the "recognisable" samples); the mean margin stays the configured m.

Compute is fp32 with autocast off (float64 stays float64 so gradcheck works): at s = 32 a bf16 logit has a
resolution far coarser than the margins themselves. `uc` is cast to the same dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layers.loss_inputs import (
    check_positive,
    cosine_similarities,
    loss_dtype,
    matmul_normalized_rows,
    pair_masks,
)
from layers.term import LossTerm

# d/2 = sin(theta/2) is clamped below 1 before asin: asin'(1) is infinite (antipodal features)
_ASIN_CLAMP = 1.0 - 1e-7
# cosines are clamped into (-1, 1) before arccos, whose derivative -1/sqrt(1 - c^2) is infinite at +-1
_ACOS_EPS = 1e-7

UC_TRIPLET_FORMS = ("tri-n", "tri-hard", "pair-n")
UC_CLS_FORMS = ("arc", "cos", "angle")


def _offsets(uc: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """The offsets as a Tensor[n] in the compute dtype of `like`; None means no offsets (all zero)."""
    if uc is None:
        return like.new_zeros(n)
    if uc.shape != (n,):
        raise ValueError(f"uc must be a Tensor[n] of per-sample offsets with n = {n}, got shape {tuple(uc.shape)}")
    return uc.to(like.dtype)


def _check_form(form: str, valid: tuple[str, ...], what: str) -> str:
    if form not in valid:
        raise ValueError(f"unknown {what} form {form!r}; valid forms: {', '.join(valid)}")
    return form


class UcTripletLoss(LossTerm):
    """NAMA's uncertainty-aware triplet losses `uc-tri-n`, `uc-tri-hard`, `uc-pair-n` (Huang, He, Yang, Gao,
    Sang: "Norm-Aware Margin Assignment").

    f^ = f / ||f|| the L2-normalised features, d_ij = ||f^_i - f^_j|| = sqrt(2 - 2 cos_ij) their chord distances,
    P_a the positives of anchor a (same label, a itself excluded by index), N_a its negatives, u the offsets,
    s = `scale`, m = `margin`. The effective margin of a triplet (a, p, n) is m - (2 u_a + u_p + u_n).

    form "tri-n" (`uc-tri-n`), a smooth (log-sum-exp) triplet over all positive/negative combinations:

        L_a = (1/s) log(1 + sum_{p in P_a} sum_{n in N_a} exp(s (d_ap - d_an + m - 2 u_a - u_p - u_n)))

    computed without the n^3 tensor through the factorisation of the double sum,

        L_a = (1/s) softplus( LSE_{p in P_a}[s (d_ap - u_p)] + LSE_{n in N_a}[-s (d_an + u_n)] + s (m - 2 u_a) ).

    form "tri-hard" (`uc-tri-hard`), batch-hard with a hinge: p* = argmax_{p in P_a} (d_ap - u_p),
    n* = argmin_{n in N_a} (d_an + u_n),

        L_a = [ d_ap* - d_an* + m - 2 u_a - u_p* - u_n* ]_+ .

    form "pair-n" (`uc-pair-n`): as "tri-n" with the angles d_ij := 2 asin(d_ij / 2) (= arccos cos_ij, in
    [0, pi]) instead of the chords; d/2 is clamped to <= 1 - 1e-7 so the gradient of asin stays finite.

    L = mean of L_a over the anchors with at least one positive and one negative; a batch without such an
    anchor gives a zero connected to the graph (of feats and uc).

    Statistic `avg_margin` (all forms): the mean over those same valid anchors a of
    m - (2 u_a + mean_{p in P_a} u_p + mean_{n in N_a} u_n), i.e. the anchor's effective margin averaged
    uniformly over its positives and negatives (not the hardest pair's margin, even in "tri-hard"); with no
    valid anchor it is m.
    """

    inputs = ("feat", "uc")
    stat_names: tuple[str, ...] = ("avg_margin",)

    def __init__(self, scale: float = 32.0, margin: float = 0.2, form: str = "tri-n"):
        super().__init__()
        self.scale = check_positive("uc triplet scale", scale)
        self.margin = check_positive("uc triplet margin", margin, allow_zero=True)
        self.form = _check_form(form, UC_TRIPLET_FORMS, "uc triplet")

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}, form={self.form!r}"

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, uc: torch.Tensor | None = None) -> torch.Tensor:
        dtype = loss_dtype(feats)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x = feats.to(dtype)
            u = _offsets(uc, labels.numel(), x)
            pos, neg = pair_masks(labels)
            valid = pos.any(1) & neg.any(1)
            self._record_margin(u, pos, neg, valid)
            # An anchor with an empty side would reduce over nothing (an all -inf logsumexp, whose backward is
            # 0 * NaN even for a row weighted 0 later): open its rows, then weight it 0. Masks, not a selection:
            # no data-dependent shape, no host synchronisation.
            dropped = ~valid[:, None]
            pos, neg = pos | dropped, neg | dropped
            d = (2.0 - 2.0 * cosine_similarities(x)).clamp_min(1e-12).sqrt()
            if self.form == "pair-n":
                d = 2.0 * torch.asin((0.5 * d).clamp_max(_ASIN_CLAMP))
            if self.form == "tri-hard":
                hardest_pos = (d - u[None, :]).masked_fill(~pos, float("-inf")).amax(1)
                hardest_neg = (d + u[None, :]).masked_fill(~neg, float("inf")).amin(1)
                per_anchor = F.relu(hardest_pos - hardest_neg + (self.margin - 2.0 * u))
            else:
                s = self.scale
                lse_pos = (s * (d - u[None, :])).masked_fill(~pos, float("-inf")).logsumexp(1)
                lse_neg = (-s * (d + u[None, :])).masked_fill(~neg, float("-inf")).logsumexp(1)
                per_anchor = F.softplus(lse_pos + lse_neg + s * (self.margin - 2.0 * u)) / s
            # the mean over the valid anchors; none: a zero connected to the graph (of feats and uc)
            return (per_anchor * valid).sum() / valid.sum().clamp(min=1)

    @torch.no_grad()
    def _record_margin(self, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor) -> None:
        u = u.detach()
        pos_f, neg_f = pos.to(u.dtype), neg.to(u.dtype)
        # rows without a positive/negative divide 0 by 0 here; they are dropped by `valid` just below
        mean_pos = (pos_f @ u) / pos_f.sum(1)
        mean_neg = (neg_f @ u) / neg_f.sum(1)
        margin = torch.where(valid, self.margin - (2.0 * u + mean_pos + mean_neg), torch.zeros_like(u))
        count = valid.sum()
        average = margin.sum() / count.clamp(min=1)
        self.stats = {"avg_margin": torch.where(count > 0, average, torch.full_like(average, self.margin))}


class UcClsHead(LossTerm):
    """NAMA's uncertainty-aware classification loss `uc-cls` (Huang, He, Yang, Gao, Sang: "Norm-Aware Margin
    Assignment"), a cosine classifier with a per-sample margin 2 u_i.

    W (C x d, `weight`) the class weights, cos_ij the cosine of f_i and w_j, theta_ij = arccos(cos_ij) with
    cos clamped to [-1 + 1e-7, 1 - 1e-7] (so the gradient of arccos stays finite), y_i the label, u_i the
    offset, s = `scale` (NAMA's `SOLVER.CS`), m = `margin`. The margin logits z_ij:

        "arc":            z_iy = s cos(theta_iy + u_i + m),   z_ij = s cos(theta_ij - u_i)        (j != y_i)
        "cos":            z_iy = s (cos_iy - u_i + m),        z_ij = s (cos_ij + u_i)
        "angle" (default, NAMA's `clsuc`):
                          z_iy = s (pi/2 - theta_iy - u_i + m),  z_ij = s (pi/2 - theta_ij + u_i)

    and L = -(1/n) sum_i sum_j q_ij log softmax(z_i)_j with q_ij = (1 - eps)[j = y_i] + eps/C
    (eps = `label_smoothing`, 0: plain cross-entropy).

    The sample's margin is 2 u_i in every form (target and other classes each move by u_i). The constant m
    acts in opposite directions: in "arc" it ADDS to the angular margin (total 2 u_i + m, ArcFace-like), in
    "cos" and "angle" it EASES it (the target logit is raised by s m: total margin 2 u_i - m), as NAMA defines
    them. "arc" is used as written for every angle (no ArcFace fallback beyond theta + u + m > pi).

    forward(feats, labels, uc) returns (L, s cos): the logits for accuracy carry no margin and no offset.

    Statistic `avg_margin`: the batch mean of the per-sample margin including m's effect as above, i.e.
    mean_i(2 u_i) + m for "arc" and mean_i(2 u_i) - m for "cos" and "angle" (in radians for "arc" and
    "angle", in cosine units for "cos").

    The weights are initialised N(0, 0.01^2), as the project's other cosine heads.
    """

    inputs = ("neck_feat", "uc")
    stat_names: tuple[str, ...] = ("avg_margin",)

    def __init__(
        self,
        feat_dim: int,
        num_classes: int,
        scale: float = 16.0,
        margin: float = 0.0,
        form: str = "angle",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
            raise ValueError(f"feat_dim must be a positive integer, got {feat_dim!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.scale = check_positive("uc-cls scale", scale)
        self.margin = check_positive("uc-cls margin", margin, allow_zero=True)
        self.form = _check_form(form, UC_CLS_FORMS, "uc-cls")
        smoothing = check_positive("uc-cls label_smoothing", label_smoothing, allow_zero=True)
        if smoothing >= 1.0:
            raise ValueError(f"uc-cls label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = smoothing
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}, form={self.form!r}, label_smoothing={self.label_smoothing}"
        )

    def forward(
        self, feats: torch.Tensor, labels: torch.Tensor, uc: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = loss_dtype(feats)
        s, m = self.scale, self.margin
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x = feats.to(dtype)
            u = _offsets(uc, labels.numel(), x)
            w = self.weight.to(dtype)
            cos = matmul_normalized_rows(F.normalize(x, dim=1), w)
            logits = s * cos
            if labels.numel() == 0:
                # the mean over an empty batch would be NaN
                self.stats = {"avg_margin": x.new_tensor(m if self.form == "arc" else -m)}
                return (x.sum() + u.sum()) * 0.0, logits
            idx = labels.view(-1, 1)
            if self.form == "cos":
                # every column + s u; the target column in addition - s (2u - m)
                z = (logits + (s * u)[:, None]).scatter_add(1, idx, (-s * (2.0 * u - m))[:, None])
            else:
                theta = torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
                if self.form == "angle":
                    z = (s * (math.pi / 2 - theta + u[:, None])).scatter_add(1, idx, (-s * (2.0 * u - m))[:, None])
                else:
                    target = s * torch.cos(theta.gather(1, idx) + (u + m)[:, None])
                    z = (s * torch.cos(theta - u[:, None])).scatter(1, idx, target)
            loss = F.cross_entropy(z, labels, label_smoothing=self.label_smoothing)
            with torch.no_grad():
                effect = m if self.form == "arc" else -m
                self.stats = {"avg_margin": 2.0 * u.detach().mean() + effect}
        return loss, logits
