"""engine/inference and tools/embed.py, tools/index.py: embedding image files as test.py does, and gallery indexes.

References: the features test.py's extractor gives (DatasetEvaluation with keep_embeddings, normalised per
TEST.FEAT_NORM), brute-force numpy rankings, and an exact faiss search for the approximate kinds. The tiny
Market-1501 tree of conftest.py is the image data; one model trains one epoch on it (e2e), the other tests use
checkpoints of randomly initialised models, written in a second.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from config import UserError, load_config
from data.build import build_data
from engine.evaluation.dataset_evaluation import DatasetEvaluation
from engine.inference.embedding import ImageEmbedder, load_embedder, load_features, save_features
from engine.inference.gallery_index import GalleryIndex, sidecar_path
from engine.inference.image_sources import resolve_image_source
from engine.run.precision import resolve_precision
from engine.training import train
from modeling import build_model, load_weights

ROOT = Path(__file__).resolve().parents[1]
ONE_EPOCH = {"SOLVER.MAX_EPOCHS": "1", "SOLVER.EVAL_PERIOD": "1", "SOLVER.CHECKPOINT_PERIOD": "1"}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def trained(tiny_opts, market_root, tmp_path_factory) -> Path:
    """A run folder of one epoch on the tiny Market-1501 tree (best.pt, config.yaml)."""
    out = tmp_path_factory.mktemp("inference_run") / "run"
    train(load_config(None, tiny_opts(market_root, out, **ONE_EPOCH)))
    return out


@pytest.fixture(scope="module")
def random_checkpoint(tiny_opts, market_root, tmp_path_factory):
    """random_checkpoint(seed, arch='baseline') -> a checkpoint of a randomly initialised resnet18 of tiny_opts'
    config (BatchNorm statistics drawn too, so that the eval-mode BNNeck is not the identity)."""
    folder = tmp_path_factory.mktemp("random_checkpoints")

    def make(seed: int, arch: str = "baseline") -> Path:
        path = folder / f"{arch}_{seed}.pt"
        if not path.exists():
            cfg = load_config(None, tiny_opts(market_root, folder / "out", **{"MODEL.ARCH": arch}))
            torch.manual_seed(seed)
            model = build_model(cfg, load_pretrained=False)
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
            torch.save({"model": model.state_dict()}, path)
        return path

    return make


def _cfg(tiny_opts, market_root, tmp_path, weight, **overrides):
    return load_config(None, tiny_opts(market_root, tmp_path / "out", **{"TEST.WEIGHT": str(weight), **overrides}))


def _test_py_features(cfg) -> tuple[dict, list]:
    """What test.py's extractor and metric give for the first evaluated dataset: metric.last and the records."""
    device = torch.device("cpu")
    model = build_model(cfg, load_pretrained=False)
    load_weights(cfg, model, cfg.TEST.WEIGHT, "TEST.WEIGHT")
    eval_set = build_data(cfg, with_train=False).eval_sets[0]
    evaluation = DatasetEvaluation(
        cfg, model, resolve_precision(cfg.SOLVER.AMP, device), device, eval_set, keep_embeddings=True
    )
    evaluation.run()
    return evaluation.metric.last, eval_set.splits


# ------------------------------------------------------------------------------------------------ embedding
@pytest.mark.e2e
@pytest.mark.parametrize(
    "overrides",
    [{}, {"TEST.FEAT_NORM": "no", "TEST.FLIP": "yes", "TEST.NECK_FEAT": "before"}],
    ids=["default", "raw-flip-before"],
)
def test_embedding_equals_test_py_features(trained, tiny_opts, market_root, tmp_path, overrides):
    cfg = _cfg(tiny_opts, market_root, tmp_path, trained / "best.pt", **overrides)
    last, splits = _test_py_features(cfg)
    expected = last["feats"].numpy()
    embedder = ImageEmbedder(cfg)
    # test.py embeds query then gallery: DATASET:split of each gives the same rows, with labels and cameras
    query = embedder.embed(resolve_image_source("market1501:query", cfg), batch_size=3)
    gallery = embedder.embed(resolve_image_source("market1501:gallery", cfg), batch_size=8)
    assert query.paths + gallery.paths == [r.path for r in splits.eval_records()]
    assert query.skipped == gallery.skipped == [] and query.uncertainty is None
    feats = np.concatenate([query.features, gallery.features])
    assert feats.dtype == np.float32 and feats.shape == expected.shape
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)
    assert gallery.labels.tolist() == [r.label for r in splits.gallery]
    assert gallery.camids.tolist() == [r.camid for r in splits.gallery]
    assert gallery.identity.normalized == (cfg.TEST.FEAT_NORM == "yes")
    assert gallery.identity.checkpoint_sha256 == embedder.checkpoint_sha256


