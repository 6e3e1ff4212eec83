"""Cross-domain evaluation (TEST.DATASETS naming datasets that do not train, as fast-reid's DATASETS.TESTS) and
the flip test (TEST.FLIP: the embedding of an image averaged with that of its mirror), on tiny trees in the
official Market-1501 and DukeMTMC-reID layouts with real pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from PIL import Image

from config import ConfigError, load_config
from data.build import build_data
from data.datasets.common import DatasetLayoutError
from engine.checkpoint_testing import run_test
from engine.evaluation.dataset_evaluation import build_evaluator, build_extractor
from engine.evaluation.protocol import EvalSpec
from engine.run.precision import resolve_precision
from engine.training import train
from modeling import build_model

MARKET_TRAIN_IDS = 6
DUKE_TRAIN_IDS = 3  # differs from Market's, so a class count that included Duke would show
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------
# Tiny trees: Market-1501 (PPPP_cCsS_FFFFFF_NN.jpg) and DukeMTMC-reID (PPPP_cC_fFFFFFFF.jpg)
# ---------------------------------------------------------------------------------------------------------


def _write_image(path: Path, pid: int, rng: np.random.Generator) -> None:
    """A 32 x 16 JPEG coloured by its identity, with a little noise per image."""
    colour = np.random.default_rng(pid).integers(30, 226, size=3)
    pixels = colour[None, None, :] + rng.integers(-10, 11, size=(32, 16, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path, format="JPEG")


def _write_reid_tree(base: Path, name, train_pids: list[int], test_pids: list[int], cameras: int) -> None:
    """bounding_box_train/ (4 images per id), query/ (1 per test id), bounding_box_test/ (3 per test id, on other
    cameras than the query's, so every query has a valid match)."""
    rng = np.random.default_rng(0)
    frame = iter(range(1, 10**6))
    for pid in train_pids:
        for k in range(4):
            _write_image(base / "bounding_box_train" / name(pid, k % cameras + 1, next(frame)), pid, rng)
    for i, pid in enumerate(test_pids):
        query_cam = i % cameras + 1
        _write_image(base / "query" / name(pid, query_cam, next(frame)), pid, rng)
        for k in range(3):
            cam = (query_cam + k) % cameras + 1
            _write_image(base / "bounding_box_test" / name(pid, cam, next(frame)), pid, rng)


def make_market(root: Path) -> None:
    """root/market1501/ with 6 train identities and 4 test identities."""
    train_pids = [2 * (i + 1) for i in range(MARKET_TRAIN_IDS)]
    test_pids = [2 * i + 1 for i in range(4)]
    _write_reid_tree(
        root / "market1501", lambda pid, cam, f: f"{pid:04d}_c{cam}s1_{f:06d}_00.jpg", train_pids, test_pids, 3
    )


def make_duke(root: Path) -> None:
    """root/DukeMTMC-reID/ with 3 train identities and 4 test identities (pids apart from Market's)."""
    train_pids = [100 + i for i in range(DUKE_TRAIN_IDS)]
    test_pids = [200 + i for i in range(4)]
    _write_reid_tree(
        root / "DukeMTMC-reID", lambda pid, cam, f: f"{pid:04d}_c{cam}_f{f:07d}.jpg", train_pids, test_pids, 4
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Market-1501 and DukeMTMC-reID side by side; no MSMT17 folder."""
    root = tmp_path_factory.mktemp("datasets")
    make_market(root)
    make_duke(root)
    return root


@pytest.fixture(scope="module")
def tiny_opts(tiny_opts):
    """conftest's tiny run on the CPU for 2 epochs evaluated after each, without TensorBoard or plots."""
    settings = {
        "MODEL.DEVICE": "cpu",
        "SOLVER.MAX_EPOCHS": "2",
        "SOLVER.EVAL_PERIOD": "1",
        "SOLVER.CHECKPOINT_PERIOD": "2",
        "LOG.TENSORBOARD": "no",
        "LOG.PLOTS": "no",
    }
    return lambda root, out, **overrides: tiny_opts(root, out, **{**settings, **overrides})


# ---------------------------------------------------------------------------------------------------------
# Cross-domain evaluation
# ---------------------------------------------------------------------------------------------------------


def test_evaluation_only_dataset_stays_out_of_training(tiny_opts, data_root, tmp_path):
    cfg = load_config(None, tiny_opts(data_root, tmp_path, **{"TEST.DATASETS": "['dukemtmc', 'market1501']"}))
    data = build_data(cfg)
    assert [s.splits.name for s in data.eval_sets] == ["dukemtmc", "market1501"]  # TEST.DATASETS order
    assert data.num_classes == MARKET_TRAIN_IDS
    assert all("market1501" in Path(r.path).parts for r in data.train_records)
    assert data.train_loader.dataset.records == data.train_records
    duke = data.eval_sets[0]
    assert len(duke.loader.dataset) == len(duke.splits.query) + len(duke.splits.gallery) == 4 + 12


@pytest.mark.e2e
def test_train_on_market_evaluate_on_duke_then_market(tiny_opts, data_root, tmp_path):
    out = tmp_path / "out"
    opts = tiny_opts(data_root, out, **{"TEST.DATASETS": "['dukemtmc', 'market1501']", "TEST.FLIP": "yes"})
    train(load_config(None, opts))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["dataset"]) for r in records] == [
        (1, "dukemtmc"),
        (1, "market1501"),
        (2, "dukemtmc"),
        (2, "market1501"),
    ]
    assert all(0.0 <= r["mAP"] <= 1.0 for r in records)
    classifier = torch.load(out / "checkpoints/checkpoint_2.pt", weights_only=True)["loss"][
        "cls_term.classifier.weight"
    ]
    assert classifier.shape[0] == MARKET_TRAIN_IDS  # Duke's training identities never enter the class count
    # the first evaluated dataset (Duke) picks the best model
    duke = [r for r in records if r["dataset"] == "dukemtmc"]
    best_duke = max(duke, key=lambda r: r["mAP"])  # max keeps the first of equals, as the engine does
    assert all(r["best_mAP"] == pytest.approx(max(d["mAP"] for d in duke if d["epoch"] <= r["epoch"])) for r in records)
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["metrics"]["dataset"] == "dukemtmc" and best["epoch"] == best_duke["epoch"]
    assert best["metrics"]["mAP"] == pytest.approx(best_duke["mAP"])
    log = (out / "log.txt").read_text()
    assert "training on market1501 (6 classes); evaluating on dukemtmc, market1501" in log
    assert "evaluated only (cross-domain): dukemtmc" in log


