"""INPUT.AUGMENT_ON device: loader workers send uint8 images and each sample's random parameters; the run's device
augments and normalises whole batches.

The work is split in two:
- in a loader worker, per sample (the LoaderPart kinds): the image (decoded, or read from the image cache), the
  pipeline's deterministic first step (Preparation: data/transforms.py::first_steps) and the random parameters of
  the rest. They are drawn from torch's CPU generator under the sample's seed (data/image_dataset.py), with
  torchvision's public get_params and in the order in which the CPU pipeline draws them: a seed gives the same
  flip, crop and erased box as INPUT.AUGMENT_ON cpu, whichever worker or process draws it;
- on the device, per batch (Run.to_device for training, the extractor's step for evaluation): flip, pad + crop or
  crop resize, conversion to float, normalisation and random erasing, a few tensor operations on the whole batch.
  The host sends uint8 pixels, a quarter of the bytes of float ones.

A batch holds 'image' uint8 (B, 3, H, W), channels-last in memory as the worker's HWC images were stacked (retrieval
training: a zero-padded canvas of the batch's largest crop, each crop at its top left), and 'aug' int64 (B, k), the
parameters (the *_COLUMNS below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import default_collate

from config.choices import AUGMENT_PLACES
from config.errors import check_choice
from data.transforms import (
    CAFFE_INPUT_MODELS,
    ERASE_RATIO,
    ERASE_SCALE,
    build_normalize,
    build_transforms,
    crop_scale,
    first_steps,
    pipeline_for,
)

# Columns of 'aug' for the re-ID pipeline: the flip, the crop's offsets in the padded image, whether a box is erased
# and that box (in the cropped image)
REID_COLUMNS = ("flip", "top", "left", "erase", "erase_top", "erase_left", "erase_height", "erase_width")
# Columns of 'aug' for the retrieval pipeline: the flip and the crop box in the original image
RETRIEVAL_COLUMNS = ("flip", "crop_top", "crop_left", "crop_height", "crop_width")
# Aspect-ratio range of the random resized crop: torchvision's RandomResizedCrop default, which the CPU pipeline uses
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


# ------------------------------------------------------------------------------------------------ loader side
@dataclass(frozen=True)
class Preparation:
    """The deterministic steps (PIL -> PIL) a pipeline starts with, and the size (height, width) every image has
    after them (None: the original size, when there are none). `name` tells two preparations apart (the image
    cache records the one it applied)."""

    steps: tuple = ()
    size: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return " + ".join(repr(step) for step in self.steps)

    def __call__(self, image: Image.Image) -> Image.Image:
        for step in self.steps:
            image = step(image)
        return image


ORIGINAL = Preparation()  # no step: images at their original size


def build_preparation(cfg, is_train: bool, protocol: str = "reid") -> Preparation:
    """The deterministic first step of the train or test pipeline of INPUT.* (data/transforms.py::first_steps)."""
    steps = tuple(first_steps(cfg, is_train, pipeline_for(cfg, protocol)))
    size = tuple(cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST) if steps else None
    return Preparation(steps, size)


def _shaped(height: int, width: int) -> torch.Tensor:
    """A (3, height, width) tensor without memory: what torchvision's get_params read the image size from."""
    return torch.empty(()).expand(3, height, width)


def _chw(pixels: np.ndarray) -> torch.Tensor:
    """An HWC uint8 array as a (3, H, W) tensor view (no copy)."""
    return torch.from_numpy(pixels).permute(2, 0, 1)


