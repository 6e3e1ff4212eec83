"""PKU VehicleID (Liu, Tian, Wang, Wang and Huang, "Deep Relative Distance Learning: Tell the Difference
Between Similar Vehicles", CVPR 2016).

Layout (the official ``VehicleID_V1.0`` release unpacked)::

    <ROOT_DIR>/VehicleID_V1.0/             (or <ROOT_DIR>/vehicle-id/VehicleID_V1.0/)
        image/0000001.jpg ...
        train_test_split/train_list.txt       lines "<image name> <vehicle id>", e.g. "0001083 1"
        train_test_split/test_list_800.txt    small  (800 ids)
        train_test_split/test_list_1600.txt   medium (1,600 ids)
        train_test_split/test_list_2400.txt   large  (2,400 ids)

The image name in a list is the file name without ``.jpg`` (a name that already ends in ``.jpg`` is taken
as it is). Every listed image must exist under ``image/`` (checked by one directory listing, images are not
opened). Train: 13,164 ids, relabelled 0..C-1. No camera information: camid -1.

Protocols (``TEST.VEHICLEID_PROTOCOL``), both with Recall@1 and @5:

- ``retrieval``: all test images are queries against all the others (Divide-and-Conquer, Proxy Anchor);
  query is gallery, each query excluded from its own gallery by index.
- ``reid``: for each trial t in range(trials), a NumPy Generator seeded with ``(seed, t)`` draws one image
  per id for the gallery; that id's other images are queries (an id with a single image only enters the
  gallery). Trial 0 is ``query``/``gallery``, trials 1..trials-1 are ``extra_trials``; the mean over all
  trials is reported. camid -1, so no gallery image is removed for camera reasons.
"""

from __future__ import annotations

from collections import Counter
from numbers import Integral
from pathlib import Path

import numpy as np

from config.choices import VEHICLEID_PROTOCOLS, VEHICLEID_SIZES
from config.errors import ConfigError, check_choice
from data.datasets.common import DatasetLayoutError, FileListing, find_dataset_folder
from data.records import DatasetSplits, Record, relabel, zero_shot_splits

FOLDER_NAMES = ("VehicleID_V1.0", "vehicle-id/VehicleID_V1.0")
TEST_LISTS = {"small": "test_list_800.txt", "medium": "test_list_1600.txt", "large": "test_list_2400.txt"}
RECALL_KS = (1, 5)
EXPECTED_TREE = """expected layout:
  <ROOT_DIR>/VehicleID_V1.0/          (or <ROOT_DIR>/vehicle-id/VehicleID_V1.0/)
      image/0000001.jpg ...
      train_test_split/train_list.txt        lines "<image name without .jpg> <vehicle id>", e.g. "0001083 1"
      train_test_split/test_list_800.txt     (TEST.VEHICLEID_SIZE small)
      train_test_split/test_list_1600.txt    (medium)
      train_test_split/test_list_2400.txt    (large)"""


def _read_list(list_file: Path, image_dir: Path, listing: FileListing) -> list[Record]:
    if not list_file.is_file():
        raise DatasetLayoutError(f"missing list file {list_file}; {EXPECTED_TREE}")
    records: list[Record] = []
    missing: list[tuple[int, Path]] = []
    with open(list_file, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DatasetLayoutError(
                    f"{list_file}, line {lineno}: expected '<image name> <vehicle id>', e.g. '0001083 1', got {line!r}"
                )
            name = parts[0] if parts[0].lower().endswith(".jpg") else parts[0] + ".jpg"
            path = image_dir / name
            if not listing.exists(path):
                missing.append((lineno, path))
            records.append(Record(str(path), int(parts[1]), -1))
    if missing:
        shown = "; ".join(f"line {n}: {p}" for n, p in missing[:3])
        raise DatasetLayoutError(
            f"{len(missing)} image(s) listed in {list_file} not found in {image_dir} ({shown}"
            f"{'; ...' if len(missing) > 3 else ''}); {EXPECTED_TREE}"
        )
    if not records:
        raise DatasetLayoutError(f"{list_file} lists no images; {EXPECTED_TREE}")
    return records


def draw_reid_trial(test: list[Record], rng: np.random.Generator) -> tuple[list[Record], list[Record]]:
    """One gallery image per id drawn with `rng`, the rest are queries; ids visited in increasing order."""
    by_id: dict[int, list[Record]] = {}
    for record in test:
        by_id.setdefault(record.label, []).append(record)
    query: list[Record] = []
    gallery: list[Record] = []
    for label in sorted(by_id):
        images = by_id[label]
        pick = int(rng.integers(len(images))) if len(images) > 1 else 0
        gallery.append(images[pick])
        query.extend(r for i, r in enumerate(images) if i != pick)
    return query, gallery


def load_vehicleid(
    root_dir: str | Path,
    test_size: str = "small",
    protocol: str = "retrieval",
    trials: int = 10,
    seed: int = 0,
    combine_all: bool = False,
    **_,
) -> DatasetSplits:
    """VehicleID under `root_dir` (VehicleID_V1.0/ or vehicle-id/VehicleID_V1.0/).

    test_size: 'small' | 'medium' | 'large' (TEST.VEHICLEID_SIZE); protocol: 'retrieval' | 'reid'
    (TEST.VEHICLEID_PROTOCOL); trials and seed: the 'reid' gallery draws (TEST.VEHICLEID_TRIALS, SEED).
    `combine_all` must stay False (the test vehicles are never trained on).
    """
    check_choice("TEST.VEHICLEID_SIZE", test_size, VEHICLEID_SIZES)
    check_choice("TEST.VEHICLEID_PROTOCOL", protocol, VEHICLEID_PROTOCOLS)
    if protocol == "reid":
        if isinstance(trials, bool) or not isinstance(trials, Integral) or trials < 1:
            raise ConfigError(f"TEST.VEHICLEID_TRIALS = {trials!r} is not valid; expected an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ConfigError(f"SEED = {seed!r} is not valid for the vehicleid reid draws; expected an integer >= 0")
    if combine_all:
        raise ConfigError(
            "DATASETS.COMBINE_ALL True is for the re-ID benchmarks with a fixed test split; vehicleid is tested "
            "on vehicles unseen in training, so its test vehicles cannot be trained on"
        )
    folder = find_dataset_folder(root_dir, FOLDER_NAMES, "VehicleID", EXPECTED_TREE)
    image_dir = folder / "image"
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"missing folder {image_dir}; {EXPECTED_TREE}")
    listing = FileListing()
    split_dir = folder / "train_test_split"
    train = _read_list(split_dir / "train_list.txt", image_dir, listing)
    test = _read_list(split_dir / TEST_LISTS[test_size], image_dir, listing)
    name = "vehicleid"
    notes = [f"vehicleid: test list {TEST_LISTS[test_size]} ({test_size}), protocol {protocol}"]
    if protocol == "retrieval":
        return zero_shot_splits(name, train, test, RECALL_KS, notes)
    draws = [draw_reid_trial(test, np.random.default_rng([int(seed), t])) for t in range(int(trials))]
    counts = Counter(r.label for r in test)
    singles = sum(1 for n in counts.values() if n == 1)
    notes.append(f"vehicleid reid protocol: {trials} random gallery draws (seed {seed}); the mean is reported")
    if singles:
        notes.append(f"vehicleid: {singles} test id(s) with a single image are in the gallery only")
    return DatasetSplits(
        name=name,
        train=relabel(train),
        query=draws[0][0],
        gallery=draws[0][1],
        protocol="reid",
        query_is_gallery=False,
        recall_ks=RECALL_KS,
        extra_trials=draws[1:],
        notes=notes,
    )
