"""What a training method is given (`Run`, everything a run has built) and what it provides (`TrainingMethod`).

A method owns the training step: it builds the ignite process function, attaches its own handlers (a second
loader, a memory bank, re-clustering at epoch start, a sampler swap), names the state it adds to checkpoints
(so that resume stays exact) and the epoch statistics it logs. engine/training.py builds the Run, asks the
registry (engine/methods/__init__.py, by SOLVER.METHOD) for the method, and composes the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn
from yacs.config import CfgNode

from data.build import DataBundle
from engine.handlers.epoch_seeding import Reseeder, loader_reseeder
from engine.run.precision import Precision
from solver import Solver


@dataclass
class Run:
    """Everything one training run has built, handed to its training method.

    `model` / `criterion` are the modules themselves (state dicts, evaluation, BN switches, their attributes);
    `trained_model` / `trained_criterion` are what the training step calls: their DistributedDataParallel
    wrappers with several processes, the modules themselves otherwise. `reseeders` are called at each epoch
    start with (epoch, the epoch's seed), in order; a method appends its own (e.g. a validation loader's) in
    its constructor.
    """

    cfg: CfgNode
    model: nn.Module
    trained_model: nn.Module
    criterion: nn.Module
    trained_criterion: nn.Module
    solver: Solver
    scaler: torch.amp.GradScaler
    precision: Precision
    device: torch.device
    data: DataBundle
    output_dir: Path
    reseeders: list[Reseeder] = field(default_factory=list)
    channels_last: bool = False  # image batches go to the device in the channels-last format
    # INPUT.AUGMENT_ON device: the training pipeline's device half (data/device_augment.py), which turns a batch's
    # uint8 images and augmentation parameters into the float images; None when the loader made them
    augment: Callable[[dict], dict] | None = None

    def replace_train_loader(self, loader) -> None:
        """Train from `loader` instead of the one build_data made (a method that batches otherwise, e.g. by
        cluster); its batch sampler is reseeded at each epoch start as the first one was."""
        self.data.train_loader = loader
        self.reseeders[0] = loader_reseeder(loader)

    def to_device(self, batch: dict) -> dict:
        """The batch's tensors on the run's device (non-blocking from pinned memory; image batches channels-last
        when the model is); other values as they are. With `augment` (INPUT.AUGMENT_ON device), the uint8 images
        cross as they are and are augmented there, into the channels-last format when the model is in it."""
        augment = self.augment
        moved = {}
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                moved[key] = value
            elif self.channels_last and value.dim() == 4 and augment is None:
                moved[key] = value.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            else:
                moved[key] = value.to(self.device, non_blocking=True)
        return moved if augment is None else augment(moved)


class TrainingMethod:
    """One way of training. Subclasses set `name` (the SOLVER.METHOD value) and implement `process_function`;
    the other hooks do nothing by default.

    - `process_function()`: the ignite process function `(engine, batch) -> output`; the output holds at least
      every name of `run.criterion.part_names` ('loss' and the loss parts) as detached scalar tensors.
    - `attach(trainer)`: the method's own handlers. They are attached after epoch seeding and warm epochs, and
      before progress, schedule, evaluation and checkpoint handlers (engine/training.py::attach_run_handlers),
      so that an EPOCH_STARTED handler sees the epoch's seeds and an EPOCH_COMPLETED handler runs before the
      epoch is logged, evaluated and checkpointed.
    - `checkpoint_state()`: {name: object with state_dict()/load_state_dict()} saved in every checkpoint and
      restored on resume; names must not clash with the run's own (engine/methods/__init__.py::RUN_STATE_NAMES).
    - `at_step_boundary(engine)`: whether nothing is pending after this iteration (no gradients accumulated for a
      later step): a run stopped by a signal stops and checkpoints only there. True by default.
    - EPOCH_STARTED also fires for the rest of an epoch resumed after its k-th batch
      (engine/handlers/epoch_clock.py::batches_done_in_epoch is then k): a handler that resets per-epoch
      accumulators must not reset then (their values come back through checkpoint_state()).
    - The training loader's length is read after the method's EPOCH_STARTED handlers: a method may re-plan each
      epoch there (a new sampler assignment), epochs of different lengths included.
    - `supports_device_augment`: True when every image batch the method feeds the model goes through
      `run.to_device` (or `run.augment`); otherwise INPUT.AUGMENT_ON device is refused in one line naming it.
    - `stat_names`: epoch statistics the method leaves in `trainer.state.metrics` at EPOCH_COMPLETED (e.g. the
      optimizer steps taken); they are logged, written to train_metrics.jsonl and to TensorBoard.
    """

    name: str = ""
    stat_names: tuple[str, ...] = ()
    # Whether every image batch the method feeds the model passes Run.to_device or Run.augment, so that it may
    # train under INPUT.AUGMENT_ON device (a method that reads raw batches otherwise leaves it False: refused)
    supports_device_augment: bool = False

    def __init__(self, run: Run):
        self.run = run

    def process_function(self) -> Callable[[Engine, Any], dict]:
        raise NotImplementedError(f"training method {type(self).__name__} has no process function")

    def attach(self, trainer: Engine) -> None:
        """Attach the method's own handlers (none by default)."""

    def checkpoint_state(self) -> dict[str, Any]:
        """State the method adds to checkpoints (none by default)."""
        return {}

    def at_step_boundary(self, engine: Engine) -> bool:
        """Whether a run may stop after this iteration (every iteration ends a step by default)."""
        return True