def test_uncertainty_offset_equals_test_py(random_checkpoint, tiny_opts, market_root, tmp_path):
    cfg = _cfg(tiny_opts, market_root, tmp_path, random_checkpoint(0, "uc"), **{"MODEL.ARCH": "uc"})
    last, splits = _test_py_features(cfg)
    paths = [r.path for r in splits.eval_records()]
    feats, uncertainty, kept, _ = ImageEmbedder(cfg).embed_paths(paths, batch_size=16)
    np.testing.assert_allclose(feats, last["feats"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncertainty, last["uc"].numpy(), rtol=1e-5, atol=1e-5)


def test_unreadable_images_are_skipped_and_listed(random_checkpoint, tiny_opts, market_root, tmp_path, caplog):
    folder = tmp_path / "images"
    originals = sorted((market_root / "market1501" / "query").glob("*.jpg"))
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(originals):
        shutil.copy(path, folder / ("sub" if i % 2 else "") / path.name)
    (folder / "truncated.jpg").write_bytes(originals[0].read_bytes()[:200])
    (folder / "notes.jpg").write_text("not an image")
    cfg = _cfg(tiny_opts, market_root, tmp_path, random_checkpoint(0))
    embedder = ImageEmbedder(cfg)
    with caplog.at_level(logging.WARNING, logger="engine.inference.embedding"):
        embeddings = embedder.embed(resolve_image_source(str(folder), cfg), batch_size=3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "engine.inference.embedding"]
    assert len(warnings) == 1 and "skipped 2 unreadable image(s) of 7" in warnings[0].getMessage()
    assert sorted(Path(p).name for p, _ in embeddings.skipped) == ["notes.jpg", "truncated.jpg"]
    assert all(reason for _, reason in embeddings.skipped)
    # nothing else lost: the readable ones, in sorted path order, as embedded alone
    readable = sorted(str(p) for p in folder.rglob("*.jpg") if p.name not in ("notes.jpg", "truncated.jpg"))
    assert embeddings.paths == readable
    alone, _, _, _ = embedder.embed_paths(readable, batch_size=16)
    np.testing.assert_allclose(embeddings.features, alone, atol=1e-6)
    # and the features file keeps them
    written = load_features(save_features(tmp_path / "feats.npz", embeddings))
    assert written.paths == embeddings.paths and written.skipped == embeddings.skipped
    np.testing.assert_array_equal(written.features, embeddings.features)
    assert written.identity == embeddings.identity and written.labels is None


# ------------------------------------------------------------------------------------------------ image sources
def test_folder_csv_and_dataset_sources(tiny_opts, market_root, tmp_path):
    folder = tmp_path / "tree"
    for name in ("b/2.PNG", "a.jpg", "b/1.jpeg", "c/d/3.webp", "x.bmp", "notes.txt", ".hidden.jpg", ".cache/4.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    source = resolve_image_source(str(folder))
    assert [Path(p).relative_to(folder).as_posix() for p in source.paths] == [
        "a.jpg",
        "b/1.jpeg",
        "b/2.PNG",
        "c/d/3.webp",
        "x.bmp",
    ]
    assert source.labels is None and source.camids is None and source.protocol is None

    (tmp_path / "lists").mkdir()
    listed = tmp_path / "lists" / "list.csv"
    listed.write_text("path,label,camid\n../tree/a.jpg,dog,3\n/abs/b.jpg,cat,\n\n../tree/x.bmp,dog,1\n")
    source = resolve_image_source(str(listed))
    assert source.paths == [
        str(tmp_path / "lists" / "../tree/a.jpg"),
        "/abs/b.jpg",
        str(tmp_path / "lists/../tree/x.bmp"),
    ]
    assert source.labels == [1, 0, 1] and source.label_names == ["cat", "dog"] and source.camids == [3, -1, 1]
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\na.jpg,7\nb.jpg,2\n")
    assert resolve_image_source(str(plain)).labels == [7, 2] and resolve_image_source(str(plain)).camids is None

    cfg = load_config(None, tiny_opts(market_root, tmp_path / "out"))
    query = resolve_image_source("market1501:query", cfg)
    assert len(query) == 5 and query.protocol == "reid" and len(set(query.labels)) == 5
    assert all(c >= 0 for c in query.camids)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (tmp_path / "nopath.csv").write_text("file,label\na.jpg,1\n")
    (tmp_path / "norows.csv").write_text("path\n")
    (tmp_path / "badcam.csv").write_text("path,camid\na.jpg,x\n")
    for spec, pattern in [
        (str(tmp_path / "missing"), "folder .*missing does not exist"),
        (str(tmp_path / "missing.csv"), "CSV file .*missing.csv does not exist"),
        (str(empty), "no image files .* under the folder"),
        (str(tmp_path / "nopath.csv"), "no 'path' column"),
        (str(tmp_path / "norows.csv"), "no rows"),
        (str(tmp_path / "badcam.csv"), "line 2, column camid: 'x' is not an integer"),
        (str(tmp_path / "plain.csv").replace(".csv", ".txt"), "does not exist"),
        ("market1501:val", "unknown split 'val'.*train, query, gallery"),
        ("imagenet:train", "unknown dataset 'imagenet'.*market1501"),
    ]:
        with pytest.raises(UserError, match=pattern) as excinfo:
            resolve_image_source(spec, cfg)
        _one_line_error(excinfo)
    missing_root = load_config(None, tiny_opts(tmp_path / "nowhere", tmp_path / "out"))
    with pytest.raises(UserError, match="not found"):
        resolve_image_source("market1501:gallery", missing_root)


# ------------------------------------------------------------------------------------------------ gallery index
def _brute_force(gallery: np.ndarray, queries: np.ndarray, k: int, space: str) -> tuple[np.ndarray, np.ndarray]:
    if space == "ip":
        scores = queries.astype(np.float64) @ gallery.T.astype(np.float64)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)
    squared = ((queries[:, None, :].astype(np.float64) - gallery[None, :, :]) ** 2).sum(-1)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(squared, order, axis=1))


