"""User data: a folder tree (``DATASETS.NAMES folder``) or a CSV file (``DATASETS.NAMES csv``).

Folder (``load_folder``; ``DATASETS.ROOT_DIR`` is the tree itself), one of two forms:

1. With split folders, all three required -> query vs gallery, protocol 'reid', camid -1::

       <ROOT_DIR>/train/<class_name>/*.jpg
       <ROOT_DIR>/query/<class_name>/*.jpg
       <ROOT_DIR>/gallery/<class_name>/*.jpg

   A class name is one identity across the three splits. Labels: the index of the class name in the sorted
   list of all class names; train is then relabelled 0..C-1, query/gallery keep the index. With camid -1
   no gallery image is removed for camera reasons; each query is ranked against the whole gallery.

2. Without split folders (none of train/, query/, gallery/ present) -> a class-disjoint split::

       <ROOT_DIR>/<class_name>/*.jpg

   Class names are sorted, shuffled by a NumPy Generator seeded with ``seed``, and the first
   ``round(split_ratio * C)`` classes train (kept within 1..C-1), the rest are the test set. Protocol
   'retrieval': the test set is query and gallery at once (each query excluded from its own gallery by
   index), Recall@1, 2, 4, 8. Labels: the class index in sorted order (train relabelled 0..C-1).

Images: ``.jpg .jpeg .png .bmp .webp`` (any case); hidden files (``.*``, ``._*``) are skipped, class folders
without images are skipped (noted), an image lying directly in a split folder or the root is an error.

CSV (``load_csv``; ``DATASETS.CSV_FILE``): a header line naming the columns ``path,label`` and optionally
``camid`` and ``split`` (any order, any case; other columns are ignored)::

    path,label,camid,split
    images/cat_001.jpg,cat,0,train
    images/dog_007.jpg,dog,1,query

- ``path``: relative to the CSV file's folder (absolute paths are used as they are); every listed image
  must exist (checked up front, images are not opened).
- ``label``: if every label is an integer, the integers are the labels; otherwise the distinct strings are
  sorted and mapped to 0..L-1. Train is relabelled 0..C-1.
- ``camid``: an integer camera id used as it is (0-based by convention); empty or -1 = unknown.
- ``split``: train, query or gallery (any case). With the column, all three must be non-empty: query vs
  gallery, protocol 'reid' when any row has a camid (Recall@1, 5, 10 + mAP), else 'retrieval' with
  query_is_gallery False (Recall@1, 2, 4, 8). Without it, the classes are split as in folder form 2
  ('retrieval', query is gallery).

``combine_all`` (DATASETS.COMBINE_ALL) trains on train + query + gallery in the forms with explicit splits;
it is refused for the class-disjoint split, whose test classes must stay unseen. Requested by many users of
torchreid (issues #223, #255, #508, #588).
"""

from __future__ import annotations

import csv
import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from config.errors import ConfigError
from data.datasets.common import DatasetLayoutError, FileListing, list_images
from data.records import DatasetSplits, Record, relabel, zero_shot_splits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "query", "gallery")
RETRIEVAL_KS = (1, 2, 4, 8)
REID_KS = (1, 5, 10)
FOLDER_EXPECTED = """expected layout (one of):
  <ROOT_DIR>/train/<class_name>/<image>     query vs gallery (camid -1); all three split folders needed
  <ROOT_DIR>/query/<class_name>/<image>
  <ROOT_DIR>/gallery/<class_name>/<image>
or
  <ROOT_DIR>/<class_name>/<image>           no split folders: DATASETS.SPLIT_RATIO of the classes (drawn
                                            with SEED) train, the other classes are the test set
  (images: .jpg .jpeg .png .bmp .webp)"""
CSV_EXPECTED = """expected format: a CSV file with a header line and the columns path,label[,camid][,split], e.g.
  path,label,camid,split
  images/cat_001.jpg,cat,0,train
  images/dog_007.jpg,dog,1,query
  images/dog_012.jpg,dog,2,gallery
(path relative to the CSV file's folder; label any string or integer; camid an integer, empty or -1 =
unknown; split train, query or gallery; without a split column the classes are split by
DATASETS.SPLIT_RATIO)"""


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _class_images(folder: Path, notes: list[str]) -> dict[str, list[str]]:
    """Class name -> sorted image paths of every class folder directly under `folder` that holds images."""
    classes: dict[str, list[str]] = {}
    empty: list[str] = []
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            images = list_images(entry.path, IMAGE_SUFFIXES, hidden_prefix=".")
            if images:
                classes[entry.name] = images
            else:
                empty.append(entry.name)
        elif _is_image_name(entry.name):
            raise DatasetLayoutError(
                f"image {entry.path} lies directly in {folder}; images go in one folder per class, "
                f"{folder}/<class_name>/<image>; {FOLDER_EXPECTED}"
            )
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        notes.append(f"{len(empty)} class folder(s) without images skipped in {folder}: {shown}")
    return classes


