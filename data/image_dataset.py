"""A torch Dataset over records: decodes the image, applies the transform, returns label and camera."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from config.errors import UserError
from data.records import Record


class UnreadableImageError(UserError):
    """An image file that cannot be opened or decoded."""


def read_image(path: str) -> Image.Image:
    """Open an image as RGB, or raise UnreadableImageError naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from None


class ImageDataset(Dataset):
    """Items are dicts: image tensor, label, camid and the record's index (to restore order after sharding)."""

    def __init__(self, records: list[Record], transform: Callable):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self.transform(read_image(record.path))
        return {"image": image, "label": record.label, "camid": record.camid, "index": index}
