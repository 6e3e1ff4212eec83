"""Global pooling of a feature map (N, C, H, W) -> (N, C): MODEL.POOLING."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config.choices import POOLINGS
from config.errors import check_choice


class GeneralizedMeanPooling(nn.Module):
    """GeM (Radenovic, Tolias, Chum: "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018):
    f_c = (mean_{h,w} max(x, eps)^p)^(1/p) with a learnable p (p = 1: average, p -> inf: max pooling)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp_min(1.0)
        return F.adaptive_avg_pool2d(x.clamp_min(self.eps).pow(p), 1).pow(1.0 / p).flatten(1)


class SumOfPoolings(nn.Module):
    """Global average pooling + global max pooling, summed (Proxy Anchor's and DDTAS's embedding input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)).flatten(1)


class Flattened(nn.Module):
    """A 2-d adaptive pooling to 1 x 1, flattened."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


def build_pooling(name: str, gem_p: float = 3.0) -> nn.Module:
    """The pooling of MODEL.POOLING (MODEL.GEM_P for 'gem')."""
    check_choice("MODEL.POOLING", name, POOLINGS)
    if name == "avg":
        return Flattened(nn.AdaptiveAvgPool2d(1))
    if name == "max":
        return Flattened(nn.AdaptiveMaxPool2d(1))
    if name == "avg+max":
        return SumOfPoolings()
    return GeneralizedMeanPooling(gem_p)
