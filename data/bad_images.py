"""What a run does with the bad images the check finds before its first epoch (DATALOADER.BAD_IMAGES).

'error' stops before anything trains, with one message that lists every bad file (the first
MESSAGE_LISTS_AT_MOST of them, and then the whole list in OUTPUT_DIR/bad_images.txt). 'skip' drops them from
every split, keeps the training labels contiguous, writes OUTPUT_DIR/bad_images.txt and logs one warning.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import ignite.distributed as idist

from config.choices import BAD_IMAGE_ACTIONS
from config.errors import check_choice
from data.image_check import BadImage, find_bad_images
from data.image_dataset import UnreadableImageError
from data.records import DatasetSplits, Record, relabel

logger = logging.getLogger(__name__)

BAD_IMAGES_FILE = "bad_images.txt"
# More bad files than this make the message a wall: the rest are counted, and listed in BAD_IMAGES_FILE
MESSAGE_LISTS_AT_MOST = 20


def records_to_check(loaded: dict[str, DatasetSplits], trained: list[str], evaluated: list[str]) -> list[Record]:
    """What the run will read: the training records of `trained`, the query, gallery and extra trials of
    `evaluated` (a path that appears in several splits or datasets is checked once by find_bad_images)."""
    records = [r for name in trained for r in loaded[name].train]
    for name in evaluated:
        splits = loaded[name]
        records += splits.query + splits.gallery
        for query, gallery in splits.extra_trials:
            records += query + gallery
    return records


def write_bad_images(bad: list[BadImage], output_dir: str | Path) -> Path:
    """OUTPUT_DIR/bad_images.txt, one `path<TAB>reason` line per bad file (written by rank 0 only)."""
    path = Path(output_dir) / BAD_IMAGES_FILE
    if idist.get_rank() == 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{b.path}\t{b.reason}\n" for b in bad))
        except OSError as err:
            raise UnreadableImageError(f"cannot write the list of bad images {path}: {err}") from None
    return path


def bad_images_message(bad: list[BadImage], mode: str, list_file: Path | None) -> str:
    """The one-line error of DATALOADER.BAD_IMAGES 'error': every bad file and its reason (or the first
    MESSAGE_LISTS_AT_MOST and where the others are listed), then the ways out."""
    shown = "; ".join(f"{b.path} ({b.reason})" for b in bad[:MESSAGE_LISTS_AT_MOST])
    more = len(bad) - MESSAGE_LISTS_AT_MOST
    if more > 0:
        shown += f"; and {more} more (all {len(bad)} are listed in {list_file})"
    count, them = (f"{len(bad)} bad image", "it") if len(bad) == 1 else (f"{len(bad)} bad images", "them")
    return (
        f"{count} found by the image check (DATALOADER.CHECK_IMAGES {mode}): {shown}. Replace or remove {them}, "
        f"leave {them} out with DATALOADER.BAD_IMAGES skip, or start unchecked with DATALOADER.CHECK_IMAGES off "
        "(a bad image then stops the run when it is read)"
    )


def without_paths(splits: DatasetSplits, dropped: set[str]) -> DatasetSplits:
    """`splits` without the records of `dropped` paths; training labels relabelled 0..C-1 when an identity
    lost every image, and a query set that is the gallery stays the gallery."""
    keep = lambda records: [r for r in records if r.path not in dropped]
    train = keep(splits.train)
    query = keep(splits.query)
    return dataclasses.replace(
        splits,
        train=relabel(train) if len(train) < len(splits.train) else splits.train,
        query=query,
        gallery=query if splits.query_is_gallery else keep(splits.gallery),
        extra_trials=[(keep(q), keep(g)) for q, g in splits.extra_trials],
    )


def _check_something_is_left(splits: DatasetSplits, trains: bool, evaluated: bool, list_file: Path) -> None:
    """Refuse a run whose skipping left a split it reads without any image."""
    used = {"train": (splits.train, trains), "query": (splits.query, evaluated), "gallery": (splits.gallery, evaluated)}
    emptied = [split for split, (records, read) in used.items() if read and not records]
    if emptied:
        raise UnreadableImageError(
            f"every image of the {' and '.join(emptied)} split of {splits.name} is bad (listed in {list_file}); "
            "expected readable images there"
        )


def check_dataset_images(
    cfg, loaded: dict[str, DatasetSplits], trained: list[str], evaluated: list[str]
) -> dict[str, DatasetSplits]:
    """Check the images the run will read (DATALOADER.CHECK_IMAGES) and apply DATALOADER.BAD_IMAGES: raise one
    UnreadableImageError listing every bad file ('error'), or return `loaded` without them ('skip').

    `trained`: the datasets whose training split is read (none for test.py); `evaluated`: those whose query
    and gallery are.
    """
    action = cfg.DATALOADER.BAD_IMAGES
    check_choice("DATALOADER.BAD_IMAGES", action, BAD_IMAGE_ACTIONS)
    mode = cfg.DATALOADER.CHECK_IMAGES
    bad = find_bad_images(records_to_check(loaded, trained, evaluated), mode)
    if not bad:
        return loaded
    if action == "error":
        list_file = write_bad_images(bad, cfg.OUTPUT_DIR) if len(bad) > MESSAGE_LISTS_AT_MOST else None
        raise UnreadableImageError(bad_images_message(bad, mode, list_file))
    list_file = write_bad_images(bad, cfg.OUTPUT_DIR)
    dropped = {b.path for b in bad}
    kept = {name: without_paths(splits, dropped) for name, splits in loaded.items()}
    for name, splits in kept.items():
        _check_something_is_left(splits, name in trained, name in evaluated, list_file)
    logger.warning(
        "Skipped %d bad image%s (DATALOADER.BAD_IMAGES skip): they are left out of every split and listed with "
        "their reasons in %s",
        len(bad),
        "" if len(bad) == 1 else "s",
        list_file,
    )
    return kept