def _check_ratio_and_seed(split_ratio: float, seed: int) -> None:
    if isinstance(split_ratio, bool) or not isinstance(split_ratio, Real) or not 0 < split_ratio < 1:
        raise ConfigError(
            f"DATASETS.SPLIT_RATIO = {split_ratio!r} is not valid; expected a number strictly between 0 and 1 "
            "(the fraction of the classes that train)"
        )
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ConfigError(f"SEED = {seed!r} is not valid for the class split; expected an integer >= 0")


def split_classes(
    labels: list[int], split_ratio: float, seed: int, where: str, expected: str, notes: list[str]
) -> tuple[set[int], set[int]]:
    """Class-disjoint split: sorted labels, shuffled with `seed`; the first round(ratio * C) train."""
    _check_ratio_and_seed(split_ratio, seed)
    classes = sorted(labels)
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{len(classes)} class(es) in {where}; a class-disjoint train/test split needs at least 2; {expected}"
        )
    num_train = round(split_ratio * len(classes))
    clamped = min(max(num_train, 1), len(classes) - 1)
    if clamped != num_train:
        notes.append(
            f"DATASETS.SPLIT_RATIO {split_ratio} of {len(classes)} classes gives {num_train} train classes; "
            f"{clamped} used so that train and test both have a class"
        )
    order = np.random.default_rng(int(seed)).permutation(len(classes))
    train = {classes[i] for i in order[:clamped]}
    return train, set(classes) - train


def _require_root(root: Path) -> None:
    if not root.is_dir():
        raise DatasetLayoutError(
            f"folder dataset not found: {root} is not a folder (DATASETS.ROOT_DIR = {root}); {FOLDER_EXPECTED}"
        )


def load_folder(
    root_dir: str | Path, split_ratio: float = 0.5, seed: int = 0, combine_all: bool = False, **_
) -> DatasetSplits:
    """An image tree at `root_dir`: train/query/gallery split folders ('reid'), or class folders only
    (class-disjoint split by `split_ratio` and `seed`, 'retrieval'). See the module docstring."""
    root = Path(root_dir)
    _require_root(root)
    notes: list[str] = []
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        missing = [str(root / s) for s in SPLITS if s not in present]
        if missing:
            raise DatasetLayoutError(
                f"split folder(s) missing: {', '.join(missing)} (found {', '.join(str(root / s) for s in present)}); "
                f"{FOLDER_EXPECTED}"
            )
        per_split = {s: _class_images(root / s, notes) for s in SPLITS}
        for split, classes in per_split.items():
            if not classes:
                raise DatasetLayoutError(f"no images found in {root / split}; {FOLDER_EXPECTED}")
        index = {name: i for i, name in enumerate(sorted(set().union(*per_split.values())))}
        records = {
            split: [Record(path, index[name], -1) for name in sorted(classes) for path in classes[name]]
            for split, classes in per_split.items()
        }
        unmatched = sorted(set(per_split["query"]) - set(per_split["gallery"]))
        if unmatched:
            notes.append(
                f"{len(unmatched)} query class(es) have no gallery images and will be skipped in evaluation: "
                + ", ".join(unmatched[:5])
                + (", ..." if len(unmatched) > 5 else "")
            )
        train = records["train"] + records["query"] + records["gallery"] if combine_all else records["train"]
        return DatasetSplits(
            name="folder",
            train=relabel(train),
            query=records["query"],
            gallery=records["gallery"],
            protocol="reid",
            query_is_gallery=False,
            recall_ks=REID_KS,
            notes=notes,
        )
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True needs explicit train/query/gallery splits; a folder of class folders is "
            "split into disjoint train and test classes, which cannot be trained on"
        )
    classes = _class_images(root, notes)
    index = {name: i for i, name in enumerate(sorted(classes))}
    train_ids, _ = split_classes(list(index.values()), split_ratio, seed, str(root), FOLDER_EXPECTED, notes)
    train: list[Record] = []
    test: list[Record] = []
    for name in sorted(classes):
        label = index[name]
        (train if label in train_ids else test).extend(Record(p, label, -1) for p in classes[name])
    return zero_shot_splits("folder", train, test, RETRIEVAL_KS, notes)


def _parse_label_map(raw: list[str]) -> dict[str, int]:
    """Integer labels as they are; otherwise the sorted distinct strings -> 0..L-1."""
    distinct = sorted(set(raw))
    try:
        return {value: int(value) for value in distinct}
    except ValueError:
        return {value: i for i, value in enumerate(distinct)}


