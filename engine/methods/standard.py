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


class StandardMethod(TrainingMethod):
    """SOLVER.METHOD standard: per batch, zero the gradients, forward, loss, backward (scaled under fp16) and
    one step of every optimizer; the output is {'loss': total, **loss parts} (detached tensors)."""

    name = "standard"

    def process_function(self) -> Callable[[Engine, dict], dict]:
        run = self.run

        def step(engine: Engine, batch: dict) -> dict:
            batch = run.to_device(batch)
            loss, parts = forward_loss(run, batch)
            run.solver.zero_grad()
            run.scaler.scale(loss).backward()
            run.solver.step(run.scaler)
            run.scaler.update()
            return {"loss": loss.detach(), **parts}

        return step
