"""Market-1501 loader (data/datasets/market1501.py), the dataset registry and image decoding."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from config.errors import UserError
from config.loading import load_config
from data.datasets import load_dataset
from data.datasets.common import DatasetLayoutError
from data.datasets.market1501 import load_market1501
from data.image_dataset import ImageDataset, UnreadableImageError, read_image
from data.records import Record

_NAME = re.compile(r"^(-?\d+)_c(\d+)s")


def _parse(path: str) -> tuple[int, int]:
    m = _NAME.match(os.path.basename(path))
    return int(m.group(1)), int(m.group(2))


@pytest.fixture()
def tree(tmp_path, make_market_tree):
    return make_market_tree(tmp_path)


def test_counts_per_split(tmp_path, tree):
    splits = load_market1501(tmp_path)
    assert splits.name == "market1501"
    assert len(splits.train) == tree["train_images"] == 24
    assert len(splits.query) == tree["query_images"] == 5
    assert len(splits.gallery) == tree["gallery_images"] == 23
    assert len({r.label for r in splits.train}) == tree["train_ids"]
    assert splits.num_train_classes == 6
    assert len({r.label for r in splits.query}) == tree["query_ids"]
    assert len({r.label for r in splits.gallery}) == tree["gallery_ids"]
    assert all(isinstance(r, Record) for r in splits.train + splits.query + splits.gallery)
    assert all(Path(r.path).is_file() for r in splits.train + splits.query + splits.gallery)


def test_junk_dropped_and_distractors_kept(tmp_path, tree):
    splits = load_market1501(tmp_path)
    for records in (splits.train, splits.query, splits.gallery):
        assert all(not os.path.basename(r.path).startswith("-1_") for r in records)
        assert all(r.label != -1 for r in records)
    gallery_labels = Counter(r.label for r in splits.gallery)
    assert gallery_labels[0] == tree["distractors"] == 3
    assert all(os.path.basename(r.path).startswith("0000_") for r in splits.gallery if r.label == 0)
    # junk files really are on disk (the loader dropped them, they were not missing)
    on_disk = os.listdir(tree["folder"] / "bounding_box_test")
    assert sum(n.startswith("-1_") for n in on_disk) == tree["junk"]["gallery"]


def test_camids_are_zero_based(tmp_path, tree):
    splits = load_market1501(tmp_path)
    for records in (splits.train, splits.query, splits.gallery):
        for r in records:
            _, cam = _parse(r.path)
            assert r.camid == cam - 1
    assert {r.camid for r in splits.train} == {0, 1, 2}
    assert {r.camid for r in splits.gallery} == {0, 1, 2}
    query_cams = {os.path.basename(r.path): r.camid for r in splits.query}
    assert query_cams == tree["query_cams"]


def test_train_relabelled_contiguous_query_gallery_raw(tmp_path, tree):
    splits = load_market1501(tmp_path)
    assert sorted({r.label for r in splits.train}) == list(range(6))
    # relabelling is in increasing raw-pid order and consistent per image
    mapping = {raw: new for new, raw in enumerate(tree["train_pids"])}
    for r in splits.train:
        raw, _ = _parse(r.path)
        assert r.label == mapping[raw]
    for r in splits.query + splits.gallery:
        raw, _ = _parse(r.path)
        assert r.label == raw
    assert {r.label for r in splits.query} == set(tree["test_pids"])
    assert {r.label for r in splits.gallery} == set(tree["test_pids"]) | {0}


def test_every_query_has_cross_camera_gallery_match(tmp_path, tree):
    splits = load_market1501(tmp_path)
    for q in splits.query:
        assert any(g.label == q.label and g.camid != q.camid for g in splits.gallery)


def test_alternative_folder_name(tmp_path, make_market_tree):
    info = make_market_tree(tmp_path, folder_name="Market-1501-v15.09.15")
    assert not (tmp_path / "market1501").exists()
    splits = load_market1501(tmp_path)
    assert len(splits.train) == info["train_images"]
    assert len(splits.query) == info["query_images"]
    assert len(splits.gallery) == info["gallery_images"]
    assert all("Market-1501-v15.09.15" in r.path for r in splits.train)


def test_combine_all(tmp_path, tree):
    cfg = load_config(None, ["DATASETS.ROOT_DIR", str(tmp_path), "DATASETS.COMBINE_ALL", "True"])
    splits = load_dataset(cfg)
    # train + query + gallery, pid 0 (distractors) and -1 (junk) excluded
    expected_images = tree["train_images"] + tree["query_images"] + tree["gallery_images"] - tree["distractors"]
    assert len(splits.train) == expected_images == 24 + 5 + 20
    labels = {r.label for r in splits.train}
    assert labels == set(range(tree["train_ids"] + tree["query_ids"]))
    assert splits.num_train_classes == 11
    names = [os.path.basename(r.path) for r in splits.train]
    assert not any(n.startswith("0000_") or n.startswith("-1_") for n in names)
    # an identity keeps one label across query and gallery, and different raw pids get different labels
    label_of_raw: dict[int, set] = {}
    for r in splits.train:
        raw, _ = _parse(r.path)
        label_of_raw.setdefault(raw, set()).add(r.label)
    assert all(len(v) == 1 for v in label_of_raw.values())
    assert len({next(iter(v)) for v in label_of_raw.values()}) == len(label_of_raw) == 11
    # evaluation splits are unchanged
    assert len(splits.query) == tree["query_images"]
    assert len(splits.gallery) == tree["gallery_images"]
    assert {r.label for r in splits.query} == set(tree["test_pids"])


def test_without_combine_all_via_registry(tmp_path, tree):
    cfg = load_config(None, ["DATASETS.ROOT_DIR", str(tmp_path)])
    splits = load_dataset(cfg)
    assert len(splits.train) == tree["train_images"]
    assert splits.num_train_classes == tree["train_ids"]


def test_non_image_files_ignored(tmp_path, tree):
    folder = tree["folder"]
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (folder / sub / "Thumbs.db").write_bytes(b"\x00\x01garbage")
        (folder / sub / "readme.txt").write_text("not an image")
    (folder / "bounding_box_train" / "subdir").mkdir()
    splits = load_market1501(tmp_path)
    assert len(splits.train) == tree["train_images"]
    assert len(splits.query) == tree["query_images"]
    assert len(splits.gallery) == tree["gallery_images"]


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_market1501(tmp_path)
    assert isinstance(excinfo.value, DatasetLayoutError)
    message = str(excinfo.value)
    assert str(tmp_path / "market1501") in message
    assert str(tmp_path / "Market-1501-v15.09.15") in message
    assert "bounding_box_train" in message and "query" in message and "bounding_box_test" in message
    assert "0002_c1s1_000451_03.jpg" in message


def test_missing_dataset_folder_via_config(tmp_path):
    cfg = load_config(None, ["DATASETS.ROOT_DIR", str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="DATASETS.ROOT_DIR"):
        load_dataset(cfg)


def test_missing_query_subfolder(tmp_path, tree):
    query = tree["folder"] / "query"
    for f in query.iterdir():
        f.unlink()
    query.rmdir()
    with pytest.raises(UserError) as excinfo:
        load_market1501(tmp_path)
    assert isinstance(excinfo.value, DatasetLayoutError)
    assert str(query) in str(excinfo.value)


def test_empty_split_folder(tmp_path, tree):
    query = tree["folder"] / "query"
    for f in query.iterdir():
        f.unlink()
    with pytest.raises(UserError, match="no images found") as excinfo:
        load_market1501(tmp_path)
    assert str(query) in str(excinfo.value)


def test_unparsable_file_name(tmp_path, tree):
    bad = tree["folder"] / "bounding_box_test" / "img_0001.jpg"
    bad.write_bytes((tree["folder"] / "query").iterdir().__next__().read_bytes())
    with pytest.raises(UserError) as excinfo:
        load_market1501(tmp_path)
    assert isinstance(excinfo.value, DatasetLayoutError)
    assert str(bad) in str(excinfo.value)


def test_summary_table(tmp_path, tree):
    table = load_market1501(tmp_path).summary_table()
    assert "# ids" in table and "# images" in table and "# cameras" in table
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and cells[0] in ("train", "query", "gallery"):
            rows[cells[0]] = tuple(int(c) for c in cells[1:])
    assert rows == {
        "train": (6, 24, 3),
        "query": (5, 5, 3),
        "gallery": (6, 23, 3),
    }


def test_images_decode_with_identity_colour(tmp_path, tree):
    splits = load_market1501(tmp_path)
    record = splits.train[0]
    img = read_image(record.path)
    assert img.mode == "RGB" and img.size == (16, 32)
    raw, _ = _parse(record.path)
    r, g, b = img.resize((1, 1)).getpixel((0, 0))
    expected = tree["colours"][raw]
    assert max(abs(r - expected[0]), abs(g - expected[1]), abs(b - expected[2])) <= 6

    dataset = ImageDataset(splits.train, transform=lambda im: im.size)
    item = dataset[3]
    assert item == {"image": (16, 32), "label": splits.train[3].label, "camid": splits.train[3].camid, "index": 3}
    assert len(dataset) == 24


def test_unreadable_image_raises(tmp_path, tree):
    splits = load_market1501(tmp_path)
    victim = splits.train[5]
    Path(victim.path).write_bytes(os.urandom(64) + b"not a jpeg at all")
    with pytest.raises(UserError) as excinfo:
        read_image(victim.path)
    assert isinstance(excinfo.value, UnreadableImageError)
    assert victim.path in str(excinfo.value)
    dataset = ImageDataset(splits.train, transform=lambda im: im)
    with pytest.raises(UnreadableImageError, match=re.escape(victim.path)):
        dataset[5]


def test_truncated_image_raises(tmp_path, tree):
    splits = load_market1501(tmp_path)
    victim = Path(splits.train[0].path)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    with pytest.raises(UnreadableImageError, match=re.escape(str(victim))):
        read_image(str(victim))
