"""Backbone registry: MODEL.NAME -> module with `out_channels` and the name of its ImageNet weights file.

- resnet18/34/50/101: torchvision ResNets; MODEL.LAST_STRIDE (1 or 2) sets layer4's stride; input RGB in
  [0, 1] normalised by INPUT.PIXEL_MEAN / PIXEL_STD.
- bn_inception: the Caffe-trained BN-Inception of the DML papers (bn_inception-52deb4733.pth).
  MODEL.LAST_STRIDE does not apply to it: the key is accepted (still 1 or 2) and ignored. Its input convention
  is fixed by its weights (BGR, 0-255, mean [104, 117, 128], std 1): INPUT.PIXEL_MEAN / PIXEL_STD are ignored.
"""

from __future__ import annotations

from torch import nn

from config.choices import LAST_STRIDES
from config.errors import check_choice
from modeling.backbones.bn_inception import BNInception
from modeling.backbones.resnet import RESNETS, ResNetBackbone

BACKBONES = {name: (lambda name=name, **kw: ResNetBackbone(name, **kw)) for name in RESNETS}
BACKBONES["bn_inception"] = lambda last_stride=1: BNInception()  # last_stride: not applicable, ignored

# How each backbone's ImageNet weights expect their input (data/transforms.py reads it):
# "rgb": RGB in [0, 1], normalised by INPUT.PIXEL_MEAN / PIXEL_STD; "bgr255": BGR in 0-255 minus [104, 117, 128].
INPUT_CONVENTIONS = {name: "rgb" for name in RESNETS}
INPUT_CONVENTIONS["bn_inception"] = BNInception.input_convention


def build_backbone(cfg) -> nn.Module:
    """The backbone named by MODEL.NAME, randomly initialised (weights are loaded by modeling.weights)."""
    check_choice("MODEL.NAME", cfg.MODEL.NAME, tuple(BACKBONES))
    check_choice("MODEL.LAST_STRIDE", cfg.MODEL.LAST_STRIDE, LAST_STRIDES)
    return BACKBONES[cfg.MODEL.NAME](last_stride=cfg.MODEL.LAST_STRIDE)


def input_convention(model_name: str) -> str:
    """The input convention ('rgb' or 'bgr255') of backbone `model_name` (MODEL.NAME)."""
    check_choice("MODEL.NAME", model_name, tuple(BACKBONES))
    return INPUT_CONVENTIONS[model_name]
