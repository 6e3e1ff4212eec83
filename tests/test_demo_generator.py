"""The embedded demo dataset generator (data/demo_generator.py): layout, determinism, caching."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from data.demo_generator import (
    DEFAULT_DEMO_PARAMS,
    MARKER_NAME,
    SPLIT_DIRS,
    ensure_demo_market,
    generate_demo_market,
)

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(
    num_train_ids=6, num_test_ids=5, images_per_id=6, num_cameras=4, height=48, width=24, num_distractors=4, num_junk=3
)


def parse(folder: Path) -> list[tuple[str, int, int]]:
    """(file name, pid, 1-based camera) of every file in a split folder; asserts the Market name pattern."""
    out = []
    for f in sorted(folder.iterdir()):
        m = MARKET_NAME.match(f.name)
        assert m is not None, f"not a Market-1501 file name: {f}"
        assert m.group(3) == "1"
        out.append((f.name, int(m.group(1)), int(m.group(2))))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "tree"
    counts = generate_demo_market(root, seed=3, workers=1, **SMALL)
    return root, counts


def test_layout_and_names(tree):
    root, _ = tree
    names = {p.name for p in root.iterdir()}
    assert set(SPLIT_DIRS.values()) <= names
    assert MARKER_NAME in names
    for folder in SPLIT_DIRS.values():
        files = parse(root / folder)
        assert files, folder
        for _, _pid, cam in files:
            assert 1 <= cam <= SMALL["num_cameras"]
    # pid formatting: 4 digits for ids, "-1" for junk
    for f in (root / "bounding_box_test").iterdir():
        pid = f.name.split("_")[0]
        assert pid == "-1" or len(pid) == 4


def test_counts_match_files(tree):
    root, counts = tree
    assert counts["root"] == str(root)
    for split, folder in SPLIT_DIRS.items():
        files = parse(root / folder)
        real = {pid for _, pid, _ in files if pid >= 1}
        assert counts[split]["images"] == len(files)
        assert counts[split]["ids"] == len(real)
        assert counts[split]["cameras"] == len({cam for _, _, cam in files})
    assert counts["train"]["ids"] == SMALL["num_train_ids"]
    assert counts["train"]["images"] == SMALL["num_train_ids"] * SMALL["images_per_id"]
    assert counts["query"]["ids"] == counts["gallery"]["ids"] == SMALL["num_test_ids"]
    assert counts["gallery"]["distractors"] == SMALL["num_distractors"]
    assert counts["gallery"]["junk"] == SMALL["num_junk"]
    gallery = parse(root / "bounding_box_test")
    assert sum(pid == 0 for _, pid, _ in gallery) == SMALL["num_distractors"]
    assert sum(pid == -1 for _, pid, _ in gallery) == SMALL["num_junk"]
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["params"]["seed"] == 3
    assert marker["counts"]["gallery"] == counts["gallery"]


def test_ids_disjoint_and_protocol(tree):
    root, _ = tree
    train = parse(root / "bounding_box_train")
    query = parse(root / "query")
    gallery = parse(root / "bounding_box_test")
    train_ids = {pid for _, pid, _ in train}
    test_ids = {pid for _, pid, _ in query}
    assert train_ids == set(range(1, SMALL["num_train_ids"] + 1))
    assert test_ids == set(range(SMALL["num_train_ids"] + 1, SMALL["num_train_ids"] + SMALL["num_test_ids"] + 1))
    assert not train_ids & {pid for _, pid, _ in gallery}
    # junk and distractors only in bounding_box_test
    assert all(pid >= 1 for _, pid, _ in train + query)
    assert {pid for _, pid, _ in gallery if pid < 1} == {0, -1}
    # at most one query per (pid, camera); each query has a same-pid gallery image from another camera
    gal_cams = defaultdict(set)
    for _, pid, cam in gallery:
        gal_cams[pid].add(cam)
    seen = set()
    for name, pid, cam in query:
        assert (pid, cam) not in seen, name
        seen.add((pid, cam))
        assert gal_cams[pid] - {cam}, f"query {name} has no cross-camera gallery match"
    # every identity is seen by at least two cameras
    for split_files in (train, gallery):
        cams = defaultdict(set)
        for _, pid, cam in split_files:
            if pid >= 1:
                cams[pid].add(cam)
        assert all(len(c) >= 2 for c in cams.values())
    # file names are unique across the whole tree
    all_names = [n for n, _, _ in train + query + gallery]
    assert len(all_names) == len(set(all_names))


def test_images_decode_with_requested_size(tree):
    root, _ = tree
    for folder in SPLIT_DIRS.values():
        for f in sorted((root / folder).iterdir())[:20]:
            with Image.open(f) as im:
                assert im.format == "JPEG"
                assert im.mode == "RGB"
                assert im.size == (SMALL["width"], SMALL["height"])
                im.load()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_deterministic_same_seed(tree, tmp_path):
    root, _ = tree
    again = tmp_path / "again"
    generate_demo_market(again, seed=3, workers=2, **SMALL)  # different worker count: same bytes
    a, b = _tree_bytes(root), _tree_bytes(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)


def test_different_seed_differs(tree, tmp_path):
    root, _ = tree
    other = tmp_path / "other"
    generate_demo_market(other, seed=4, workers=1, **SMALL)
    a, b = _tree_bytes(root), _tree_bytes(other)
    common = a.keys() & b.keys()
    assert a.keys() != b.keys() or any(a[k] != b[k] for k in common)
    assert all(a[k] != b[k] for k in common)


def test_generate_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="x"):
        generate_demo_market(tmp_path / "x", seed=0, **SMALL)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_ensure_generates_then_reuses(tmp_path):
    root = tmp_path / "cache" / "demo"
    out = ensure_demo_market(root, seed=1, **SMALL)
    assert out == root.absolute()
    assert (root / MARKER_NAME).is_file()
    assert parse(root / "query")
    # no temporary siblings left behind
    assert [p.name for p in root.parent.iterdir()] == ["demo"]
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    stamp[root / MARKER_NAME] = (root / MARKER_NAME).stat().st_mtime_ns
    again = ensure_demo_market(root, seed=1, **SMALL)
    assert again == out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp


def test_ensure_into_existing_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    ensure_demo_market(root, seed=0, **SMALL)
    assert (root / MARKER_NAME).is_file()


def test_ensure_refuses_foreign_folder(tmp_path):
    root = tmp_path / "user_data"
    root.mkdir()
    (root / "photo.jpg").write_bytes(b"not mine to delete")
    with pytest.raises(ValueError) as err:
        ensure_demo_market(root, seed=0, **SMALL)
    assert str(root) in str(err.value)
    assert (root / "photo.jpg").read_bytes() == b"not mine to delete"
    assert [p.name for p in tmp_path.iterdir()] == ["user_data"]


def test_ensure_refuses_different_parameters(tmp_path):
    root = tmp_path / "demo"
    ensure_demo_market(root, seed=0, **SMALL)
    marker = (root / MARKER_NAME).read_bytes()
    with pytest.raises(ValueError) as err:
        ensure_demo_market(root, seed=1, **SMALL)
    assert str(root) in str(err.value) and "seed" in str(err.value)
    with pytest.raises(ValueError, match="num_test_ids"):
        ensure_demo_market(root, seed=0, **{**SMALL, "num_test_ids": 7})
    # untouched
    assert (root / MARKER_NAME).read_bytes() == marker


def test_half_written_tree_is_not_taken_as_complete(tmp_path):
    # a tree without the marker (e.g. an interrupted direct generation) is refused, not reused
    root = tmp_path / "half"
    generate_demo_market(root, seed=0, workers=1, **SMALL)
    (root / MARKER_NAME).unlink()
    with pytest.raises(ValueError, match="marker"):
        ensure_demo_market(root, seed=0, **SMALL)


def test_bad_parameters():
    with pytest.raises(TypeError):
        ensure_demo_market("/nonexistent/never", seed=0, bogus=1)
    with pytest.raises(ValueError):
        generate_demo_market("/nonexistent/never", num_cameras=10)


def test_defaults_constant():
    assert DEFAULT_DEMO_PARAMS["height"] == 128 and DEFAULT_DEMO_PARAMS["width"] == 64
    assert DEFAULT_DEMO_PARAMS["num_cameras"] == 6
    with pytest.raises(TypeError):
        DEFAULT_DEMO_PARAMS["height"] = 1  # read-only
