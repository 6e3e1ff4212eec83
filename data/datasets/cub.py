"""CUB-200-2011 (Wah, Branson, Welinder, Perona and Belongie, "The Caltech-UCSD Birds-200-2011 Dataset",
Caltech technical report CNS-TR-2011-001, 2011), in the zero-shot retrieval protocol of Song et al.,
"Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016.

Layout (the official ``CUB_200_2011.tgz`` unpacked; ``cub-200-2011/`` is accepted as well)::

    <ROOT_DIR>/CUB_200_2011/
        images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
        images/001.Black_footed_Albatross/...
        ...
        images/200.Common_Yellowthroat/...

Split: the class folders are sorted; the first half trains and the second half is the test set. With the
official 200 classes this is classes 1-100 train (5,864 images) and 101-200 test (5,924 images), 11,788 in
all. The official ``train_test_split.txt`` (a per-image split over all 200 classes) is not used. Files
whose name starts with ``._`` (macOS resource forks, carried by some copies of the archive) are skipped.

Protocol: 'retrieval'. The test set is both query and gallery (each query is removed from its own gallery
by index); Recall@1, 2, 4, 8, 16, 32. Train labels are 0..99; test labels keep the class number (the NNN
of the folder name). There is no camera: camid -1.
"""

from __future__ import annotations

import re
from pathlib import Path

from config.errors import ConfigError
from data.datasets.common import DatasetLayoutError, find_dataset_folder, list_images
from data.records import DatasetSplits, Record, zero_shot_splits

FOLDER_NAMES = ("CUB_200_2011", "cub-200-2011")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RECALL_KS = (1, 2, 4, 8, 16, 32)
OFFICIAL_CLASSES = 200
_CLASS_FOLDER = re.compile(r"^(\d+)\.")
EXPECTED_TREE = """expected layout:
  <ROOT_DIR>/CUB_200_2011/          (or cub-200-2011/)
      images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
      images/002.Laysan_Albatross/...
      ...
      images/200.Common_Yellowthroat/...
  (classes 1-100 train, 101-200 test)"""


def _class_folders(images: Path) -> list[tuple[int, Path]]:
    """(class number, folder) of every class folder under images/, in sorted folder order."""
    folders = []
    for path in sorted(images.iterdir(), key=lambda p: p.name):
        if not path.is_dir() or path.name.startswith("."):
            continue  # .DS_Store, ._ files, hidden folders
        match = _CLASS_FOLDER.match(path.name)
        if match is None:
            raise DatasetLayoutError(
                f"cannot read the class number from the folder name {path}; expected CUB class folders "
                f"named like 001.Black_footed_Albatross; {EXPECTED_TREE}"
            )
        folders.append((int(match.group(1)), path))
    numbers = [n for n, _ in folders]
    if len(set(numbers)) != len(numbers):
        dup = next(n for n in numbers if numbers.count(n) > 1)
        same = ", ".join(str(p) for n, p in folders if n == dup)
        raise DatasetLayoutError(f"two class folders share the class number {dup}: {same}; {EXPECTED_TREE}")
    return folders


def _folder_images(folder: Path, label: int) -> list[Record]:
    return [Record(path, label, -1) for path in list_images(folder, IMAGE_SUFFIXES)]


def load_cub(root_dir: str | Path, combine_all: bool = False, **_) -> DatasetSplits:
    """CUB-200-2011 under `root_dir` (folder CUB_200_2011/ or cub-200-2011/), zero-shot retrieval split.

    The first half of the sorted class folders trains (relabelled 0..C-1), the second half is query and
    gallery at once (labels = class numbers). `combine_all` must stay False: the protocol tests on classes
    never seen in training.
    """
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True is for the re-ID benchmarks; cub is evaluated on classes unseen in "
            "training, so its test classes cannot be trained on"
        )
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "CUB-200-2011", EXPECTED_TREE)
    images = folder / "images"
    if not images.is_dir():
        raise DatasetLayoutError(f"missing folder {images}; {EXPECTED_TREE}")
    classes = _class_folders(images)
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{len(classes)} class folder(s) in {images}; the zero-shot split needs at least 2 "
            f"(the official release has {OFFICIAL_CLASSES}); {EXPECTED_TREE}"
        )
    num_train = len(classes) // 2
    train: list[Record] = []
    test: list[Record] = []
    for i, (number, class_folder) in enumerate(classes):
        (train if i < num_train else test).extend(_folder_images(class_folder, number))
    if not train or not test:
        empty = "train" if not train else "test"
        raise DatasetLayoutError(f"no images found in the {empty} class folders under {images}; {EXPECTED_TREE}")
    notes = []
    if len(classes) != OFFICIAL_CLASSES:
        notes.append(
            f"cub: {len(classes)} class folders found (the official release has {OFFICIAL_CLASSES}); "
            f"the first {num_train} train, the other {len(classes) - num_train} are the test set"
        )
    return zero_shot_splits("cub", train, test, RECALL_KS, notes)
