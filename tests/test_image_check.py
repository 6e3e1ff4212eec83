"""Every image is checked before the first epoch (data/image_check.py, data/bad_images.py): each kind of bad
file is found and named with its reason, all of them in the one 'error' message; 'skip' drops them, lists
them in OUTPUT_DIR/bad_images.txt and keeps the training labels contiguous; 'off' checks nothing; a
decompression bomb is a bad image in both of PIL's ranges, in the check and in read_image."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config import UserError, load_config
from data.bad_images import BAD_IMAGES_FILE, MESSAGE_LISTS_AT_MOST
from data.build import build_data
from data.datasets import DATASET_LOADERS
from data.image_check import find_bad_images, image_problem
from data.image_dataset import UnreadableImageError, read_image
from data.records import DatasetSplits, Record, zero_shot_splits

ROOT = Path(__file__).resolve().parents[1]
BOMB_LIMIT = 1000  # PIL.Image.MAX_IMAGE_PIXELS in these tests: a 40x40 image warns, a 50x50 one raises


def _jpeg_bytes(size: int, seed: int = 0) -> bytes:
    """A noisy JPEG (noise: its scan data is long enough to cut in half after an intact header)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def bomb_limit(monkeypatch):
    """PIL's decompression-bomb limit lowered to BOMB_LIMIT pixels, so tiny files are bombs."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)


@pytest.fixture
def bad_files(tmp_path, bomb_limit) -> dict[str, str]:
    """One file of every bad kind (and a good one) under tmp_path/images: {kind: path}."""
    folder = tmp_path / "images"
    whole = _jpeg_bytes(size=30, seed=1)  # under the lowered limit: only its truncation is wrong
    return {
        "good": _write(folder / "good.jpg", _jpeg_bytes(size=30)),
        "truncated": _write(folder / "truncated.jpg", whole[: len(whole) // 2]),
        "text": _write(folder / "notes.jpg", b"this is a text file, not a JPEG\n"),
        "empty": _write(folder / "empty.jpg", b""),
        "missing": str(folder / "missing.jpg"),
        "bomb_warned": _write(folder / "bomb_40.jpg", _jpeg_bytes(size=40)),  # 1,600 pixels: PIL warns
        "bomb_raised": _write(folder / "bomb_50.jpg", _jpeg_bytes(size=50)),  # 2,500 > 2 x 1,000: PIL raises
    }


REASONS = {
    "truncated": "image file is truncated",
    "text": "cannot identify image file",
    "empty": "empty file (0 bytes)",
    "missing": "no such file",
    "bomb_warned": f"decompression bomb: 1,600 pixels, more than PIL's limit of {BOMB_LIMIT:,}",
    "bomb_raised": f"decompression bomb: 2,500 pixels, more than PIL's limit of {BOMB_LIMIT:,}",
}


def _records(paths, label: int = 0) -> list[Record]:
    return [Record(path, label, 0) for path in paths]


# ---------------------------------------------------------------------------------------------------------
# The check itself
# ---------------------------------------------------------------------------------------------------------


def test_decode_finds_every_kind_of_bad_file_with_its_reason_and_no_bomb_warning_escapes(bad_files):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning that escaped the check would be recorded here
        bad = find_bad_images(_records(bad_files.values()), "decode", workers=2)
    assert [b.path for b in bad] == [path for kind, path in bad_files.items() if kind != "good"]  # record order
    reasons = {kind: reason for (kind, _), (_, reason) in zip(list(bad_files.items())[1:], bad)}
    for kind, expected in REASONS.items():
        assert expected in reasons[kind], (kind, reasons[kind])
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_header_passes_a_jpeg_cut_after_its_header_and_decode_catches_it(bad_files):
    truncated = bad_files["truncated"]
    with Image.open(truncated) as img:  # the header really is intact: PIL reads format and size
        assert (img.format, img.size) == ("JPEG", (30, 30))
    assert image_problem(truncated, "header") is None
    assert "image file is truncated" in image_problem(truncated, "decode")
    # everything else is caught by the header alone
    header_bad = {b.path for b in find_bad_images(_records(bad_files.values()), "header")}
    assert header_bad == {path for kind, path in bad_files.items() if kind not in ("good", "truncated")}


def test_off_checks_nothing_and_a_path_is_checked_once(bad_files):
    assert find_bad_images(_records(bad_files.values()), "off") == []
    twice = _records([bad_files["text"], bad_files["good"], bad_files["text"]])
    assert [b.path for b in find_bad_images(twice, "header", workers=1)] == [bad_files["text"]]


@pytest.mark.parametrize("kind", ["bomb_warned", "bomb_raised"])
def test_read_image_refuses_a_bomb_in_one_line_naming_the_file(bad_files, kind):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableImageError) as excinfo:
            read_image(bad_files[kind])
    message = str(excinfo.value)
    assert "\n" not in message and message == f"cannot read image {bad_files[kind]}: {REASONS[kind]}"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert read_image(bad_files["good"]).size == (30, 30)  # under the limit: read as before


# ---------------------------------------------------------------------------------------------------------
# build_data: 'error' and 'skip'
# ---------------------------------------------------------------------------------------------------------


def _register(monkeypatch, name: str, splits: DatasetSplits) -> None:
    monkeypatch.setitem(DATASET_LOADERS, name, lambda cfg: splits)


def _cfg(out: Path, *opts: str):
    return load_config(
        None,
        [
            "DATASETS.NAMES", "checked", "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCE", "2", *opts,
        ],
    )  # fmt: skip


def _good_images(folder: Path, count: int) -> list[str]:
    return [_write(folder / f"ok_{i}.jpg", _jpeg_bytes(size=8, seed=i)) for i in range(count)]


def test_error_stops_with_one_line_listing_every_bad_file_and_both_keys(tmp_path, bad_files, monkeypatch):
    good = _good_images(tmp_path / "good", 6)
    bad = {kind: path for kind, path in bad_files.items() if kind != "good"}
    train = [Record(p, i % 3, 0) for i, p in enumerate(good)] + _records([bad["text"], bad["missing"]], label=1)
    query = _records([good[0], bad["truncated"], bad["bomb_warned"]], label=7)
    gallery = _records([good[1], bad["empty"], bad["bomb_raised"], bad["text"]], label=7)  # text: also in train
    _register(monkeypatch, "checked", DatasetSplits("checked", train, query, gallery))
    out = tmp_path / "run"
    with pytest.raises(UnreadableImageError) as excinfo:
        build_data(_cfg(out, "DATALOADER.CHECK_IMAGES", "decode"))
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("6 bad images found by the image check")
    for kind, path in bad.items():
        assert message.count(f"{path} (") == 1, kind  # each file once, even when in two splits
        assert REASONS[kind] in message
    assert "DATALOADER.BAD_IMAGES skip" in message and "DATALOADER.CHECK_IMAGES off" in message
    assert not (out / BAD_IMAGES_FILE).exists()  # every file is in the message: no list written
    assert isinstance(excinfo.value, UserError)  # train.py / test.py: one line, exit 2


def test_error_with_many_bad_files_lists_some_and_writes_them_all(tmp_path, monkeypatch):
    good = _good_images(tmp_path / "good", 4)
    broken = [_write(tmp_path / "broken" / f"b{i:02d}.jpg", b"") for i in range(MESSAGE_LISTS_AT_MOST + 5)]
    train = [Record(p, i % 2, 0) for i, p in enumerate(good + broken)]
    _register(monkeypatch, "checked", DatasetSplits("checked", train, _records(good[:1]), _records(good[1:])))
    out = tmp_path / "run"
    with pytest.raises(UnreadableImageError) as excinfo:
        build_data(_cfg(out))
    message = str(excinfo.value)
    listed = [path for path in broken if f"{path} (" in message]
    assert listed == broken[:MESSAGE_LISTS_AT_MOST]
    assert f"and 5 more (all {len(broken)} are listed in {out / BAD_IMAGES_FILE})" in message
    lines = (out / BAD_IMAGES_FILE).read_text().splitlines()
    assert lines == [f"{path}\tempty file (0 bytes)" for path in broken]


def test_skip_drops_bad_files_writes_the_list_warns_once_and_keeps_labels_contiguous(
    tmp_path, bad_files, monkeypatch, caplog
):
    good = _good_images(tmp_path / "good", 8)
    # identity 1 has only bad images: it disappears, and identity 2 becomes 1
    train = _records(good[0:3], 0) + _records([bad_files["text"], bad_files["bomb_raised"]], 1)
    train += _records(good[3:6], 2) + _records([bad_files["empty"]], 2)
    test = _records([good[6], bad_files["truncated"], good[7], bad_files["missing"]], 10)
    _register(monkeypatch, "checked", zero_shot_splits("checked", train, test, (1, 2)))  # query = gallery
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        data = build_data(_cfg(out, "DATALOADER.BAD_IMAGES", "skip", "DATALOADER.CHECK_IMAGES", "decode"))
    assert data.num_classes == 2
    assert [(r.path, r.label) for r in data.train_records] == [(p, 0) for p in good[0:3]] + [(p, 1) for p in good[3:6]]
    assert data.train_loader.dataset.records == data.train_records
    splits = data.eval_sets[0].splits
    assert [r.path for r in splits.query] == [good[6], good[7]] and splits.gallery is splits.query
    assert [r.path for r in data.eval_sets[0].loader.dataset.records] == [good[6], good[7]]
    dropped = ["text", "bomb_raised", "empty", "truncated", "missing"]
    lines = (out / BAD_IMAGES_FILE).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [bad_files[kind] for kind in dropped]
    assert all(REASONS[kind] in line.split("\t")[1] for kind, line in zip(dropped, lines))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "Skipped 5 bad images" in warned[0] and str(out / BAD_IMAGES_FILE) in warned[0]


def test_skip_refuses_to_leave_a_split_without_images(tmp_path, bad_files, monkeypatch):
    good = _good_images(tmp_path / "good", 4)
    test = _records([bad_files["text"], bad_files["missing"]], 10)
    _register(
        monkeypatch,
        "checked",
        zero_shot_splits("checked", [Record(p, i % 2, 0) for i, p in enumerate(good)], test, (1,)),
    )
    with pytest.raises(UnreadableImageError, match=r"every image of the query and gallery split of checked is bad"):
        build_data(_cfg(tmp_path / "run", "DATALOADER.BAD_IMAGES", "skip"))


def test_no_bad_image_writes_nothing_and_logs_one_info_line(tmp_path, monkeypatch, caplog):
    good = _good_images(tmp_path / "good", 6)
    train = [Record(p, i % 2, 0) for i, p in enumerate(good[:4])]
    _register(monkeypatch, "checked", DatasetSplits("checked", train, _records(good[4:5]), _records(good[5:])))
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        build_data(_cfg(out, "DATALOADER.BAD_IMAGES", "skip"))
    checks = [r.getMessage() for r in caplog.records if r.name == "data.image_check"]
    assert len(checks) == 1 and "6 images in" in checks[0] and "none bad" in checks[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not out.exists()


def test_off_lets_bad_files_through_to_the_loaders(tmp_path, bad_files, monkeypatch, caplog):
    good = _good_images(tmp_path / "good", 4)
    train = _records(good, 0) + _records([bad_files["missing"]], 1)
    _register(monkeypatch, "checked", DatasetSplits("checked", train, _records(good[:1]), _records(good[1:])))
    with caplog.at_level(logging.INFO):
        data = build_data(_cfg(tmp_path / "run", "DATALOADER.CHECK_IMAGES", "off"))
    assert data.num_classes == 2 and bad_files["missing"] in [r.path for r in data.train_records]
    assert not [r for r in caplog.records if r.name == "data.image_check"]


# ---------------------------------------------------------------------------------------------------------
# Through train.py
# ---------------------------------------------------------------------------------------------------------


def _train_py(root: Path, out: Path, tiny_opts, **overrides: str) -> subprocess.CompletedProcess:
    settings = {"SOLVER.MAX_EPOCHS": "1", "SOLVER.EVAL_PERIOD": "1", "LOG.TENSORBOARD": "no", "LOG.PLOTS": "no"}
    argv = tiny_opts(root, out, **{**settings, **overrides})
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_train_py_stops_before_the_first_epoch_on_a_corrupt_gallery_image_or_skips_it(tiny_opts, market_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(market_root, root)
    victim = sorted((root / "market1501/bounding_box_test").glob("0*.jpg"))[-1]
    victim.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    out = tmp_path / "stopped"
    proc = _train_py(root, out, tiny_opts)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 1 bad image found") and str(victim) in lines[0], lines
    # nothing trained: no checkpoint, no epoch's statistics
    assert not list(out.rglob("*.pt")) and not (out / "train_metrics.jsonl").exists()

    out = tmp_path / "skipped"
    proc = _train_py(root, out, tiny_opts, **{"DATALOADER.BAD_IMAGES": "skip"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, reason = (out / BAD_IMAGES_FILE).read_text().splitlines()[0].split("\t")
    assert path == str(victim) and "truncated" in reason.lower()  # PIL: "Truncated File Read"
    assert (out / "checkpoints/checkpoint_1.pt").is_file()
