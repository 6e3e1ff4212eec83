"""INPUT.AUGMENT_ON device (data/device_augment.py): the device pipeline against the CPU one (the same seeds give
the same tensors for re-ID; a full-image retrieval crop is a bilinear resize), its parameters' distributions, its
determinism across runs and worker counts, a tiny training run with the image cache, and the combinations refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

import engine.methods as methods
from config import ConfigError, UserError, load_config
from data.build import build_eval_loader, build_image_dataset, training_loader
from data.device_augment import (
    CROP_RATIO,
    REID_COLUMNS,
    DeviceNormalize,
    build_eval_preprocess,
    build_loader_transform,
    build_preparation,
    build_train_augment,
    collate_pixels,
)
from data.image_dataset import ImageDataset, read_image
from data.records import Record
from data.samplers import RandomBatchSampler, SeededBatches
from data.transforms import CAFFE_BGR_MEAN, build_normalize, build_transforms
from engine.methods.base import Run
from engine.run.resume_config import check_resume_changes
from engine.training import train

SIZE = (64, 32)
PAD = 6
REID = ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING", str(PAD)]
RETRIEVAL = ["INPUT.TRANSFORM", "retrieval", "INPUT.SIZE_TRAIN", "[24, 24]", "INPUT.SIZE_TEST", "[24, 24]"]
RETRIEVAL += ["INPUT.RESIZE_TEST", "28"]


def config(*opts: str, device: bool = True):
    return load_config(None, [*opts, *(["INPUT.AUGMENT_ON", "device"] if device else [])])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Record]:
    """Eight noisy JPEGs of different sizes (the CPU and device pipelines see the same decoded pixels)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    records = []
    for i in range(8):
        height, width = int(rng.integers(40, 90)), int(rng.integers(30, 70))
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path, quality=95)
        records.append(Record(str(path), i % 4, i % 2))
    return records


def device_batch(cfg, records, seeds, is_train=True, protocol="reid"):
    """The device pipeline's batch for `seeds` (one per record), as Run.to_device leaves it on the CPU."""
    dataset = ImageDataset(records, build_loader_transform(cfg, is_train, protocol))
    batch = collate_pixels([dataset[(i, seed)] for i, seed in enumerate(seeds)])
    return batch, build_train_augment(cfg, protocol)(batch)


def cpu_images(cfg_opts, records, seeds, is_train=True, protocol="reid"):
    dataset = ImageDataset(records, build_transforms(config(*cfg_opts, device=False), is_train, protocol))
    return torch.stack([dataset[(i, seed)]["image"] for i, seed in enumerate(seeds)])


# ---------------------------------------------------------------------------------------------- re-ID pipeline
@pytest.mark.parametrize("model", ["resnet50", "bn_inception"])
def test_reid_device_pipeline_gives_the_cpu_pipelines_tensors_for_the_same_seeds(images, model):
    opts = [*REID, "MODEL.NAME", model, "INPUT.RE_PROB", "0.7"]
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    batch, out = device_batch(config(*opts), images, seeds)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 3, *SIZE)
    assert batch["aug"].dtype == torch.int64 and batch["aug"].shape == (8, len(REID_COLUMNS))
    assert out["image"].dtype == torch.float32 and out["image"].shape == (8, 3, *SIZE) and "aug" not in out
    assert out["image"].is_contiguous()
    assert torch.allclose(out["image"], cpu_images(opts, images, seeds), rtol=0, atol=1e-6)


def test_an_unflipped_unerased_centred_sample_is_resize_to_tensor_normalize(images):
    cfg = config(*REID)
    image = read_image(images[0].path)
    prepared = torch.from_numpy(np.array(build_preparation(cfg, is_train=True)(image))).permute(2, 0, 1)
    params = torch.tensor([[0, PAD, PAD, 0, 0, 0, 0, 0]])
    out = build_train_augment(cfg)({"image": prepared[None], "aug": params})["image"][0]
    expected = T.Compose([T.Resize(list(SIZE)), T.ToTensor(), build_normalize(cfg)])(image)
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)


