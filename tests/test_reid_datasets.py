"""DukeMTMC-reID, MSMT17, VehicleID and custom folder/CSV loaders (data/datasets/{dukemtmc,msmt17,vehicleid,
custom}.py) on tiny trees in the official layouts. Loaders never decode images, so most files are empty."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from config.errors import ConfigError, UserError
from data.datasets.common import DatasetLayoutError
from data.datasets.custom import load_csv, load_folder
from data.datasets.dukemtmc import load_dukemtmc
from data.datasets.msmt17 import load_msmt17
from data.datasets.vehicleid import load_vehicleid
from data.records import Record


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _labels(records) -> set[int]:
    return {r.label for r in records}


def _layout_error(excinfo) -> str:
    assert isinstance(excinfo.value, DatasetLayoutError)
    assert isinstance(excinfo.value, UserError)
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------------------------
# DukeMTMC-reID
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["dukemtmc-reid/DukeMTMC-reID", "DukeMTMC-reID"])
def test_duke_counts_pids_camids(tmp_path, folder, make_duke):
    base = make_duke(tmp_path, folder)
    splits = load_dukemtmc(tmp_path)
    assert splits.name == "dukemtmc" and splits.protocol == "reid" and not splits.query_is_gallery
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (12, 2, 8)
    assert _labels(splits.train) == {0, 1, 2}
    assert _labels(splits.query) == {1, 2}
    assert _labels(splits.gallery) == {1, 2, 4000, 4001}
    assert {r.camid for r in splits.train} == {0, 1, 2, 3}
    assert sorted(r.camid for r in splits.query) == [0, 1]
    for r in splits.train + splits.query + splits.gallery:
        assert r.path.startswith(str(base))
        assert r.camid == int(os.path.basename(r.path).split("_")[1][1:]) - 1
    # relabel in increasing raw-pid order
    raw_pids = sorted({int(os.path.basename(r.path)[:4]) for r in splits.train})
    for r in splits.train:
        assert r.label == raw_pids.index(int(os.path.basename(r.path)[:4]))


def test_duke_combine_all(tmp_path, make_duke):
    make_duke(tmp_path)
    splits = load_dukemtmc(tmp_path, combine_all=True)
    assert len(splits.train) == 12 + 2 + 8
    assert _labels(splits.train) == set(range(3 + 4))
    assert len(splits.query) == 2 and len(splits.gallery) == 8


def test_duke_missing_folder(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_dukemtmc(tmp_path)
    message = _layout_error(excinfo)
    assert str(tmp_path / "dukemtmc-reid/DukeMTMC-reID") in message
    assert str(tmp_path / "DukeMTMC-reID") in message
    assert "bounding_box_train" in message and "0005_c2_f0046985.jpg" in message


def test_duke_missing_split_shows_duke_tree(tmp_path, make_duke):
    base = make_duke(tmp_path)
    for f in (base / "query").iterdir():
        f.unlink()
    (base / "query").rmdir()
    with pytest.raises(UserError) as excinfo:
        load_dukemtmc(tmp_path)
    message = _layout_error(excinfo)
    assert str(base / "query") in message
    assert "DukeMTMC-reID/" in message and "0005_c2_f0046985.jpg" in message
    assert "market1501" not in message


def test_duke_unparsable_name(tmp_path, make_duke):
    base = make_duke(tmp_path)
    bad = _touch(base / "bounding_box_test" / "frame_12.jpg")
    with pytest.raises(UserError) as excinfo:
        load_dukemtmc(tmp_path)
    message = _layout_error(excinfo)
    assert str(bad) in message and "0005_c2_f0046985.jpg" in message


# ---------------------------------------------------------------------------------------------------------
# MSMT17
# ---------------------------------------------------------------------------------------------------------


def _check_msmt(splits, base: Path) -> None:
    assert splits.name == "msmt17" and splits.protocol == "reid" and not splits.query_is_gallery
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (12, 3, 9)
    assert _labels(splits.train) == {0, 1, 2, 3}
    assert _labels(splits.query) == {0, 1, 2} and _labels(splits.gallery) == {0, 1, 2}
    assert {r.camid for r in splits.query} == {14}
    for r in splits.train + splits.query + splits.gallery:
        assert r.path.startswith(str(base)) and Path(r.path).is_file()
        assert r.camid == int(os.path.basename(r.path).split("_")[2]) - 1
        assert r.label == int(os.path.basename(r.path)[:4])
    assert {r.camid for r in splits.train} == {0, 1, 2, 3, 4, 5}


def test_msmt17_v1_lists_train_plus_val(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path)
    splits = load_msmt17(tmp_path)
    _check_msmt(splits, info["base"])
    val_paths = {str(info["base"] / "train" / rel) for rel, _, _ in info["entries"]["val"]}
    assert val_paths <= {r.path for r in splits.train}
    assert not any("_099_" in r.path for r in splits.train)  # unlisted file on disk ignored
    assert all("/test/" in r.path for r in splits.query + splits.gallery)
    assert Counter(r.label for r in splits.train) == {0: 3, 1: 3, 2: 3, 3: 3}


@pytest.mark.parametrize("folder", ["msmt17/MSMT17_V2", "MSMT17_V2"])
@pytest.mark.parametrize("dirs", [("mask_train_v2", "mask_test_v2"), ("mask_train_V2", "mask_test_V2")])
def test_msmt17_v2_list_form(tmp_path, folder, dirs, make_msmt17):
    info = make_msmt17(tmp_path, folder=folder, train_dir=dirs[0], test_dir=dirs[1])
    splits = load_msmt17(tmp_path)
    _check_msmt(splits, info["base"])
    assert all(f"/{dirs[0]}/" in r.path for r in splits.train)
    assert all(f"/{dirs[1]}/" in r.path for r in splits.query + splits.gallery)


def test_msmt17_v1_folder_directly_under_root(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path, folder="MSMT17_V1")
    _check_msmt(load_msmt17(tmp_path), info["base"])


@pytest.mark.parametrize("train_dir", ["train", "mask_train_v2"])
def test_msmt17_v2_folder_form(tmp_path, train_dir, make_msmt17):
    info = make_msmt17(tmp_path, folder="msmt17/MSMT17_V2", train_dir=train_dir, lists=False)
    splits = load_msmt17(tmp_path)
    _check_msmt(splits, info["base"])
    assert all("/query/" in r.path for r in splits.query)
    assert any("folder form" in n for n in splits.notes)


def test_msmt17_combine_all(tmp_path, make_msmt17):
    make_msmt17(tmp_path)
    splits = load_msmt17(tmp_path, combine_all=True)
    # test pids restart at 0: offset, not merged with train pid 0; nothing dropped (pid 0 is a real person)
    assert len(splits.train) == 12 + 3 + 9
    assert _labels(splits.train) == set(range(4 + 3))
    by_label: dict[int, set[str]] = {}
    for r in splits.train:
        by_label.setdefault(r.label, set()).add("test" if "/test/" in r.path else "train")
    assert all(len(v) == 1 for v in by_label.values())
    assert len(splits.query) == 3 and _labels(splits.query) == {0, 1, 2}


def test_msmt17_missing_folder(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    for name in ("msmt17/MSMT17_V1", "msmt17/MSMT17_V2", "MSMT17_V1", "MSMT17_V2"):
        assert str(tmp_path / name) in message
    assert "list_train.txt" in message and "mask_train_v2" in message and "<pid>" in message


def test_msmt17_missing_list_file(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path)
    (info["base"] / "list_val.txt").unlink()
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert str(info["base"] / "list_val.txt") in message and "list_query.txt" in message


def test_msmt17_listed_image_missing(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path)
    rel = info["entries"]["gallery"][4][0]
    (info["base"] / "test" / rel).unlink()
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert str(info["base"] / "list_gallery.txt") in message and "line 5" in message
    assert str(info["base"] / "test" / rel) in message


def test_msmt17_bad_list_line_and_bad_camera(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path)
    with open(info["base"] / "list_query.txt", "a") as handle:
        handle.write("0000/no_pid_here.jpg\n")
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert str(info["base"] / "list_query.txt") in message and "line 4" in message and "<pid>" in message

    lines = (info["base"] / "list_query.txt").read_text().splitlines()[:3]
    lines[1] = "0001/img0001.jpg 1"
    (info["base"] / "list_query.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert "img0001.jpg" in message and "line 2" in message and "0000_000_01_0303morning_0015_0.jpg" in message


def test_msmt17_no_image_folders(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path)
    os.rename(info["base"] / "test", info["base"] / "testing")
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert str(info["base"] / "test") in message and str(info["base"] / "mask_test_v2") in message


def test_msmt17_v2_folders_without_lists(tmp_path, make_msmt17):
    # the official V2 image folders but no list files: query/gallery cannot be told apart
    info = make_msmt17(tmp_path, folder="MSMT17_V2", train_dir="mask_train_v2", test_dir="mask_test_v2")
    for name in ("train", "val", "query", "gallery"):
        (info["base"] / f"list_{name}.txt").unlink()
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert "list_query.txt" in message and str(info["base"] / "query") in message
    assert "query/<pid>/<image>" in message


def test_msmt17_folder_form_bad_pid_folder(tmp_path, make_msmt17):
    info = make_msmt17(tmp_path, folder="MSMT17_V2", lists=False)
    bad = info["base"] / "gallery" / "person_x"
    _touch(bad / "0001_000_01_0303morning_0001_0.jpg")
    with pytest.raises(UserError) as excinfo:
        load_msmt17(tmp_path)
    message = _layout_error(excinfo)
    assert str(bad) in message and "<pid>" in message


# ---------------------------------------------------------------------------------------------------------
# VehicleID
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["VehicleID_V1.0", "vehicle-id/VehicleID_V1.0"])
def test_vehicleid_retrieval(tmp_path, folder, make_vehicleid):
    info = make_vehicleid(tmp_path, folder)
    splits = load_vehicleid(tmp_path)
    assert splits.name == "vehicleid"
    assert splits.protocol == "retrieval" and splits.query_is_gallery and splits.recall_ks == (1, 5)
    assert len(splits.train) == 15 and _labels(splits.train) == set(range(5))
    assert len(splits.query) == len(splits.gallery) == 31
    assert splits.query == splits.gallery and splits.extra_trials == []
    assert Counter(r.label for r in splits.query) == info["test_counts"]
    assert all(r.camid == -1 for r in splits.train + splits.query)
    assert all(r.path.startswith(str(info["base"] / "image")) and r.path.endswith(".jpg") for r in splits.query)
    assert [os.path.basename(r.path)[:-4] for r in splits.query] == [n for n, _ in info["lists"]["small"]]


@pytest.mark.parametrize("size,images,ids", [("small", 31, 7), ("medium", 33, 8), ("large", 36, 10)])
def test_vehicleid_sizes(tmp_path, size, images, ids, make_vehicleid):
    make_vehicleid(tmp_path)
    splits = load_vehicleid(tmp_path, test_size=size)
    assert len(splits.query) == images and len(_labels(splits.query)) == ids
    reid = load_vehicleid(tmp_path, test_size=size, protocol="reid", trials=2)
    assert len(reid.gallery) == ids and len(reid.query) + len(reid.gallery) == images


def _check_trial(query, gallery, test) -> None:
    assert Counter(r.label for r in gallery) == {label: 1 for label in _labels(test)}
    assert sorted(query + gallery) == sorted(test)
    assert not set(query) & set(gallery)


def test_vehicleid_reid_trials(tmp_path, make_vehicleid):
    make_vehicleid(tmp_path)
    test = load_vehicleid(tmp_path).query
    splits = load_vehicleid(tmp_path, protocol="reid", trials=6, seed=3)
    assert splits.protocol == "reid" and not splits.query_is_gallery and splits.recall_ks == (1, 5)
    assert len(splits.extra_trials) == 5
    trials = [(splits.query, splits.gallery)] + splits.extra_trials
    for query, gallery in trials:
        _check_trial(query, gallery, test)
        assert len(gallery) == 7 and len(query) == 24
        assert 101 not in _labels(query) and 101 in _labels(gallery)  # the single-image id: gallery only
        assert all(r.camid == -1 for r in query + gallery)
    galleries = [tuple(g) for _, g in trials]
    assert len(set(galleries)) == len(galleries)  # every draw differs
    again = load_vehicleid(tmp_path, protocol="reid", trials=6, seed=3)
    assert [(again.query, again.gallery)] + again.extra_trials == trials
    other = load_vehicleid(tmp_path, protocol="reid", trials=6, seed=4)
    assert other.gallery != splits.gallery
    # trial t depends on (seed, t) only, not on the number of trials
    fewer = load_vehicleid(tmp_path, protocol="reid", trials=2, seed=3)
    assert fewer.extra_trials == splits.extra_trials[:1] and fewer.gallery == splits.gallery
    single = load_vehicleid(tmp_path, protocol="reid", trials=1)
    assert single.extra_trials == []


def test_vehicleid_bad_options(tmp_path, make_vehicleid):
    make_vehicleid(tmp_path)
    with pytest.raises(ConfigError) as excinfo:
        load_vehicleid(tmp_path, test_size="huge")
    message = str(excinfo.value)
    assert "TEST.VEHICLEID_SIZE" in message and "'huge'" in message
    assert all(c in message for c in ("'small'", "'medium'", "'large'"))
    with pytest.raises(ConfigError) as excinfo:
        load_vehicleid(tmp_path, protocol="cmc")
    message = str(excinfo.value)
    assert "TEST.VEHICLEID_PROTOCOL" in message and "'retrieval'" in message and "'reid'" in message
    with pytest.raises(ConfigError, match="TEST.VEHICLEID_TRIALS"):
        load_vehicleid(tmp_path, protocol="reid", trials=0)
    with pytest.raises(ConfigError, match="COMBINE_ALL"):
        load_vehicleid(tmp_path, combine_all=True)


def test_vehicleid_missing_folder(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_vehicleid(tmp_path)
    message = _layout_error(excinfo)
    assert str(tmp_path / "VehicleID_V1.0") in message and str(tmp_path / "vehicle-id/VehicleID_V1.0") in message
    assert "train_test_split/test_list_800.txt" in message and "image/" in message


def test_vehicleid_missing_list_and_image(tmp_path, make_vehicleid):
    info = make_vehicleid(tmp_path)
    large = info["base"] / "train_test_split" / "test_list_2400.txt"
    large.unlink()
    load_vehicleid(tmp_path)  # small does not need the large list
    with pytest.raises(UserError) as excinfo:
        load_vehicleid(tmp_path, test_size="large")
    message = _layout_error(excinfo)
    assert str(large) in message and "train_test_split/" in message

    name = info["lists"]["small"][2][0]
    (info["base"] / "image" / f"{name}.jpg").unlink()
    with pytest.raises(UserError) as excinfo:
        load_vehicleid(tmp_path)
    message = _layout_error(excinfo)
    assert "test_list_800.txt" in message and "line 3" in message and f"{name}.jpg" in message


def test_vehicleid_bad_line(tmp_path, make_vehicleid):
    info = make_vehicleid(tmp_path)
    with open(info["base"] / "train_test_split" / "train_list.txt", "a") as handle:
        handle.write("0000099\n")
    with pytest.raises(UserError) as excinfo:
        load_vehicleid(tmp_path)
    message = _layout_error(excinfo)
    assert "train_list.txt, line 16" in message and "<vehicle id>" in message


# ---------------------------------------------------------------------------------------------------------
# Custom folder tree
# ---------------------------------------------------------------------------------------------------------


def test_folder_with_splits(tmp_path, make_split_folders):
    make_split_folders(tmp_path)
    splits = load_folder(tmp_path)
    assert splits.name == "folder" and splits.protocol == "reid" and not splits.query_is_gallery
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (6, 2, 6)
    assert _labels(splits.train) == {0, 1, 2}
    # labels: index in the sorted class names ant, bee, cat, dog, zebra
    assert {os.path.basename(os.path.dirname(r.path)): r.label for r in splits.query} == {"cat": 2, "dog": 3}
    assert {r.label for r in splits.gallery} == {2, 3}
    train_classes = {os.path.basename(os.path.dirname(r.path)): r.label for r in splits.train}
    assert train_classes == {"ant": 0, "bee": 1, "zebra": 2}
    assert all(r.camid == -1 for r in splits.train + splits.query + splits.gallery)
    assert any("empty_class" in n for n in splits.notes)
    combined = load_folder(tmp_path, combine_all=True)
    assert len(combined.train) == 14 and _labels(combined.train) == set(range(5))


def test_folder_class_disjoint_split(tmp_path):
    classes = [f"class_{c}" for c in "abcdef"]
    for i, cls in enumerate(classes):
        for k in range(i + 1):
            _touch(tmp_path / cls / f"{k}.jpg")
    splits = load_folder(tmp_path, split_ratio=0.5, seed=0)
    assert splits.protocol == "retrieval" and splits.query_is_gallery and splits.recall_ks == (1, 2, 4, 8)
    assert splits.query == splits.gallery
    test_labels = _labels(splits.query)
    train_folders = {os.path.basename(os.path.dirname(r.path)) for r in splits.train}
    assert len(train_folders) == 3 and len(test_labels) == 3
    assert {classes.index(f) for f in train_folders}.isdisjoint(test_labels)
    assert len(splits.train) + len(splits.query) == 21
    assert _labels(splits.train) == {0, 1, 2}
    for r in splits.query:  # test labels = class folder index in sorted order
        assert r.label == classes.index(os.path.basename(os.path.dirname(r.path)))
    assert load_folder(tmp_path, split_ratio=0.5, seed=0) == splits
    draws = {frozenset(_labels(load_folder(tmp_path, seed=s).query)) for s in range(6)}
    assert len(draws) > 1  # the seed changes the split
    assert len(_labels(load_folder(tmp_path, split_ratio=2 / 3).train)) == 4
    # a ratio that rounds to no train (or no test) class still keeps one on each side
    tiny = load_folder(tmp_path, split_ratio=0.01)
    assert len(_labels(tiny.train)) == 1 and len(_labels(tiny.query)) == 5 and tiny.notes


def test_folder_errors(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_folder(tmp_path / "nowhere")
    message = _layout_error(excinfo)
    assert str(tmp_path / "nowhere") in message and "<ROOT_DIR>/train/<class_name>/<image>" in message

    (tmp_path / "train" / "a").mkdir(parents=True)
    _touch(tmp_path / "train" / "a" / "1.jpg")
    _touch(tmp_path / "gallery" / "a" / "1.jpg")
    with pytest.raises(UserError) as excinfo:
        load_folder(tmp_path)
    message = _layout_error(excinfo)
    assert str(tmp_path / "query") in message and "<ROOT_DIR>/<class_name>/<image>" in message

    (tmp_path / "query" / "a").mkdir(parents=True)
    with pytest.raises(UserError) as excinfo:
        load_folder(tmp_path)
    message = _layout_error(excinfo)
    assert "no images found" in message and str(tmp_path / "query") in message

    loose = _touch(tmp_path / "query" / "loose.jpg")
    with pytest.raises(UserError) as excinfo:
        load_folder(tmp_path)
    assert str(loose) in _layout_error(excinfo)


def test_folder_class_form_errors(tmp_path):
    _touch(tmp_path / "only_class" / "1.jpg")
    with pytest.raises(UserError) as excinfo:
        load_folder(tmp_path)
    message = _layout_error(excinfo)
    assert "at least 2" in message and str(tmp_path) in message
    _touch(tmp_path / "second" / "1.jpg")
    with pytest.raises(ConfigError, match="DATASETS.SPLIT_RATIO"):
        load_folder(tmp_path, split_ratio=1.0)
    with pytest.raises(ConfigError, match="COMBINE_ALL"):
        load_folder(tmp_path, combine_all=True)
    loose = _touch(tmp_path / "stray.jpg")
    with pytest.raises(UserError) as excinfo:
        load_folder(tmp_path)
    assert str(loose) in _layout_error(excinfo)


# ---------------------------------------------------------------------------------------------------------
# Custom CSV
# ---------------------------------------------------------------------------------------------------------


def _write_csv(tmp_path: Path, text: str, images=()) -> Path:
    for rel in images:
        _touch(tmp_path / rel)
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_csv_with_split_and_camid(tmp_path):
    text = """Path,Label,camid,split,comment
