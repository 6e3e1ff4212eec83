"""Evaluation during training: every EVAL_PERIOD epochs and after the last one, each evaluated dataset is
embedded and scored; then the trainer fires RunEvents.EVALUATION_COMPLETED with the results in
`trainer.state.evaluation`, for the handlers that keep the best model and write the records."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, EventEnum, Events
from torch import nn

from config import UserError
from engine.evaluation.dataset_evaluation import DatasetEvaluation
from engine.run.checkpoints import latest_checkpoint
from engine.run.cli import user_message
from engine.run.device import broadcast_buffers

logger = logging.getLogger("train")


class RunEvents(EventEnum):
    """The run's own events (registered on the trainer by PeriodicEvaluation.attach)."""

    EVALUATION_COMPLETED = "evaluation_completed"


def every(period: int, last: int):
    """Event filter: every `period` epochs and at epoch `last`."""
    return lambda engine, epoch: epoch % period == 0 or epoch == last


class EvaluationError(UserError):
    """An evaluation failed on a user-fixable cause (e.g. an unreadable gallery image); training is kept."""


class PeriodicEvaluation:
    """At EPOCH_COMPLETED every `period` epochs and at `last_epoch`: rank 0's BN statistics are broadcast (so
    that every rank evaluates the model rank 0 saves), each dataset is evaluated in order, and
    EVALUATION_COMPLETED fires with `trainer.state.evaluation` = the list of results (one dict per dataset;
    the first dataset's main metric picks the best model).

    It fires after the epoch's checkpoint is written (engine/training.py::attach_run_handlers), so a failed
    evaluation loses no training: its error says which checkpoint holds the run and how to resume (one line
    for a user-fixable cause such as an unreadable image; other errors are logged the same way and raised).
    """

    def __init__(
        self,
        evaluations: list[DatasetEvaluation],
        model: nn.Module,
        period: int,
        last_epoch: int,
        output_dir: Path | None = None,
    ):
        self.evaluations = evaluations
        self.model = model
        self.period = period
        self.last_epoch = last_epoch
        self.output_dir = output_dir

    def resume_hint(self, epoch: int) -> str:
        """Where the training up to `epoch` is kept and the command that continues it."""
        latest = latest_checkpoint(self.output_dir) if self.output_dir is not None else None
        if latest is None:
            return "no checkpoint has been written yet (SOLVER.CHECKPOINT_PERIOD)"
        return f"training is kept in {latest}; fix the cause and continue with --resume {self.output_dir}"

    @property
    def main_metric(self) -> str:
        return self.evaluations[0].spec.main_metric

    def __call__(self, engine: Engine) -> None:
        broadcast_buffers(self.model)
        epoch = engine.state.epoch
        try:
            engine.state.evaluation = [evaluation.run() for evaluation in self.evaluations]
        except UserError as error:
            message = f"evaluation after epoch {epoch} failed: {user_message(error)}; {self.resume_hint(epoch)}"
            raise EvaluationError(message) from None
        except Exception:
            logger.error("Evaluation after epoch %d failed; %s", epoch, self.resume_hint(epoch))
            raise
        engine.fire_event(RunEvents.EVALUATION_COMPLETED)

    def attach(self, trainer: Engine) -> None:
        trainer.register_events(*RunEvents)
        trainer.state.evaluation = []
        trainer.add_event_handler(Events.EPOCH_COMPLETED(event_filter=every(self.period, self.last_epoch)), self)
