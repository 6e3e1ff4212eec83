"""The output folder of a run: logging to log.txt, the merged config, the checkpoints folder, record lines
(file names and record schema: engine/reporting/run_files.py)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import ignite.distributed as idist

from config import UserError
from engine.reporting.run_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    DiskWriteError,
    append_record,
    atomic_write_text,
    remove_stale_temporary_files,
)
from engine.run.run_lock import RunLock

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
        try:
            file_handler = RunLogFile(output_dir / log_name)
        except OSError as err:
            raise DiskWriteError(output_dir / log_name, err) from None
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(file_handler)
    # ignite logs every engine start/stop at INFO; keep its warnings only
    logging.getLogger("ignite").setLevel(logging.WARNING)
    # An Engine logs every exception that ends its run at ERROR, with a DataLoader worker's whole traceback in
    # the text; the run reports the exception itself (one line for a user error, its traceback otherwise)
    logging.getLogger("ignite.engine.engine").setLevel(logging.CRITICAL)


class RunLogFile(logging.FileHandler):
    """log.txt. When the disk refuses a log line (full, read-only), logging's default prints a traceback on
    stderr for every later line; this handler says it once, in one line, and stops writing the file (the
    console keeps every line)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        reason = DiskWriteError(self.baseFilename, error) if isinstance(error, OSError) else error
        print(f"warning: {reason}; log lines go to the console only from here on", file=sys.stderr)
        logging.getLogger().removeHandler(self)


@dataclass
class RunFolder:
    """An opened OUTPUT_DIR: its path, its lock (held by rank 0 until `close`), and the temporary files of
    killed writes that opening it removed (path, bytes)."""

    path: Path
    lock: RunLock
    removed_temporary_files: list[tuple[Path, int]] = field(default_factory=list)
    dead_owner: str | None = None  # the run whose lock file was taken over

    def report(self, log: logging.Logger) -> None:
        """Warnings for a lock taken over from a dead run and for the removed temporary files (logging is set up
        after the folder is opened)."""
        if self.dead_owner:
            log.warning(
                "OUTPUT_DIR %s: took over the lock of %s, which is no longer running", self.path, self.dead_owner
            )
        if self.removed_temporary_files:
            megabytes = sum(size for _, size in self.removed_temporary_files) / 2**20
            log.warning(
                "Removed %d temporary file(s) that interrupted writes left in %s (%.1f MB): %s",
                len(self.removed_temporary_files),
                self.path,
                megabytes,
                ", ".join(p.name for p, _ in self.removed_temporary_files),
            )

    def close(self) -> None:
        self.lock.release()


def open_run_folder(output_dir: str | Path, resuming: bool) -> RunFolder:
    """Create OUTPUT_DIR and take its lock (one run per folder; rank 0), remove the temporary files that killed
    writes left there, and refuse to start a fresh run over one that already holds checkpoints. A folder that
    cannot be written fails here, before anything is built: DiskWriteError naming it and the reason."""
    path = Path(output_dir)
    checkpoints = path / CHECKPOINT_DIR
    folder = RunFolder(path, RunLock(path))
    if idist.get_rank() == 0:
        try:
            checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DiskWriteError(path, err) from None
        folder.dead_owner = folder.lock.acquire()
        try:
            if not resuming and any(checkpoints.glob("*.pt")):
                raise UserError(
                    f"OUTPUT_DIR {path} already holds a run (checkpoints in {checkpoints}); continue it with "
                    f"--resume {path}, or choose another OUTPUT_DIR"
                )
            folder.removed_temporary_files = remove_stale_temporary_files([path, checkpoints])
        except BaseException:
            folder.close()
            raise
    idist.barrier()
    return folder


def save_config(cfg, output_dir: Path, name: str = CONFIG_FILE) -> None:
    """The merged config, as a YAML file that --config_file accepts (rank 0 only)."""
    if idist.get_rank() == 0:
        atomic_write_text(output_dir / name, cfg.dump())


def append_metrics(output_dir: Path, record: dict, name: str = METRICS_FILE) -> None:
    """One record (a JSON line) appended to OUTPUT_DIR/`name` by rank 0."""
    if idist.get_rank() == 0:
        append_record(output_dir / name, record)
