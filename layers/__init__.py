"""Losses: registries by config name and `build_loss`, which returns the run's composite criterion.

MODEL.CLS_LOSS_TYPE names one classification head (on the neck feature); MODEL.METRIC_LOSS_TYPE names one or
more metric losses joined by '+' (on the pooled feature), e.g. 'ms+center'. Each builder takes
(cfg, num_classes, feat_dim) and reads its hyper-parameters from the LOSS node (or the SOLVER keys the seeds
use), including those of the optimizers some parameters train in on their own (AMLoss's margins, the center
loss's centers), which the term declares and the solver builds. Every term is a layers.term.LossTerm.
'pml:<LossClass>' builds any pytorch-metric-learning loss (layers/pml_catalogue.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from config.choices import CONTRASTIVE_REDUCTIONS, ON_OFF, SOFT_CONTRASTIVE_MININGS, YES_NO
from config.errors import ConfigError, check_choice
from layers.amloss import AMLoss
from layers.center import CenterLoss
from layers.circle import CirclePairLoss
from layers.composite import CompositeLoss
from layers.contrastive import ContrastiveLoss
from layers.margin_heads import ArcFaceHead, CircleClsHead, CosFaceHead, NormSoftmaxHead
from layers.margin_loss import MarginLoss
from layers.multi_similarity import MultiSimilarityLoss
from layers.norm_regularizer import norm_regularizer, parse_reg_type
from layers.pairwise_cosface import PairwiseCosFaceLoss
from layers.pml_catalogue import PREFIX as PML_PREFIX
from layers.pml_catalogue import PMLMetricLoss, build_pml_loss, build_pml_miner
from layers.proxy_anchor import ProxyAnchorLoss
from layers.proxy_nca import ProxyNCALoss
from layers.soft_contrastive import SoftContrastiveLoss
from layers.softmax import SoftmaxClassifierLoss
from layers.term import LossTerm, OwnOptimizerSpec, StepLRSpec
from layers.triplet import BatchHardTripletLoss
from layers.uc_losses import UcClsHead, UcTripletLoss
from modeling.arch import parse_arch

Builder = Callable[..., LossTerm]


def _smoothing(cfg) -> float:
    return 0.1 if cfg.MODEL.IF_LABELSMOOTH == "on" else 0.0


# name -> builder(cfg, num_classes, feat_dim); 'none' is handled by build_loss
CLS_LOSSES: dict[str, Builder] = {
    "softmax": lambda cfg, c, d: SoftmaxClassifierLoss(d, c, label_smoothing=_smoothing(cfg)),
    "arcface": lambda cfg, c, d: ArcFaceHead(
        d, c, scale=cfg.SOLVER.CS, margin=cfg.LOSS.ARCFACE.MARGIN, label_smoothing=_smoothing(cfg)
    ),
    "cosface": lambda cfg, c, d: CosFaceHead(
        d, c, scale=cfg.SOLVER.CS, margin=cfg.LOSS.COSFACE.MARGIN, label_smoothing=_smoothing(cfg)
    ),
    "n-softmax": lambda cfg, c, d: NormSoftmaxHead(d, c, scale=cfg.SOLVER.CS, label_smoothing=_smoothing(cfg)),
    "circle": lambda cfg, c, d: CircleClsHead(
        d, c, scale=cfg.SOLVER.CS, margin=cfg.LOSS.CIRCLE.MARGIN, label_smoothing=_smoothing(cfg)
    ),
    # NAMA: per-sample margins from the uncertainty head; the form is MODEL.ARCH's 'arc' / 'cos' token
    "uc-cls": lambda cfg, c, d: UcClsHead(
        d,
        c,
        scale=cfg.SOLVER.CS,
        margin=cfg.SOLVER.MARGIN,
        form=parse_arch(cfg.MODEL.ARCH).margin_form,
        label_smoothing=_smoothing(cfg),
    ),
}


def _margin_loss(cfg, c: int, d: int) -> MarginLoss:
    m = cfg.LOSS.MARGIN_LOSS
    check_choice("LOSS.MARGIN_LOSS.LEARN_BETA", m.LEARN_BETA, YES_NO)
    return MarginLoss(
        c,
        alpha=m.ALPHA,
        beta=m.BETA,
        learn_beta=m.LEARN_BETA == "yes",
        nu=m.NU,
        cutoff=m.CUTOFF,
        nonzero_loss_cutoff=m.NONZERO_LOSS_CUTOFF,
    )


def _soft_contrastive(cfg, c: int, d: int) -> SoftContrastiveLoss:
    s = cfg.LOSS.SOFT_CONTRASTIVE
    check_choice("LOSS.SOFT_CONTRASTIVE.MINING", s.MINING, SOFT_CONTRASTIVE_MININGS)
    return SoftContrastiveLoss(
        pos_scale=s.POS_SCALE, neg_scale=s.NEG_SCALE, thresh=s.THRESH, mining=s.MINING, margin=s.MARGIN
    )


def _contrastive(cfg, c: int, d: int) -> ContrastiveLoss:
    check_choice("LOSS.CONTRASTIVE.REDUCTION", cfg.LOSS.CONTRASTIVE.REDUCTION, CONTRASTIVE_REDUCTIONS)
    return ContrastiveLoss(margin=cfg.LOSS.CONTRASTIVE.MARGIN, reduction=cfg.LOSS.CONTRASTIVE.REDUCTION)


def _amloss(cfg, c: int, d: int) -> AMLoss:
    a = cfg.LOSS.AMLOSS
    if a.MARGIN_DECAY_STEP <= 0:
        raise ConfigError(
            f"LOSS.AMLOSS.MARGIN_DECAY_STEP = {a.MARGIN_DECAY_STEP}; expected a positive number of epochs"
        )
    return AMLoss(
        c,
        d,
        alpha_pos=a.ALPHA_POS,
        alpha_neg=a.ALPHA_NEG,
        delta_neg=a.DELTA_NEG,
        margin_init=a.MARGIN_INIT,
        pp_delta=a.PP_DELTA,
        pp_weight=a.PP_WEIGHT,
        margin_lr=a.MARGIN_LR,
        margin_weight_decay=a.MARGIN_WEIGHT_DECAY,
        margin_decay_step=a.MARGIN_DECAY_STEP,
        margin_decay_gamma=a.MARGIN_DECAY_GAMMA,
    )


def _center(cfg, c: int, d: int) -> CenterLoss:
    """The centers' own SGD (SOLVER.CENTER_LR) divides their gradient by the term's weight in the total."""
    weight = cfg.SOLVER.CENTER_LOSS_WEIGHT
    if weight <= 0:
        raise ConfigError(f"SOLVER.CENTER_LOSS_WEIGHT = {weight}; expected a positive weight with the center loss")
    return CenterLoss(c, d, center_lr=cfg.SOLVER.CENTER_LR, loss_weight=weight)


METRIC_LOSSES: dict[str, Builder] = {
    "triplet": lambda cfg, c, d: BatchHardTripletLoss(margin=cfg.SOLVER.MARGIN),
    "tri-n": lambda cfg, c, d: BatchHardTripletLoss(margin=cfg.SOLVER.MARGIN, normalize=True),
    "contrastive": _contrastive,
    "ms": lambda cfg, c, d: MultiSimilarityLoss(
        pos_scale=cfg.LOSS.MS.POS_SCALE,
        neg_scale=cfg.LOSS.MS.NEG_SCALE,
        thresh=cfg.LOSS.MS.THRESH,
        mining_margin=cfg.LOSS.MS.MINING_MARGIN,
        coef=cfg.LOSS.MS.COEF,
    ),
    "soft_contrastive": _soft_contrastive,
    "circle": lambda cfg, c, d: CirclePairLoss(margin=cfg.LOSS.CIRCLE.MARGIN, scale=cfg.LOSS.CIRCLE.SCALE),
    "cosface": lambda cfg, c, d: PairwiseCosFaceLoss(scale=cfg.SOLVER.S, margin=cfg.SOLVER.MARGIN),
    "margin": _margin_loss,
    "proxy_nca": lambda cfg, c, d: ProxyNCALoss(c, d, scale=cfg.LOSS.PROXY_NCA.SCALE),
    "proxy_anchor": lambda cfg, c, d: ProxyAnchorLoss(
        c, d, alpha=cfg.LOSS.PROXY_ANCHOR.ALPHA, delta=cfg.LOSS.PROXY_ANCHOR.DELTA
    ),
    "amloss": _amloss,
    "center": _center,
    # NAMA (seed 002): margins shifted per sample by the uncertainty head's offsets
    "uc-tri-n": lambda cfg, c, d: UcTripletLoss(scale=cfg.SOLVER.S, margin=cfg.SOLVER.MARGIN, form="tri-n"),
    "uc-tri-hard": lambda cfg, c, d: UcTripletLoss(scale=cfg.SOLVER.S, margin=cfg.SOLVER.MARGIN, form="tri-hard"),
    "uc-pair-n": lambda cfg, c, d: UcTripletLoss(scale=cfg.SOLVER.S, margin=cfg.SOLVER.MARGIN, form="pair-n"),
}
UC_METRIC_LOSSES = ("uc-tri-n", "uc-tri-hard", "uc-pair-n")
# Other spellings the seeds use
METRIC_ALIASES = {"tri": "triplet", "triplet_center": "triplet+center"}


def metric_loss_names(cfg) -> list[str]:
    """The metric terms of MODEL.METRIC_LOSS_TYPE ('+'-joined, aliases expanded) and MODEL.IF_WITH_CENTER."""
    check_choice("MODEL.IF_WITH_CENTER", cfg.MODEL.IF_WITH_CENTER, YES_NO)
    text = cfg.MODEL.METRIC_LOSS_TYPE.strip()
    names: list[str] = []
    if text != "none":
        for part in text.split("+"):
            part = part.strip()
            for name in METRIC_ALIASES.get(part, part).split("+"):
                if not name.startswith(PML_PREFIX):
                    check_choice(
                        "MODEL.METRIC_LOSS_TYPE",
                        name,
                        (*METRIC_LOSSES, *METRIC_ALIASES, "none", f"{PML_PREFIX}<LossClass>"),
                    )
                    if name == "none":
                        raise ConfigError(
                            f"MODEL.METRIC_LOSS_TYPE = {text!r}: 'none' cannot be combined with other losses"
                        )
                if name in names:
                    raise ConfigError(f"MODEL.METRIC_LOSS_TYPE = {text!r} names {name!r} twice")
                names.append(name)
    if cfg.MODEL.IF_WITH_CENTER == "yes" and "center" not in names:
        names.append("center")
    return names


def term_key(name: str) -> str:
    """A loss name as a module/log key: 'tri-n' -> 'tri_n', 'pml:TripletMarginLoss' -> 'pml_TripletMarginLoss'."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _build_term(key: str, name: str, builder: Callable[[], LossTerm]) -> LossTerm:
    try:
        return builder()
    except ValueError as err:  # a hyper-parameter the loss refuses (e.g. a negative scale)
        raise ConfigError(f"{key} {name}: {err}") from None


