"""Progress of training: running averages of the loss parts, a progress bar (or log lines), and one summary
per epoch, logged and appended to OUTPUT_DIR/train_metrics.jsonl (the curves' source)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from tqdm import tqdm

from engine.handlers.epoch_clock import iteration_in_epoch
from engine.handlers.loss_averages import DeviceRunningAverages, non_finite_loss_error
from engine.reporting.run_files import TRAIN_METRICS_FILE
from engine.run.checkpoints import latest_checkpoint
from engine.run.output_dir import append_metrics
from solver import Solver

logger = logging.getLogger("train")


class EpochBar:
    """A terminal's progress bar over the batches of each epoch, with the running averages: the epoch's own
    length and position (engine/handlers/epoch_clock.py; ignite's ProgressBar derives both from the iteration
    count, which holds only for epochs of one length)."""

    def __init__(self, metric_names: list[str]):
        self.metric_names = metric_names
        self.bar: tqdm | None = None

    def _update(self, engine: Engine) -> None:
        if self.bar is None:
            self.bar = tqdm(total=engine.state.epoch_length, leave=False, desc=f"Epoch [{engine.state.epoch}]")
        position = iteration_in_epoch(engine)
        self.bar.set_postfix(
            {n[4:]: f"{engine.state.metrics[n]:.3g}" for n in self.metric_names if n in engine.state.metrics},
            refresh=False,
        )
        self.bar.update(position - self.bar.n)

    def _close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        for event in (Events.EPOCH_COMPLETED, Events.TERMINATE, Events.EXCEPTION_RAISED):
            trainer.add_event_handler(event, self._close)


class TrainingProgress:
    """- running averages (alpha 0.98) of every part the step outputs (`part_names`: 'loss', each term's loss
      and statistics) as `state.metrics['avg_<part>']`;
    - a time per batch (iterations only, not evaluation or data waiting between epochs);
    - a progress bar on an interactive terminal of rank 0, else a log line every `log_period` iterations;
    - at EPOCH_COMPLETED a summary line and a record of train_metrics.jsonl: epoch, iteration, learning rates,
      the averages, the training method's epoch statistics (`stat_names`, which the method leaves in
      `state.metrics` before this handler runs) and the seconds per batch.
    """

    def __init__(
        self,
        part_names: tuple[str, ...],
        stat_names: tuple[str, ...],
        solver: Solver,
        images_per_batch: int,
        log_period: int,
        output_dir: Path,
    ):
        self.part_names = part_names
        self.stat_names = stat_names
        self.solver = solver
        self.images_per_batch = images_per_batch
        self.log_period = log_period
        self.output_dir = output_dir
        self.timer = Timer(average=True)
        self.averages = DeviceRunningAverages(part_names)

    @property
    def average_names(self) -> list[str]:
        return [f"avg_{name}" for name in self.part_names]

    def summary(self, engine: Engine) -> str:
        """The averages of the loss parts ('acc' in percent) as one line."""
        return "  ".join(
            f"{n[4:]}: {engine.state.metrics[n]:.4f}"
            if n != "avg_acc"
            else f"acc: {100 * engine.state.metrics[n]:.1f}%"
            for n in self.average_names
            if n in engine.state.metrics
        )

    def log_iteration(self, engine: Engine) -> None:
        it = iteration_in_epoch(engine)
        logger.info(
            "Epoch[%d] Iteration[%d/%d] %s", engine.state.epoch, it, engine.state.epoch_length, self.summary(engine)
        )

    def epoch_completed(self, engine: Engine) -> None:
        per_batch = self.timer.value()
        images = self.images_per_batch / per_batch if per_batch > 0 else float("nan")
        stats = {name: engine.state.metrics[name] for name in self.stat_names if name in engine.state.metrics}
        shown = "".join(f"  {name}: {value:g}" for name, value in stats.items())
        logger.info(
            "Epoch[%d] done: %s%s  lr: %.2e  %.3f s/batch  %.1f images/s",
            engine.state.epoch,
            self.summary(engine),
            shown,
            self.solver.main.param_groups[0]["lr"],
            per_batch,
            images,
        )
        record = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "lr": self.solver.learning_rates(),
            **{n[4:]: engine.state.metrics[n] for n in self.average_names if n in engine.state.metrics},
            **stats,
            "seconds_per_batch": per_batch,
        }
        append_metrics(self.output_dir, record, TRAIN_METRICS_FILE)

    def state_dict(self) -> dict:
        """The running averages (checkpointed as 'progress', so a resumed run continues them)."""
        return self.averages.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averages.load_state_dict(state)

    def _update(self, engine: Engine) -> None:
        self.averages.update(engine.state.output)

    def read(self, engine: Engine) -> None:
        """The averages into state.metrics['avg_<part>'] (one transfer from the device); a loss that was not
        finite since the previous read stops the run here, before anything is logged or checkpointed."""
        averages, non_finite = self.averages.read()
        for name, value in averages.items():
            engine.state.metrics[f"avg_{name}"] = value
        if non_finite is not None:
            value, before = non_finite
            raise non_finite_loss_error(
                value, engine.state.epoch, engine.state.iteration - before, latest_checkpoint(self.output_dir)
            )

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        # the reads: where the averages are shown (log lines, TensorBoard's per-iteration loss) and the epoch's end
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_period), self.read)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.read)
        self.timer.attach(
            trainer,
            start=Events.EPOCH_STARTED,
            resume=Events.ITERATION_STARTED,
            pause=Events.ITERATION_COMPLETED,
            step=Events.ITERATION_COMPLETED,
        )
        if idist.get_rank() == 0 and sys.stdout.isatty():
            EpochBar(self.average_names).attach(trainer)
        else:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_period), self.log_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
