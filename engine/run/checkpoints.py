"""Checkpoints: periodic and final full-state files, mid-epoch files of an interrupted run, the best model, and
finding the checkpoint to resume from.

Names: ``checkpoint_<epoch>.pt`` holds the state after epoch <epoch>; ``checkpoint_<epoch>_iter<k>.pt`` the state
after k batches of epoch <epoch> (written when a signal stops a run mid-epoch). Every file is written atomically
(a killed write leaves the previous files and no partial one) and carries a checksum of its content
(modeling/state_checksum.py), verified when it is read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler

from config import UserError
from engine.reporting.run_files import CHECKPOINT_DIR, atomic_write
from modeling.state_checksum import with_checksum
from modeling.weights import CorruptFileError, WeightsMismatchError, load_checked, read_weights_file

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)(?:_iter(\d+))?\.pt$")


def checkpoint_name(epoch: int, batches_into_epoch: int = 0) -> str:
    """The file name of the state after `epoch` (0 batches in) or after `batches_into_epoch` batches of `epoch`."""
    return f"checkpoint_{epoch}.pt" if batches_into_epoch == 0 else f"checkpoint_{epoch}_iter{batches_into_epoch}.pt"


def _training_position(name: str) -> tuple[int, int] | None:
    """(completed epochs, batches into the next epoch) of a checkpoint file name; None for other names."""
    match = CHECKPOINT_NAME.match(name)
    if match is None:
        return None
    epoch, batches = int(match.group(1)), match.group(2)
    return (epoch, 0) if batches is None else (epoch - 1, int(batches))


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints in `folder` (or in its checkpoints/ subfolder), newest training state first."""
    for candidate in (folder / CHECKPOINT_DIR, folder):
        found = [(pos, p) for p in candidate.glob("checkpoint_*.pt") if (pos := _training_position(p.name))]
        if found:
            return [p for _, p in sorted(found, reverse=True)]
    return []


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the newest training state in `folder` (or in its checkpoints/ subfolder)."""
    files = checkpoint_files(folder)
    return files[0] if files else None


class AtomicCheckpointSaver(BaseSaveHandler):
    """ignite's save handler for our checkpoints: rank 0 writes `checkpoint_dir/filename` atomically, with the
    content's checksum; a full or read-only disk raises DiskWriteError naming the file (and leaves no temporary
    file behind)."""

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = Path(checkpoint_dir)

    def __call__(self, checkpoint: dict, filename: str, metadata: dict | None = None) -> None:
        if idist.get_rank() != 0:
            return
        content = with_checksum(checkpoint)
        atomic_write(self.checkpoint_dir / filename, lambda handle: torch.save(content, handle))

    def remove(self, filename: str) -> None:
        if idist.get_rank() == 0:
            (self.checkpoint_dir / filename).unlink(missing_ok=True)


def build_checkpointer(checkpoint_dir: Path, to_save: dict) -> Checkpoint:
    """Full-state checkpoints `checkpoint_<epoch>.pt`, all kept, written atomically by rank 0."""
    return Checkpoint(
        to_save,
        AtomicCheckpointSaver(checkpoint_dir),
        filename_pattern="checkpoint_{global_step}.{ext}",
        n_saved=None,
        global_step_transform=lambda engine, _: engine.state.epoch,
    )


def write_checkpoint(checkpoint_dir: Path, filename: str, to_save: dict) -> Path:
    """Write the state dicts of `to_save` now (as a periodic checkpoint holds them; the model unwrapped from
    DDP) to `checkpoint_dir/filename`; returns the path."""
    content = {}
    for name, obj in to_save.items():
        content[name] = (obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj).state_dict()
    AtomicCheckpointSaver(checkpoint_dir)(content, filename)
    return checkpoint_dir / filename


def save_best_model(path: Path, model: torch.nn.Module, epoch: int, metrics: dict) -> None:
    """best.pt: the model's state dict with the epoch and metrics that made it best (atomic, with a checksum,
    rank 0)."""
    if idist.get_rank() != 0:
        return
    module = model.module if hasattr(model, "module") else model
    content = with_checksum({"model": module.state_dict(), "epoch": epoch, "metrics": metrics})
    atomic_write(path, lambda handle: torch.save(content, handle))


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, read and verified once: its path, its content, and the newer files
    of the folder that were passed over because they are damaged (with the reason)."""

    path: Path
    content: dict
    passed_over: list[str] = field(default_factory=list)


def _read_checkpoint(path: Path) -> dict:
    content = read_weights_file(path, "--resume")
    if not isinstance(content, dict) or "trainer" not in content:
        raise UserError(f"--resume {path} is not a checkpoint of this engine; expected a checkpoint_<epoch>.pt")
    return content


def find_resume_point(path: str | Path) -> ResumePoint:
    """--resume accepts a checkpoint file or an OUTPUT_DIR. A file must be intact; in a folder the newest intact
    checkpoint is taken, and damaged newer ones are passed over (the caller warns about them)."""
    path = Path(path)
    if path.is_dir():
        files = checkpoint_files(path)
        if not files:
            raise UserError(f"--resume {path}: no checkpoint_<epoch>.pt in {path} or {path / CHECKPOINT_DIR}")
        passed_over = []
        for candidate in files:
            try:
                return ResumePoint(candidate, _read_checkpoint(candidate), passed_over)
            except CorruptFileError as err:
                passed_over.append(str(err))
        raise UserError(f"--resume {path}: every checkpoint is damaged ({'; '.join(passed_over)})")
    if not path.is_file():
        raise UserError(f"--resume {path}: no such file or folder; expected a checkpoint .pt or an OUTPUT_DIR")
    return ResumePoint(path, _read_checkpoint(path))


def load_training_state(point: ResumePoint, to_load: dict, optional: tuple[str, ...] = ()) -> None:
    """Restore every object of `to_load` from the checkpoint of `point`, naming what does not fit. Entries named
    in `optional` may be absent (checkpoints written before they existed): those objects keep their state."""
    path, content = point.path, point.content
    missing = [name for name in to_load if name not in content and name not in optional]
    if missing:
        raise UserError(
            f"--resume {path} lacks {', '.join(missing)}; expected a checkpoint_<epoch>.pt written by train.py"
        )
    for name in ("model", "loss"):
        target = to_load[name]
        target = target.module if hasattr(target, "module") else target
        load_checked(target, content[name], f"--resume {path} ({name})", f"the {name} built from this config")
    rest = {k: v for k, v in to_load.items() if k not in ("model", "loss") and k in content}
    try:
        Checkpoint.load_objects(rest, {k: content[k] for k in rest})
    except (ValueError, KeyError, RuntimeError) as err:
        raise WeightsMismatchError(
            f"--resume {path}: the saved optimizer/scheduler state does not fit this config ({err})"
        ) from None
    logger.info(
        "Resumed from %s (epoch %d, iteration %d)",
        path,
        to_load["trainer"].state.epoch,
        to_load["trainer"].state.iteration,
    )