imgs/a1.jpg,cat,0,train,x
imgs/a2.jpg,cat,1,train,
imgs/b1.jpg,ant,0,train,
imgs/c1.jpg,dog,0,query,
imgs/c2.jpg,dog,1,gallery,
imgs/d1.jpg,emu,,GALLERY,
"""
    images = ["imgs/a1.jpg", "imgs/a2.jpg", "imgs/b1.jpg", "imgs/c1.jpg", "imgs/c2.jpg", "imgs/d1.jpg"]
    csv_file = _write_csv(tmp_path, text, images)
    splits = load_csv(csv_file)
    assert splits.name == "csv" and splits.protocol == "reid" and not splits.query_is_gallery
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (3, 1, 2)
    # string labels -> index in sorted order: ant 0, cat 1, dog 2, emu 3; train relabelled ant 0, cat 1
    assert [r.label for r in splits.train] == [1, 1, 0]
    assert splits.query == [Record(str(tmp_path / "imgs/c1.jpg"), 2, 0)]
    assert splits.gallery == [Record(str(tmp_path / "imgs/c2.jpg"), 2, 1), Record(str(tmp_path / "imgs/d1.jpg"), 3, -1)]
    assert [r.camid for r in splits.train] == [0, 1, 0]
    combined = load_csv(csv_file, combine_all=True)
    assert len(combined.train) == 6 and _labels(combined.train) == set(range(4))


def test_csv_split_without_camid_is_retrieval(tmp_path):
    text = "path,split,label\nx/1.jpg,train,10\nx/2.jpg,train,12\nx/3.jpg,query,7\nx/4.jpg,gallery,7\n"
    csv_file = _write_csv(tmp_path, text, ["x/1.jpg", "x/2.jpg", "x/3.jpg", "x/4.jpg"])
    splits = load_csv(csv_file)
    assert splits.protocol == "retrieval" and not splits.query_is_gallery and splits.recall_ks == (1, 2, 4, 8)
    assert [r.label for r in splits.train] == [0, 1]
    assert splits.query[0].label == 7 and splits.gallery[0].label == 7  # integer labels kept as they are
    assert all(r.camid == -1 for r in splits.train + splits.query + splits.gallery)


def test_csv_without_split(tmp_path):
    rows = [(f"img/{cls}_{k}.jpg", cls) for cls in ("owl", "bat", "fox", "elk") for k in range(2)]
    csv_file = _write_csv(tmp_path, "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows), [p for p, _ in rows])
    splits = load_csv(csv_file, split_ratio=0.5, seed=1)
    assert splits.protocol == "retrieval" and splits.query_is_gallery and splits.query == splits.gallery
    assert len(splits.train) == 4 and len(splits.query) == 4
    assert _labels(splits.train) == {0, 1}
    order = ["bat", "elk", "fox", "owl"]  # sorted label strings -> 0..3
    for r in splits.query:
        assert r.label == order.index(os.path.basename(r.path).split("_")[0])
    train_names = {os.path.basename(r.path).split("_")[0] for r in splits.train}
    assert train_names.isdisjoint({order[label] for label in _labels(splits.query)})
    assert load_csv(csv_file, split_ratio=0.5, seed=1) == splits
    with pytest.raises(ConfigError, match="COMBINE_ALL"):
        load_csv(csv_file, combine_all=True)


def test_csv_absolute_path_and_blank_lines(tmp_path):
    absolute = _touch(tmp_path / "elsewhere" / "z.jpg")
    text = f"path,label\n\n{absolute},1\nrel/a.jpg,2\n\n"
    csv_file = _write_csv(tmp_path, text, ["rel/a.jpg"])
    splits = load_csv(csv_file)
    assert sorted(r.path for r in splits.train + splits.query) == sorted([str(absolute), str(tmp_path / "rel/a.jpg")])


@pytest.mark.parametrize(
    "text,images,expected",
    [
        ("label,split\n", [], ["no column 'path'", "line 1", "found: label,split"]),
        ("path,camid\na.jpg,0\n", ["a.jpg"], ["no column 'label'", "line 1"]),
        (
            "path,label,split\na.jpg,1,train\nb.jpg,1,test\n",
            ["a.jpg", "b.jpg"],
            ["line 3", "column split", "'test'", "train, query, gallery"],
        ),
        ("path,label,split\na.jpg,1,train\nb.jpg,2,gallery\n", ["a.jpg", "b.jpg"], ["no rows with split 'query'"]),
        ("path,label\na.jpg,1\nmissing/b.jpg,2\n", ["a.jpg"], ["line 3", "missing/b.jpg", "relative to the CSV"]),
        ("path,label,camid\na.jpg,1,front\n", ["a.jpg"], ["line 2", "column camid", "'front'"]),
        ("path,label\na.jpg,1,extra\n", ["a.jpg"], ["line 2", "3 field(s)", "header has 2"]),
        ("path,label\na.jpg,\n", ["a.jpg"], ["line 2", "column label", "empty"]),
        ("", [], ["is empty"]),
        ("path,label\n", [], ["no rows"]),
    ],
)
def test_csv_errors(tmp_path, text, images, expected):
    csv_file = _write_csv(tmp_path, text, images)
    with pytest.raises(UserError) as excinfo:
        load_csv(csv_file)
    message = _layout_error(excinfo)
    assert str(csv_file) in message
    for part in expected:
        assert part in message
    assert "path,label[,camid][,split]" in message  # the expected format is shown


def test_csv_missing_file(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_csv(tmp_path / "nope.csv")
    message = _layout_error(excinfo)
    assert str(tmp_path / "nope.csv") in message and "DATASETS.CSV_FILE" in message
    assert "path,label[,camid][,split]" in message
    with pytest.raises(UserError) as excinfo:
        load_csv("")
    assert "DATASETS.CSV_FILE is empty" in _layout_error(excinfo)
