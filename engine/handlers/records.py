"""The run's records of each evaluation: a log line per dataset, a record of metrics.jsonl, TensorBoard
scalars, and the curve pictures redrawn from the records."""

from __future__ import annotations

import logging
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine

from engine.evaluation.dataset_evaluation import format_metrics
from engine.handlers.best_model import BestModel
from engine.handlers.evaluation import RunEvents
from engine.reporting.curves import draw_curves
from engine.reporting.tensorboard_logging import RunTensorboard
from engine.run.output_dir import append_metrics

logger = logging.getLogger("train")


class EvaluationRecords:
    """On EVALUATION_COMPLETED (after BestModel, whose best score the records carry): per dataset a log line
    and a metrics.jsonl record {epoch, iteration, **result, best_<main metric>, best_epoch}, the same numbers
    to TensorBoard; then the curve pictures (rank 0, LOG.PLOTS yes). `history` keeps the records of this
    process's run."""

    def __init__(self, output_dir: Path, best: BestModel, tensorboard: RunTensorboard, draw_plots: bool):
        self.output_dir = output_dir
        self.best = best
        self.tensorboard = tensorboard
        self.draw_plots = draw_plots
        self.history: list[dict] = []

    def __call__(self, engine: Engine) -> None:
        epoch, main = engine.state.epoch, self.best.main_metric
        for result in engine.state.evaluation:
            logger.info(
                "Validation at epoch %d on %s (%.1f s): %s  [best %s %.2f%% at epoch %d]",
                epoch,
                result["dataset"],
                result["eval_seconds"],
                format_metrics(result),
                main,
                100 * self.best.score,
                self.best.epoch,
            )
            record = {
                "epoch": epoch,
                "iteration": engine.state.iteration,
                **result,
                f"best_{main}": self.best.score,
                "best_epoch": self.best.epoch,
            }
            append_metrics(self.output_dir, record)
            self.tensorboard.log_evaluation(record, epoch)
            self.history.append(record)
        if self.draw_plots and idist.get_rank() == 0:
            draw_curves(self.output_dir)

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(RunEvents.EVALUATION_COMPLETED, self)
