"""The standard training step: forward under autocast, fp32 loss, backward through the GradScaler, step
every optimizer of the solver."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine

from engine.methods.base import Run, TrainingMethod


def forward_loss(run: Run, batch: dict) -> tuple[torch.Tensor, dict]:
    """Forward the batch (already on the device) in training mode under the run's autocast; the criterion's
    (total loss, detached parts), computed in fp32."""
    run.trained_model.train()
    run.trained_criterion.train()
    with run.precision.autocast():
        outputs = run.trained_model(batch["image"])
    return run.trained_criterion(outputs, batch)


def forward_with_logged_loss(run: Run, batch: dict) -> tuple[dict, dict]:
    """For a method that trains on a loss of its own: the model's outputs on the batch (training mode, the run's
    autocast, with their graph) and the step's output to log: the run's criterion on them, without gradient
    ({'loss': total, **parts}, comparable with a standard run of that loss)."""
    run.trained_model.train()
    with run.precision.autocast():
        outputs = run.trained_model(batch["image"])
    with torch.no_grad():
        loss, parts = run.criterion({k: v.detach() for k, v in outputs.items()}, batch)
    return outputs, {"loss": loss.detach(), **parts}


def take_step(run: Run, loss: torch.Tensor) -> None:
    """Zero the gradients, backward `loss` through the GradScaler, one step of every optimizer, update the
    scaler."""
    run.solver.zero_grad()
    run.scaler.scale(loss).backward()
    run.solver.step(run.scaler)
    run.scaler.update()


def standard_step(run: Run, batch: dict) -> dict:
    """The standard step on one batch (moved to the device here); returns {'loss': total, **loss parts}."""
    batch = run.to_device(batch)
    loss, parts = forward_loss(run, batch)
    take_step(run, loss)
    return {"loss": loss.detach(), **parts}


class StandardMethod(TrainingMethod):
    """SOLVER.METHOD standard: per batch, zero the gradients, forward, loss, backward (scaled under fp16) and
    one step of every optimizer; the output is {'loss': total, **loss parts} (detached tensors)."""

    name = "standard"
    supports_device_augment = True

    def process_function(self) -> Callable[[Engine, dict], dict]:
        run = self.run

        def step(engine: Engine, batch: dict) -> dict:
            return standard_step(run, batch)

        return step
