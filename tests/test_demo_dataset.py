"""DATASETS.NAMES demo: generated once under ROOT_DIR, read by the Market-1501 loader, errors as user errors."""

import pytest

from config import load_config
from data.datasets import DatasetLayoutError, load_dataset
from data.demo_generator import DEFAULT_DEMO_PARAMS, read_demo_marker


def test_demo_is_generated_once_and_read_by_the_market_loader(tmp_path):
    cfg = load_config(None, ["DATASETS.NAMES", "demo", "DATASETS.ROOT_DIR", str(tmp_path)])
    splits = load_dataset(cfg)
    folder = tmp_path / "demo-market-seed0"
    marker = read_demo_marker(folder)
    assert splits.name == "demo" and splits.protocol == "reid"
    assert len(splits.train) == marker["counts"]["train"]["images"]
    assert splits.num_train_classes == DEFAULT_DEMO_PARAMS["num_train_ids"]
    assert len(splits.query) == marker["counts"]["query"]["images"]
    assert all(r.label != -1 for r in splits.gallery)  # junk dropped by the Market loader
    assert any(r.label == 0 for r in splits.gallery)  # distractors kept
    stamp = (folder / "bounding_box_train").stat().st_mtime_ns
    assert len(load_dataset(cfg).train) == len(splits.train)
    assert (folder / "bounding_box_train").stat().st_mtime_ns == stamp  # cached, not regenerated


def test_foreign_folder_in_the_demo_place_is_a_user_error(tmp_path):
    (tmp_path / "demo-market-seed3").mkdir()
    (tmp_path / "demo-market-seed3" / "mine.txt").write_text("not yours")
    cfg = load_config(None, ["DATASETS.NAMES", "demo", "DATASETS.ROOT_DIR", str(tmp_path), "DATASETS.DEMO_SEED", "3"])
    with pytest.raises(DatasetLayoutError, match="demo-market-seed3"):
        load_dataset(cfg)
    assert (tmp_path / "demo-market-seed3" / "mine.txt").read_text() == "not yours"
