"""The output folder of a run: logging to log.txt, the merged config, metrics.jsonl, the checkpoints folder."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import ignite.distributed as idist

from config import UserError

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logging(output_dir: Path | None, log_name: str = "log.txt") -> None:
    """Console logging on every rank (warnings only off rank 0) and OUTPUT_DIR/log.txt on rank 0."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    rank0 = idist.get_rank() == 0
    root.setLevel(logging.INFO if rank0 else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(console)
    if rank0 and output_dir is not None:
        file_handler = logging.FileHandler(output_dir / log_name)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(file_handler)
    # ignite logs every engine start/stop at INFO; keep its warnings only
    logging.getLogger("ignite").setLevel(logging.WARNING)


def prepare_output_dir(output_dir: str | Path, resuming: bool) -> Path:
    """Create OUTPUT_DIR; refuse to start a fresh run over one that already holds checkpoints."""
    path = Path(output_dir)
    checkpoints = path / "checkpoints"
    if not resuming and checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
        raise UserError(
            f"OUTPUT_DIR {path} already holds a run (checkpoints in {checkpoints}); continue it with "
            f"--resume {path}, or choose another OUTPUT_DIR"
        )
    if idist.get_rank() == 0:
        try:
            checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create OUTPUT_DIR {path}: {err}") from None
    idist.barrier()
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def save_config(cfg, output_dir: Path, name: str = "config.yaml") -> None:
    """The merged config, as a YAML file that --config_file accepts (rank 0 only)."""
    if idist.get_rank() == 0:
        atomic_write_text(output_dir / name, cfg.dump())


def append_metrics(output_dir: Path, record: dict, name: str = "metrics.jsonl") -> None:
    """One JSON object per evaluation (rank 0 only)."""
    if idist.get_rank() == 0:
        with open(output_dir / name, "a") as handle:
            handle.write(json.dumps(record) + "\n")