def test_exact_index_equals_brute_force_ranking():
    rng = np.random.default_rng(0)
    raw_gallery, raw_queries = rng.standard_normal((300, 24)), rng.standard_normal((20, 24))
    # L2-normalised embeddings: inner product; distances in Euclidean units (sqrt(2 - 2 cos))
    gallery, queries = _unit(raw_gallery), _unit(raw_queries)
    index = GalleryIndex.build(gallery)
    assert index.space == "ip" and index.index.metric_type == faiss.METRIC_INNER_PRODUCT
    hits = index.search(queries, k=7)
    order, scores = _brute_force(gallery, queries, 7, "ip")
    np.testing.assert_array_equal(hits.indices, order)
    np.testing.assert_allclose(hits.distances, np.sqrt(np.maximum(2 - 2 * scores, 0)), atol=1e-5)
    assert hits.paths[0] == [str(i) for i in order[0]]
    # cosine on raw features: normalised, inner product, 1 - cos
    cosine = GalleryIndex.build(raw_gallery, dist_metric="cosine").search(raw_queries, k=7)
    np.testing.assert_array_equal(cosine.indices, order)
    np.testing.assert_allclose(cosine.distances, 1 - scores, atol=1e-5)
    # euclidean on raw features: L2
    l2 = GalleryIndex.build(raw_gallery.astype(np.float32), paths=[f"g{i}.jpg" for i in range(300)])
    assert l2.space == "l2"
    hits = l2.search(raw_queries, k=7)
    order, distances = _brute_force(raw_gallery.astype(np.float32), raw_queries.astype(np.float32), 7, "l2")
    np.testing.assert_array_equal(hits.indices, order)
    np.testing.assert_allclose(hits.distances, distances, rtol=1e-4, atol=1e-4)
    assert hits.paths[3] == [f"g{i}.jpg" for i in order[3]]
    # k beyond the gallery: the whole gallery, ranked
    assert l2.search(raw_queries[:2], k=1000).indices.shape == (2, 300)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_and_load_give_identical_results(kind, tmp_path):
    rng = np.random.default_rng(1)
    gallery, queries = _unit(rng.standard_normal((400, 16))), _unit(rng.standard_normal((25, 16)))
    paths, labels = [f"img/{i:04d}.jpg" for i in range(400)], rng.integers(0, 9, 400)
    index = GalleryIndex.build(gallery, paths, labels, kind=kind, nprobe=4, ef_search=20)
    before = index.search(queries, k=10)
    index.save(tmp_path / "gallery.index")
    assert sidecar_path(tmp_path / "gallery.index").is_file()
    loaded = GalleryIndex.load(tmp_path / "gallery.index")
    after = loaded.search(queries, k=10)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.distances, before.distances)
    assert after.paths == before.paths and loaded.labels == labels.tolist() and loaded.describe() == index.describe()
    assert loaded.recall_against_exact(queries, 10) == index.recall_against_exact(queries, 10)

    sidecar_path(tmp_path / "gallery.index").unlink()
    with pytest.raises(UserError, match="has no sidecar") as excinfo:
        GalleryIndex.load(tmp_path / "gallery.index")
    _one_line_error(excinfo)
    with pytest.raises(UserError, match="does not exist"):
        GalleryIndex.load(tmp_path / "other.index")


