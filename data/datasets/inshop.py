"""In-shop Clothes Retrieval, the In-shop benchmark of DeepFashion (Liu, Luo, Qiu, Wang and Tang,
"DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich Annotations", CVPR 2016).

Layout (as the metric-learning code bases use it; ``In-shop/`` and ``inshop/`` are accepted as well)::

    <ROOT_DIR>/Inshop_Clothes/
        list_eval_partition.txt
        img/WOMEN/Dresses/id_00000002/02_1_front.jpg
        img/...

The layout of the official download (``Eval/list_eval_partition.txt`` and the images under ``Img/img/...``)
is read as well. ``list_eval_partition.txt`` starts with the number of entries, then a header line, then one
image per line (paths relative to the dataset folder)::

    52712
    image_name item_id evaluation_status
    img/WOMEN/Dresses/id_00000002/02_1_front.jpg    id_00000002    train

Split: as listed (evaluation_status train / query / gallery). 3,997 train items / 25,882 images; 14,218
queries and 12,612 gallery images of 3,985 items. The label is the number in ``id_XXXXXXXX``.

Protocol: 'retrieval', query vs gallery (they are different images: nothing is excluded from a query's
gallery); Recall@1, 10, 20, 30, 40, 50. Train labels are relabelled 0..C-1; query and gallery keep the item
number. No camera: camid -1. Only the first listed image is checked on disk at load time.
"""

from __future__ import annotations

import re
from pathlib import Path

from config.errors import ConfigError
from data.datasets.common import DatasetLayoutError, find_dataset_folder
from data.records import DatasetSplits, Record, relabel

FOLDER_NAMES = ("Inshop_Clothes", "In-shop", "inshop")
LIST_FILE = "list_eval_partition.txt"
OFFICIAL_LIST_FILE = "Eval/list_eval_partition.txt"
OFFICIAL_IMAGE_FOLDER = "Img"
STATUSES = ("train", "query", "gallery")
RECALL_KS = (1, 10, 20, 30, 40, 50)
_ITEM_ID = re.compile(r"^id_(\d+)$")
EXPECTED_TREE = """expected layout:
  <ROOT_DIR>/Inshop_Clothes/        (or In-shop/, inshop/)
      list_eval_partition.txt       (or Eval/list_eval_partition.txt) with the lines:
          52712                                             <- number of entries
          image_name item_id evaluation_status              <- header
          img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train
      img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...      (or Img/img/...)"""


def read_partition(list_path: Path) -> list[tuple[str, int, str]]:
    """(image_name, item number, status) of every entry; the count line is checked against the entries."""
    with open(list_path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or not lines[0].strip():
        raise DatasetLayoutError(f"{list_path} is empty or its first line is blank; {EXPECTED_TREE}")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise DatasetLayoutError(
            f"malformed line 1 in {list_path}: {lines[0].strip()!r}; expected the number of entries; {EXPECTED_TREE}"
        ) from None
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue  # blank lines
        if number == 2 and fields[0] == "image_name":
            continue  # the header 'image_name item_id evaluation_status'
        match = _ITEM_ID.match(fields[1]) if len(fields) == 3 else None
        if match is None or fields[2] not in STATUSES:
            raise DatasetLayoutError(
                f"malformed line {number} in {list_path}: {line.strip()!r}; expected "
                f"'image_name id_XXXXXXXX evaluation_status' with the status one of {', '.join(STATUSES)}; "
                f"{EXPECTED_TREE}"
            )
        entries.append((fields[0], int(match.group(1)), fields[2]))
    if len(entries) != declared:
        raise DatasetLayoutError(
            f"{list_path} declares {declared} entries on its first line but lists {len(entries)}; "
            f"the file is truncated or was edited; {EXPECTED_TREE}"
        )
    if not entries:
        raise DatasetLayoutError(f"no images listed in {list_path}; {EXPECTED_TREE}")
    return entries


def load_inshop(root_dir: str | Path, combine_all: bool = False, **_) -> DatasetSplits:
    """In-shop Clothes under `root_dir` (folder Inshop_Clothes/, In-shop/ or inshop/).

    Train = the 'train' entries (relabelled 0..C-1); query and gallery as listed (labels = item numbers).
    `combine_all` must stay False: the protocol tests on items unseen in training.
    """
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True is for the re-ID benchmarks; inshop is evaluated on items unseen in "
            "training, so its query and gallery items cannot be trained on"
        )
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "In-shop Clothes", EXPECTED_TREE)
    candidates = [folder / LIST_FILE, folder / OFFICIAL_LIST_FILE]
    list_path = next((p for p in candidates if p.is_file()), None)
    if list_path is None:
        looked = " or ".join(str(p) for p in candidates)
        raise DatasetLayoutError(f"missing list file: looked for {looked}; {EXPECTED_TREE}")
    entries = read_partition(list_path)

    first = entries[0][0]
    image_root = folder
    if not (folder / first).is_file():
        if (folder / OFFICIAL_IMAGE_FOLDER / first).is_file():
            image_root = folder / OFFICIAL_IMAGE_FOLDER  # the official download keeps img/ inside Img/
        else:
            raise DatasetLayoutError(
                f"image {folder / first} (the first listed in {list_path}) is missing on disk (also looked "
                f"for {folder / OFFICIAL_IMAGE_FOLDER / first}); {EXPECTED_TREE}"
            )
    splits: dict[str, list[Record]] = {status: [] for status in STATUSES}
    for image_name, item, status in entries:
        splits[status].append(Record(str(image_root / image_name), item, -1))
    for status in STATUSES:
        if not splits[status]:
            raise DatasetLayoutError(f"no '{status}' entries in {list_path}; {EXPECTED_TREE}")
    return DatasetSplits(
        name="inshop",
        train=relabel(splits["train"]),
        query=splits["query"],
        gallery=splits["gallery"],
        protocol="retrieval",
        query_is_gallery=False,
        recall_ks=RECALL_KS,
    )
