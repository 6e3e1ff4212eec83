"""Optimizer with named parameter groups: backbone, bias, neck, loss, proxy, beta, poly."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from config.choices import OPTIMIZERS
from config.errors import ConfigError, check_choice

if TYPE_CHECKING:
    from layers.composite import CompositeLoss


def _criterion_groups(criterion: CompositeLoss) -> dict[str, list[nn.Parameter]]:
    """The criterion's declared groups, checked: every trainable parameter of the criterion is in exactly one
    group or own optimizer (a term that forgot one would otherwise leave it silently untrained)."""
    groups = criterion.parameter_groups()
    placed = [p for params in groups.values() for p in params]
    placed += [p for spec in criterion.own_optimizers().values() for p in spec.params]
    ids = {id(p) for p in placed}
    if len(ids) != len(placed):
        raise ValueError("a loss parameter is declared in two optimizer groups (layers/term.py)")
    missing = [n for n, p in criterion.named_parameters() if p.requires_grad and id(p) not in ids]
    if missing:
        raise ValueError(f"loss parameters in no optimizer group (layers/term.py): {', '.join(missing)}")
    return groups


def parameter_groups(cfg, model: nn.Module, criterion: CompositeLoss) -> list[dict]:
    """Trainable parameters split into named groups with their own lr and weight decay.

    - backbone: weights of the backbone (and anything else in the model that is not a bias or the neck);
      SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY
    - bias: every bias; BASE_LR * BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS
    - neck: BNNeck scale; BASE_LR, WEIGHT_DECAY_NECK
    - loss: learnable loss parameters (classifier weights); BASE_LR, WEIGHT_DECAY_NECK
    - proxy: proxies of proxy-based losses; BASE_LR * PROXY_LR_FACTOR, WEIGHT_DECAY (Proxy Anchor's recipe)
    - beta: the margin loss's learnable betas; LOSS.MARGIN_LOSS.BETA_LR, no weight decay (Wu et al.)
    - poly: the uncertainty head's coefficients (NAMA's MAM); BASE_LR, WEIGHT_DECAY_POLY
    The loss parameters' groups are those the terms declare (`criterion.parameter_groups()`); parameters of
    the terms' own optimizers (AMLoss margins, center-loss centers) are not here (solver/build.py).
    Frozen parameters (the BNNeck bias) are left out. Empty groups are dropped.
    """
    s = cfg.SOLVER
    groups = {
        "backbone": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY},
        "bias": {"params": [], "lr": s.BASE_LR * s.BIAS_LR_FACTOR, "weight_decay": s.WEIGHT_DECAY_BIAS},
        "neck": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY_NECK},
        "loss": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY_NECK},
        "proxy": {"params": [], "lr": s.BASE_LR * s.PROXY_LR_FACTOR, "weight_decay": s.WEIGHT_DECAY},
        "beta": {"params": [], "lr": cfg.LOSS.MARGIN_LOSS.BETA_LR, "weight_decay": 0.0},
        "poly": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY_POLY},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("uc_head."):
            groups["poly"]["params"].append(param)
        elif name.endswith("bias"):
            groups["bias"]["params"].append(param)
        elif name.startswith("neck."):
            groups["neck"]["params"].append(param)
        else:
            groups["backbone"]["params"].append(param)
    for group, params in _criterion_groups(criterion).items():
        if group not in groups:
            raise ValueError(f"a loss term declares the optimizer group {group!r}; known: {', '.join(groups)}")
        groups[group]["params"].extend(params)
    return [dict(group, name=name) for name, group in groups.items() if group["params"]]


def implementation(cfg, groups: list[dict]) -> dict:
    """SOLVER.OPTIMIZER_IMPL as the optimizer's keyword: 'auto' = fused when every parameter is on CUDA (one
    kernel for the whole step, and no host synchronisation under a GradScaler), torch's default otherwise."""
    impl = cfg.SOLVER.OPTIMIZER_IMPL
    if impl == "auto":
        on_cuda = all(p.is_cuda for group in groups for p in group["params"])
        return {"fused": True} if on_cuda else {}
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]


def build_optimizer(cfg, model: nn.Module, criterion: CompositeLoss) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER_NAME over the named groups of `parameter_groups` (the run's main optimizer), in the
    implementation of SOLVER.OPTIMIZER_IMPL."""
    check_choice("SOLVER.OPTIMIZER_NAME", cfg.SOLVER.OPTIMIZER_NAME, OPTIMIZERS)
    groups = parameter_groups(cfg, model, criterion)
    kind = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[cfg.SOLVER.OPTIMIZER_NAME]
    extra = {"momentum": cfg.SOLVER.MOMENTUM} if kind is torch.optim.SGD else {}
    impl = implementation(cfg, groups)
    try:
        return kind(groups, lr=cfg.SOLVER.BASE_LR, **extra, **impl)
    except (RuntimeError, TypeError) as err:
        if cfg.SOLVER.OPTIMIZER_IMPL != "auto":
            raise ConfigError(
                f"SOLVER.OPTIMIZER_IMPL = {cfg.SOLVER.OPTIMIZER_IMPL!r} is not available for "
                f"{cfg.SOLVER.OPTIMIZER_NAME} here ({err}); expected 'auto', 'foreach' or 'for_loop'"
            ) from None
        return kind(groups, lr=cfg.SOLVER.BASE_LR, **extra)
