"""DATALOADER.CACHE ram: the images a loader reads, decoded once into one shared uint8 tensor.

Before the first epoch (or evaluation) every image of a record list is decoded to RGB by a pool of threads (PIL
releases the GIL while it decodes) into ONE contiguous uint8 tensor, each image as height x width x 3 bytes, with an
int64 table of (offset, height, width) per record. The tensor lives in shared memory: DataLoader workers read views of
it without a copy, and no Python object per image exists (a forked worker touching the reference counts of many small
objects would copy their pages one by one; spawned workers receive the tensor as a handle, not a copy).

What is stored: each image at its original size (the CPU transforms read it back with PIL.Image.fromarray, so the
batches are bit-identical to those decoded from the files), or, with INPUT.AUGMENT_ON device, after its pipeline's
deterministic first step (data/device_augment.py::Preparation): smaller, and all of one size.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import ignite.distributed as idist
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config.choices import IMAGE_CACHES
from config.errors import ConfigError, check_choice
from data.device_augment import ORIGINAL, Preparation
from data.image_check import CHUNK_IMAGES, PROGRESS_BAR_MIN_IMAGES, default_workers
from data.image_dataset import UnreadableImageError, read_image, refuse_bomb_warnings
from data.records import Record

logger = logging.getLogger(__name__)

# Where torch places shared tensors on Linux (its file_descriptor and file_system strategies)
SHARED_MEMORY_DIR = "/dev/shm"
# Offset of a table row whose image is not cached (another process's share of an evaluation set)
NOT_CACHED = -1


class ImageCache:
    """Decoded images of a record list: `pixels` (all images' bytes, HWC each, shared memory), `table` (one row per
    record: offset into `pixels`, height, width; offset NOT_CACHED for a record this process never reads) and
    `preparation` (the name of the step applied before storing; '' = none, original size)."""

    def __init__(self, pixels: torch.Tensor, table: torch.Tensor, preparation: str):
        self.pixels, self.table, self.preparation = pixels, table, preparation
        self._views: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def serves(self, preparation: str) -> bool:
        """Whether a loader whose images need `preparation` can read this cache: it stores that step's output, or
        the originals (the loader then applies the step itself)."""
        return self.preparation in ("", preparation)

    def image(self, row: int) -> np.ndarray:
        """Record `row`'s image, a (height, width, 3) uint8 view of the shared tensor (no copy)."""
        if self._views is None:  # numpy views, made once per process (they are not pickled: see __getstate__)
            self._views = (self.pixels.numpy(), self.table.numpy())
        pixels, table = self._views
        offset, height, width = table[row]
        if offset == NOT_CACHED:
            raise LookupError(f"image cache: row {row} was not cached by this process")
        return pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def __getstate__(self) -> dict:
        return {"pixels": self.pixels, "table": self.table, "preparation": self.preparation, "_views": None}


def build_image_cache(
    cfg, records: list[Record], preparation: Preparation = ORIGINAL, label: str = "images", rows=None
) -> ImageCache | None:
    """The cache of `records` (those of `rows` only, when given) under DATALOADER.CACHE 'ram', None under 'none'."""
    check_choice("DATALOADER.CACHE", cfg.DATALOADER.CACHE, IMAGE_CACHES)
    if cfg.DATALOADER.CACHE == "none":
        return None
    return cache_images(records, preparation, label, rows)


