"""What Divide & Conquer clusters: the training set seen as at test time (seed 003: the test transform, the model in
eval mode; its loader is data/build.py::build_eval_loader with shard=False, rank 0 reading every image), each
image's pooled backbone feature (2048-d for ResNet-50, before the embedding layer), L2-normalised."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from engine.run.precision import Precision


@torch.no_grad()
def pooled_features(
    model: nn.Module,
    loader: DataLoader,
    precision: Precision,
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """(N, C) float32: normalise(pool(backbone(image))) of every image of `loader`, in its order, with `model` in
    eval mode (its mode is restored after). `preprocess`: what the evaluation applies to the images on the device
    (INPUT.AUGMENT_ON device: the normalisation of the uint8 images, data/device_augment.py::build_eval_preprocess)."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if preprocess is not None:
                images = preprocess(images)
            with precision.autocast():
                pooled = model.pool(model.backbone(images))
            chunks.append(F.normalize(pooled.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()
