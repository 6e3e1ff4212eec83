"""Models: backbones, pooling, BNNeck; `build_model(cfg)` returns the embedder."""

from __future__ import annotations

from config.errors import check_choice
from modeling.backbones import build_backbone
from modeling.embedder import Embedder
from modeling.weights import load_imagenet_backbone, load_model_checkpoint

PRETRAIN_CHOICES = ("imagenet", "self", "none")
NECKS = ("bnneck", "no")


def build_model(cfg, load_pretrained: bool = True) -> Embedder:
    """The embedder of MODEL.*, with weights per MODEL.PRETRAIN_CHOICE (read from local files only).

    `load_pretrained=False` builds the bare architecture (test.py loads TEST.WEIGHT into it instead).
    """
    check_choice("MODEL.NECK", cfg.MODEL.NECK, NECKS)
    check_choice("MODEL.PRETRAIN_CHOICE", cfg.MODEL.PRETRAIN_CHOICE, PRETRAIN_CHOICES)
    model = Embedder(build_backbone(cfg), neck=cfg.MODEL.NECK)
    if not load_pretrained:
        return model
    if cfg.MODEL.PRETRAIN_CHOICE == "imagenet":
        load_imagenet_backbone(model.backbone, cfg.MODEL.PRETRAIN_PATH)
    elif cfg.MODEL.PRETRAIN_CHOICE == "self":
        load_model_checkpoint(model, cfg.MODEL.PRETRAIN_PATH, "MODEL.PRETRAIN_PATH")
    return model


__all__ = ["build_model", "Embedder"]