@pytest.mark.e2e
def test_test_py_does_not_load_a_dataset_that_only_trains(tiny_opts, data_root, tmp_path):
    # MSMT17 has no folder under the root: it may only be named as the training dataset
    opts = tiny_opts(data_root, tmp_path / "test", **{"DATASETS.NAMES": "msmt17", "TEST.FLIP": "yes"})
    result = run_test(load_config(None, [*opts, "TEST.DATASETS", "['dukemtmc', 'market1501']"]))
    assert [r["dataset"] for r in result["datasets"]] == ["dukemtmc", "market1501"]
    saved = json.loads((tmp_path / "test/test_metrics.json").read_text())
    assert [r["dataset"] for r in saved["datasets"]] == ["dukemtmc", "market1501"]
    single = run_test(load_config(None, [*opts, "OUTPUT_DIR", str(tmp_path / "one"), "TEST.DATASETS", "['dukemtmc']"]))
    assert single["dataset"] == "dukemtmc" and 0.0 <= single["mAP"] <= 1.0
    # evaluating the training dataset itself does need its folder
    with pytest.raises(DatasetLayoutError, match="MSMT17"):
        run_test(load_config(None, [*opts, "OUTPUT_DIR", str(tmp_path / "msmt")]))


def test_unknown_test_dataset_is_one_config_error_before_any_loading(tiny_opts, tmp_path):
    # an empty root: the name is refused before any dataset is read
    cfg = load_config(None, tiny_opts(tmp_path, tmp_path / "out", **{"TEST.DATASETS": "['dukemtmc', 'duke']"}))
    with pytest.raises(ConfigError) as excinfo:
        build_data(cfg)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("TEST.DATASETS = 'duke' is not valid; expected one of:")
    assert "'market1501'" in message and "'dukemtmc'" in message and "'msmt17'" in message


def test_a_dataset_named_twice_in_test_datasets_is_refused(tiny_opts, tmp_path):
    cfg = load_config(None, tiny_opts(tmp_path, tmp_path / "out", **{"TEST.DATASETS": "['dukemtmc', 'dukemtmc']"}))
    with pytest.raises(ConfigError, match=r"TEST.DATASETS .* names \['dukemtmc'\] more than once"):
        build_data(cfg)


# ---------------------------------------------------------------------------------------------------------
# Flip test
# ---------------------------------------------------------------------------------------------------------


def _model(*opts: str) -> torch.nn.Module:
    """A random resnet18 whose BatchNorm statistics come from a few batches, so eval features are not trivial."""
    torch.manual_seed(0)
    model = build_model(load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "none", *opts]))
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 32, 16))
    return model.eval()


def _batches(images: torch.Tensor, size: int = 3) -> list[dict]:
    n = len(images)
    return [
        {
            "image": images[i : i + size],
            "label": torch.arange(i, min(i + size, n)),
            "camid": torch.zeros(min(size, n - i), dtype=torch.long),
            "index": torch.arange(i, min(i + size, n)),
        }
        for i in range(0, n, size)
    ]


def _extract(model: torch.nn.Module, images: torch.Tensor, flip: str, neck_feat: str = "after") -> dict:
    """The extractor's per-batch outputs, concatenated."""
    engine = build_extractor(model, resolve_precision("none", CPU), CPU, neck_feat, flip)
    outputs = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    engine.run(_batches(images))
    return {key: torch.cat([o[key] for o in outputs]) for key in ("feats", "norms", "uc", "index")}