class LoaderPart:
    """The loader's share of the pipeline: an image (PIL, or an array the cache stored after `preparation`) ->
    {'image': uint8 (3, H, W)[, 'aug': int64 (k,)]}. The test pipelines draw nothing: this base class is theirs."""

    def __init__(self, preparation: Preparation):
        self.preparation = preparation

    @property
    def prepared_by(self) -> str:
        """The name of the preparation whose output this part reads (data/image_dataset.py passes such cached
        images as arrays, any other image as PIL)."""
        return self.preparation.name

    def pixels(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The prepared image as an HWC uint8 array."""
        if isinstance(image, np.ndarray):
            return image
        return np.array(self.preparation(image), dtype=np.uint8)

    def __call__(self, image: Image.Image | np.ndarray) -> dict:
        return {"image": _chw(self.pixels(image))}


class ReidLoaderPart(LoaderPart):
    """Re-ID training (reid-strong-baseline): the image resized to SIZE_TRAIN and the REID_COLUMNS, drawn as the CPU
    pipeline draws them: flip (probability `flip_p`), crop offsets in the image padded by `padding` (uniform in
    [0, 2 * padding]; none without padding), random erasing (probability `erase_p`)."""

    def __init__(self, preparation: Preparation, flip_p: float, padding: int, erase_p: float):
        super().__init__(preparation)
        self.flip_p, self.padding, self.erase_p = flip_p, padding, erase_p

    def draw(self) -> list[int]:
        """The REID_COLUMNS of one sample, from torch's CPU generator."""
        height, width = self.preparation.size
        flip = int(bool(torch.rand(1) < self.flip_p))
        top = left = 0
        if self.padding > 0:
            padded = _shaped(height + 2 * self.padding, width + 2 * self.padding)
            top, left, _, _ = T.RandomCrop.get_params(padded, (height, width))
        erase = [0, 0, 0, 0, 0]
        if self.erase_p > 0 and bool(torch.rand(1) < self.erase_p):
            box_top, box_left, box_height, box_width, _ = T.RandomErasing.get_params(
                _shaped(height, width), scale=ERASE_SCALE, ratio=ERASE_RATIO, value=[0.0]
            )
            if box_height < height:  # the whole image back means that its 10 tries found no box: nothing is erased
                erase = [1, box_top, box_left, box_height, box_width]
        return [flip, top, left, *erase]

    def __call__(self, image: Image.Image | np.ndarray) -> dict:
        pixels = self.pixels(image)
        return {"image": _chw(pixels), "aug": torch.tensor(self.draw(), dtype=torch.int64)}


class RetrievalLoaderPart(LoaderPart):
    """Retrieval training (Proxy Anchor, Divide & Conquer): the crop box of a random resized crop with area
    fraction in `scale` and aspect ratio in CROP_RATIO, drawn on the image's own size, then the flip (probability
    `flip_p`): the RETRIEVAL_COLUMNS. The worker sends the crop itself (a slice of the image, no interpolation);
    the device resizes it."""

    def __init__(self, scale: tuple[float, float], flip_p: float):
        super().__init__(ORIGINAL)
        self.scale, self.flip_p = scale, flip_p

    def __call__(self, image: Image.Image | np.ndarray) -> dict:
        pixels = self.pixels(image)
        top, left, height, width = T.RandomResizedCrop.get_params(
            _shaped(*pixels.shape[:2]), scale=list(self.scale), ratio=list(CROP_RATIO)
        )
        flip = int(bool(torch.rand(1) < self.flip_p))
        crop = pixels[top : top + height, left : left + width]
        return {"image": _chw(crop), "aug": torch.tensor([flip, top, left, height, width], dtype=torch.int64)}


def build_loader_transform(cfg, is_train: bool, protocol: str = "reid") -> Callable:
    """What the loader applies to each image under INPUT.AUGMENT_ON: the whole CPU pipeline (data/transforms.py),
    or the LoaderPart of the device pipeline."""
    check_choice("INPUT.AUGMENT_ON", cfg.INPUT.AUGMENT_ON, AUGMENT_PLACES)
    if cfg.INPUT.AUGMENT_ON == "cpu":
        return build_transforms(cfg, is_train, protocol)
    preparation = build_preparation(cfg, is_train, protocol)
    if not is_train:
        return LoaderPart(preparation)
    if pipeline_for(cfg, protocol) == "retrieval":
        return RetrievalLoaderPart(crop_scale(cfg), cfg.INPUT.PROB)
    return ReidLoaderPart(preparation, cfg.INPUT.PROB, cfg.INPUT.PADDING, cfg.INPUT.RE_PROB)


def preparation_of(transform: Callable) -> Preparation:
    """The images a loader transform reads: a LoaderPart's prepared ones, the originals for the CPU pipeline."""
    return transform.preparation if isinstance(transform, LoaderPart) else ORIGINAL


def collate_pixels(items: list[dict]) -> dict:
    """A batch of LoaderPart outputs: the images stacked as uint8 (B, 3, H, W), channels-last in memory, in a
    zero-padded canvas of the largest height and width when their sizes differ; every other key as default_collate
    stacks it."""
    images = [item["image"].permute(1, 2, 0) for item in items]
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    if all(i.shape[:2] == (height, width) for i in images):
        canvas = default_collate(images)  # stacked in shared memory inside a worker, as default_collate does
    else:
        canvas = torch.zeros(len(images), height, width, 3, dtype=torch.uint8)
        for place, image in zip(canvas, images):
            place[: image.shape[0], : image.shape[1]] = image
    rest = default_collate([{k: v for k, v in item.items() if k != "image"} for item in items])
    return {"image": canvas.permute(0, 3, 1, 2), **rest}


def loader_collate(transform: Callable) -> Callable | None:
    """The collate function of a loader with `transform`: collate_pixels for a LoaderPart, None (torch's default)
    for the CPU pipeline."""
    return collate_pixels if isinstance(transform, LoaderPart) else None


# ------------------------------------------------------------------------------------------------ device side
class DeviceNormalize:
    """Pixel values 0-255 (uint8 or float, any device) -> ToTensor's [0, 1] -> MODEL.NAME's normalisation: mean/std
    on RGB, or the Caffe convention (BGR, 0-255, minus CaffeBGRNormalize's mean); the CPU pipeline's operations in
    its order, so a sample's values match it to float rounding. The constants are kept on each device used."""

    def __init__(self, cfg):
        module = build_normalize(cfg)
        self.caffe = cfg.MODEL.NAME in CAFFE_INPUT_MODELS
        self.mean = tuple(float(m) for m in module.mean)
        self.std = (1.0, 1.0, 1.0) if self.caffe else tuple(float(s) for s in module.std)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1)
            self._constants[device] = (mean, std)
        return self._constants[device]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self._on(pixels.device)
        unit = pixels.float().div(255)
        if self.caffe:
            return unit.flip(-3).mul(255.0).sub_(mean)
        return unit.sub_(mean).div_(std)


