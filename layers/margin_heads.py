"""Cosine classification heads with margins: ArcFace, CosFace, NormFace (normalised softmax), Circle.

All four share one skeleton. With f_i the i-th feature, w_j the j-th row of the class weights W (C x d) and

    cos_ij = <f_i / ||f_i||, w_j / ||w_j||>,

the head builds margin logits z_ij (the target column j = y_i and/or the other columns changed by the margin),
and the loss is the (optionally label-smoothed) cross-entropy averaged over the batch:

    L = -(1/n) sum_i sum_j q_ij log softmax(z_i)_j,   q_ij = (1 - eps) [j = y_i] + eps / C

(eps = `label_smoothing`; eps = 0 is plain cross-entropy). `forward` returns (L, s * cos): the logits handed
back for accuracy carry no margin, so the accuracy is the one of the nearest class weight, as at test time.

Compute is fp32 (float64 stays float64, so gradcheck works), with autocast off: at s = 30 and above a bf16
logit has a resolution of ~0.1-0.25, coarser than the margins themselves.

The weights are initialised N(0, 0.01^2) as in insightface's arcface_torch. The loss only sees the directions
of the rows, but their norm sets the effective learning rate of W (the gradient of w / ||w|| scales as
1 / ||w||), so a fixed small std keeps that rate independent of C, unlike xavier (std sqrt(2 / (C + d))).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from layers.loss_inputs import matmul_normalized_rows
from layers.term import LossTerm


class _CosineMarginHead(LossTerm):
    """The shared part: weights, argument checks, fp32 cosine logits, the cross-entropy.

    Subclasses implement `_margin_logits(logits, labels)`, which gets the plain logits s * cos (n x C) and
    returns the margin logits z; it must not modify `logits` in place (they are returned for accuracy).
    """

    inputs = ("neck_feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, feat_dim: int, num_classes: int, scale: float, margin: float, label_smoothing: float):
        super().__init__()
        if not isinstance(feat_dim, int) or feat_dim < 1:
            raise ValueError(f"feat_dim must be a positive integer, got {feat_dim!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale!r}")
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.scale, self.margin, self.label_smoothing = float(scale), float(margin), float(label_smoothing)
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}, label_smoothing={self.label_smoothing}"
        )

    def _margin_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float64 if feats.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x, w = feats.to(dtype), self.weight.to(dtype)
            logits = matmul_normalized_rows(F.normalize(x, dim=1) * self.scale, w)
            if labels.numel() == 0:
                # an empty batch: the mean of nothing would be NaN
                return feats.sum() * 0.0, logits
            z = self._margin_logits(logits, labels)
            loss = F.cross_entropy(z, labels, label_smoothing=self.label_smoothing)
        return loss, logits


class ArcFaceHead(_CosineMarginHead):
    """ArcFace, additive angular margin (Deng, Guo, Xue, Zafeiriou: "ArcFace: Additive Angular Margin Loss for
    Deep Face Recognition", CVPR 2019).

    With theta_iy = arccos(cos_iy) the angle to the own class weight, margin m (radians, default 0.5):

        z_iy = s cos(theta_iy + m),   z_ij = s cos_ij  (j != y_i),
        L = -(1/n) sum_i sum_j q_ij log softmax(z_i)_j  (q: label smoothing, see the module docstring).

    The formula is used as it is for every angle, through arccos of the cosine clamped to
    [-1 + 1e-7, 1 - 1e-7]: d arccos(c)/dc = -1/sqrt(1 - c^2) is infinite at |c| = 1 (a feature exactly on
    its class weight, e.g. after a collapse), and the clamp keeps the gradient finite there.
    No fallback is applied when theta + m > pi, where cos(theta + m) grows again with theta. insightface
    offers two: "easy margin" (no margin at all while cos_y <= 0, which removes it from the hard samples where
    it matters most) and its default, replacing the target logit by s (cos_y - m sin m) beyond theta = pi - m
    (also what pytorch-metric-learning 2.x's ArcFaceLoss does). That region, cos_y < -cos m (< -0.877 for
    m = 0.5), is practically never reached by a feature of a few hundred dimensions, and the plain formula
    keeps the loss continuous.
    """

    def __init__(
        self, feat_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5, label_smoothing: float = 0.0
    ):
        if not margin < math.pi / 2:
            raise ValueError(f"ArcFace margin is an angle in radians and must be < pi/2, got {margin!r}")
        super().__init__(feat_dim, num_classes, scale, margin, label_smoothing)

    def _margin_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        idx = labels.view(-1, 1)
        cos_y = logits.gather(1, idx) / self.scale
        eps = 1e-7
        theta = torch.acos(cos_y.clamp(-1.0 + eps, 1.0 - eps))
        return logits.scatter(1, idx, torch.cos(theta + self.margin) * self.scale)


class CosFaceHead(_CosineMarginHead):
    """CosFace, additive cosine margin (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu: "CosFace: Large Margin
    Cosine Loss for Deep Face Recognition", CVPR 2018; also AM-Softmax, Wang et al., IEEE SPL 2018).

    With margin m (default 0.35):

        z_iy = s (cos_iy - m),   z_ij = s cos_ij  (j != y_i),
        L = -(1/n) sum_i sum_j q_ij log softmax(z_i)_j  (q: label smoothing, see the module docstring).
    """

    def __init__(
        self, feat_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.35, label_smoothing: float = 0.0
    ):
        super().__init__(feat_dim, num_classes, scale, margin, label_smoothing)

    def _margin_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        idx = labels.view(-1, 1)
        return logits.scatter(1, idx, logits.gather(1, idx) - self.scale * self.margin)


class NormSoftmaxHead(_CosineMarginHead):
    """NormFace, normalised softmax (Wang, Xiang, Cheng, Yuille: "NormFace: L2 Hypersphere Embedding for Face
    Verification", ACM Multimedia 2017; pytorch-metric-learning's NormalizedSoftmaxLoss with
    temperature = 1 / s).

        z_ij = s cos_ij,   L = -(1/n) sum_i sum_j q_ij log softmax(z_i)_j  (q: label smoothing, see the
        module docstring).

    There is no margin; the constructor takes none.
    """

    def __init__(self, feat_dim: int, num_classes: int, scale: float = 30.0, label_smoothing: float = 0.0):
        super().__init__(feat_dim, num_classes, scale, 0.0, label_smoothing)

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, scale={self.scale}, "
            f"label_smoothing={self.label_smoothing}"
        )

    def _margin_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits


class CircleClsHead(_CosineMarginHead):
    """Circle loss, classification form (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei: "Circle Loss: A Unified
    Perspective of Pair Similarity Optimization", CVPR 2020, the class-level-label case).

    With margin (relaxation) m (default 0.25), optima O_p = 1 + m, O_n = -m and decision margins
    Delta_p = 1 - m, Delta_n = m, the self-paced weights (constants for the gradient, as in the paper)

        a_p = [1 + m - cos_iy]_+,   a_n,j = [cos_ij + m]_+,

    give the logits

        z_iy = s a_p (cos_iy - (1 - m)),   z_ij = s a_n,j (cos_ij - m)  (j != y_i),
        L = -(1/n) sum_i sum_j q_ij log softmax(z_i)_j  (q: label smoothing, see the module docstring),

    which for eps = 0 is the paper's log(1 + sum_j exp(z_ij) exp(-z_iy)).
    """

    def __init__(
        self, feat_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.25, label_smoothing: float = 0.0
    ):
        if not margin < 1.0:
            raise ValueError(f"Circle margin must be in [0, 1), got {margin!r}")
        super().__init__(feat_dim, num_classes, scale, margin, label_smoothing)

    def _margin_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s, m = self.scale, self.margin
        idx = labels.view(-1, 1)
        # working on s*cos directly: a_n = relu(s cos + s m) / s, and s a_n (cos - m) = a_n (s cos - s m)
        with torch.no_grad():
            a_n = (logits + s * m).clamp_min_(0.0).div_(s)
        z = (logits - s * m) * a_n
        cos_y = logits.gather(1, idx) / s
        a_p = (1.0 + m - cos_y.detach()).clamp_min(0.0)
        return z.scatter(1, idx, s * a_p * (cos_y - (1.0 - m)))
