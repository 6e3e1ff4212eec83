"""Optimizer with named parameter groups: backbone, bias, neck, loss, proxy, beta, poly."""

from __future__ import annotations

import torch
from torch import nn

from config.errors import check_choice

OPTIMIZERS = ("Adam", "AdamW", "SGD")

# Loss parameters that train in their own optimizer (solver/build.py), by attribute name
OWN_OPTIMIZER_PARAMETERS = ("margins", "centers")


def loss_parameter_role(name: str) -> str:
    """The group of a loss parameter, from its attribute name (the convention of layers/):
    'proxies' -> proxy, 'beta' -> beta, 'margins'/'centers' -> their own optimizers, biases -> bias,
    anything else (classifier weights, PML parameters) -> loss."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in OWN_OPTIMIZER_PARAMETERS:
        return leaf
    if leaf == "proxies":
        return "proxy"
    if leaf == "beta":
        return "beta"
    return "bias" if leaf == "bias" else "loss"


def parameter_groups(cfg, model: nn.Module, criterion: nn.Module) -> list[dict]:
    """Trainable parameters split into named groups with their own lr and weight decay.

    - backbone: weights of the backbone (and anything else in the model that is not a bias or the neck);
      SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY
    - bias: every bias; BASE_LR * BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS
    - neck: BNNeck scale; BASE_LR, WEIGHT_DECAY_NECK
    - loss: learnable loss parameters (classifier weights); BASE_LR, WEIGHT_DECAY_NECK
    - proxy: proxies of proxy-based losses; BASE_LR * PROXY_LR_FACTOR, WEIGHT_DECAY (Proxy Anchor's recipe)
    - beta: the margin loss's learnable betas; LOSS.MARGIN_LOSS.BETA_LR, no weight decay (Wu et al.)
    - poly: the uncertainty head's coefficients (NAMA's MAM); BASE_LR, WEIGHT_DECAY_POLY
    AMLoss margins and center-loss centers are not here: they have their own optimizers (solver/build.py).
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
    for name, param in criterion.named_parameters():
        role = loss_parameter_role(name)
        if param.requires_grad and role not in OWN_OPTIMIZER_PARAMETERS:
            groups[role]["params"].append(param)
    return [dict(group, name=name) for name, group in groups.items() if group["params"]]


def build_optimizer(cfg, model: nn.Module, criterion: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER_NAME over the named groups of `parameter_groups` (the run's main optimizer)."""
    check_choice("SOLVER.OPTIMIZER_NAME", cfg.SOLVER.OPTIMIZER_NAME, OPTIMIZERS)
    groups = parameter_groups(cfg, model, criterion)
    if cfg.SOLVER.OPTIMIZER_NAME == "SGD":
        return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    if cfg.SOLVER.OPTIMIZER_NAME == "AdamW":
        return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR)
    return torch.optim.Adam(groups, lr=cfg.SOLVER.BASE_LR)
