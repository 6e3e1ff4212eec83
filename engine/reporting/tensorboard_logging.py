"""TensorBoard event files of a run (LOG.TENSORBOARD): losses, learning rates and evaluation metrics.

Written by rank 0 to OUTPUT_DIR/tensorboard through ignite's TensorboardLogger:
- training/<part>: the running average of every loss part (total, each term, accuracy, loss statistics) and
  the training method's epoch statistics at the end of each epoch (step = epoch), and training/loss_iteration
  every SOLVER.LOG_PERIOD iterations (step = iteration);
- lr/<group>: the learning rate of each named parameter group of every optimizer (step = epoch);
- <dataset>/<metric>: every number of each evaluation (mAP, rank-1, R@K, MAP@R, ...; step = epoch).
"""

from __future__ import annotations

import logging
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events

from config.choices import YES_NO
from config.errors import check_choice
from engine.reporting.run_files import TENSORBOARD_DIR

logger = logging.getLogger(__name__)


class RunTensorboard:
    """The run's TensorboardLogger and the handlers that feed it; a no-op when off or on ranks > 0."""

    def __init__(self, cfg, output_dir: Path):
        check_choice("LOG.TENSORBOARD", cfg.LOG.TENSORBOARD, YES_NO)
        self.logger = None
        if cfg.LOG.TENSORBOARD == "yes" and idist.get_rank() == 0:
            from ignite.handlers.tensorboard_logger import TensorboardLogger

            try:
                self.logger = TensorboardLogger(log_dir=str(output_dir / TENSORBOARD_DIR))
            except (ImportError, ModuleNotFoundError, RuntimeError) as err:
                logger.warning("TensorBoard logging is off: %s (install the 'tensorboard' package)", err)

    def attach(
        self, trainer: Engine, part_names: tuple[str, ...], solver, log_period: int, stat_names: tuple[str, ...] = ()
    ) -> None:
        """Per-epoch running averages, the training method's epoch statistics (`stat_names` in state.metrics)
        and learning rates, and the per-iteration loss."""
        if self.logger is None:
            return
        from ignite.handlers.tensorboard_logger import OutputHandler

        epoch_step = lambda engine, event: engine.state.epoch  # noqa: E731
        self.logger.attach(
            trainer,
            OutputHandler(
                tag="training",
                metric_names=[f"avg_{n}" for n in part_names] + list(stat_names),
                global_step_transform=epoch_step,
            ),
            event_name=Events.EPOCH_COMPLETED,
        )
        self.logger.attach(
            trainer,
            OutputHandler(tag="training", output_transform=lambda out: {"loss_iteration": out["loss"].item()}),
            event_name=Events.ITERATION_COMPLETED(every=log_period),
        )

        @trainer.on(Events.EPOCH_COMPLETED)
        def _learning_rates(engine: Engine) -> None:
            for group, lr in solver.learning_rates().items():
                self.logger.writer.add_scalar(f"lr/{group}", lr, engine.state.epoch)

        trainer.add_event_handler(Events.COMPLETED, lambda engine: self.close())

    def log_evaluation(self, result: dict, epoch: int) -> None:
        """Every scalar number of one dataset's evaluation under <dataset>/<metric>."""
        if self.logger is None:
            return
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "iteration"):
                self.logger.writer.add_scalar(f"{result['dataset']}/{key}", value, epoch)
        self.logger.writer.flush()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
