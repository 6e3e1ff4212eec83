"""Market-1501 (Zheng et al., ICCV 2015) and every tree in its layout.

Layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with files named
``PPPP_cCsS_FFFFFF_NN.jpg`` (pid PPPP, camera C, 1-based). pid -1 marks junk and is dropped; pid 0 marks
distractors, which stay in the gallery.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.datasets.common import DatasetLayoutError, find_dataset_folder
from data.records import DatasetSplits, Record, relabel

FOLDER_NAMES = ("market1501", "Market-1501-v15.09.15")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"^(-?\d+)_c(\d+)")
EXPECTED_TREE = """expected layout:
  <ROOT_DIR>/market1501/            (or Market-1501-v15.09.15/)
      bounding_box_train/0002_c1s1_000451_03.jpg ...
      query/0001_c1s1_001051_00.jpg ...
      bounding_box_test/0001_c1s1_000151_01.jpg ..."""


def read_market_folder(folder: Path) -> list[Record]:
    """Records of one Market-style folder; camera ids 0-based; junk (-1) dropped."""
    if not folder.is_dir():
        raise DatasetLayoutError(f"missing folder {folder}; {EXPECTED_TREE}")
    records = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue  # Thumbs.db and other files the official archives carry
        match = _NAME.match(path.name)
        if match is None:
            raise DatasetLayoutError(
                f"cannot read identity and camera from the file name {path}; "
                "expected Market-1501 names like 0002_c1s1_000451_03.jpg"
            )
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            continue
        if cam < 1:
            raise DatasetLayoutError(f"camera number 0 in {path}; Market-1501 cameras are numbered from 1")
        records.append(Record(str(path), pid, cam - 1))
    if not records:
        raise DatasetLayoutError(f"no images found in {folder}; {EXPECTED_TREE}")
    return records


def load_market_layout(folder: Path, name: str, combine_all: bool = False) -> DatasetSplits:
    """Read a tree in the Market-1501 layout. `combine_all` trains on all three splits (ids 0 and -1 out)."""
    train = read_market_folder(folder / SPLIT_FOLDERS["train"])
    query = read_market_folder(folder / SPLIT_FOLDERS["query"])
    gallery = read_market_folder(folder / SPLIT_FOLDERS["gallery"])
    if combine_all:
        # Train ids and test ids are disjoint in Market; keep them apart by an offset before relabelling.
        offset = max(r.label for r in train) + 1
        extra = [Record(r.path, r.label + offset, r.camid) for r in query + gallery if r.label > 0]
        train_records = relabel(train + extra)
    else:
        train_records = relabel(train)
    return DatasetSplits(name=name, train=train_records, query=query, gallery=gallery, protocol="reid")


def load_market1501(root_dir: str | Path, combine_all: bool = False, **_) -> DatasetSplits:
    """Market-1501 under `root_dir` (folder market1501/ or Market-1501-v15.09.15/)."""
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "Market-1501", EXPECTED_TREE)
    return load_market_layout(folder, "market1501", combine_all)
