"""The files of a run folder (OUTPUT_DIR): their names, the schema of their JSON-lines records, and the one
atomic writer every file of the folder goes through. No torch here: tools read run folders without it.

A run folder holds
- ``config.yaml``: the merged config (a file ``--config_file`` accepts);
- ``log.txt``: the log of train.py (``test_log.txt`` for test.py, beside ``test_config.yaml``);
- ``train_metrics.jsonl``: one record per trained epoch (TRAIN_RECORD_KEYS, then the running average of every
  loss part under its name, then the training method's own epoch statistics, e.g. ``optimizer_steps``);
- ``metrics.jsonl``: one record per evaluation and dataset (EVAL_RECORD_KEYS, then every metric of the
  dataset's protocol: re-ID ``mAP``, ``rank1``..., ``cmc``; retrieval ``R@K``, ``MAP@R``, ...; and
  ``best_<main metric>``, ``best_epoch``);
- ``checkpoints/checkpoint_<epoch>.pt`` (full training state) and ``best.pt`` (the model of the best
  evaluation); ``tensorboard/``; the curve pictures ``curves_*.png``;
- test.py's ``test_metrics.json``, ``ranked_list_<dataset>.<csv|json>`` and ``visrank/<dataset>/``.
A resumed run appends to the JSON-lines files; of several records of the same epoch (and dataset), readers
take the last one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
BEST_MODEL_FILE = "best.pt"
TENSORBOARD_DIR = "tensorboard"
TEST_CONFIG_FILE = "test_config.yaml"
TEST_LOG_FILE = "test_log.txt"
TEST_METRICS_FILE = "test_metrics.json"
VISRANK_DIR = "visrank"

# Keys every record of train_metrics.jsonl holds (bookkeeping, not loss parts): `lr` maps each named
# parameter group to its learning rate during the epoch
TRAIN_RECORD_KEYS = ("epoch", "iteration", "lr", "seconds_per_batch")
# Keys every record of metrics.jsonl holds besides the metrics
EVAL_RECORD_KEYS = ("epoch", "iteration", "dataset", "protocol", "eval_seconds", "best_epoch")


def ranked_list_name(dataset: str, fmt: str) -> str:
    """The file name of test.py's ranked lists of `dataset` in format `fmt` ('csv' or 'json')."""
    return f"ranked_list_{dataset}.{fmt}"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(binary file)` so that a crash leaves the old content or the new one, never
    half a file: the bytes go to a hidden temporary file in the same folder, which then replaces `path`. The
    temporary file is removed when `write` fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        # mkstemp creates the file readable by its owner only; a run's files are for whoever may read the run
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of a text file (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def append_record(path: Path, record: dict) -> None:
    """Append one JSON object as one line (a record of train_metrics.jsonl or metrics.jsonl)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
