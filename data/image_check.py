"""The check of every image a run will read, before its first epoch (DATALOADER.CHECK_IMAGES).

'header' opens each file and reads its header: the format is recognised, the size is read, and the size is
not a decompression bomb (more pixels than PIL.Image.MAX_IMAGE_PIXELS); no pixel is decoded, so a file cut
short after its header passes. 'decode' decodes every image to RGB, as training does, and catches those too.
Files are checked by a pool of threads (PIL releases the GIL while it decodes, and reading files waits on the
disk), with a progress bar on a terminal. What to do with the bad ones is data/bad_images.py's job.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import ignite.distributed as idist
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from config.choices import IMAGE_CHECKS
from config.errors import check_choice
from data.image_dataset import bomb_reason, oversized_reason, refuse_bomb_warnings
from data.records import Record

logger = logging.getLogger(__name__)

# Below this many images the check takes well under a second: a progress bar would only clutter the log
PROGRESS_BAR_MIN_IMAGES = 1000
# Most images one thread checks per task
CHUNK_IMAGES = 64


class BadImage(NamedTuple):
    """A file that cannot be used as an image, and why."""

    path: str
    reason: str


def default_workers() -> int:
    """Threads of the check: one per CPU core, at most 8 (the check must not crowd out the rest of the machine)."""
    return max(1, min(8, os.cpu_count() or 1))


def _unidentified_reason(path: str) -> str:
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False
    return "empty file (0 bytes)" if empty else "cannot identify image file (not an image format PIL reads)"


def image_problem(path: str, mode: str = "header") -> str | None:
    """Why `path` cannot be read as an image under check `mode` ('header' or 'decode'), or None when it can."""
    try:
        with Image.open(path) as img:
            too_big = oversized_reason(img)
            if too_big is not None:
                return too_big
            if mode == "decode":
                img.convert("RGB")  # what read_image does: every pixel decoded
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a folder, not an image file"
    except PermissionError:
        return "permission denied"
    except UnidentifiedImageError:
        return _unidentified_reason(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return bomb_reason(err)
    except Exception as err:  # PIL's decoders end a corrupt file in OSError, ValueError, SyntaxError,
        # struct.error, ...: whichever it is, the file cannot be read, which is the question asked here
        return str(err) or type(err).__name__
    return None


def _chunk_problems(paths: list[str], mode: str) -> list[str | None]:
    return [image_problem(path, mode) for path in paths]


def find_bad_images(records: Iterable[Record], mode: str = "header", workers: int | None = None) -> list[BadImage]:
    """Check the image of every record (each path once) under `mode` ('header', 'decode'; 'off' checks nothing)
    with `workers` threads (default: default_workers()); the bad ones with their reasons, in record order.

    Logs one INFO line: how many images, the mode, the seconds and how many are bad.
    """
    check_choice("DATALOADER.CHECK_IMAGES", mode, IMAGE_CHECKS)
    if mode == "off":
        return []
    paths = list(dict.fromkeys(r.path for r in records))
    workers = workers or default_workers()
    refuse_bomb_warnings()  # a bomb in PIL's warning range is an exception, caught per image
    start = time.perf_counter()
    bar = tqdm(
        total=len(paths),
        desc=f"Checking images ({mode})",
        unit="img",
        # one bar per machine (every rank checks every image), on a terminal only: never in logs or test output
        disable=len(paths) < PROGRESS_BAR_MIN_IMAGES or not sys.stderr.isatty() or idist.get_rank() != 0,
    )
    # Paths go to the threads in chunks: one future per image would cost about as much as a header check
    size = min(CHUNK_IMAGES, max(1, len(paths) // (4 * workers)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    problems = []
    with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-check") as pool:
        for found in pool.map(partial(_chunk_problems, mode=mode), chunks):
            problems.extend(found)
            bar.update(len(found))
    bad = [BadImage(path, problem) for path, problem in zip(paths, problems) if problem is not None]
    logger.info(
        "Image check (%s, %d thread%s): %d images in %.1f s, %s",
        mode,
        workers,
        "" if workers == 1 else "s",
        len(paths),
        time.perf_counter() - start,
        f"{len(bad)} bad" if bad else "none bad",
    )
    return bad
