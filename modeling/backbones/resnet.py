"""torchvision ResNets as feature extractors (no pooling, no classifier) with a configurable last stride."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

RESNETS = {
    "resnet18": (models.resnet18, 512, "resnet18-f37072fd.pth"),
    "resnet34": (models.resnet34, 512, "resnet34-b627a593.pth"),
    "resnet50": (models.resnet50, 2048, "resnet50-0676ba61.pth"),
    "resnet101": (models.resnet101, 2048, "resnet101-63fe2227.pth"),
}


class ResNetBackbone(nn.Module):
    """Stem + four stages of a torchvision ResNet; output (N, C, H/16 or H/32, W/16 or W/32).

    Parameter names are torchvision's (conv1, bn1, layer1..layer4), so its ImageNet files load as they are.
    `last_stride` 1 keeps layer4 at the resolution of layer3 (Luo et al., "Bag of Tricks", 2019).
    """

    def __init__(self, name: str, last_stride: int = 1):
        super().__init__()
        constructor, self.out_channels, self.weights_file = RESNETS[name]
        net = constructor(weights=None)
        if last_stride not in (1, 2):
            raise ValueError(f"last stride must be 1 or 2, got {last_stride}")
        block = net.layer4[0]
        # torchvision puts the stride in conv2 for Bottleneck and conv1 for BasicBlock.
        strided = block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1
        strided.stride = (last_stride, last_stride)
        if block.downsample is not None:
            block.downsample[0].stride = (last_stride, last_stride)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
