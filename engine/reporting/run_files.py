"""The files of a run folder (OUTPUT_DIR): their names, the schema of their JSON-lines records, and the one
atomic writer every file of the folder goes through. No torch here: tools read run folders without it.

A run folder holds
- ``config.yaml``: the merged config of the latest start (a file ``--config_file`` accepts), written once the
  start (or resume) is accepted; ``config_history/<n>_from_epoch_<e>.yaml``: the config of every start, with the
  command line and the keys a resume changed in its first lines;
- ``run.lock`` while a train.py runs in the folder (its pid, host and command line);
- ``bad_images.txt``: the images the check before the first epoch refused (named in data/bad_images.py, which
  the data layer owns);
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

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CONFIG_FILE = "config.yaml"
CONFIG_HISTORY_DIR = "config_history"
LOCK_NAME = "run.lock"
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


# What an OSError of a write means for the user, by errno
WRITE_FAILURE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit of this process or file system)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


class DiskWriteError(OSError):
    """A file of the run folder could not be written: names the file and the reason in one line. An OSError
    (its errno kept), so callers that handle OSError still do; the entry points print it as one line."""

    def __init__(self, path: Path | str, cause: OSError):
        reason = WRITE_FAILURE_REASONS.get(cause.errno, cause.strerror or str(cause))
        super().__init__(cause.errno, reason, str(path))
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


class _RecordingWriter:
    """A binary file whose write errors are remembered: torch.save reports a failed write of its archive as
    a RuntimeError without the OSError's errno ("unexpected pos ..."), so atomic_write recovers the cause."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            self.error = err
            raise


# atomic_write's temporary files: ".<name>.<random>.tmp"; ignite's DiskSaver (older checkpoints):
# "tmp<8 random characters>" in checkpoints/
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$|^tmp[a-z0-9_]{8}$")
# test.py may be writing these into a training run's folder while it starts: not a killed writer's
_TEST_OUTPUT_PREFIXES = (f".{TEST_CONFIG_FILE}.", f".{TEST_METRICS_FILE}.", ".ranked_list_")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(binary file)` so that a crash leaves the old content or the new one, never
    half a file: the bytes go to a hidden temporary file in the same folder, which then replaces `path`. The
    temporary file is removed when anything fails (an interruption included); a failed write of the disk
    (full, read-only, no permission, a size limit) raises DiskWriteError naming `path` and the reason."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise DiskWriteError(path, err) from None
    recorder = None
    try:
        with os.fdopen(fd, "wb") as handle:
            recorder = _RecordingWriter(handle)
            write(recorder)
        # mkstemp creates the file readable by its owner only; a run's files are for whoever may read the run
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as failure:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cause = recorder.error if recorder is not None and recorder.error is not None else failure
        if isinstance(cause, OSError) and not isinstance(cause, DiskWriteError):
            raise DiskWriteError(path, cause) from None
        raise


def remove_stale_temporary_files(folders: list[Path]) -> list[tuple[Path, int]]:
    """Delete the temporary files that killed writers left in `folders` (atomic_write's and ignite's names);
    returns each removed file with its size. Call it only while holding the run folder's lock."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in folder.iterdir():
            name = candidate.name
            if candidate.is_file() and _TEMPORARY_NAME.match(name) and not name.startswith(_TEST_OUTPUT_PREFIXES):
                size = candidate.stat().st_size
                candidate.unlink(missing_ok=True)
                removed.append((candidate, size))
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of a text file (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def evaluated_epochs(output_dir: Path, dataset: str | None = None) -> set[int]:
    """The epochs metrics.jsonl holds a record of (of `dataset` when given); a torn last line is ignored."""
    epochs = set()
    try:
        with open(Path(output_dir) / METRICS_FILE, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and (dataset is None or record.get("dataset") == dataset):
                    epochs.add(int(record.get("epoch", -1)))
    except FileNotFoundError:
        pass
    return epochs


def append_record(path: Path, record: dict) -> None:
    """Append one JSON object as one line (a record of train_metrics.jsonl or metrics.jsonl); DiskWriteError
    when the disk refuses it."""
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as err:
        raise DiskWriteError(path, err) from None
