"""What Divide & Conquer clusters: the training set seen as at test time (seed 003: the test transform, the model in
eval mode), each image's pooled backbone feature (2048-d for ResNet-50, before the embedding layer), L2-normalised."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from data.build import ignore_stop_signals
from data.image_dataset import ImageDataset
from data.records import Record
from data.transforms import build_transforms
from engine.run.precision import Precision


def clustering_loader(cfg, records: list[Record], protocol: str) -> DataLoader:
    """Every training image in order with the test transform, TEST.IMS_PER_BATCH at a time (one process reads
    them all: rank 0 clusters)."""
    dataset = ImageDataset(records, build_transforms(cfg, is_train=False, protocol=protocol))
    return DataLoader(
        dataset,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
    )


@torch.no_grad()
def pooled_features(model: nn.Module, loader: DataLoader, precision: Precision, device: torch.device) -> np.ndarray:
    """(N, C) float32: normalise(pool(backbone(image))) of every image of `loader`, in its order, with `model` in
    eval mode (its mode is restored after)."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            with precision.autocast():
                pooled = model.pool(model.backbone(images))
            chunks.append(F.normalize(pooled.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()
