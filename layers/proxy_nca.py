"""Proxy-NCA loss (softmax form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layers.loss_inputs import (
    check_positive,
    check_sizes,
    loss_dtype,
    matmul_normalized_rows,
)
from layers.proxy_anchor import init_proxies
from layers.term import LossTerm


class ProxyNCALoss(LossTerm):
    """Proxy-NCA (Movshovitz-Attias, Toshev, Leung, Ioffe, Singh: "No Fuss Distance Metric Learning using
    Proxies", ICCV 2017), in the softmax form of the Proxy Anchor codebase and pytorch-metric-learning.

    With x^ and p^ the L2-normalised features and proxies and y_i the label of sample i:

        L = -(1/n) sum_i log softmax_j( -scale * ||x^_i - p^_j||^2 )_{y_i}

    scale = 9 is the codebase's "normalise, then multiply both by 3". The proxy of the sample's own class is
    in the denominator (softmax over all C proxies). `proxies` (C x d): randn then kaiming_normal_ (fan_out),
    in the optimizer group 'proxy' (`parameter_groups`) as Proxy Anchor's.

    Computed as cross-entropy on the logits 2 * scale * cos(x_i, p_j): ||x^ - p^||^2 = 2 - 2 cos, and the
    constant -2 * scale cancels in the softmax. Every sample has its proxy, so a batch always has something
    to learn (a single-class batch included).
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, num_classes: int, feat_dim: int, scale: float = 9.0):
        super().__init__()
        check_sizes(num_classes, feat_dim)
        check_positive("scale", scale)
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.proxies = init_proxies(self.num_classes, feat_dim)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The proxies in 'proxy'."""
        return self._groups_with({"proxy": [self.proxies]})

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if feats.shape[0] == 0:
            return feats.sum() * 0.0
        dtype = loss_dtype(feats)
        # the factor goes on the n x d side, the cheapest place to apply it
        x = F.normalize(feats.to(dtype), dim=1) * (2.0 * self.scale)
        logits = matmul_normalized_rows(x, self.proxies.to(dtype))
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, scale={self.scale}"
