"""MSMT17 (Wei, Zhang, Gao and Tian, "Person Transfer GAN to Bridge Domain Gap for Person
Re-Identification", CVPR 2018).

Accepted layouts. The dataset folder is the first of ``msmt17/MSMT17_V1/``, ``msmt17/MSMT17_V2/``,
``MSMT17_V1/``, ``MSMT17_V2/`` found under ``DATASETS.ROOT_DIR``; inside it:

1. List-file form (the official archives). Four list files, lines ``<relative path> <pid>``::

       list_train.txt    0000/0000_000_01_0303morning_0015_0.jpg 0     (relative to the train image folder)
       list_val.txt      same form, same identities as list_train
       list_query.txt    0000/0000_000_01_0303morning_0036_1.jpg 0     (relative to the test image folder)
       list_gallery.txt  same form as list_query

   with the image folders of either release:

   - V1 (``MSMT17_V1.tar.gz``): ``train/<pid>/*.jpg`` and ``test/<pid>/*.jpg``;
   - V2 (``MSMT17_V2.tar.gz``, faces blurred): ``mask_train_v2/`` and ``mask_test_v2/`` (``mask_train_V2/``,
     ``mask_test_V2/`` as some copies spell them), same sub-folders and the same list files.

   The image folder pair is chosen by what exists (V1 names first), whatever the dataset folder is called.
   Every listed image must exist (checked by directory listing, images are not opened).

2. Folder form (re-packaged copies without list files; used only when none of the four list files is
   present): one folder per identity in each split::

       train/<pid>/<image>      (or mask_train_v2/<pid>/<image>)
       query/<pid>/<image>
       gallery/<pid>/<image>

   pid = the folder name (digits). The official ``mask_test_v2/`` alone cannot be split into query and
   gallery without ``list_query.txt`` / ``list_gallery.txt``, so it is not accepted in this form.

Camera: the third underscore-separated field of the file name (``0000_000_01_0303morning_0015_0.jpg`` ->
camera 01, 15 cameras, 1-based), 0-based internally.

Splits: train = list_train + list_val (the usual practice; 1,041 ids / 32,621 images), query 11,659 and
gallery 82,161 images (3,060 ids). Query/gallery keep the raw test pids, which start again at 0 (pid 0 is
a real person here, not a distractor). Protocol 'reid'. ``combine_all`` trains on train + query + gallery:
the test pids are offset past the train pids (the two pid spaces overlap numerically but are different
people) and everything is relabelled; nothing is dropped, MSMT17 has no junk or distractor ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from data.datasets.common import DatasetLayoutError, FileListing, find_dataset_folder, list_images
from data.records import DatasetSplits, Record, relabel

FOLDER_NAMES = ("msmt17/MSMT17_V1", "msmt17/MSMT17_V2", "MSMT17_V1", "MSMT17_V2")
LIST_FILES = {
    "train": "list_train.txt",
    "val": "list_val.txt",
    "query": "list_query.txt",
    "gallery": "list_gallery.txt",
}
# (train image folder, test image folder) of V1 and of V2 (two spellings).
IMAGE_FOLDERS = (("train", "test"), ("mask_train_v2", "mask_test_v2"), ("mask_train_V2", "mask_test_V2"))
# Folder form: accepted names of each split folder (holding <pid>/<image>).
SPLIT_FOLDERS = {"train": ("train", "mask_train_v2", "mask_train_V2"), "query": ("query",), "gallery": ("gallery",)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EXAMPLE_NAME = "0000_000_01_0303morning_0015_0.jpg"
EXPECTED_TREE = """expected layout (one of):
  <ROOT_DIR>/msmt17/MSMT17_V1/        (or <ROOT_DIR>/MSMT17_V1/)
      train/0000/0000_000_01_0303morning_0015_0.jpg ...
      test/0000/0000_000_01_0303morning_0036_1.jpg ...
      list_train.txt  list_val.txt        lines "0000/0000_000_01_0303morning_0015_0.jpg 0" (relative to train/)
      list_query.txt  list_gallery.txt    lines "0000/0000_000_01_0303morning_0036_1.jpg 0" (relative to test/)
  <ROOT_DIR>/msmt17/MSMT17_V2/        (or <ROOT_DIR>/MSMT17_V2/)
      mask_train_v2/0000/...jpg  mask_test_v2/0000/...jpg  and the same four list files
  or, without any list file, one folder per identity in each split:
      <dataset folder>/train/<pid>/<image>  query/<pid>/<image>  gallery/<pid>/<image>"""


def parse_camera(file_name: str, where: str) -> int:
    """0-based camera of an MSMT17 file name (third '_' field, 1-based on disk)."""
    fields = Path(file_name).name.split("_")
    if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
        raise DatasetLayoutError(
            f"cannot read the camera from the file name {file_name} ({where}); expected MSMT17 names like "
            f"{EXAMPLE_NAME} (third '_'-separated field = camera, numbered from 1)"
        )
    return int(fields[2]) - 1


def _read_list(list_file: Path, image_dir: Path, listing: FileListing) -> list[Record]:
    records: list[Record] = []
    missing: list[tuple[int, Path]] = []
    with open(list_file, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetLayoutError(
                    f"{list_file}, line {lineno}: expected '<relative image path> <pid>', e.g. "
                    f"'0000/{EXAMPLE_NAME} 0', got {line!r}"
                )
            relative, pid = parts[0], int(parts[1])
            camid = parse_camera(relative, f"{list_file}, line {lineno}")
            path = image_dir / relative
            if not listing.exists(path):
                missing.append((lineno, path))
            records.append(Record(str(path), pid, camid))
    if missing:
        shown = "; ".join(f"line {n}: {p}" for n, p in missing[:3])
        raise DatasetLayoutError(
            f"{len(missing)} image(s) listed in {list_file} not found under {image_dir} ({shown}"
            f"{'; ...' if len(missing) > 3 else ''}); {EXPECTED_TREE}"
        )
    if not records:
        raise DatasetLayoutError(f"{list_file} lists no images; {EXPECTED_TREE}")
    return records


def _read_pid_folders(split_dir: Path) -> list[Record]:
    records: list[Record] = []
    for pid_dir in sorted(split_dir.iterdir(), key=lambda p: p.name):
        if pid_dir.name.startswith("."):
            continue
        if not pid_dir.is_dir():
            if pid_dir.suffix.lower() in IMAGE_SUFFIXES:
                raise DatasetLayoutError(
                    f"image {pid_dir} lies directly in {split_dir}; the folder form needs one folder per "
                    f"identity, <split>/<pid>/<image>; {EXPECTED_TREE}"
                )
            continue
        if not pid_dir.name.isdigit():
            raise DatasetLayoutError(
                f"cannot read the identity from the folder name {pid_dir}; expected numeric identity folders "
                f"like {split_dir / '0000'}; {EXPECTED_TREE}"
            )
        pid = int(pid_dir.name)
        for path in list_images(pid_dir, IMAGE_SUFFIXES):
            records.append(Record(path, pid, parse_camera(os.path.basename(path), path)))
    if not records:
        raise DatasetLayoutError(f"no images found in {split_dir}; {EXPECTED_TREE}")
    return records


def _load_lists(folder: Path) -> tuple[list[Record], list[Record], list[Record], str]:
    lists = {split: folder / name for split, name in LIST_FILES.items()}
    missing = [str(p) for p in lists.values() if not p.is_file()]
    if missing:
        raise DatasetLayoutError(
            f"MSMT17 list file(s) missing: {', '.join(missing)} (the official archives ship all four); {EXPECTED_TREE}"
        )
    for train_name, test_name in IMAGE_FOLDERS:
        if (folder / train_name).is_dir() and (folder / test_name).is_dir():
            break
    else:
        looked = ", ".join(f"{folder / a} + {folder / b}" for a, b in IMAGE_FOLDERS)
        raise DatasetLayoutError(f"MSMT17 image folders not found: looked for {looked}; {EXPECTED_TREE}")
    train_dir, test_dir = folder / train_name, folder / test_name
    listing = FileListing()
    train = _read_list(lists["train"], train_dir, listing) + _read_list(lists["val"], train_dir, listing)
    query = _read_list(lists["query"], test_dir, listing)
    gallery = _read_list(lists["gallery"], test_dir, listing)
    return train, query, gallery, f"msmt17: list files in {folder}, images in {train_name}/ and {test_name}/"


def _load_folders(folder: Path) -> tuple[list[Record], list[Record], list[Record], str]:
    dirs = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [folder / n for n in names if (folder / n).is_dir()]
        if not found:
            looked = " or ".join(str(folder / n) for n in names)
            raise DatasetLayoutError(
                f"MSMT17 list files ({', '.join(LIST_FILES.values())}) not found in {folder}, and no "
                f"{split} folder for the folder form either: looked for {looked}; {EXPECTED_TREE}"
            )
        dirs[split] = found[0]
    train, query, gallery = (_read_pid_folders(dirs[s]) for s in ("train", "query", "gallery"))
    names = "/, ".join(d.name for d in dirs.values())
    return train, query, gallery, f"msmt17: folder form (no list files) in {folder}: {names}/"


def load_msmt17(root_dir: str | Path, combine_all: bool = False, **_) -> DatasetSplits:
    """MSMT17 V1 or V2 under `root_dir` (see the module docstring for the accepted layouts), protocol 'reid'.

    Train = list_train + list_val, relabelled 0..C-1; query/gallery keep the raw test pids. `combine_all`
    adds query + gallery to train with their pids offset past the train pids, then relabels.
    """
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "MSMT17", EXPECTED_TREE)
    if any((folder / name).is_file() for name in LIST_FILES.values()):
        train, query, gallery, note = _load_lists(folder)
    else:
        train, query, gallery, note = _load_folders(folder)
    if combine_all:
        offset = max(r.label for r in train) + 1
        train = train + [Record(r.path, r.label + offset, r.camid) for r in query + gallery]
    return DatasetSplits(
        name="msmt17", train=relabel(train), query=query, gallery=gallery, protocol="reid", notes=[note]
    )