def erase_boxes(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020) of a normalised batch: where
    params' 'erase' column is 1, the box (erase_top, erase_left, erase_height, erase_width) is set to 0, the mean
    after normalisation, as reid-strong-baseline fills it. The boxes were drawn in the worker as torchvision's
    RandomErasing draws them: area fraction s ~ U(0.02, 0.4), log aspect ratio ~ U(log 0.3, log 3.3), height
    round(sqrt(s A r)), width round(sqrt(s A / r)), 10 tries for a box inside the image, else no erasing."""
    erase, top, left, height, width = params[:, 3:8].unbind(1)
    rows = torch.arange(images.shape[-2], device=images.device).view(1, -1, 1)
    cols = torch.arange(images.shape[-1], device=images.device).view(1, 1, -1)
    inside = (
        (erase.view(-1, 1, 1) > 0)
        & (rows >= top.view(-1, 1, 1))
        & (rows < (top + height).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + width).view(-1, 1, 1))
    )
    return images.masked_fill(inside.unsqueeze(1), 0.0)


class ReidDeviceAugment:
    """The re-ID training pipeline on a batch of (B, 3, SIZE_TRAIN) uint8 images with their REID_COLUMNS: flip,
    zero padding by `padding` (black pixels, as T.Pad) and the crop back to SIZE_TRAIN at (top, left) in one gather
    on the uint8 pixels, then to float, normalisation and random erasing (erase_boxes)."""

    def __init__(self, cfg, channels_last: bool = False):
        self.padding = cfg.INPUT.PADDING
        self.normalize = DeviceNormalize(cfg)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def flip_pad_crop(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, H, W): each image flipped if asked, padded and cropped at its
        offsets. Output pixel (y, x) reads padded pixel (top + y, left + x), or, flipped, (top + y, W + 2p - 1 -
        left - x): the flip before the padding, as in the CPU pipeline."""
        p = self.padding
        batch, _, height, width = images.shape
        hwc = images.permute(0, 2, 3, 1)
        if p > 0:
            hwc = F.pad(hwc, (0, 0, p, p, p, p))  # zeros around height and width
        flip, top, left = params[:, 0:1], params[:, 1:2], params[:, 2:3]
        rows = top + torch.arange(height, device=images.device)
        cols = left + torch.arange(width, device=images.device)
        cols = torch.where(flip > 0, width + 2 * p - 1 - cols, cols)
        which = torch.arange(batch, device=images.device).view(-1, 1, 1)
        return hwc[which, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)

    def __call__(self, batch: dict) -> dict:
        """The batch with 'image' the augmented float batch and 'aug' consumed (a new dict: `batch` is unchanged)."""
        out = dict(batch)
        params = out.pop("aug")
        images = self.normalize(self.flip_pad_crop(out["image"], params))
        out["image"] = erase_boxes(images, params).contiguous(memory_format=self.memory_format)
        return out


