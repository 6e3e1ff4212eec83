"""Cars196 / Stanford Cars (Krause, Stark, Deng and Fei-Fei, "3D Object Representations for Fine-Grained
Categorization", 4th IEEE Workshop on 3D Representation and Recognition (3dRR-13), ICCV 2013), in the
zero-shot retrieval protocol of Song et al., "Deep Metric Learning via Lifted Structured Feature
Embedding", CVPR 2016.

Layout (the official ``car_ims.tgz`` unpacked next to ``cars_annos.mat``; the folder may also be called
``CARS196/`` or ``stanford_cars/``)::

    <ROOT_DIR>/cars196/
        cars_annos.mat
        car_ims/000001.jpg
        car_ims/...
        car_ims/016185.jpg

``cars_annos.mat`` (read with scipy.io.loadmat) holds the struct array ``annotations`` with the fields
``relative_im_path`` ('car_ims/000001.jpg', relative to the dataset folder), ``bbox_x1``, ``bbox_y1``,
``bbox_x2``, ``bbox_y2``, ``class`` (1-based) and ``test``.

Split: the sorted class ids are cut in half; the first half trains and the second is the test set. With
the official 196 classes this is classes 1-98 train (8,054 images) and 99-196 test (8,131 images), 16,185
in all. The official ``test`` flag (a per-image split over all 196 classes) is ignored, and the bounding
boxes are not used (the retrieval literature trains on the full images).

Protocol: 'retrieval'. The test set is both query and gallery (each query is removed from its own gallery
by index); Recall@1, 2, 4, 8, 16, 32. Train labels are 0..97; test labels keep the class id. No camera:
camid -1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from config.errors import ConfigError, UserError
from data.datasets.common import DatasetLayoutError, FileListing, find_dataset_folder
from data.records import DatasetSplits, Record, zero_shot_splits

FOLDER_NAMES = ("cars196", "CARS196", "stanford_cars")
ANNOTATIONS_FILE = "cars_annos.mat"
RECALL_KS = (1, 2, 4, 8, 16, 32)
OFFICIAL_CLASSES = 196
EXPECTED_TREE = """expected layout:
  <ROOT_DIR>/cars196/               (or CARS196/, stanford_cars/)
      cars_annos.mat                (struct array 'annotations': relative_im_path, bbox_x1..bbox_y2, class, test)
      car_ims/000001.jpg ... car_ims/016185.jpg
  (classes 1-98 train, 99-196 test)"""


def _unwrap(value):
    """The scalar inside the nested 1x1 arrays that loadmat makes of every struct field."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one value, got an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    return value


def read_cars_annotations(mat_path: Path) -> list[tuple[str, int]]:
    """(relative_im_path, class) of every entry of `annotations` in `mat_path`."""
    if not mat_path.is_file():
        raise DatasetLayoutError(f"missing annotation file {mat_path}; {EXPECTED_TREE}")
    try:
        import scipy.io  # only Cars needs scipy: imported here so that the other datasets work without it
    except ImportError:
        raise UserError(f"reading {mat_path} needs scipy, which is not installed: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as err:  # corrupt, truncated, HDF5 (v7.3) or not a .mat at all
        raise DatasetLayoutError(f"cannot read {mat_path} as a MATLAB .mat file ({err}); {EXPECTED_TREE}") from None
    if "annotations" not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "nothing"
        raise DatasetLayoutError(f"{mat_path} has no variable 'annotations' (found: {found}); {EXPECTED_TREE}")
    annotations = np.asarray(mat["annotations"])
    fields = annotations.dtype.names or ()
    missing = [f for f in ("relative_im_path", "class") if f not in fields]
    if missing:
        raise DatasetLayoutError(
            f"'annotations' in {mat_path} lacks the field(s) {', '.join(missing)} "
            f"(has: {', '.join(fields) or 'no fields'}); {EXPECTED_TREE}"
        )
    entries = []
    for i, entry in enumerate(annotations.reshape(-1)):
        try:
            rel_path = str(_unwrap(entry["relative_im_path"]))
            label = int(_unwrap(entry["class"]))
        except (ValueError, TypeError, IndexError) as err:
            raise DatasetLayoutError(
                f"annotation {i + 1} in {mat_path} is not readable ({err}); {EXPECTED_TREE}"
            ) from None
        entries.append((rel_path, label))
    if not entries:
        raise DatasetLayoutError(f"'annotations' in {mat_path} is empty; {EXPECTED_TREE}")
    return entries


def _check_images_exist(folder: Path, entries: list[tuple[str, int]], mat_path: Path) -> None:
    """Every listed image is on disk (one directory listing per image folder, no per-file stat)."""
    listing = FileListing()
    missing = [folder / rel_path for rel_path, _ in entries if not listing.exists(folder / rel_path)]
    if missing:
        more = f" (and {len(missing) - 1} more listed images)" if len(missing) > 1 else ""
        raise DatasetLayoutError(
            f"image {missing[0]} is listed in {mat_path} but missing on disk{more}; {EXPECTED_TREE}"
        )


def load_cars(root_dir: str | Path, combine_all: bool = False, **_) -> DatasetSplits:
    """Cars196 under `root_dir` (folder cars196/, CARS196/ or stanford_cars/), zero-shot retrieval split.

    The first half of the sorted class ids trains (relabelled 0..C-1), the second half is query and gallery
    at once (labels = class ids). `combine_all` must stay False: the protocol tests on unseen classes.
    """
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True is for the re-ID benchmarks; cars is evaluated on classes unseen in "
            "training, so its test classes cannot be trained on"
        )
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "Cars196", EXPECTED_TREE)
    mat_path = folder / ANNOTATIONS_FILE
    entries = read_cars_annotations(mat_path)
    _check_images_exist(folder, entries, mat_path)
    class_ids = sorted({label for _, label in entries})
    if len(class_ids) < 2:
        raise DatasetLayoutError(
            f"{mat_path} lists {len(class_ids)} class(es); the zero-shot split needs at least 2 "
            f"(the official file has {OFFICIAL_CLASSES}); {EXPECTED_TREE}"
        )
    train_ids = set(class_ids[: len(class_ids) // 2])
    records = [Record(str(folder / rel_path), label, -1) for rel_path, label in entries]
    train = [r for r in records if r.label in train_ids]
    test = [r for r in records if r.label not in train_ids]
    notes = []
    if len(class_ids) != OFFICIAL_CLASSES:
        notes.append(
            f"cars: {len(class_ids)} classes listed (the official file has {OFFICIAL_CLASSES}); "
            f"the first {len(train_ids)} train, the other {len(class_ids) - len(train_ids)} are the test set"
        )
    return zero_shot_splits("cars", train, test, RECALL_KS, notes)
