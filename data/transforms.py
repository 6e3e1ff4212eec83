"""Image transforms: reid-strong-baseline's re-ID pipeline and the DML papers' retrieval pipeline.

Every random choice draws from torch's generator, so seeding torch (per epoch, see engine) makes the
augmentation of an epoch reproducible, in the main process and in workers alike.
"""

from __future__ import annotations

import torchvision.transforms as T

from config.errors import ConfigError, check_choice

PIPELINES = ("auto", "reid", "retrieval")


def pipeline_for(cfg, protocol: str) -> str:
    """INPUT.TRANSFORM, with 'auto' resolved by the dataset's protocol."""
    check_choice("INPUT.TRANSFORM", cfg.INPUT.TRANSFORM, PIPELINES)
    return protocol if cfg.INPUT.TRANSFORM == "auto" else cfg.INPUT.TRANSFORM


def build_transforms(cfg, is_train: bool, protocol: str = "reid") -> T.Compose:
    """The train or test pipeline from INPUT.*: PIL image -> normalised float tensor (3, H, W)."""
    normalize = T.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD))
    pipeline = pipeline_for(cfg, protocol)
    if pipeline == "retrieval":
        return _retrieval_transforms(cfg, is_train, normalize)
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


def _retrieval_transforms(cfg, is_train: bool, normalize: T.Normalize) -> T.Compose:
    """Proxy Anchor / Divide-and-Conquer: random resized crop + flip; test: resize + centre crop."""
    if is_train:
        scale = tuple(cfg.INPUT.CROP_SCALE)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"INPUT.CROP_SCALE = {list(scale)}; expected [min, max] with 0 < min <= max <= 1")
        return T.Compose([T.RandomResizedCrop(list(cfg.INPUT.SIZE_TRAIN), scale=scale),
                          T.RandomHorizontalFlip(p=cfg.INPUT.PROB), T.ToTensor(), normalize])
    if cfg.INPUT.RESIZE_TEST < min(cfg.INPUT.SIZE_TEST):
        raise ConfigError(f"INPUT.RESIZE_TEST = {cfg.INPUT.RESIZE_TEST} is smaller than the centre crop "
                          f"INPUT.SIZE_TEST = {list(cfg.INPUT.SIZE_TEST)}")
    return T.Compose([T.Resize(cfg.INPUT.RESIZE_TEST), T.CenterCrop(list(cfg.INPUT.SIZE_TEST)), T.ToTensor(), normalize])