class RetrievalDeviceAugment:
    """The retrieval training pipeline on a canvas of uint8 crops with their RETRIEVAL_COLUMNS: each crop resized to
    SIZE_TRAIN (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015: a random box of 8-100 % of the image's
    area, INPUT.CROP_SCALE, and aspect ratio 3/4-4/3, resized to the network's input) and flipped if asked, in one
    batched bilinear sampling (grid_sample, align_corners=False, source coordinates clamped to the crop so that its
    edges repeat as a crop-then-resize does), then to float and normalised.

    Bilinear without antialiasing: PIL's resize (the CPU pipeline) widens its filter when it shrinks an image, this
    one reads the 4 nearest pixels, so a crop shrunk by a large factor aliases more than on the CPU. Pixel values are
    not rounded to uint8 between the resize and the normalisation either, as they are on the CPU."""

    def __init__(self, cfg, channels_last: bool = False):
        self.size = tuple(cfg.INPUT.SIZE_TRAIN)
        self.normalize = DeviceNormalize(cfg)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def sampling_grid(self, params: torch.Tensor, canvas_height: int, canvas_width: int) -> torch.Tensor:
        """(B, H_out, W_out, 2) grid_sample coordinates: output pixel centre (y + 0.5) maps to source row
        (y + 0.5) * crop_height / H_out - 0.5 of the crop (the same for columns, mirrored when flipped), clamped to
        the crop, then normalised to the canvas for align_corners=False."""
        out_height, out_width = self.size
        device = params.device
        flip = params[:, 0:1] > 0
        heights, widths = params[:, 3:4].float(), params[:, 4:5].float()
        ys = (torch.arange(out_height, device=device) + 0.5) * heights / out_height - 0.5
        xs = (torch.arange(out_width, device=device) + 0.5) * widths / out_width - 0.5
        ys = torch.minimum(ys.clamp(min=0), heights - 1)
        xs = torch.minimum(xs.clamp(min=0), widths - 1)
        xs = torch.where(flip, xs.flip(1), xs)
        grid_y = ((2 * ys + 1) / canvas_height - 1).unsqueeze(2).expand(-1, -1, out_width)
        grid_x = ((2 * xs + 1) / canvas_width - 1).unsqueeze(1).expand(-1, out_height, -1)
        return torch.stack([grid_x, grid_y], dim=-1)

    def __call__(self, batch: dict) -> dict:
        """The batch with 'image' the augmented float batch and 'aug' consumed (a new dict: `batch` is unchanged)."""
        out = dict(batch)
        params = out.pop("aug")
        canvas = out["image"]
        grid = self.sampling_grid(params, canvas.shape[-2], canvas.shape[-1])
        resized = F.grid_sample(canvas.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        out["image"] = self.normalize(resized).contiguous(memory_format=self.memory_format)
        return out


def build_train_augment(cfg, protocol: str = "reid", channels_last: bool = False) -> Callable[[dict], dict] | None:
    """What Run.to_device applies to a training batch on the device: None under INPUT.AUGMENT_ON cpu (the loader
    made the float images), else the device half of the training pipeline."""
    check_choice("INPUT.AUGMENT_ON", cfg.INPUT.AUGMENT_ON, AUGMENT_PLACES)
    if cfg.INPUT.AUGMENT_ON == "cpu":
        return None
    if pipeline_for(cfg, protocol) == "retrieval":
        return RetrievalDeviceAugment(cfg, channels_last)
    return ReidDeviceAugment(cfg, channels_last)


def build_eval_preprocess(cfg) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What an evaluation step applies to its uint8 images on the device: the normalisation, in the standard
    memory layout as the CPU pipeline's images have it (None under INPUT.AUGMENT_ON cpu: nothing to do)."""
    check_choice("INPUT.AUGMENT_ON", cfg.INPUT.AUGMENT_ON, AUGMENT_PLACES)
    if cfg.INPUT.AUGMENT_ON == "cpu":
        return None
    normalize = DeviceNormalize(cfg)
    return lambda images: normalize(images).contiguous()