def test_reid_parameters_follow_the_cpu_pipelines_distributions(images):
    samples, flip_p, erase_p = 400, 0.3, 0.6
    cfg = config(*REID, "INPUT.PROB", str(flip_p), "INPUT.RE_PROB", str(erase_p))
    seeds = list(range(samples))
    batch, out = device_batch(cfg, [images[0]] * samples, seeds)
    flip, top, left, erase, box_top, box_left, box_height, box_width = batch["aug"].unbind(1)

    def within_binomial(count, p):
        return abs(count / samples - p) <= 4 * math.sqrt(p * (1 - p) / samples)

    assert within_binomial(int(flip.sum()), flip_p)
    assert within_binomial(int(erase.sum()), erase_p)
    for offsets in (top, left):
        assert offsets.min() == 0 and offsets.max() == 2 * PAD
    erased = erase > 0
    area = SIZE[0] * SIZE[1]
    heights, widths = box_height[erased].double(), box_width[erased].double()
    # torchvision rounds the box's sides: its area fraction is in [0.02, 0.4] up to half a pixel on each side
    assert ((heights + 0.5) * (widths + 0.5) / area >= 0.02).all()
    assert ((heights - 0.5) * (widths - 0.5) / area <= 0.4).all()
    assert ((box_top + box_height <= SIZE[0]) & (box_left + box_width <= SIZE[1]))[erased].all()
    # in the images: exactly the box is 0 (no other normalised pixel is), the rest within the normalised range
    zeros = (out["image"] == 0).all(dim=1).sum(dim=(1, 2))
    assert torch.equal(zeros, torch.where(erased, box_height * box_width, 0))
    mean, std = torch.tensor(cfg.INPUT.PIXEL_MEAN).view(3, 1), torch.tensor(cfg.INPUT.PIXEL_STD).view(3, 1)
    values = out["image"].transpose(0, 1).reshape(3, -1)
    assert (values >= (0 - mean) / std - 1e-6).all() and (values <= (1 - mean) / std + 1e-6).all()


def test_the_caffe_convention_gives_bgr_0_255_minus_its_mean():
    cfg = config("MODEL.NAME", "bn_inception")
    red = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    out = DeviceNormalize(cfg)(red)
    b, g, r = CAFFE_BGR_MEAN
    assert torch.equal(out[:, 0], torch.full((2, 4, 4), -b)) and torch.equal(out[:, 1], torch.full((2, 4, 4), -g))
    assert torch.equal(out[:, 2], torch.full((2, 4, 4), 255 - r))


# ------------------------------------------------------------------------------------------ retrieval pipeline
def test_a_full_image_crop_is_a_bilinear_resize_and_the_canvas_padding_never_shows(images):
    cfg = config(*RETRIEVAL)
    small, large = (np.array(read_image(r.path)) for r in images[:2])
    assert small.shape != large.shape
    batch = collate_pixels(
        [
            {"image": torch.from_numpy(pixels).permute(2, 0, 1), "aug": torch.tensor([flip, 0, 0, *pixels.shape[:2]])}
            for pixels, flip in ((small, 0), (large, 1))
        ]
    )
    assert batch["image"].shape[-2:] == tuple(max(a, b) for a, b in zip(small.shape[:2], large.shape[:2]))
    out = build_train_augment(cfg, "retrieval")(batch)["image"]
    normalize = DeviceNormalize(cfg)
    for got, pixels, flip in zip(out, (small, large), (False, True)):
        chw = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
        expected = normalize(F.interpolate(chw, size=(24, 24), mode="bilinear", align_corners=False))[0]
        expected = expected.flip(-1) if flip else expected
        assert torch.allclose(got, expected, rtol=0, atol=1e-4)


def test_retrieval_crop_boxes_follow_random_resized_crop(images):
    samples, flip_p = 300, 0.5
    cfg = config(*RETRIEVAL, "INPUT.CROP_SCALE", "[0.2, 0.9]", "INPUT.PROB", str(flip_p))
    dataset = ImageDataset([images[3]], build_loader_transform(cfg, True, "retrieval"))
    height, width = np.array(read_image(images[3].path)).shape[:2]
    items = [dataset[(0, seed)] for seed in range(samples)]
    boxes = torch.stack([item["aug"] for item in items])
    flip, top, left, box_height, box_width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + box_height <= height).all() and (left + box_width <= width).all()
    fraction = box_height.double() * box_width / (height * width)
    assert fraction.min() >= 0.2 * 0.9 and fraction.max() <= 0.9 * 1.1  # rounded sides
    aspect = box_width.double() / box_height
    assert aspect.min() >= CROP_RATIO[0] * 0.85 and aspect.max() <= CROP_RATIO[1] * 1.15
    assert abs(flip.double().mean() - flip_p) <= 4 * math.sqrt(flip_p * (1 - flip_p) / samples)
    original = np.array(read_image(images[3].path))
    for item, (_, top, left, box_height, box_width) in zip(items[:20], boxes[:20].tolist()):
        crop = original[top : top + box_height, left : left + box_width]  # the worker sends the crop itself
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), crop)


