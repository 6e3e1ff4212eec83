"""Solver: optimizer with named parameter groups and the warm-up multi-step schedule."""

from __future__ import annotations

from solver.lr_scheduler import WarmupMultiStepLR
from solver.optimizer import build_optimizer, parameter_groups


def build_scheduler(cfg, optimizer) -> WarmupMultiStepLR:
    """The epoch-wise schedule of SOLVER.STEPS / GAMMA / WARMUP_*."""
    s = cfg.SOLVER
    return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD)


__all__ = ["WarmupMultiStepLR", "build_optimizer", "build_scheduler", "parameter_groups"]
