"""A torch Dataset over records: decodes the image, applies the transform, returns label and camera."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from config.errors import UserError
from data.records import Record


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
    """Items are dicts: image tensor, label, camid and the record's index (to restore order after sharding)."""

    def __init__(self, records: list[Record], transform: Callable):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, int, int]) -> dict:
        """`item`: an index, or (index, seed) from the training loader's SeededBatches: torch's CPU generator is
        then seeded with `seed` for the transform and set back after it, so a sample's augmentation does not
        depend on the process or worker that loads it, and loading leaves the process's random state as it was.
        A third entry (Divide & Conquer's batches) is the sample's cluster, returned under 'cluster'."""
        index, seed, *cluster = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        image = read_image(record.path)
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
        return {"image": image, "label": record.label, "camid": record.camid, "index": index}
