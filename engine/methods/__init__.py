"""Training methods: each builds the ignite process function of one way of training."""

from engine.methods.standard import build_standard_trainer

METHODS = {"standard": build_standard_trainer}

__all__ = ["METHODS", "build_standard_trainer"]
