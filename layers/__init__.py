"""Losses: registries by config name and `build_loss`, which returns the run's composite criterion."""

from __future__ import annotations

from typing import Callable

from torch import nn

from config.errors import ConfigError, check_choice
from layers.composite import CompositeLoss
from layers.softmax import SoftmaxClassifierLoss
from layers.triplet import BatchHardTripletLoss

# name -> builder(cfg, num_classes, feat_dim) -> module, or None for 'none'
CLS_LOSSES: dict[str, Callable[..., nn.Module | None]] = {
    "softmax": lambda cfg, num_classes, feat_dim: SoftmaxClassifierLoss(
        feat_dim, num_classes, label_smoothing=0.1 if cfg.MODEL.IF_LABELSMOOTH == "on" else 0.0
    ),
    "none": lambda cfg, num_classes, feat_dim: None,
}
METRIC_LOSSES: dict[str, Callable[..., nn.Module | None]] = {
    "triplet": lambda cfg, num_classes, feat_dim: BatchHardTripletLoss(margin=cfg.SOLVER.MARGIN),
    "none": lambda cfg, num_classes, feat_dim: None,
}


def build_loss(cfg, num_classes: int, feat_dim: int) -> CompositeLoss:
    """The criterion of MODEL.CLS_LOSS_TYPE and MODEL.METRIC_LOSS_TYPE with their SOLVER weights."""
    check_choice("MODEL.CLS_LOSS_TYPE", cfg.MODEL.CLS_LOSS_TYPE, tuple(CLS_LOSSES))
    check_choice("MODEL.METRIC_LOSS_TYPE", cfg.MODEL.METRIC_LOSS_TYPE, tuple(METRIC_LOSSES))
    check_choice("MODEL.IF_LABELSMOOTH", cfg.MODEL.IF_LABELSMOOTH, ("on", "off"))
    cls_term = CLS_LOSSES[cfg.MODEL.CLS_LOSS_TYPE](cfg, num_classes, feat_dim)
    metric_term = METRIC_LOSSES[cfg.MODEL.METRIC_LOSS_TYPE](cfg, num_classes, feat_dim)
    if cls_term is None and metric_term is None:
        raise ConfigError("MODEL.CLS_LOSS_TYPE and MODEL.METRIC_LOSS_TYPE are both 'none': nothing would train")
    return CompositeLoss(cls_term, metric_term, cfg.SOLVER.CLS_LOSS_WEIGHT, cfg.SOLVER.TRI_LOSS_WEIGHT)


__all__ = ["CLS_LOSSES", "METRIC_LOSSES", "CompositeLoss", "build_loss"]
