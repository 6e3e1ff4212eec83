"""The embedder: backbone -> global average pooling -> BNNeck. Holds no class-count-dependent weights."""

from __future__ import annotations

import torch
from torch import nn


class BNNeck(nn.Module):
    """BatchNorm1d on the pooled feature with its bias frozen at 0 (Luo et al., "Bag of Tricks", 2019).

    The metric loss sees the feature before the neck, the classification loss the one after it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class Embedder(nn.Module):
    """images (N, 3, H, W) -> {'feat': pooled feature, 'neck_feat': after BNNeck (= feat without neck)}."""

    def __init__(self, backbone: nn.Module, neck: str = "bnneck"):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = backbone.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = BNNeck(self.feat_dim) if neck == "bnneck" else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.pool(self.backbone(images)).flatten(1)
        neck_feat = self.neck(feat) if self.neck is not None else feat
        return {"feat": feat, "neck_feat": neck_feat}
