"""DATALOADER.CACHE ram (data/image_cache.py): the cached pixels are PIL's, the CPU transforms read them into the
same tensors as from the files, the cache is one shared tensor, an unreadable image fails as read_image fails, and
the build is logged in one line."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

import data.image_cache as image_cache
from config import ConfigError, load_config
from data.build import build_image_dataset, training_loader
from data.device_augment import build_preparation
from data.image_cache import NOT_CACHED, build_image_cache, cache_images
from data.image_dataset import ImageDataset, UnreadableImageError, read_image
from data.records import Record
from data.samplers import RandomBatchSampler, SeededBatches
from data.transforms import build_transforms


@pytest.fixture
def images(tmp_path) -> list[Record]:
    """Nine images of different sizes and formats (JPEG RGB, PNG grey, PNG RGBA, palette GIF), and one path twice."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(9):
        height, width = (int(v) for v in rng.integers(12, 40, size=2))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        kind = ("jpg", "png-L", "png-RGBA", "gif")[i % 4]
        path = tmp_path / f"img{i}.{kind.split('-')[0]}"
        if kind == "png-L":
            image = image.convert("L")
        elif kind == "png-RGBA":
            image = image.convert("RGBA")
        image.save(path)
        records.append(Record(str(path), i % 3, i % 2))
    return records + [records[0]]


def test_cached_pixels_are_pils_decoding_and_a_repeated_path_is_stored_once(images):
    cache = cache_images(images)
    for row, record in enumerate(images):
        expected = np.asarray(read_image(record.path))
        assert np.array_equal(cache.image(row), expected)
    assert cache.table[0, 0] == cache.table[-1, 0]  # the repeated path points at the same bytes
    assert cache.nbytes == sum(np.asarray(read_image(r.path)).size for r in images[:-1])
    assert cache.preparation == ""


def test_the_cache_is_one_tensor_in_shared_memory(images):
    cache = cache_images(images)
    assert cache.pixels.dtype == torch.uint8 and cache.pixels.dim() == 1 and cache.pixels.is_shared()
    assert cache.table.dtype == torch.int64 and cache.table.shape == (len(images), 3) and cache.table.is_shared()
    view = cache.image(1)
    assert np.shares_memory(view, cache.pixels.numpy())  # a view, not a copy


@pytest.mark.parametrize(("pipeline", "is_train"), [("reid", True), ("retrieval", True), ("reid", False)])
def test_cpu_transforms_read_from_the_cache_give_bit_identical_tensors(images, pipeline, is_train):
    cfg = load_config(None, ["INPUT.SIZE_TRAIN", "[24, 16]", "INPUT.SIZE_TEST", "[24, 16]", "INPUT.RE_PROB", "0.5"])
    transform = build_transforms(cfg, is_train, pipeline)
    files, cached = ImageDataset(images, transform), ImageDataset(images, transform, cache_images(images))
    for row in range(len(images)):
        item = (row, 1000 + row) if is_train else row
        assert torch.equal(files[item]["image"], cached[item]["image"])


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_from_the_cache_equal_those_from_the_files(images, workers):
    opts = ["INPUT.SIZE_TRAIN", "[24, 16]", "DATALOADER.NUM_WORKERS", str(workers)]
    batches = {}
    for cache in ("none", "ram"):
        cfg = load_config(None, [*opts, "DATALOADER.CACHE", cache])
        dataset = build_image_dataset(cfg, images, is_train=True, protocol="reid", label="training set")
        assert (dataset.cache is None) == (cache == "none")
        loader = training_loader(cfg, dataset, SeededBatches(RandomBatchSampler(len(images), 4, seed=3)))
        batches[cache] = [batch["image"] for batch in loader]
    assert all(torch.equal(a, b) for a, b in zip(batches["none"], batches["ram"], strict=True))


def test_a_device_preparation_is_applied_before_storing(images):
    cfg = load_config(None, ["INPUT.SIZE_TEST", "[20, 10]", "INPUT.AUGMENT_ON", "device"])
    preparation = build_preparation(cfg, is_train=False)
    cache = cache_images(images, preparation)
    assert cache.nbytes == (len(images) - 1) * 20 * 10 * 3 and cache.preparation == preparation.name
    for row, record in enumerate(images):
        assert np.array_equal(cache.image(row), np.asarray(preparation(read_image(record.path))))
    assert cache.serves(preparation.name) and not cache.serves("")


@pytest.mark.parametrize("prepared", [False, True])
def test_an_unreadable_image_fails_with_read_images_message(images, tmp_path, prepared):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UnreadableImageError) as expected:
        read_image(str(broken))
    cfg = load_config(None, ["INPUT.AUGMENT_ON", "device"])
    preparation = build_preparation(cfg, is_train=True)
    records = images + [Record(str(broken), 0, 0)]
    with pytest.raises(UnreadableImageError) as raised:
        cache_images(records, preparation) if prepared else cache_images(records)
    assert str(raised.value) == str(expected.value) and str(broken) in str(raised.value)


def test_one_log_line_gives_the_count_the_size_and_the_seconds(images, caplog):
    with caplog.at_level(logging.INFO, logger="data.image_cache"):
        cache_images(images, label="training set")
    lines = [r.getMessage() for r in caplog.records if r.name == "data.image_cache"]
    assert len(lines) == 1
    assert re.fullmatch(
        r"Image cache of the training set: 9 images, \d+\.\d\d GB in shared memory \(original sizes\), "
        r"decoded in \d+\.\d s with \d+ threads",
        lines[0],
    )


def test_the_key_decides_and_a_process_caches_only_its_rows(images):
    assert build_image_cache(load_config(None, []), images) is None
    cache = build_image_cache(load_config(None, ["DATALOADER.CACHE", "ram"]), images, rows=[1, 3])
    assert cache.table[0, 0] == NOT_CACHED and cache.table[1, 0] != NOT_CACHED
    assert cache.nbytes == sum(np.asarray(read_image(images[r].path)).size for r in (1, 3))
    with pytest.raises(LookupError):
        cache.image(0)


def test_too_little_shared_memory_is_a_one_line_config_error(images, monkeypatch):
    monkeypatch.setattr(image_cache, "shared_memory_free", lambda: 100)
    with pytest.raises(ConfigError, match=r"^DATALOADER.CACHE ram needs 0.00 GB .* has 0.00 GB free") as refused:
        build_image_cache(load_config(None, ["DATALOADER.CACHE", "ram"]), images, label="training set")
    assert "\n" not in str(refused.value) and "DATALOADER.CACHE none" in str(refused.value)
