"""A torch Dataset over records: decodes the image (or reads it from the image cache), applies the transform,
returns label and camera."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from config.errors import UserError
from data.records import Record

if TYPE_CHECKING:
    from data.image_cache import ImageCache


class UnreadableImageError(UserError):
    """An image file that cannot be opened or decoded."""


# The warnings filter entry that makes PIL's DecompressionBombWarning an exception (see refuse_bomb_warnings)
_BOMB_FILTER = ("error", None, Image.DecompressionBombWarning, None, 0)


def refuse_bomb_warnings() -> None:
    """Make PIL's DecompressionBombWarning (an image between MAX_IMAGE_PIXELS and twice that) an exception in
    this process, so that it ends where a bigger bomb ends (DecompressionBombError) instead of reaching stderr.

    Put first in the filters only when it is not first already, not wrapped around each image: every change
    to the filters resets Python's once-per-location memory, and other warnings of the data path would then
    repeat for every image. First, because a filter added later (an 'always' or 'ignore') would shadow it.
    """
    if warnings.filters[:1] != [_BOMB_FILTER]:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decompression_bomb_reason(pixels: int | None) -> str:
    """Why an image over PIL.Image.MAX_IMAGE_PIXELS is refused, in the words every image message uses."""
    count = "more pixels" if pixels is None else f"{pixels:,} pixels"
    return f"decompression bomb: {count}, more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,}"


def bomb_reason(error: Exception) -> str:
    """decompression_bomb_reason for PIL's bomb error or warning, with the pixel count its message names."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return decompression_bomb_reason(int(found.group(1)) if found else None)


def oversized_reason(img: Image.Image) -> str | None:
    """decompression_bomb_reason when an opened image has more pixels than PIL.Image.MAX_IMAGE_PIXELS, else None.

    PIL's own check runs in Image.open, but its warning range passes when a warnings filter hides the warning;
    this one reads the header's size only.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = img.width * img.height
    return decompression_bomb_reason(pixels) if limit is not None and pixels > limit else None


def read_image(path: str) -> Image.Image:
    """Open an image as RGB, or raise UnreadableImageError naming the file (a decompression bomb included)."""
    refuse_bomb_warnings()
    try:
        with Image.open(path) as img:
            too_big = oversized_reason(img)
            if too_big is not None:
                raise UnreadableImageError(f"cannot read image {path}: {too_big}")
            return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImageError(f"cannot read image {path}: {bomb_reason(err)}") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from None


class ImageDataset(Dataset):
    """Items are dicts: image tensor, label, camid and the record's index (to restore order after sharding).

    `transform` takes the decoded image: the CPU pipeline (a PIL image -> float tensor), or, with
    INPUT.AUGMENT_ON device, the loader's part of the device pipeline (data/device_augment.py::LoaderPart), which
    returns a dict (uint8 'image', and 'aug' when training) merged into the item. `cache` (DATALOADER.CACHE ram,
    data/image_cache.py) replaces the files: its images are handed over as arrays when they are what the transform
    reads (its `prepared_by`), else as PIL images, identical to the decoded files.
    """

    def __init__(self, records: list[Record], transform: Callable, cache: ImageCache | None = None):
        self.records = records
        self.transform = transform
        self.cache = cache
        prepared_by = getattr(transform, "prepared_by", None)
        if cache is not None and not cache.serves(prepared_by or ""):
            raise ValueError(f"an image cache of images after {cache.preparation!r} cannot serve {transform!r}")
        self._arrays = cache is not None and cache.preparation == prepared_by

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> Image.Image | np.ndarray:
        """The image of record `index`: decoded from its file, or read from the cache (see the class)."""
        if self.cache is None:
            return read_image(self.records[index].path)
        pixels = self.cache.image(index)
        return pixels if self._arrays else Image.fromarray(pixels)

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, int, int]) -> dict:
        """`item`: an index, or (index, seed) from the training loader's SeededBatches: torch's CPU generator is
        then seeded with `seed` for the transform and set back after it, so a sample's augmentation does not
        depend on the process or worker that loads it, and loading leaves the process's random state as it was.
        A third entry (Divide & Conquer's batches) is the sample's cluster, returned under 'cluster'."""
        index, seed, *cluster = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        image = self.image(index)
        if seed is None:
            return self._item(self.transform(image), record, index)
        # the CPU generator directly: torch.random.fork_rng costs ~0.2 ms a sample, this a few microseconds
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            image = self.transform(image)
        finally:
            generator.set_state(state)
        item = self._item(image, record, index)
        if cluster:
            item["cluster"] = cluster[0]
        return item

    @staticmethod
    def _item(image, record: Record, index: int) -> dict:
        pixels = image if isinstance(image, dict) else {"image": image}
        return {**pixels, "label": record.label, "camid": record.camid, "index": index}