def build_metric_term(cfg, name: str, num_classes: int, feat_dim: int) -> LossTerm:
    """One metric loss by name (a registry entry or 'pml:<LossClass>' with LOSS.MINER)."""
    if name.startswith(PML_PREFIX):
        loss = build_pml_loss(name, cfg.LOSS.PML_KWARGS, num_classes, feat_dim)
        miner = build_pml_miner(cfg.LOSS.MINER, cfg.LOSS.MINER_KWARGS) if cfg.LOSS.MINER else None
        return PMLMetricLoss(loss, miner)
    return _build_term("MODEL.METRIC_LOSS_TYPE", name, lambda: METRIC_LOSSES[name](cfg, num_classes, feat_dim))


def _check_arch(cfg, names: list[str]) -> None:
    """The uncertainty losses need the head on their path; 'cls' archs train the classification loss alone."""
    arch = parse_arch(cfg.MODEL.ARCH)
    if arch.classification_only and names:
        raise ConfigError(
            f"MODEL.ARCH {arch.name!r} trains the classification loss alone; set MODEL.METRIC_LOSS_TYPE "
            f"none (it is {cfg.MODEL.METRIC_LOSS_TYPE!r})"
        )
    uc_metric = [n for n in names if n in UC_METRIC_LOSSES]
    if uc_metric and not (arch.uncertainty and not arch.classification_only):
        raise ConfigError(
            f"MODEL.METRIC_LOSS_TYPE {uc_metric[0]!r} needs the uncertainty head on the metric path: "
            f"MODEL.ARCH 'uc' or e.g. 'uc-bn-no' (it is {arch.name!r})"
        )
    if cfg.MODEL.CLS_LOSS_TYPE == "uc-cls" and not (arch.uncertainty and arch.classification_only):
        raise ConfigError(
            f"MODEL.CLS_LOSS_TYPE 'uc-cls' needs the uncertainty head on the classification path: "
            f"MODEL.ARCH 'clsuc' (or 'clsuc-arc', 'clsuc-cos'; it is {arch.name!r})"
        )


