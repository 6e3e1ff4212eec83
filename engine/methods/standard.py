"""The standard training step: forward under autocast, fp32 loss, backward through the GradScaler, step
every optimizer of the solver."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from torch import nn

from engine.run.precision import Precision
from solver import Solver


def build_standard_trainer(
    model: nn.Module,
    criterion: nn.Module,
    solver: Solver,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
) -> Engine:
    """An ignite Engine whose output per iteration is {'loss': total, **loss parts} (detached tensors)."""

    def step(engine: Engine, batch: dict) -> dict:
        model.train()
        criterion.train()
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with precision.autocast():
            outputs = model(images)
        loss, parts = criterion(outputs, labels)
        solver.zero_grad()
        scaler.scale(loss).backward()
        solver.step(scaler)
        scaler.update()
        return {"loss": loss.detach(), **parts}

    return Engine(step)