def load_csv(
    csv_file: str | Path, split_ratio: float = 0.5, seed: int = 0, combine_all: bool = False, **_
) -> DatasetSplits:
    """Images listed in a CSV file (columns path,label[,camid][,split]); see the module docstring."""
    if not str(csv_file).strip():
        raise DatasetLayoutError(f"DATASETS.CSV_FILE is empty; set it to the CSV file to read; {CSV_EXPECTED}")
    csv_path = Path(csv_file)
    if not csv_path.is_file():
        raise DatasetLayoutError(f"CSV file not found: {csv_path} (DATASETS.CSV_FILE); {CSV_EXPECTED}")
    base = csv_path.parent
    rows: list[tuple[int, str, str, int, str | None]] = []  # line, path, label, camid, split
    with open(csv_path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = None
        for row in reader:
            if any(cell.strip() for cell in row):
                header = [cell.strip().lower() for cell in row]
                break
        if header is None:
            raise DatasetLayoutError(f"{csv_path} is empty; {CSV_EXPECTED}")
        for column in ("path", "label"):
            if column not in header:
                raise DatasetLayoutError(
                    f"{csv_path}, line {reader.line_num}: the header has no column '{column}' "
                    f"(found: {','.join(header)}); {CSV_EXPECTED}"
                )
        duplicated = sorted({c for c in header if c and header.count(c) > 1})
        if duplicated:
            raise DatasetLayoutError(
                f"{csv_path}, line {reader.line_num}: column(s) {', '.join(duplicated)} appear twice in the "
                f"header; {CSV_EXPECTED}"
            )
        col = {name: header.index(name) for name in ("path", "label", "camid", "split") if name in header}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DatasetLayoutError(
                    f"{csv_path}, line {line}: {len(row)} field(s), the header has {len(header)}; {CSV_EXPECTED}"
                )
            path, label = row[col["path"]].strip(), row[col["label"]].strip()
            for name, value in (("path", path), ("label", label)):
                if not value:
                    raise DatasetLayoutError(f"{csv_path}, line {line}, column {name}: empty; {CSV_EXPECTED}")
            camid = -1
            if "camid" in col and row[col["camid"]].strip():
                text = row[col["camid"]].strip()
                try:
                    camid = int(text)
                except ValueError:
                    camid = -2
                if camid < -1:
                    raise DatasetLayoutError(
                        f"{csv_path}, line {line}, column camid: {text!r} is not a camera id (an integer >= 0, "
                        f"or -1 / empty for unknown); {CSV_EXPECTED}"
                    )
            split = None
            if "split" in col:
                split = row[col["split"]].strip().lower()
                if split not in SPLITS:
                    raise DatasetLayoutError(
                        f"{csv_path}, line {line}, column split: unknown split {row[col['split']].strip()!r}; "
                        f"expected one of {', '.join(SPLITS)}; {CSV_EXPECTED}"
                    )
            rows.append((line, path, label, camid, split))
    if not rows:
        raise DatasetLayoutError(f"{csv_path} has a header but no rows; {CSV_EXPECTED}")

    listing = FileListing()
    missing = [(line, base / path) for line, path, *_rest in rows if not listing.exists(base / path)]
    if missing:
        shown = "; ".join(f"line {line}: {p}" for line, p in missing[:3])
        raise DatasetLayoutError(
            f"{len(missing)} image(s) listed in {csv_path} not found ({shown}{'; ...' if len(missing) > 3 else ''}); "
            f"paths are relative to the CSV file's folder {base}; {CSV_EXPECTED}"
        )

    label_map = _parse_label_map([label for _, _, label, _, _ in rows])
    records = [(Record(str(base / path), label_map[label], camid), split) for _, path, label, camid, split in rows]
    notes: list[str] = []
    if "split" in col:
        by_split = {s: [r for r, split in records if split == s] for s in SPLITS}
        for split, items in by_split.items():
            if not items:
                raise DatasetLayoutError(
                    f"{csv_path}: no rows with split '{split}' (column split); train, query and gallery all need "
                    f"rows; {CSV_EXPECTED}"
                )
        has_cameras = any(r.camid >= 0 for r, _ in records)
        train = by_split["train"] + by_split["query"] + by_split["gallery"] if combine_all else by_split["train"]
        return DatasetSplits(
            name="csv",
            train=relabel(train),
            query=by_split["query"],
            gallery=by_split["gallery"],
            protocol="reid" if has_cameras else "retrieval",
            query_is_gallery=False,
            recall_ks=REID_KS if has_cameras else RETRIEVAL_KS,
            notes=notes,
        )
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True needs a split column (train/query/gallery) in the CSV file; without it the "
            "classes are split into disjoint train and test classes, which cannot be trained on"
        )
    train_ids, _ = split_classes(
        list({r.label for r, _ in records}), split_ratio, seed, str(csv_path), CSV_EXPECTED, notes
    )
    train = [r for r, _ in records if r.label in train_ids]
    test = [r for r, _ in records if r.label not in train_ids]
    return zero_shot_splits("csv", train, test, RETRIEVAL_KS, notes)
