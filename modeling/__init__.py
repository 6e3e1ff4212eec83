"""Models: backbones, pooling, BNNeck, the uncertainty head; `build_model(cfg)` returns the embedder."""

from __future__ import annotations

from config.choices import NECKS, PRETRAIN_CHOICES, YES_NO
from config.errors import ConfigError, check_choice
from modeling.arch import Arch, parse_arch
from modeling.backbones import build_backbone
from modeling.embedder import Embedder
from modeling.pooling import build_pooling
from modeling.weights import (
    WeightsMismatchError,
    load_imagenet_backbone,
    load_model_checkpoint,
)


def build_uncertainty_head(cfg, arch: Arch):
    """NAMA's head for an ARCH with 'uc' (MODEL.F_BASE picks its function), else None."""
    if not arch.uncertainty:
        return None
    from modeling.uncertainty import UncertaintyHead

    try:
        return UncertaintyHead(cfg.MODEL.F_BASE)
    except ValueError as err:
        raise ConfigError(f"MODEL.F_BASE = {cfg.MODEL.F_BASE!r}: {err}") from None


def build_model(cfg, load_pretrained: bool = True) -> Embedder:
    """The embedder of MODEL.*, with weights per MODEL.PRETRAIN_CHOICE (read from local files only).

    `load_pretrained=False` builds the bare architecture (test.py loads TEST.WEIGHT into it instead).
    """
    check_choice("MODEL.NECK", cfg.MODEL.NECK, NECKS)
    check_choice("MODEL.PRETRAIN_CHOICE", cfg.MODEL.PRETRAIN_CHOICE, PRETRAIN_CHOICES)
    arch = parse_arch(cfg.MODEL.ARCH)
    check_choice("MODEL.EMBEDDING_NORM", cfg.MODEL.EMBEDDING_NORM, YES_NO)
    check_choice("MODEL.BN_FREEZE", cfg.MODEL.BN_FREEZE, YES_NO)
    if cfg.MODEL.EMBEDDING_DIM < 0:
        raise ConfigError(f"MODEL.EMBEDDING_DIM = {cfg.MODEL.EMBEDDING_DIM}; expected 0 (no embedding layer) or a size")
    model = Embedder(
        build_backbone(cfg),
        neck=cfg.MODEL.NECK,
        pre_bn=arch.pre_bn,
        uc_head=build_uncertainty_head(cfg, arch),
        uc_input=arch.head_input,
        pooling=build_pooling(cfg.MODEL.POOLING, cfg.MODEL.GEM_P),
        embedding_dim=cfg.MODEL.EMBEDDING_DIM,
        embedding_norm=cfg.MODEL.EMBEDDING_NORM == "yes",
        freeze_bn=cfg.MODEL.BN_FREEZE == "yes",
    )
    if not load_pretrained:
        return model
    if cfg.MODEL.PRETRAIN_CHOICE == "imagenet":
        load_imagenet_backbone(model.backbone, cfg.MODEL.PRETRAIN_PATH)
    elif cfg.MODEL.PRETRAIN_CHOICE == "self":
        load_weights(cfg, model, cfg.MODEL.PRETRAIN_PATH, "MODEL.PRETRAIN_PATH")
    return model


def load_weights(cfg, model: Embedder, path: str, key: str) -> None:
    """One of our checkpoints into `model`; a mismatch of the uncertainty head names MODEL.ARCH / F_BASE."""
    try:
        load_model_checkpoint(model, path, key)
    except WeightsMismatchError as err:
        if "uc_head" not in str(err):
            raise
        raise WeightsMismatchError(
            f"{err}. The checkpoint's uncertainty head does not fit the one MODEL.ARCH {cfg.MODEL.ARCH!r} with "
            f"MODEL.F_BASE {cfg.MODEL.F_BASE!r} builds: use the ARCH and F_BASE it was trained with"
        ) from None


__all__ = ["Arch", "Embedder", "build_model", "load_weights", "parse_arch"]
