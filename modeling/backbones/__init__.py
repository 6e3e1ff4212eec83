"""Backbone registry: MODEL.NAME -> module with `out_channels` and the name of its ImageNet weights file."""

from __future__ import annotations

from torch import nn

from config.errors import check_choice
from modeling.backbones.resnet import RESNETS, ResNetBackbone

BACKBONES = {name: (lambda name=name, **kw: ResNetBackbone(name, **kw)) for name in RESNETS}


def build_backbone(cfg) -> nn.Module:
    """The backbone named by MODEL.NAME, randomly initialised (weights are loaded by modeling.weights)."""
    check_choice("MODEL.NAME", cfg.MODEL.NAME, tuple(BACKBONES))
    check_choice("MODEL.LAST_STRIDE", cfg.MODEL.LAST_STRIDE, (1, 2))
    return BACKBONES[cfg.MODEL.NAME](last_stride=cfg.MODEL.LAST_STRIDE)
