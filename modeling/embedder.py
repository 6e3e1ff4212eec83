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
    """images (N, 3, H, W) -> {'feat': pooled feature, 'neck_feat': after BNNeck (= feat without neck)}, and
    with an uncertainty head (NAMA) also 'uc' (each sample's margin offset u) and 'uc_norm' (the feature norm
    the head read), computed from `uc_input` ('feat' on the metric path, 'neck_feat' on the classification
    path). `pre_bn` puts a BatchNorm1d on the pooled feature (NAMA's 'bn' ARCH token)."""

    def __init__(self, backbone: nn.Module, neck: str = "bnneck", pre_bn: bool = False,
                 uc_head: nn.Module | None = None, uc_input: str = "feat"):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = backbone.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre_bn = nn.BatchNorm1d(self.feat_dim) if pre_bn else None
        self.neck = BNNeck(self.feat_dim) if neck == "bnneck" else None
        self.uc_head = uc_head
        self.uc_input = uc_input

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.pool(self.backbone(images)).flatten(1)
        if self.pre_bn is not None:
            feat = self.pre_bn(feat)
        neck_feat = self.neck(feat) if self.neck is not None else feat
        outputs = {"feat": feat, "neck_feat": neck_feat}
        if self.uc_head is not None:
            outputs["uc"], outputs["uc_norm"] = self.uc_head(outputs[self.uc_input])
        return outputs
