"""Stanford Online Products (Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via Lifted Structured
Feature Embedding", CVPR 2016), in that paper's zero-shot retrieval protocol.

Layout (the official ``Stanford_Online_Products.zip`` unpacked; ``sop/`` is accepted as well)::

    <ROOT_DIR>/Stanford_Online_Products/
        Ebay_train.txt
        Ebay_test.txt
        bicycle_final/111085122871_0.JPG
        ...
        toaster_final/...

Each list file has a header line (``image_id class_id super_class_id path``) and then one image per line,
its path relative to the dataset folder::

    1 1 1 bicycle_final/111085122871_0.JPG

Split: as listed. 11,318 train classes / 59,551 images (class ids 1-11318) and 11,316 test classes /
60,502 images (class ids 11319-22634). The super-class ids are not used.

Protocol: 'retrieval'. The test set is both query and gallery (each query is removed from its own gallery
by index); Recall@1, 10, 100, 1000. Train labels are relabelled 0..C-1; test labels keep the class id. No
camera: camid -1. Only the first listed image of each file is checked on disk at load time.
"""

from __future__ import annotations

from pathlib import Path

from config.errors import ConfigError
from data.datasets.common import DatasetLayoutError, find_dataset_folder
from data.records import DatasetSplits, Record, zero_shot_splits

FOLDER_NAMES = ("Stanford_Online_Products", "sop")
LIST_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
RECALL_KS = (1, 10, 100, 1000)
EXPECTED_TREE = """expected layout:
  <ROOT_DIR>/Stanford_Online_Products/      (or sop/)
      Ebay_train.txt    header 'image_id class_id super_class_id path', then lines like
                        '1 1 1 bicycle_final/111085122871_0.JPG'
      Ebay_test.txt     same format
      bicycle_final/111085122871_0.JPG ...
      ..."""


def read_sop_list(folder: Path, list_name: str) -> list[Record]:
    """Records of one Ebay_*.txt list; paths resolved against the dataset folder, camid -1."""
    list_path = folder / list_name
    if not list_path.is_file():
        raise DatasetLayoutError(f"missing list file {list_path}; {EXPECTED_TREE}")
    records = []
    with open(list_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split(maxsplit=3)
            if not fields:
                continue  # blank lines (a trailing newline, an empty last line)
            if number == 1 and not fields[0].lstrip("-").isdigit():
                continue  # the header line 'image_id class_id super_class_id path'
            try:
                if len(fields) != 4:
                    raise ValueError(f"{len(fields)} fields")
                int(fields[0])
                class_id = int(fields[1])
                int(fields[2])
            except ValueError as err:
                raise DatasetLayoutError(
                    f"malformed line {number} in {list_path}: {line.strip()!r} ({err}); expected "
                    f"'image_id class_id super_class_id path' with integer ids; {EXPECTED_TREE}"
                ) from None
            records.append(Record(str(folder / fields[3].strip()), class_id, -1))
    if not records:
        raise DatasetLayoutError(f"no images listed in {list_path}; {EXPECTED_TREE}")
    if not Path(records[0].path).is_file():
        raise DatasetLayoutError(
            f"image {records[0].path} (the first listed in {list_path}) is missing on disk; the paths in the "
            f"list are relative to {folder}; {EXPECTED_TREE}"
        )
    return records


def load_sop(root_dir: str | Path, combine_all: bool = False, **_) -> DatasetSplits:
    """Stanford Online Products under `root_dir` (folder Stanford_Online_Products/ or sop/).

    Train = Ebay_train.txt (relabelled 0..C-1); query = gallery = Ebay_test.txt (labels = class ids).
    `combine_all` must stay False: the protocol tests on unseen classes.
    """
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True is for the re-ID benchmarks; sop is evaluated on classes unseen in "
            "training, so its test classes cannot be trained on"
        )
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "Stanford Online Products", EXPECTED_TREE)
    train = read_sop_list(folder, LIST_FILES["train"])
    test = read_sop_list(folder, LIST_FILES["test"])
    return zero_shot_splits("sop", train, test, RECALL_KS)
