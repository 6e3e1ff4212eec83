"""What a user reads in OUTPUT_DIR: train_metrics.jsonl, curve pictures, TensorBoard event files, the
hyper-parameter table in the log, and test.py's ranked lists (checked against a brute-force ranking)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from config import load_config
from engine.checkpoint_testing import run_test
from engine.training import train

# every test reads the outputs of a trained run
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def market_root(tmp_path_factory, make_market_tree):
    root = tmp_path_factory.mktemp("datasets")
    make_market_tree(root, train_ids=6, test_ids=5, images_per_id=4, cameras=3, size=(32, 16), seed=3)
    return root


@pytest.fixture(scope="module")
def tiny_opts(tiny_opts):
    """conftest's tiny run with this module's settings: 2 epochs evaluated after each, triplet + center loss."""
    settings = {
        "SOLVER.MAX_EPOCHS": "2",
        "SOLVER.EVAL_PERIOD": "1",
        "SOLVER.CHECKPOINT_PERIOD": "2",
        "MODEL.METRIC_LOSS_TYPE": "triplet+center",
    }
    return lambda root, out, **overrides: tiny_opts(root, out, **{**settings, **overrides})


@pytest.fixture(scope="module")
def run(tiny_opts, market_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    train(load_config(None, tiny_opts(market_root, out)))
    return out


def test_train_metrics_per_epoch(run):
    lines = [json.loads(x) for x in (run / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    first = lines[0]
    assert {"loss", "cls_loss", "acc", "triplet_loss", "center_loss", "seconds_per_batch"} <= set(first)
    assert set(first["lr"]) >= {"backbone", "bias", "neck", "loss", "centers/centers"}
    assert first["lr"]["backbone"] == pytest.approx(3.5e-4 * 0.01)  # warm-up epoch 0
    assert lines[1]["lr"]["backbone"] == pytest.approx(3.5e-4)


def test_curve_pictures_are_written(run):
    for name in ("curves_loss.png", "curves_lr.png", "curves_metrics.png"):
        with Image.open(run / name) as picture:
            assert picture.format == "PNG" and picture.width >= 400 and picture.height >= 200


def test_tensorboard_event_files_hold_the_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "training/avg_loss",
        "training/avg_triplet_loss",
        "training/loss_iteration",
        "lr/backbone",
        "lr/centers/centers",
        "market1501/mAP",
        "market1501/rank1",
    } <= tags
    assert [e.step for e in events.Scalars("market1501/mAP")] == [1, 2]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.Scalars("market1501/mAP")[-1].value == pytest.approx(metrics[-1]["mAP"], rel=1e-6)


def test_hyper_parameter_table_in_the_log(run):
    log = (run / "log.txt").read_text()
    assert "Keys that differ from the defaults" in log
    assert "MODEL.METRIC_LOSS_TYPE" in log and "'triplet+center'" in log and "(default 'triplet')" in log


def test_outputs_can_be_switched_off(tiny_opts, market_root, tmp_path):
    out = tmp_path / "quiet"
    train(
        load_config(
            None, tiny_opts(market_root, out, **{"LOG.TENSORBOARD": "no", "LOG.PLOTS": "no", "SOLVER.MAX_EPOCHS": "1"})
        )
    )
    assert not (out / "tensorboard").exists() and not list(out.glob("curves_*.png"))
    assert (out / "train_metrics.jsonl").is_file()


def _brute_force_ranking(tiny_opts, run_dir: Path, market_root: Path, tmp_path: Path):
    """Embeddings through the same test path, then a full distance matrix and a sort per query."""
    from data.build import build_data
    from engine.evaluation.dataset_evaluation import DatasetEvaluation
    from engine.run.precision import resolve_precision
    from modeling import build_model, load_weights

    cfg = load_config(None, tiny_opts(market_root, tmp_path / "ref", **{"TEST.WEIGHT": str(run_dir / "best.pt")}))
    model = build_model(cfg, load_pretrained=False)
    load_weights(cfg, model, cfg.TEST.WEIGHT, "TEST.WEIGHT")
    eval_set = build_data(cfg, with_train=False).eval_sets[0]
    evaluation = DatasetEvaluation(
        cfg, model, resolve_precision("none", torch.device("cpu")), torch.device("cpu"), eval_set, keep_embeddings=True
    )
    evaluation.run()
    last = evaluation.metric.last
    nq = len(eval_set.splits.query)
    records = eval_set.splits.eval_records()
    feats, labels, camids = last["feats"], last["labels"].tolist(), last["camids"].tolist()
    expected = {}
    for q in range(nq):
        rows = []
        for g in range(nq, len(records)):
            if labels[g] == labels[q] and camids[g] == camids[q]:
                continue  # junk: same identity, same camera
            rows.append((torch.dist(feats[q], feats[g]).item(), g - nq, records[g].path, labels[g] == labels[q]))
        rows.sort(key=lambda r: (r[0], r[1]))
        expected[records[q].path] = rows
    return expected


def test_ranked_list_csv_matches_a_brute_force_ranking(tiny_opts, run, market_root, tmp_path):
    out = tmp_path / "test"
    run_test(
        load_config(None, tiny_opts(market_root, out, **{"TEST.WEIGHT": str(run / "best.pt"), "TEST.RANKED_LIST": "3"}))
    )
    with open(out / "ranked_list_market1501.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected = _brute_force_ranking(tiny_opts, run, market_root, tmp_path)
    assert len({r["query_path"] for r in rows}) == len(expected)
    for query, ranking in expected.items():
        mine = [r for r in rows if r["query_path"] == query]
        top = [r for r in mine if r["match"] != "last_match"]
        assert [r["gallery_path"] for r in top] == [p for _, _, p, _ in ranking[:3]]
        assert [float(r["distance"]) for r in top] == pytest.approx([d for d, *_ in ranking[:3]], abs=1e-4)
        assert [r["match"] == "1" for r in top] == [m for *_, m in ranking[:3]]
        last = max(i for i, row in enumerate(ranking) if row[3]) + 1
        extra = [r for r in mine if r["match"] == "last_match"]
        assert (int(extra[0]["rank"]) if extra else None) == (last if last > 3 else None)


def test_ranked_list_json(tiny_opts, run, market_root, tmp_path):
    out = tmp_path / "test"
    run_test(
        load_config(
            None,
            tiny_opts(market_root, out, **{"TEST.WEIGHT": str(run / "best.pt"), "TEST.RANKED_LIST_FORMAT": "json"}),
        )
    )
    content = json.loads((out / "ranked_list_market1501.json").read_text())
    assert len(content) == 5 and all(len(q["ranked"]) <= 10 for q in content)
    first = content[0]
    assert {"query", "label", "camid", "ap", "ranked", "last_match"} <= set(first)
    assert [r["rank"] for r in first["ranked"]] == list(range(1, len(first["ranked"]) + 1))
    distances = [r["distance"] for r in first["ranked"]]
    assert distances == sorted(distances)
