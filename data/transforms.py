"""Image transforms of reid-strong-baseline: resize, flip, pad + random crop, normalise, random erasing.

Every random choice draws from torch's generator, so seeding torch (per epoch, see engine) makes the
augmentation of an epoch reproducible, in the main process and in workers alike.
"""

from __future__ import annotations

import torchvision.transforms as T


def build_transforms(cfg, is_train: bool) -> T.Compose:
    """The train or test pipeline from INPUT.*: PIL image -> normalised float tensor (3, H, W)."""
    normalize = T.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD))
    if not is_train:
        return T.Compose([T.Resize(list(cfg.INPUT.SIZE_TEST)), T.ToTensor(), normalize])
    size = list(cfg.INPUT.SIZE_TRAIN)
    steps = [T.Resize(size), T.RandomHorizontalFlip(p=cfg.INPUT.PROB)]
    if cfg.INPUT.PADDING > 0:
        steps += [T.Pad(cfg.INPUT.PADDING), T.RandomCrop(size)]
    steps += [T.ToTensor(), normalize]
    if cfg.INPUT.RE_PROB > 0:
        # Zhong et al. "Random Erasing Data Augmentation" (AAAI 2020): area 2-40 %, aspect 0.3-3.3;
        # value 0 on a normalised tensor is the dataset mean, as reid-strong-baseline fills it.
        steps.append(T.RandomErasing(p=cfg.INPUT.RE_PROB, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0))
    return T.Compose(steps)