def cache_images(
    records: list[Record],
    preparation: Preparation = ORIGINAL,
    label: str = "images",
    rows: Sequence[int] | None = None,
    workers: int | None = None,
) -> ImageCache:
    """Decode the image of every record of `rows` (default: all; a path listed twice is decoded once), apply
    `preparation`, and store them in one shared tensor. Logs one INFO line (count, GB, seconds); a progress bar on a
    terminal from PROGRESS_BAR_MIN_IMAGES images. An unreadable image raises read_image's UnreadableImageError."""
    refuse_bomb_warnings()  # a bomb in PIL's warning range is an exception, as in read_image
    start = time.perf_counter()
    rows = range(len(records)) if rows is None else rows
    paths: dict[str, int] = {}  # path -> its position among the decoded images
    image_of_row = np.full(len(records), -1, dtype=np.int64)
    for row in rows:
        image_of_row[row] = paths.setdefault(records[row].path, len(paths))
    unique = list(paths)
    workers = workers or default_workers()
    bar = tqdm(
        total=len(unique),
        desc=f"Caching {label}",
        unit="img",
        disable=len(unique) < PROGRESS_BAR_MIN_IMAGES or not sys.stderr.isatty() or idist.get_rank() != 0,
    )
    with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-cache") as pool:
        chunks = _chunks(unique, workers)
        if preparation.size is not None:  # every image comes out of the preparation at this size
            sizes = np.tile(np.asarray(preparation.size, dtype=np.int64), (len(unique), 1))
        else:
            sizes = np.asarray([s for found in pool.map(_header_sizes, chunks) for s in found], dtype=np.int64)
        sizes = sizes.reshape(len(unique), 2)
        lengths = sizes[:, 0] * sizes[:, 1] * 3
        offsets = np.cumsum(lengths) - lengths
        pixels = _shared_bytes(int(lengths.sum()), label)
        flat = pixels.numpy()
        first = 0
        jobs = []
        for chunk in chunks:
            places = [(offsets[i], sizes[i]) for i in range(first, first + len(chunk))]
            jobs.append(pool.submit(_decode_into, flat, chunk, places, preparation))
            first += len(chunk)
        for job in jobs:
            bar.update(job.result())
    table = torch.full((len(records), 3), NOT_CACHED, dtype=torch.int64)
    cached = torch.from_numpy(np.flatnonzero(image_of_row >= 0))
    if len(cached):
        positions = torch.from_numpy(image_of_row)[cached]
        table[cached, 0] = torch.from_numpy(offsets)[positions]
        table[cached, 1:] = torch.from_numpy(sizes)[positions]
    table.share_memory_()
    logger.info(
        "Image cache of the %s: %d images, %.2f GB in shared memory (%s), decoded in %.1f s with %d threads",
        label,
        len(unique),
        pixels.numel() / 1e9,
        f"after {preparation.name}" if preparation.name else "original sizes",
        time.perf_counter() - start,
        workers,
    )
    return ImageCache(pixels, table, preparation.name)


def _chunks(paths: list[str], workers: int) -> list[list[str]]:
    # one task per chunk of paths: one future per image would cost about as much as a header read
    size = min(CHUNK_IMAGES, max(1, len(paths) // (4 * workers)))
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def _header_sizes(paths: list[str]) -> list[tuple[int, int]]:
    """(height, width) of each image from its header alone (no pixel decoded)."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.append((img.height, img.width))
        except Exception:
            read_image(path)  # fails as well, with the message every unreadable image gets
            raise
    return sizes


def _decode_into(flat: np.ndarray, paths: list[str], places: list[tuple[int, np.ndarray]], preparation) -> int:
    """Decode each of `paths` (RGB, then `preparation`) into its (offset, (height, width)) place of `flat`."""
    for path, (offset, (height, width)) in zip(paths, places):
        image = read_image(path)
        if preparation.steps:
            image = preparation(image)
        if image.size != (width, height):
            raise UnreadableImageError(
                f"cannot read image {path}: decoded as {image.width}x{image.height} pixels, "
                f"its header said {width}x{height}"
            )
        flat[offset : offset + height * width * 3] = np.asarray(image).reshape(-1)
    return len(paths)


def shared_memory_free() -> int | None:
    """Free bytes where torch puts shared tensors (None where that folder does not exist)."""
    return shutil.disk_usage(SHARED_MEMORY_DIR).free if os.path.isdir(SHARED_MEMORY_DIR) else None


def _shared_bytes(count: int, label: str) -> torch.Tensor:
    """A uint8 tensor of `count` bytes in shared memory, or a one-line ConfigError when there is no room for it."""
    needed = f"DATALOADER.CACHE ram needs {count / 1e9:.2f} GB of shared memory for the {label}"
    free = shared_memory_free()
    if free is not None and count > free:
        raise ConfigError(
            f"{needed} but {SHARED_MEMORY_DIR} has {free / 1e9:.2f} GB free; expected more shared memory "
            "(a container's --shm-size) or DATALOADER.CACHE none"
        )
    try:
        return torch.empty(count, dtype=torch.uint8).share_memory_()
    except RuntimeError as err:
        raise ConfigError(f"{needed}: {err}; expected more shared memory or DATALOADER.CACHE none") from None