def test_recall_of_approximate_kinds_against_exact():
    rng = np.random.default_rng(2)
    gallery, queries = _unit(rng.standard_normal((2000, 32))), _unit(rng.standard_normal((50, 32)))
    ivf = GalleryIndex.build(gallery, kind="ivf", nprobe=1)
    assert ivf.index.nlist == round(4 * np.sqrt(2000))
    low = ivf.recall_against_exact(queries, 10)
    assert 0.0 <= low < 1.0
    ivf.set_search_params(nprobe=ivf.index.nlist)
    assert ivf.recall_against_exact(queries, 10) == 1.0
    hnsw = GalleryIndex.build(gallery, kind="hnsw", ef_search=16)
    assert 0.0 <= hnsw.recall_against_exact(queries, 10) <= 1.0
    assert GalleryIndex.build(gallery).recall_against_exact(queries, 10) == 1.0


def test_queries_of_another_dimension_or_model_are_refused(random_checkpoint, tiny_opts, market_root, tmp_path):
    images = sorted(str(p) for p in (market_root / "market1501" / "query").glob("*.jpg"))
    first = ImageEmbedder(_cfg(tiny_opts, market_root, tmp_path, random_checkpoint(0))).embed(images)
    index = GalleryIndex.from_embeddings(first)
    assert index.search(first, k=1).indices[:, 0].tolist() == list(range(len(images)))
    with pytest.raises(UserError, match="query features have 8 dimensions, the index .* holds 512") as excinfo:
        index.search(np.ones((2, 8), np.float32))
    _one_line_error(excinfo)
    other = ImageEmbedder(_cfg(tiny_opts, market_root, tmp_path, random_checkpoint(1))).embed(images)
    with pytest.raises(UserError, match="refused: they come from another checkpoint") as excinfo:
        index.search(other, k=3)
    _one_line_error(excinfo)
    # the identity survives the files
    index.save(tmp_path / "g.index")
    save_features(tmp_path / "other.npz", other)
    with pytest.raises(UserError, match="another checkpoint"):
        GalleryIndex.load(tmp_path / "g.index").search(load_features(tmp_path / "other.npz"))
    flipped = ImageEmbedder(_cfg(tiny_opts, market_root, tmp_path, random_checkpoint(0), **{"TEST.FLIP": "yes"}))
    with pytest.raises(UserError, match="TEST.FLIP 'yes', the index with 'no'"):
        index.search(flipped.embed(images[:1]))


