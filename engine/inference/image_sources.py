"""The images to embed, from the `--images` argument of tools/embed.py (and the folder queries of tools/index.py).

Three forms:

- a folder, searched recursively for image files (.jpg .jpeg .png .bmp .webp, any case; hidden files and folders
  skipped), in sorted path order; labels and cameras unknown;
- a CSV file (``*.csv``) with a header naming a ``path`` column, relative to the CSV's folder (absolute paths as they
  are), and optionally ``label`` (integers as they are, otherwise the sorted distinct strings -> 0..L-1) and ``camid``
  (an integer; empty = -1, unknown);
- ``DATASET:split``: a dataset of the config's registry under DATASETS.ROOT_DIR (e.g. ``market1501:gallery``) and one
  of train / query / gallery, whose records give labels and cameras, and whose protocol picks the test transform.

A missing folder or file, a source without images, an unknown dataset or split: a one-line UserError.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from config.errors import UserError
from data.datasets import DATASET_LOADERS, load_named_dataset
from data.datasets.custom import IMAGE_SUFFIXES

SPLITS = ("train", "query", "gallery")
# DATASET:split (a dataset name of the registry is a plain word); a path is tried first, so "C:/x" style paths
# that exist are never read as one
_DATASET_SPEC = re.compile(r"^(?P<dataset>[A-Za-z0-9_]+):(?P<split>[A-Za-z]*)$")
EXPECTED = "expected a folder of images, a .csv file with a 'path' column, or DATASET:split (train, query, gallery)"


@dataclass
class ImageSource:
    """What to embed: image paths, with labels and cameras when the source knows them, and the protocol of the
    dataset they come from (None for a folder or a CSV: the config's own picks the test transform)."""

    description: str
    paths: list[str]
    labels: list[int] | None = None
    camids: list[int] | None = None
    protocol: str | None = None
    label_names: list[str] | None = None  # a CSV's string labels, in the order of their integers

    def __len__(self) -> int:
        return len(self.paths)


def is_image_name(name: str) -> bool:
    """Whether a file name is an image the folder form picks up (a known suffix, not hidden)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def folder_images(folder: Path) -> list[str]:
    """The image files under `folder` (recursively, hidden files and folders skipped), sorted by path."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(parent, name) for name in files if is_image_name(name))
    return sorted(found)


def from_folder(folder: Path) -> ImageSource:
    """Every image file under `folder`, sorted; a folder without one is an error."""
    paths = folder_images(folder)
    if not paths:
        suffixes = " ".join(IMAGE_SUFFIXES)
        raise UserError(f"no image files ({suffixes}) under the folder {folder}")
    return ImageSource(f"folder {folder}", paths)


def _int_cell(csv_path: Path, line: int, column: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{csv_path}, line {line}, column {column}: {text!r} is not an integer") from None


def from_csv(csv_path: Path) -> ImageSource:
    """The rows of a CSV file with a `path` column (and optional `label`, `camid`)."""
    with open(csv_path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise UserError(f"{csv_path} is empty; {EXPECTED}")
        header = [cell.strip().lower() for cell in header]
        if "path" not in header:
            raise UserError(f"{csv_path}: the header has no 'path' column (found: {','.join(header)}); {EXPECTED}")
        col = {name: header.index(name) for name in ("path", "label", "camid") if name in header}
        rows: list[tuple[int, list[str]]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise UserError(f"{csv_path}, line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
            rows.append((reader.line_num, [cell.strip() for cell in row]))
    if not rows:
        raise UserError(f"{csv_path} has a header but no rows")
    base = csv_path.parent
    paths = []
    for line, row in rows:
        if not row[col["path"]]:
            raise UserError(f"{csv_path}, line {line}, column path: empty")
        paths.append(str(base / row[col["path"]]))
    labels = label_names = camids = None
    if "label" in col:
        raw = [row[col["label"]] for _, row in rows]
        empty = next((line for (line, _), value in zip(rows, raw) if not value), None)
        if empty is not None:
            raise UserError(f"{csv_path}, line {empty}, column label: empty")
        try:
            labels = [int(value) for value in raw]
        except ValueError:
            label_names = sorted(set(raw))
            index = {name: i for i, name in enumerate(label_names)}
            labels = [index[value] for value in raw]
    if "camid" in col:
        cells = [(line, row[col["camid"]]) for line, row in rows]
        camids = [_int_cell(csv_path, line, "camid", text) if text else -1 for line, text in cells]
    return ImageSource(f"CSV {csv_path}", paths, labels, camids, label_names=label_names)


def from_dataset(cfg, dataset: str, split: str) -> ImageSource:
    """The records of one split of a configured dataset (DATASETS.ROOT_DIR and the dataset's own keys)."""
    if dataset not in DATASET_LOADERS:
        known = ", ".join(DATASET_LOADERS)
        raise UserError(f"unknown dataset {dataset!r} in {dataset}:{split}; expected one of: {known}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} in {dataset}:{split}; expected one of: {', '.join(SPLITS)}")
    if cfg is None:
        raise UserError(f"{dataset}:{split} needs the config (--config_file) whose DATASETS.ROOT_DIR holds the dataset")
    splits = load_named_dataset(cfg, dataset)
    records = getattr(splits, split)
    if not records:
        raise UserError(f"the {split} split of {dataset} under DATASETS.ROOT_DIR {cfg.DATASETS.ROOT_DIR} is empty")
    return ImageSource(
        f"{dataset}:{split}",
        [r.path for r in records],
        [r.label for r in records],
        [r.camid for r in records],
        protocol=splits.protocol,
    )


def resolve_image_source(spec: str, cfg=None) -> ImageSource:
    """The ImageSource of `spec` (see the module docstring); `cfg` is needed for the DATASET:split form."""
    if not spec:
        raise UserError(f"no images given; {EXPECTED}")
    path = Path(spec)
    if path.is_dir():
        return from_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return from_csv(path)
        raise UserError(f"{path} is a file but not a .csv; {EXPECTED}")
    match = _DATASET_SPEC.match(spec)
    if match:
        return from_dataset(cfg, match["dataset"], match["split"])
    what = "CSV file" if path.suffix.lower() == ".csv" else "folder"
    raise UserError(f"{what} {path} does not exist; {EXPECTED}")
