"""SOLVER.WARM_EPOCHS (seed 004's --warm): during the first W epochs only the embedding layer trains."""

from __future__ import annotations

from ignite.engine import Engine, Events
from torch import nn


class WarmEpochs:
    """At each EPOCH_STARTED: `model.set_warm(epoch <= warm_epochs)` (frozen backbone while warm)."""

    def __init__(self, model: nn.Module, warm_epochs: int):
        self.model = model
        self.warm_epochs = warm_epochs

    def __call__(self, engine: Engine) -> None:
        self.model.set_warm(engine.state.epoch <= self.warm_epochs)

    def attach(self, trainer: Engine) -> None:
        if self.warm_epochs > 0:
            trainer.add_event_handler(Events.EPOCH_STARTED, self)