def _norm_regularizer(cfg):
    """NAMA's norm regulariser (SOLVER.NORM_LU / REG_TYPE, weight MAG_G) when the model has the head."""
    if not parse_arch(cfg.MODEL.ARCH).uncertainty or cfg.SOLVER.MAG_G == 0:
        return None
    bounds = list(cfg.SOLVER.NORM_LU)
    if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
        raise ConfigError(f"SOLVER.NORM_LU = {bounds}; expected [l_a, u_a] with 0 <= l_a < u_a, e.g. [10, 110]")
    try:
        parse_reg_type(cfg.SOLVER.REG_TYPE)
    except ValueError as err:
        raise ConfigError(f"SOLVER.REG_TYPE = {cfg.SOLVER.REG_TYPE!r}: {err}") from None
    lower, upper, reg_type = float(bounds[0]), float(bounds[1]), cfg.SOLVER.REG_TYPE
    return lambda norms: norm_regularizer(norms, lower, upper, reg_type)


def build_loss(cfg, num_classes: int, feat_dim: int) -> CompositeLoss:
    """The criterion of MODEL.CLS_LOSS_TYPE and MODEL.METRIC_LOSS_TYPE with their SOLVER weights.

    total = CLS_LOSS_WEIGHT * cls + sum over metric terms of TRI_LOSS_WEIGHT * term (CENTER_LOSS_WEIGHT for
    'center'), plus, with NAMA's uncertainty head, MAG_G times the norm regulariser as a gradient-only term.
    """
    check_choice("MODEL.CLS_LOSS_TYPE", cfg.MODEL.CLS_LOSS_TYPE, (*CLS_LOSSES, "none"))
    check_choice("MODEL.IF_LABELSMOOTH", cfg.MODEL.IF_LABELSMOOTH, ON_OFF)
    names = metric_loss_names(cfg)
    _check_arch(cfg, names)
    uses_pml = any(n.startswith(PML_PREFIX) for n in names)
    if cfg.LOSS.PML_KWARGS.strip() and not uses_pml:
        raise ConfigError(
            f"LOSS.PML_KWARGS = {cfg.LOSS.PML_KWARGS!r} is for 'pml:' metric losses, but "
            f"MODEL.METRIC_LOSS_TYPE is {cfg.MODEL.METRIC_LOSS_TYPE!r}: clear it, or use LOSS.<NAME> keys"
        )
    if cfg.LOSS.MINER_KWARGS.strip() and not cfg.LOSS.MINER:
        raise ConfigError(
            f"LOSS.MINER_KWARGS = {cfg.LOSS.MINER_KWARGS!r} but LOSS.MINER is empty; set LOSS.MINER "
            "pml:<MinerClass> or clear LOSS.MINER_KWARGS"
        )
    if cfg.LOSS.MINER and not uses_pml:
        raise ConfigError(
            f"LOSS.MINER = {cfg.LOSS.MINER!r} feeds 'pml:' metric losses only; MODEL.METRIC_LOSS_TYPE "
            f"{cfg.MODEL.METRIC_LOSS_TYPE!r} does its own mining (or none): clear LOSS.MINER"
        )
    cls_name = cfg.MODEL.CLS_LOSS_TYPE
    cls_term = None
    if cls_name != "none":
        cls_term = _build_term(
            "MODEL.CLS_LOSS_TYPE", cls_name, lambda: CLS_LOSSES[cls_name](cfg, num_classes, feat_dim)
        )
    if cls_term is None and not names:
        raise ConfigError("MODEL.CLS_LOSS_TYPE and MODEL.METRIC_LOSS_TYPE are both 'none': nothing would train")
    metric_terms = {term_key(n): build_metric_term(cfg, n, num_classes, feat_dim) for n in names}
    weights = {
        term_key(n): cfg.SOLVER.CENTER_LOSS_WEIGHT if n == "center" else cfg.SOLVER.TRI_LOSS_WEIGHT for n in names
    }
    return CompositeLoss(
        cls_term,
        metric_terms,
        cfg.SOLVER.CLS_LOSS_WEIGHT,
        weights,
        norm_regularizer=_norm_regularizer(cfg),
        norm_regularizer_weight=cfg.SOLVER.MAG_G,
    )


__all__ = [
    "CLS_LOSSES",
    "METRIC_ALIASES",
    "METRIC_LOSSES",
    "CompositeLoss",
    "LossTerm",
    "OwnOptimizerSpec",
    "StepLRSpec",
    "build_loss",
    "build_metric_term",
    "metric_loss_names",
    "term_key",
]
