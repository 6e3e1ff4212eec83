"""Evaluation during training: every EVAL_PERIOD epochs and after the last one, each evaluated dataset is
embedded and scored; then the trainer fires RunEvents.EVALUATION_COMPLETED with the results in
`trainer.state.evaluation`, for the handlers that keep the best model and write the records."""

from __future__ import annotations

from ignite.engine import Engine, EventEnum, Events
from torch import nn

from engine.evaluation.dataset_evaluation import DatasetEvaluation
from engine.run.device import broadcast_buffers


class RunEvents(EventEnum):
    """The run's own events (registered on the trainer by PeriodicEvaluation.attach)."""

    EVALUATION_COMPLETED = "evaluation_completed"


def every(period: int, last: int):
    """Event filter: every `period` epochs and at epoch `last`."""
    return lambda engine, epoch: epoch % period == 0 or epoch == last


class PeriodicEvaluation:
    """At EPOCH_COMPLETED every `period` epochs and at `last_epoch`: rank 0's BN statistics are broadcast (so
    that every rank evaluates the model rank 0 saves), each dataset is evaluated in order, and
    EVALUATION_COMPLETED fires with `trainer.state.evaluation` = the list of results (one dict per dataset;
    the first dataset's main metric picks the best model)."""

    def __init__(self, evaluations: list[DatasetEvaluation], model: nn.Module, period: int, last_epoch: int):
        self.evaluations = evaluations
        self.model = model
        self.period = period
        self.last_epoch = last_epoch

    @property
    def main_metric(self) -> str:
        return self.evaluations[0].spec.main_metric

    def __call__(self, engine: Engine) -> None:
        broadcast_buffers(self.model)
        engine.state.evaluation = [evaluation.run() for evaluation in self.evaluations]
        engine.fire_event(RunEvents.EVALUATION_COMPLETED)

    def attach(self, trainer: Engine) -> None:
        trainer.register_events(*RunEvents)
        trainer.state.evaluation = []
        trainer.add_event_handler(Events.EPOCH_COMPLETED(event_filter=every(self.period, self.last_epoch)), self)
