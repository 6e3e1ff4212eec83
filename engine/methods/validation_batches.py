"""The validation batches of a meta step (MMSI, DDTAS): VAL_BATCH images, VAL_K per class, of the training split
with the training loader's own transform and image cache (and, under INPUT.AUGMENT_ON device, the run's device
augmentation), endless within an epoch and seeded from (SEED, epoch) (data/samplers.py::ValidationBatches); how many
an epoch drew is checkpointed by the method, so a run resumed inside an epoch continues the same stream."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

from config.errors import ConfigError
from data.build import ignore_stop_signals
from data.device_augment import loader_collate
from data.image_dataset import ImageDataset
from data.samplers import ValidationBatches
from engine.handlers.epoch_clock import batches_done_in_epoch
from engine.methods.base import Run


def build_validation_loader(run: Run, node: str, val_batch: int, val_k: int) -> DataLoader:
    """The loader of the validation batches (`node`: the method's config node, for messages)."""
    if val_batch % val_k:
        raise ConfigError(f"{node}.VAL_BATCH = {val_batch} is not a multiple of {node}.VAL_K = {val_k}")
    records = run.data.train_records
    workers = run.cfg.DATALOADER.NUM_WORKERS
    training = run.data.train_loader.dataset  # its transform, and its image cache (the same records)
    return DataLoader(
        ImageDataset(records, training.transform, training.cache),
        batch_sampler=ValidationBatches([r.label for r in records], val_batch, val_k, run.cfg.SEED),
        num_workers=workers,
        collate_fn=loader_collate(training.transform),
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
    )


class ValidationStream:
    """The validation batches of the current epoch, and how many were drawn (`drawn`, checkpointed)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.drawn = 0
        self._iterator = None

    def start_epoch(self, engine: Engine) -> None:
        """EPOCH_STARTED: a fresh epoch starts its stream; one resumed after its k-th batch skips the batches it
        had drawn (`drawn`, restored from the checkpoint)."""
        if batches_done_in_epoch(engine) == 0:
            self.drawn = 0
        self.loader.batch_sampler.set_epoch(engine.state.epoch)
        self.loader.batch_sampler.skip_batches(self.drawn)
        self._iterator = iter(self.loader)

    def next(self, device: torch.device, augment: Callable[[dict], dict] | None = None) -> tuple[torch.Tensor, ...]:
        """The next batch's images and labels on `device`; `augment` (the run's, INPUT.AUGMENT_ON device) makes the
        float images there, as for the training batches."""
        self.drawn += 1
        batch = next(self._iterator)
        images, labels = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
        if augment is not None:
            aug = batch["aug"].to(device, non_blocking=True)
            images = augment({"image": images, "aug": aug})["image"]
        return images, labels
