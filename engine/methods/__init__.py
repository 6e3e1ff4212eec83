"""Training methods by SOLVER.METHOD: each is one module with a TrainingMethod subclass (engine/methods/base.py)
and one line in METHODS; its own keys live under METHOD.<NAME> in config/defaults.py."""

from __future__ import annotations

from config.errors import ConfigError, check_choice
from engine.methods.base import Run, TrainingMethod
from engine.methods.dc.method import DivideAndConquer
from engine.methods.ddtas import DDTASMethod
from engine.methods.grad_accum import GradientAccumulation
from engine.methods.mmsi import MMSIMethod
from engine.methods.standard import StandardMethod

METHODS: dict[str, type[TrainingMethod]] = {
    "standard": StandardMethod,
    "grad_accum": GradientAccumulation,
    "mmsi": MMSIMethod,
    "ddtas": DDTASMethod,
    "dc": DivideAndConquer,
}

# Checkpoint entries of the run itself, which a method's checkpoint_state must not reuse
RUN_STATE_NAMES = (
    "model",
    "loss",
    "solver",
    "scaler",
    "trainer",
    "best",
    "progress",
    "config",
    "within_epoch",
)


def check_method(cfg) -> None:
    """SOLVER.METHOD names a registered method (else one line listing the valid ones) that can train under
    INPUT.AUGMENT_ON; train() asks before anything is built."""
    check_choice("SOLVER.METHOD", cfg.SOLVER.METHOD, tuple(METHODS))
    if cfg.INPUT.AUGMENT_ON == "device" and not METHODS[cfg.SOLVER.METHOD].supports_device_augment:
        raise ConfigError(
            f"SOLVER.METHOD {cfg.SOLVER.METHOD!r} feeds the model image batches that skip the device augmentation; "
            "expected INPUT.AUGMENT_ON cpu with it"
        )


def build_method(cfg, run: Run) -> TrainingMethod:
    """The training method of SOLVER.METHOD for `run` (an unknown name exits listing the valid ones)."""
    check_method(cfg)
    method = METHODS[cfg.SOLVER.METHOD](run)
    clash = sorted(set(method.checkpoint_state()) & set(RUN_STATE_NAMES))
    if clash:
        raise ValueError(f"training method {cfg.SOLVER.METHOD!r} names checkpoint state {clash} that the run uses")
    return method


__all__ = ["METHODS", "Run", "TrainingMethod", "build_method", "check_method"]