def test_retrieval_device_pipeline_draws_the_cpu_pipelines_boxes(tmp_path):
    # smooth images: PIL's antialiased resize and the device's bilinear one then differ by little
    records = []
    for i, (height, width) in enumerate([(60, 40), (50, 70), (45, 45)]):
        ys, xs = np.mgrid[0:height, 0:width]
        pixels = np.stack([ys * 255 // height, xs * 255 // width, (ys + xs) * 127 // (height + width)], axis=-1)
        path = tmp_path / f"smooth{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        records.append(Record(str(path), i, 0))
    seeds = [5, 6, 7]
    _, out = device_batch(config(*RETRIEVAL), records, seeds, protocol="retrieval")
    difference = (out["image"] - cpu_images(RETRIEVAL, records, seeds, protocol="retrieval")).abs()
    assert difference.mean() < 0.02 and difference.max() < 0.1  # a wrong box or flip differs by ~1


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize(("opts", "protocol"), [(REID, "reid"), (RETRIEVAL, "retrieval")])
def test_evaluation_normalises_on_the_device_to_the_cpu_pipelines_tensors(images, opts, protocol):
    cfg = config(*opts, "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "8", "DATALOADER.CACHE", "ram")
    batch = next(iter(build_eval_loader(cfg, images, protocol)))
    assert batch["image"].dtype == torch.uint8
    expected = torch.stack([build_transforms(cfg, False, protocol)(read_image(r.path)) for r in images])
    assert torch.equal(build_eval_preprocess(cfg)(batch["image"]), expected)
    assert build_eval_preprocess(config(*opts, device=False)) is None


# ------------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize(("opts", "protocol"), [(REID, "reid"), (RETRIEVAL, "retrieval")])
def test_the_same_seeds_give_the_same_tensors_with_0_or_2_workers(images, opts, protocol):
    results = []
    for workers in (0, 2, 0):
        cfg = config(*opts, "DATALOADER.NUM_WORKERS", str(workers), "DATALOADER.CACHE", "ram")
        dataset = build_image_dataset(cfg, images, is_train=True, protocol=protocol, label="training set")
        loader = training_loader(cfg, dataset, SeededBatches(RandomBatchSampler(len(images), 4, seed=7)))
        augment = build_train_augment(cfg, protocol)
        results.append([augment(batch)["image"] for batch in loader])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_run_to_device_augments_into_the_models_memory_format(images):
    cfg = config(*REID)
    batch, expected = device_batch(cfg, images[:2], [1, 2])
    run = Run.__new__(Run)
    run.device, run.channels_last = torch.device("cpu"), True
    run.augment = build_train_augment(cfg, channels_last=True)
    moved = run.to_device(batch)
    assert set(moved) == {"image", "label", "camid", "index"} and "aug" in batch  # the loader's batch unchanged
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved["image"], expected["image"])


# ------------------------------------------------------------------------------------------------ end to end
def read_metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in records]


@pytest.mark.e2e
def test_a_cached_device_augmented_run_trains_and_resumes_exactly(tiny_opts, market_root, tmp_path):
    keys = {"DATALOADER.CACHE": "ram", "INPUT.AUGMENT_ON": "device", "SOLVER.MAX_EPOCHS": "2"}
    keys |= {"SOLVER.EVAL_PERIOD": "1", "SOLVER.CHECKPOINT_PERIOD": "1", "LOG.PLOTS": "no"}
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, tiny_opts(market_root, full, **keys)))
    log = (full / "log.txt").read_text()
    assert "Image cache of the training set: 24 images" in log and "Image cache of the market1501 query" in log
    metrics = read_metrics(full)
    assert [r["epoch"] for r in metrics] == [1, 2]
    assert all(math.isfinite(r[k]) for r in metrics for k in ("mAP", "rank1"))
    train(load_config(None, tiny_opts(market_root, part, **{**keys, "SOLVER.MAX_EPOCHS": "1"})))
    train(load_config(None, tiny_opts(market_root, part, **{**keys, "DATALOADER.CACHE": "none"})), resume=str(part))
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("best")}
    assert strip(read_metrics(part)[-1]) == strip(metrics[-1])
    a = torch.load(full / "checkpoints/checkpoint_2.pt", weights_only=True)
    b = torch.load(part / "checkpoints/checkpoint_2.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


METHOD_RUNS = {
    "mmsi": {
        "SOLVER.METHOD": "mmsi",
        "MODEL.METRIC_LOSS_TYPE": "contrastive",
        "MODEL.CLS_LOSS_TYPE": "none",
        "METHOD.MMSI.MIN_CLASSES": "4",
        "METHOD.MMSI.VAL_BATCH": "4",
        "METHOD.MMSI.VAL_K": "2",
        "METHOD.MMSI.GRAD_MODE": "jvp",
    },
    "dc": {
        "SOLVER.METHOD": "dc",
        "MODEL.METRIC_LOSS_TYPE": "margin",
        "MODEL.CLS_LOSS_TYPE": "none",
        "MODEL.NECK": "no",
        "MODEL.EMBEDDING_DIM": "16",
        "METHOD.DC.HIERARCHY": "flat",  # clusters before the first epoch: the training set embedded at test time
        "METHOD.DC.NB_CLUSTERS": "2",
        "METHOD.DC.KMEANS_NITER": "5",
    },
}


@pytest.mark.e2e
@pytest.mark.parametrize("method", sorted(METHOD_RUNS))
def test_methods_with_loaders_of_their_own_train_with_the_device_augmentation(tiny_opts, market_root, tmp_path, method):
    keys = {"INPUT.TRANSFORM": "retrieval", "INPUT.RESIZE_TEST": "32", "TEST.PROTOCOL": "retrieval"}
    keys |= {"DATALOADER.CACHE": "ram", "INPUT.AUGMENT_ON": "device", "SOLVER.MAX_EPOCHS": "1", "LOG.PLOTS": "no"}
    out = tmp_path / method
    result = train(load_config(None, tiny_opts(market_root, out, **keys, **METHOD_RUNS[method])))
    assert math.isfinite(result["R@1"]) and math.isfinite(result["MAP@R"])
    log = (out / "log.txt").read_text()
    # the validation batches (MMSI) and the clustering's embedding (D&C) read the training set's cache
    assert log.count("Image cache of the") == 2
    if method == "mmsi":  # meta steps, each with a validation batch
        assert json.loads((out / "train_metrics.jsonl").read_text().splitlines()[-1])["mmsi_steps"] > 0
    else:
        assert (out / "clusters.jsonl").is_file()


# ------------------------------------------------------------------------------------------------ refusals
def test_a_method_that_skips_the_device_augmentation_is_refused_in_one_line(
    tiny_opts, market_root, tmp_path, monkeypatch
):
    class RawBatches(methods.TrainingMethod):
        name = "raw"

    monkeypatch.setitem(methods.METHODS, "raw", RawBatches)
    opts = tiny_opts(market_root, tmp_path / "raw", **{"SOLVER.METHOD": "raw", "INPUT.AUGMENT_ON": "device"})
    with pytest.raises(ConfigError, match=r"^SOLVER.METHOD 'raw' .* expected INPUT.AUGMENT_ON cpu") as refused:
        train(load_config(None, opts))
    assert "\n" not in str(refused.value) and not (tmp_path / "raw").exists()
    for name, kind in methods.METHODS.items():
        assert kind.supports_device_augment == (name != "raw")


def test_a_resume_may_change_the_cache_but_not_where_the_augmentation_runs():
    assert check_resume_changes({"DATALOADER.CACHE": ("none", "ram")}, "ck.pt") == {"DATALOADER.CACHE": ("none", "ram")}
    with pytest.raises(UserError, match="cannot change INPUT.AUGMENT_ON 'cpu' -> 'device'"):
        check_resume_changes({"INPUT.AUGMENT_ON": ("cpu", "device")}, "ck.pt")
