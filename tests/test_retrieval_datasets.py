"""Retrieval benchmark loaders: CUB-200-2011, Cars196, Stanford Online Products, In-shop Clothes.

Each test writes a tiny tree in the official layout under tmp_path (8x8 JPEGs) and checks the counts per
split, the label ranges and relabelling, the protocol fields, the accepted folder names and every error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from config.errors import ConfigError, UserError
from data.datasets.cars import load_cars
from data.datasets.common import DatasetLayoutError
from data.datasets.cub import load_cub
from data.datasets.inshop import load_inshop
from data.datasets.sop import load_sop
from data.records import DatasetSplits, Record


def _check_retrieval_common(splits: DatasetSplits, name: str, ks: tuple[int, ...], query_is_gallery: bool) -> None:
    assert splits.name == name
    assert splits.protocol == "retrieval"
    assert splits.query_is_gallery is query_is_gallery
    assert splits.recall_ks == ks
    records = splits.train + splits.query + splits.gallery
    assert all(isinstance(r, Record) for r in records)
    assert all(r.camid == -1 for r in records)
    assert all(Path(r.path).is_file() for r in records)
    assert sorted({r.label for r in splits.train}) == list(range(splits.num_train_classes))
    if query_is_gallery:
        assert splits.query == splits.gallery


def _layout_error(loader, root, **kwargs) -> str:
    with pytest.raises(UserError) as excinfo:
        loader(root, **kwargs)
    assert isinstance(excinfo.value, DatasetLayoutError)
    return str(excinfo.value)


# --------------------------------------------------------------------------------------------- CUB


def _class_number(path: str) -> int:
    return int(Path(path).parent.name.split(".")[0])


def test_cub_counts_labels_and_protocol(tmp_path, make_cub_tree):
    make_cub_tree(tmp_path)
    splits = load_cub(tmp_path)
    _check_retrieval_common(splits, "cub", (1, 2, 4, 8, 16, 32), query_is_gallery=True)
    assert splits.query is splits.gallery
    assert len(splits.train) == 3 * 3 and len(splits.query) == 3 * 3
    assert splits.num_train_classes == 3
    assert {_class_number(r.path) for r in splits.train} == {1, 2, 3}
    # train relabelled 0..2 in class order; test keeps the class number
    assert all(r.label == _class_number(r.path) - 1 for r in splits.train)
    assert all(r.label == _class_number(r.path) for r in splits.query)
    assert {r.label for r in splits.query} == {4, 5, 6}
    assert any("6 class folders" in note for note in splits.notes)


def test_cub_skips_resource_forks(tmp_path, make_cub_tree):
    folder = make_cub_tree(tmp_path)
    on_disk = [n for _, _, files in os.walk(folder / "images") for n in files]
    assert sum(n.startswith("._") for n in on_disk) == 6 * 3 + 1
    splits = load_cub(tmp_path)
    assert all(not Path(r.path).name.startswith("._") for r in splits.train + splits.query)
    assert len(splits.train) + len(splits.query) == 6 * 3


def test_cub_official_200_classes_split_1_100_101_200(tmp_path, make_cub_tree):
    make_cub_tree(tmp_path, num_classes=200, per_class=1, resource_forks=False)
    splits = load_cub(tmp_path)
    assert {_class_number(r.path) for r in splits.train} == set(range(1, 101))
    assert sorted({r.label for r in splits.train}) == list(range(100))
    assert {r.label for r in splits.query} == set(range(101, 201))
    assert splits.notes == []


def test_cub_odd_number_of_classes(tmp_path, make_cub_tree):
    make_cub_tree(tmp_path, num_classes=5, per_class=2)
    splits = load_cub(tmp_path)
    assert splits.num_train_classes == 2
    assert {r.label for r in splits.query} == {3, 4, 5}


def test_cub_alternative_folder_name_and_registry_kwargs(tmp_path, make_cub_tree):
    make_cub_tree(tmp_path, folder_name="cub-200-2011")
    splits = load_cub(tmp_path, combine_all=False, demo_seed=3)
    assert len(splits.train) == 9 and len(splits.query) == 9
    assert all("cub-200-2011" in r.path for r in splits.train)


def test_cub_missing_folder(tmp_path):
    message = _layout_error(load_cub, tmp_path)
    assert str(tmp_path / "CUB_200_2011") in message and str(tmp_path / "cub-200-2011") in message
    assert "images/001.Black_footed_Albatross/" in message and "200.Common_Yellowthroat" in message


def test_cub_missing_images_folder(tmp_path):
    (tmp_path / "CUB_200_2011").mkdir()
    message = _layout_error(load_cub, tmp_path)
    assert str(tmp_path / "CUB_200_2011" / "images") in message
    assert "001.Black_footed_Albatross" in message


def test_cub_bad_class_folder_and_too_few_classes(tmp_path, make_cub_tree):
    folder = make_cub_tree(tmp_path, num_classes=1, per_class=1)
    assert "at least 2" in _layout_error(load_cub, tmp_path)
    bad = folder / "images" / "Albatross"
    bad.mkdir()
    message = _layout_error(load_cub, tmp_path)
    assert str(bad) in message and "001.Black_footed_Albatross" in message


def test_combine_all_refused(tmp_path):
    for loader in (load_cub, load_cars, load_sop, load_inshop):
        with pytest.raises(ConfigError, match="COMBINE_ALL"):
            loader(tmp_path, combine_all=True)


# -------------------------------------------------------------------------------------------- Cars


def test_cars_annos_written_like_the_official_file(tmp_path, make_cars_tree):
    info = make_cars_tree(tmp_path)
    mat = scipy.io.loadmat(str(info["folder"] / "cars_annos.mat"))
    annotations = mat["annotations"]
    assert annotations.shape == (1, 18)
    assert annotations.dtype.names == ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    first = annotations[0, 0]
    assert first["relative_im_path"].shape == (1,) and first["relative_im_path"][0] == "car_ims/000001.jpg"
    assert first["class"].shape == (1, 1) and first["class"].dtype == np.uint8


def test_cars_counts_labels_and_protocol(tmp_path, make_cars_tree):
    info = make_cars_tree(tmp_path)
    splits = load_cars(tmp_path)
    _check_retrieval_common(splits, "cars", (1, 2, 4, 8, 16, 32), query_is_gallery=True)
    assert splits.query is splits.gallery
    assert len(splits.train) == 9 and len(splits.query) == 9
    raw = {str(info["folder"] / p): label for p, label, _ in info["entries"]}
    assert {raw[r.path] for r in splits.train} == {1, 2, 3}
    assert all(r.label == raw[r.path] - 1 for r in splits.train)
    assert all(r.label == raw[r.path] for r in splits.query)
    assert {r.label for r in splits.query} == {4, 5, 6}
    # the official test flag is ignored: both splits mix test=0 and test=1 images
    flag = {str(info["folder"] / p): test for p, _, test in info["entries"]}
    assert {flag[r.path] for r in splits.train} == {0, 1} == {flag[r.path] for r in splits.query}


def test_cars_official_class_split_1_98_99_196(tmp_path, make_cars_tree):
    make_cars_tree(tmp_path, num_classes=196, per_class=1)
    splits = load_cars(tmp_path)
    assert splits.num_train_classes == 98
    assert {r.label for r in splits.query} == set(range(99, 197))
    assert splits.notes == []


@pytest.mark.parametrize("folder_name", ["CARS196", "stanford_cars"])
def test_cars_alternative_folder_names(tmp_path, folder_name, make_cars_tree):
    make_cars_tree(tmp_path, folder_name=folder_name)
    if (tmp_path / "cars196").is_dir():  # a case-insensitive file system: CARS196 is cars196
        pytest.skip("case-insensitive file system")
    splits = load_cars(tmp_path)
    assert len(splits.train) == 9 and all(folder_name in r.path for r in splits.train)


def test_cars_missing_folder(tmp_path):
    message = _layout_error(load_cars, tmp_path)
    for name in ("cars196", "CARS196", "stanford_cars"):
        assert str(tmp_path / name) in message
    assert "cars_annos.mat" in message and "car_ims/000001.jpg" in message


def test_cars_missing_mat(tmp_path, make_cars_tree):
    info = make_cars_tree(tmp_path)
    (info["folder"] / "cars_annos.mat").unlink()
    message = _layout_error(load_cars, tmp_path)
    assert str(info["folder"] / "cars_annos.mat") in message and "car_ims/" in message


def test_cars_mat_without_annotations(tmp_path, make_cars_tree):
    info = make_cars_tree(tmp_path)
    scipy.io.savemat(str(info["folder"] / "cars_annos.mat"), {"class_names": np.zeros((1, 2), dtype=object)})
    message = _layout_error(load_cars, tmp_path)
    assert str(info["folder"] / "cars_annos.mat") in message and "'annotations'" in message


def test_cars_unreadable_mat(tmp_path, make_cars_tree):
    info = make_cars_tree(tmp_path)
    (info["folder"] / "cars_annos.mat").write_bytes(b"this is not a mat file" * 20)
    assert str(info["folder"] / "cars_annos.mat") in _layout_error(load_cars, tmp_path)


def test_cars_listed_image_missing(tmp_path, make_cars_tree):
    info = make_cars_tree(tmp_path)
    victim = info["folder"] / "car_ims" / "000007.jpg"
    victim.unlink()
    message = _layout_error(load_cars, tmp_path)
    assert str(victim) in message and "cars_annos.mat" in message


# --------------------------------------------------------------------------------------------- SOP


def test_sop_counts_labels_and_protocol(tmp_path, make_sop_tree):
    info = make_sop_tree(tmp_path)
    splits = load_sop(tmp_path)
    _check_retrieval_common(splits, "sop", (1, 10, 100, 1000), query_is_gallery=True)
    assert splits.query is splits.gallery
    assert len(splits.train) == info["counts"]["Ebay_train.txt"] == 2 * 2 + 2 * 3
    assert len(splits.query) == info["counts"]["Ebay_test.txt"] == 2 * 2 + 2 * 3
    assert splits.num_train_classes == 4
    raw = lambda r: int(Path(r.path).stem.split("_")[0]) - 111085122000  # noqa: E731
    assert all(r.label == raw(r) - 1 for r in splits.train)
    assert all(r.label == raw(r) for r in splits.query)
    assert {r.label for r in splits.query} == {5, 6, 7, 8}


def test_sop_alternative_folder_name(tmp_path, make_sop_tree):
    make_sop_tree(tmp_path, folder_name="sop")
    splits = load_sop(tmp_path)
    assert len(splits.train) == 10 and all(f"{os.sep}sop{os.sep}" in r.path for r in splits.train)


def test_sop_missing_folder(tmp_path):
    message = _layout_error(load_sop, tmp_path)
    assert str(tmp_path / "Stanford_Online_Products") in message and str(tmp_path / "sop") in message
    assert "Ebay_train.txt" in message and "Ebay_test.txt" in message
    assert "bicycle_final/111085122871_0.JPG" in message


def test_sop_missing_list_file(tmp_path, make_sop_tree):
    info = make_sop_tree(tmp_path)
    (info["folder"] / "Ebay_test.txt").unlink()
    message = _layout_error(load_sop, tmp_path)
    assert str(info["folder"] / "Ebay_test.txt") in message and "image_id class_id super_class_id path" in message


@pytest.mark.parametrize("bad_line", ["99 x 1 chair_final/1_0.JPG", "99 5 chair_final/1_0.JPG"])
def test_sop_malformed_line(tmp_path, bad_line, make_sop_tree):
    info = make_sop_tree(tmp_path)
    list_path = info["folder"] / "Ebay_train.txt"
    lines = list_path.read_text().splitlines()
    lines.insert(3, bad_line)  # becomes line 4 of the file
    list_path.write_text("\n".join(lines) + "\n")
    message = _layout_error(load_sop, tmp_path)
    assert str(list_path) in message and "line 4" in message and bad_line in message


def test_sop_first_image_missing(tmp_path, make_sop_tree):
    info = make_sop_tree(tmp_path)
    first = info["folder"] / (info["folder"] / "Ebay_test.txt").read_text().splitlines()[1].split()[3]
    first.unlink()
    message = _layout_error(load_sop, tmp_path)
    assert str(first) in message and "Ebay_test.txt" in message


def test_sop_empty_list(tmp_path, make_sop_tree):
    info = make_sop_tree(tmp_path)
    (info["folder"] / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n")
    assert "no images listed" in _layout_error(load_sop, tmp_path)


# ----------------------------------------------------------------------------------------- In-shop


def _item(path: str) -> int:
    return int(Path(path).parent.name[len("id_") :])


def test_inshop_counts_labels_and_protocol(tmp_path, make_inshop_tree):
    make_inshop_tree(tmp_path)
    splits = load_inshop(tmp_path)
    _check_retrieval_common(splits, "inshop", (1, 10, 20, 30, 40, 50), query_is_gallery=False)
    assert len(splits.train) == 9 and len(splits.query) == 3 and len(splits.gallery) == 6
    assert not set(r.path for r in splits.query) & set(r.path for r in splits.gallery)
    mapping = {2: 0, 4: 1, 7: 2}
    assert all(r.label == mapping[_item(r.path)] for r in splits.train)
    assert all(r.label == _item(r.path) for r in splits.query + splits.gallery)
    assert {r.label for r in splits.query} == {r.label for r in splits.gallery} == {10, 11, 13}


@pytest.mark.parametrize("folder_name", ["In-shop", "inshop"])
def test_inshop_alternative_folder_names(tmp_path, folder_name, make_inshop_tree):
    make_inshop_tree(tmp_path, folder_name=folder_name)
    splits = load_inshop(tmp_path)
    assert len(splits.train) == 9 and all(f"{os.sep}{folder_name}{os.sep}" in r.path for r in splits.train)


def test_inshop_official_download_layout(tmp_path, make_inshop_tree):
    info = make_inshop_tree(tmp_path, official=True)
    splits = load_inshop(tmp_path)
    assert len(splits.train) == 9 and len(splits.query) == 3 and len(splits.gallery) == 6
    assert all(r.path.startswith(str(info["image_root"] / "img")) for r in splits.train + splits.gallery)


def test_inshop_missing_folder(tmp_path):
    message = _layout_error(load_inshop, tmp_path)
    for name in ("Inshop_Clothes", "In-shop", "inshop"):
        assert str(tmp_path / name) in message
    assert "list_eval_partition.txt" in message and "image_name item_id evaluation_status" in message


def test_inshop_missing_list_file(tmp_path, make_inshop_tree):
    info = make_inshop_tree(tmp_path)
    info["list_path"].unlink()
    message = _layout_error(load_inshop, tmp_path)
    assert str(info["list_path"]) in message
    assert str(info["folder"] / "Eval" / "list_eval_partition.txt") in message


def test_inshop_count_mismatch(tmp_path, make_inshop_tree):
    info = make_inshop_tree(tmp_path)
    lines = info["list_path"].read_text().splitlines()
    info["list_path"].write_text("\n".join(["17"] + lines[1:]) + "\n")
    message = _layout_error(load_inshop, tmp_path)
    assert str(info["list_path"]) in message and "17" in message and "18" in message


@pytest.mark.parametrize("bad_line", ["img/a.jpg 00000002 train", "img/a.jpg id_00000002 val", "img/a.jpg id_2"])
def test_inshop_malformed_line(tmp_path, bad_line, make_inshop_tree):
    info = make_inshop_tree(tmp_path)
    lines = info["list_path"].read_text().splitlines()
    lines.insert(4, bad_line)  # becomes line 5 of the file
    lines[0] = str(int(lines[0]) + 1)
    info["list_path"].write_text("\n".join(lines) + "\n")
    message = _layout_error(load_inshop, tmp_path)
    assert str(info["list_path"]) in message and "line 5" in message and bad_line in message


def test_inshop_bad_count_line(tmp_path, make_inshop_tree):
    info = make_inshop_tree(tmp_path)
    lines = info["list_path"].read_text().splitlines()
    info["list_path"].write_text("\n".join(lines[1:]) + "\n")  # header first, no count line
    message = _layout_error(load_inshop, tmp_path)
    assert str(info["list_path"]) in message and "line 1" in message


def test_inshop_first_image_missing(tmp_path, make_inshop_tree):
    info = make_inshop_tree(tmp_path)
    first = info["image_root"] / info["entries"][0][0]
    first.unlink()
    message = _layout_error(load_inshop, tmp_path)
    assert str(first) in message and "list_eval_partition.txt" in message


# ------------------------------------------------------------------------------------------- all


def test_loaders_do_not_decode_images(
    tmp_path, monkeypatch, make_cars_tree, make_cub_tree, make_inshop_tree, make_sop_tree
):
    make_cub_tree(tmp_path)
    make_cars_tree(tmp_path)
    make_sop_tree(tmp_path)
    make_inshop_tree(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a loader opened an image")

    monkeypatch.setattr(Image, "open", refuse)
    for loader in (load_cub, load_cars, load_sop, load_inshop):
        splits = loader(tmp_path)
        assert splits.train and splits.query and splits.gallery
        assert "# images" in splits.summary_table()


def test_cars_without_scipy_is_a_user_error(tmp_path, monkeypatch, make_cars_tree):
    info = make_cars_tree(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` raise ImportError
    with pytest.raises(UserError, match="pip install scipy") as excinfo:
        load_cars(tmp_path)
    assert str(info["folder"] / "cars_annos.mat") in str(excinfo.value)