# ------------------------------------------------------------------------------------------------ tools
@pytest.mark.e2e
def test_tools_embed_build_search_end_to_end(trained, market_root, tmp_path, capsys):
    config, weight = str(trained / "config.yaml"), str(trained / "best.pt")
    queries = tmp_path / "queries"
    shutil.copytree(market_root / "market1501" / "query", queries)
    (queries / "broken.jpg").write_text("no pixels")
    # embed as a user runs it; build and search through the same main() in this process (no second torch start)
    embed = subprocess.run(
        [sys.executable, "tools/embed.py", "--config_file", config, "TEST.WEIGHT", weight,
         "--images", "market1501:gallery", "--output", str(tmp_path / "gallery.npz"), "--batch-size", "8"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert embed.returncode == 0, embed.stderr
    assert "embedded 23 images of market1501:gallery" in embed.stdout
    index_tool = _load_tool("index")
    build = [
        "build",
        str(tmp_path / "gallery.npz"),
        "--output",
        str(tmp_path / "g.index"),
        "--kind",
        "hnsw",
        "--recall",
    ]
    assert index_tool.main(build) == 0
    out = capsys.readouterr().out
    recall = float(out.split("recall@10 against exact search, 23 gallery items as queries: ")[1])
    assert 0.0 <= recall <= 1.0
    search = ["search", str(tmp_path / "g.index"), "--query", str(queries), "-k", "4",
              "--config_file", config, "TEST.WEIGHT", weight, "--output", str(tmp_path / "hits.csv")]  # fmt: skip
    assert index_tool.main(search) == 0
    with open(tmp_path / "hits.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 4 and set(rows[0]) == {"query", "rank", "path", "distance", "gallery_index", "label"}

    # the three-line API gives the same hits
    embedder = load_embedder(config, weight)
    feats = embedder.embed(sorted(str(p) for p in queries.glob("*.jpg")))
    assert [Path(p).name for p, _ in feats.skipped] == ["broken.jpg"]
    hits = GalleryIndex.load(tmp_path / "g.index").search(feats, k=4)
    assert [row["path"] for row in rows] == [path for per_query in hits.paths for path in per_query]
    assert [row["query"] for row in rows[::4]] == feats.paths
    np.testing.assert_allclose([float(row["distance"]) for row in rows], hits.distances.reshape(-1), atol=1e-5)
    gallery = load_features(tmp_path / "gallery.npz")
    assert [int(row["label"]) for row in rows] == [int(gallery.labels[int(row["gallery_index"])]) for row in rows]


def test_tool_errors_are_one_line_with_status_2(tmp_path, capsys):
    index_tool, embed_tool = _load_tool("index"), _load_tool("embed")
    rng = np.random.default_rng(3)
    GalleryIndex.build(_unit(rng.standard_normal((30, 8)))).save(tmp_path / "g.index")
    cases = [
        (index_tool, ["search", str(tmp_path / "nope.index"), "--query", "q.npz"], "nope.index does not exist"),
        (index_tool, ["search", str(tmp_path / "g.index"), "--query", str(tmp_path / "q.npz")], "q.npz does not exist"),
        (index_tool, ["search", str(tmp_path / "g.index"), "--query", str(tmp_path)], "is images: give the model"),
        (index_tool, ["build", "x.npz", "--output", "y", "--kind", "lsh"], "invalid choice: 'lsh'"),
        (embed_tool, ["--images", str(tmp_path / "none"), "--output", "x.npz"], "folder .*none does not exist"),
        (embed_tool, ["--images", "x", "--output", "x.npz", "--bogus"], "unknown option --bogus"),
    ]
    for tool, argv, pattern in cases:
        assert tool.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        assert re.search(pattern, err), err
