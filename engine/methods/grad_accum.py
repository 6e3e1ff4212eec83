"""Gradient accumulation: one optimizer step per METHOD.GRAD_ACCUM.STEPS batches, for batches larger than
the device holds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ignite.engine import Engine, Events
from torch import nn

from config.errors import ConfigError
from engine.handlers.epoch_clock import batches_done_in_epoch, iteration_in_epoch
from engine.methods.base import Run, TrainingMethod
from engine.methods.standard import forward_loss


def accumulation_window(position: int, epoch_length: int, steps: int) -> tuple[int, int]:
    """(first position, length) of the window holding the 0-based iteration `position` of an epoch: windows of
    `steps` batches from the epoch's start, the last one cut at the epoch's end."""
    start = position - position % steps
    return start, min(steps, epoch_length - start)


def _no_sync(module: nn.Module):
    """DistributedDataParallel's no_sync (gradients stay local, not all-reduced) or nothing for a plain module."""
    return module.no_sync() if isinstance(module, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


class GradientAccumulation(TrainingMethod):
    """SOLVER.METHOD grad_accum: the gradients of METHOD.GRAD_ACCUM.STEPS consecutive batches are summed, each
    batch's loss divided by the window's length, before one step of every optimizer; the step is that of the
    mean loss over the window. For losses that average over independent samples (softmax, center) this is the
    gradient of one batch STEPS times larger; losses that mine within a batch (triplet, MS, ...) still mine
    within each batch, and BatchNorm still normalises per batch.

    Windows restart at every epoch, and the last window of an epoch may be shorter (its losses are divided by
    its own length), so that no gradient is pending when a checkpoint is written and a resumed run repeats the
    same windows. With several processes the gradients are all-reduced only on a window's last batch
    (DistributedDataParallel's no_sync on the others). Logged per epoch: `optimizer_steps` (this epoch) and
    `optimizer_steps_total` (since the run began, kept in checkpoints under 'grad_accum').
    """

    name = "grad_accum"
    supports_device_augment = True
    stat_names = ("optimizer_steps", "optimizer_steps_total")

    def __init__(self, run: Run):
        super().__init__(run)
        self.steps = run.cfg.METHOD.GRAD_ACCUM.STEPS
        if self.steps < 1:
            raise ConfigError(f"METHOD.GRAD_ACCUM.STEPS = {self.steps}; expected a positive number of batches per step")
        self.total_steps = 0
        self.epoch_steps = 0

    def process_function(self) -> Callable[[Engine, dict], dict]:
        run = self.run

        def step(engine: Engine, batch: dict) -> dict:
            position = iteration_in_epoch(engine) - 1
            start, length = accumulation_window(position, engine.state.epoch_length, self.steps)
            last = position == start + length - 1
            if position == start:
                run.solver.zero_grad()
            batch = run.to_device(batch)
            with contextlib.ExitStack() as local:
                if not last:
                    local.enter_context(_no_sync(run.trained_model))
                    local.enter_context(_no_sync(run.trained_criterion))
                loss, parts = forward_loss(run, batch)
                run.scaler.scale(loss / length).backward()
            if last:
                run.solver.step(run.scaler)
                run.scaler.update()
                self.epoch_steps += 1
                self.total_steps += 1
            return {"loss": loss.detach(), **parts}

        return step

    def _epoch_started(self, engine: Engine) -> None:
        if batches_done_in_epoch(engine) == 0:  # an epoch resumed after its k-th batch keeps its count
            self.epoch_steps = 0

    def _epoch_completed(self, engine: Engine) -> None:
        engine.state.metrics["optimizer_steps"] = self.epoch_steps
        engine.state.metrics["optimizer_steps_total"] = self.total_steps

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def checkpoint_state(self) -> dict:
        return {"grad_accum": self}

    def at_step_boundary(self, engine: Engine) -> bool:
        position = iteration_in_epoch(engine) - 1
        start, length = accumulation_window(position, engine.state.epoch_length, self.steps)
        return position == start + length - 1

    def state_dict(self) -> dict:
        return {"optimizer_steps_total": self.total_steps, "optimizer_steps": self.epoch_steps}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = int(state["optimizer_steps_total"])
        self.epoch_steps = int(state.get("optimizer_steps", 0))  # absent in checkpoints of older versions