def _mirror(images: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror by reversed column indices (independent of torch.flip)."""
    return images[:, :, :, torch.arange(images.shape[3] - 1, -1, -1)]


@pytest.mark.parametrize("neck_feat,key", [("after", "neck_feat"), ("before", "feat")])
def test_flip_averages_the_embeddings_of_image_and_mirror(neck_feat, key):
    model = _model()
    images = torch.randn(7, 3, 32, 16)
    with torch.no_grad():
        plain, mirrored = model(images)[key], model(_mirror(images))[key]
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the mirror really gives another embedding
    expected = (plain + mirrored) / 2
    flipped = _extract(model, images, "yes", neck_feat)
    torch.testing.assert_close(flipped["feats"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped["norms"], expected.norm(dim=1), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(flipped["uc"], torch.zeros(7))  # no uncertainty head: u = 0
    unflipped = _extract(model, images, "no", neck_feat)
    torch.testing.assert_close(unflipped["feats"], plain, atol=1e-6, rtol=0)


def test_flip_changes_nothing_on_mirror_symmetric_images():
    model = _model()
    images = torch.randn(5, 3, 32, 16)
    symmetric = (images + _mirror(images)) / 2
    assert torch.equal(symmetric, _mirror(symmetric))
    torch.testing.assert_close(
        _extract(model, symmetric, "yes")["feats"], _extract(model, symmetric, "no")["feats"], atol=1e-6, rtol=0
    )


def test_flip_averages_the_uncertainty_offset():
    model = _model("MODEL.ARCH", "uc", "MODEL.F_BASE", "tlr")
    with torch.no_grad():
        model.uc_head.coef.copy_(torch.tensor([0.5, -0.3, 0.2, 0.1, -0.1]))  # zero at init: make u vary
    images = torch.randn(6, 3, 32, 16)
    with torch.no_grad():
        plain, mirrored = model(images), model(_mirror(images))
    assert not torch.allclose(plain["uc"], mirrored["uc"], atol=1e-4)
    flipped = _extract(model, images, "yes")
    torch.testing.assert_close(flipped["uc"], (plain["uc"] + mirrored["uc"]) / 2, atol=1e-6, rtol=0)
    averaged = (plain["neck_feat"] + mirrored["neck_feat"]) / 2
    torch.testing.assert_close(flipped["norms"], averaged.norm(dim=1), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(_extract(model, images, "no")["uc"], plain["uc"], atol=1e-6, rtol=0)


def _spec() -> EvalSpec:
    """Re-ID scoring of 7 items: queries 0-2 against gallery 3-6 (see _labelled_batches)."""
    trials = [(np.arange(3), np.arange(3, 7))]
    return EvalSpec(name="toy", protocol="reid", query_is_gallery=False, trials=trials, recall_ks=(1,))


def _labelled_batches(images: torch.Tensor) -> list[dict]:
    """The 7 images as batches whose queries (camera 0) each have a match in the gallery (camera 1)."""
    batches = _batches(images)
    labels, camids = torch.tensor([0, 1, 2, 0, 1, 2, 0]), torch.tensor([0, 0, 0, 1, 1, 1, 1])
    for batch in batches:
        batch["label"], batch["camid"] = labels[batch["index"]], camids[batch["index"]]
    return batches


@pytest.mark.parametrize("feat_norm", ["yes", "no"])
def test_evaluator_flips_per_test_flip_before_feat_norm(feat_norm):
    model = _model()
    images = torch.randn(7, 3, 32, 16)
    with torch.no_grad():
        expected = (model(images)["neck_feat"] + model(_mirror(images))["neck_feat"]) / 2
    cfg = load_config(None, ["TEST.FLIP", "yes", "TEST.FEAT_NORM", feat_norm])
    evaluator, metric = build_evaluator(cfg, model, resolve_precision("none", CPU), CPU, _spec(), keep_embeddings=True)
    evaluator.run(_labelled_batches(images))
    assert 0.0 <= evaluator.state.metrics["eval"]["mAP"] <= 1.0
    torch.testing.assert_close(
        metric.last["feats"], F.normalize(expected, dim=1) if feat_norm == "yes" else expected, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(metric.last["norms"], expected.norm(dim=1), atol=1e-5, rtol=1e-6)


def test_bad_test_flip_lists_the_choices():
    model = _model()
    expected = "TEST.FLIP = 'maybe' is not valid; expected one of: 'yes', 'no'"
    with pytest.raises(ConfigError) as excinfo:  # refused when the config loads, or at the latest when built
        cfg = load_config(None, ["TEST.FLIP", "maybe"])
        build_evaluator(cfg, model, resolve_precision("none", CPU), CPU, _spec())
    assert str(excinfo.value) == expected
    with pytest.raises(ConfigError) as excinfo:  # a caller that builds the extractor from its own value
        build_extractor(model, resolve_precision("none", CPU), CPU, "after", "maybe")
    assert str(excinfo.value) == expected
