"""Solver: optimizers with named parameter groups, the warm-up multi-step schedule, and the run's Solver."""

from __future__ import annotations

from solver.build import Solver, build_scheduler, build_solver
from solver.lr_scheduler import WarmupMultiStepLR
from solver.optimizer import build_optimizer, parameter_groups

__all__ = [
    "Solver",
    "WarmupMultiStepLR",
    "build_optimizer",
    "build_scheduler",
    "build_solver",
    "parameter_groups",
]
