"""What a loader notes about a dataset (DatasetSplits.notes: a partial copy, skipped folders, ...) reaches the
log: one WARNING line per note, naming the dataset, beside the dataset's table."""

from __future__ import annotations

import logging

from config import load_config
from data.build import build_data
from data.datasets import DATASET_LOADERS
from data.records import DatasetSplits, Record


def _cfg(root, *opts: str):
    return load_config(
        None, ["DATASETS.ROOT_DIR", str(root), "DATALOADER.NUM_WORKERS", "0", "MODEL.PRETRAIN_CHOICE", "none", *opts]
    )


def test_a_partial_cub_copy_is_logged_as_one_warning_naming_the_dataset(tmp_path, caplog, make_cub_tree):
    make_cub_tree(tmp_path, num_classes=6, per_class=3)
    cfg = _cfg(tmp_path, "DATASETS.NAMES", "cub", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCE", "2")
    with caplog.at_level(logging.INFO, logger="data.build"):
        build_data(cfg)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and message.startswith("Dataset cub: ")
    assert "6 class folders found (the official release has 200)" in message
    # beside the table: right after the dataset's statistics
    table = next(i for i, r in enumerate(caplog.records) if "Dataset cub statistics" in r.getMessage())
    assert caplog.records[table + 1] is warnings[0]


def test_each_note_is_one_warning_and_a_dataset_without_notes_logs_none(tmp_path, caplog, monkeypatch):
    records = [Record(str(tmp_path / f"{i}.jpg"), i % 2, i % 3) for i in range(6)]
    notes = {"first": ["one thing", "another thing"], "second": []}

    for name, its_notes in notes.items():
        splits = DatasetSplits(name=name, train=records, query=records, gallery=records, notes=its_notes)
        monkeypatch.setitem(DATASET_LOADERS, name, lambda cfg, splits=splits: splits)
    # the records name files that do not exist: only the notes are under test here
    cfg = _cfg(tmp_path, "DATASETS.NAMES", "('first', 'second')", "DATALOADER.CHECK_IMAGES", "off")
    with caplog.at_level(logging.WARNING, logger="data.build"):
        build_data(cfg, with_train=False)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "Dataset first: one thing",
        "Dataset first: another thing",
    ]
