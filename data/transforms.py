"""Image transforms: reid-strong-baseline's re-ID pipeline and the DML papers' retrieval pipeline.

Every random choice draws from torch's generator. During training each sample's transform runs with that
generator seeded from (SEED, epoch, the sample's position in the epoch) (data/samplers.py::SeededBatches,
data/image_dataset.py), so the augmentation is the same whichever process or worker loads the sample.
"""

from __future__ import annotations

import logging

import torch
import torchvision.transforms as T

from config.choices import TRANSFORM_PIPELINES
from config.errors import ConfigError, check_choice

logger = logging.getLogger(__name__)

# MODEL.NAMEs whose ImageNet weights expect the Caffe input (BGR, 0-255, mean below, std 1). data/ does not
# import the models; tests/test_bn_inception.py checks this list against the backbones' input_convention.
CAFFE_INPUT_MODELS = ("bn_inception",)
# The Caffe BN-Inception's per-channel mean in B, G, R order, on the 0-255 scale (its std is 1).
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)


class CaffeBGRNormalize(torch.nn.Module):
    """ToTensor's RGB in [0, 1] -> BGR in 0-255 minus CAFFE_BGR_MEAN: the input the Caffe BN-Inception weights
    were trained on. The mean maps to 0, so random erasing's fill value 0 is still the mean."""

    def __init__(self, mean: tuple[float, float, float] = CAFFE_BGR_MEAN):
        super().__init__()
        self.mean = tuple(float(m) for m in mean)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.flip(-3).mul(255.0).sub_(mean)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={list(self.mean)}, order=BGR, scale=255)"


def build_normalize(cfg) -> torch.nn.Module:
    """The normalisation MODEL.NAME's ImageNet weights expect: INPUT.PIXEL_MEAN / PIXEL_STD on RGB in [0, 1]
    (ResNets), or the Caffe convention for bn_inception, which then ignores INPUT.PIXEL_MEAN / PIXEL_STD."""
    if cfg.MODEL.NAME in CAFFE_INPUT_MODELS:
        logger.info(
            "MODEL.NAME %s: input BGR 0-255 minus mean %s (std 1); INPUT.PIXEL_MEAN and INPUT.PIXEL_STD are ignored",
            cfg.MODEL.NAME,
            list(CAFFE_BGR_MEAN),
        )
        return CaffeBGRNormalize()
    return T.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD))


def pipeline_for(cfg, protocol: str) -> str:
    """INPUT.TRANSFORM, with 'auto' resolved by the dataset's protocol."""
    check_choice("INPUT.TRANSFORM", cfg.INPUT.TRANSFORM, TRANSFORM_PIPELINES)
    return protocol if cfg.INPUT.TRANSFORM == "auto" else cfg.INPUT.TRANSFORM


# Zhong et al., "Random Erasing Data Augmentation" (AAAI 2020): the erased box covers 2-40 % of the image, its
# aspect ratio (height / width) is drawn log-uniformly in 0.3-3.3
ERASE_SCALE = (0.02, 0.4)
ERASE_RATIO = (0.3, 3.3)


def first_steps(cfg, is_train: bool, pipeline: str) -> list:
    """The deterministic steps a pipeline starts with (its random ones come after): re-ID resizes to SIZE_TRAIN or
    SIZE_TEST, retrieval testing resizes the shorter side to RESIZE_TEST and centre-crops SIZE_TEST, retrieval
    training has none (its random resized crop reads the original image). With INPUT.AUGMENT_ON device they run in
    the loader (or before the image cache stores an image), data/device_augment.py::Preparation."""
    if pipeline == "retrieval":
        if is_train:
            return []
        if cfg.INPUT.RESIZE_TEST < min(cfg.INPUT.SIZE_TEST):
            raise ConfigError(
                f"INPUT.RESIZE_TEST = {cfg.INPUT.RESIZE_TEST} is smaller than the centre crop "
                f"INPUT.SIZE_TEST = {list(cfg.INPUT.SIZE_TEST)}"
            )
        return [T.Resize(cfg.INPUT.RESIZE_TEST), T.CenterCrop(list(cfg.INPUT.SIZE_TEST))]
    return [T.Resize(list(cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST))]


def crop_scale(cfg) -> tuple[float, float]:
    """INPUT.CROP_SCALE, the area range of the retrieval pipeline's random resized crop, checked."""
    scale = tuple(cfg.INPUT.CROP_SCALE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"INPUT.CROP_SCALE = {list(scale)}; expected [min, max] with 0 < min <= max <= 1")
    return scale


def build_transforms(cfg, is_train: bool, protocol: str = "reid") -> T.Compose:
    """The train or test pipeline from INPUT.*: PIL image -> normalised float tensor (3, H, W), normalised as
    MODEL.NAME's weights expect (see build_normalize)."""
    normalize = build_normalize(cfg)
    pipeline = pipeline_for(cfg, protocol)
    steps = first_steps(cfg, is_train, pipeline)
    if pipeline == "retrieval":
        if is_train:  # Proxy Anchor / Divide-and-Conquer: random resized crop + flip
            steps += [T.RandomResizedCrop(list(cfg.INPUT.SIZE_TRAIN), scale=crop_scale(cfg))]
            steps += [T.RandomHorizontalFlip(p=cfg.INPUT.PROB)]
        return T.Compose(steps + [T.ToTensor(), normalize])
    if not is_train:
        return T.Compose(steps + [T.ToTensor(), normalize])
    steps.append(T.RandomHorizontalFlip(p=cfg.INPUT.PROB))
    if cfg.INPUT.PADDING > 0:
        steps += [T.Pad(cfg.INPUT.PADDING), T.RandomCrop(list(cfg.INPUT.SIZE_TRAIN))]
    steps += [T.ToTensor(), normalize]
    if cfg.INPUT.RE_PROB > 0:
        # value 0 on a normalised tensor is the dataset mean, as reid-strong-baseline fills it
        steps.append(T.RandomErasing(p=cfg.INPUT.RE_PROB, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0))
    return T.Compose(steps)
