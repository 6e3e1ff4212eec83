"""The output folder of a run: logging to log.txt, the merged config, the checkpoints folder, record lines
(file names and record schema: engine/reporting/run_files.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import ignite.distributed as idist

from config import UserError
from engine.reporting.run_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    append_record,
    atomic_write_text,
)

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logging(output_dir: Path | None, log_name: str = LOG_FILE) -> None:
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
    # An Engine logs every exception that ends its run at ERROR, with a DataLoader worker's whole traceback in
    # the text; the run reports the exception itself (one line for a user error, its traceback otherwise)
    logging.getLogger("ignite.engine.engine").setLevel(logging.CRITICAL)


def prepare_output_dir(output_dir: str | Path, resuming: bool) -> Path:
    """Create OUTPUT_DIR; refuse to start a fresh run over one that already holds checkpoints."""
    path = Path(output_dir)
    checkpoints = path / CHECKPOINT_DIR
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


def save_config(cfg, output_dir: Path, name: str = CONFIG_FILE) -> None:
    """The merged config, as a YAML file that --config_file accepts (rank 0 only)."""
    if idist.get_rank() == 0:
        atomic_write_text(output_dir / name, cfg.dump())


def append_metrics(output_dir: Path, record: dict, name: str = METRICS_FILE) -> None:
    """One record (a JSON line) appended to OUTPUT_DIR/`name` by rank 0."""
    if idist.get_rank() == 0:
        append_record(output_dir / name, record)
