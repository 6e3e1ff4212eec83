"""Checkpoints: periodic and final full-state files, the best model, and resume."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.handlers import Checkpoint, DiskSaver

from config import UserError
from engine.reporting.run_files import CHECKPOINT_DIR, atomic_write
from modeling.weights import WeightsMismatchError, load_checked, read_weights_file

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def build_checkpointer(checkpoint_dir: Path, to_save: dict) -> Checkpoint:
    """Full-state checkpoints `checkpoint_<epoch>.pt`, all kept, written atomically by rank 0."""
    return Checkpoint(
        to_save,
        DiskSaver(str(checkpoint_dir), require_empty=False, atomic=True),
        filename_pattern="checkpoint_{global_step}.{ext}",
        n_saved=None,
        global_step_transform=lambda engine, _: engine.state.epoch,
    )


def save_best_model(path: Path, model: torch.nn.Module, epoch: int, metrics: dict) -> None:
    """best.pt: the model's state dict with the epoch and metrics that made it best (atomic, rank 0)."""
    if idist.get_rank() != 0:
        return
    module = model.module if hasattr(model, "module") else model
    content = {"model": module.state_dict(), "epoch": epoch, "metrics": metrics}
    atomic_write(path, lambda handle: torch.save(content, handle))


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest epoch in `folder` (or in its checkpoints/ subfolder)."""
    for candidate in (folder / CHECKPOINT_DIR, folder):
        found = [
            (int(m.group(1)), p) for p in candidate.glob("checkpoint_*.pt") if (m := CHECKPOINT_NAME.match(p.name))
        ]
        if found:
            return max(found)[1]
    return None


def resolve_resume_path(path: str | Path) -> Path:
    """--resume accepts a checkpoint file or an OUTPUT_DIR (then its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise UserError(f"--resume {path}: no checkpoint_<epoch>.pt in {path} or {path / 'checkpoints'}")
        return latest
    if not path.is_file():
        raise UserError(f"--resume {path}: no such file or folder; expected a checkpoint .pt or an OUTPUT_DIR")
    return path


def load_training_state(path: Path, to_load: dict) -> None:
    """Restore every object of `to_load` from a full-state checkpoint, naming what does not fit."""
    content = read_weights_file(path, "--resume")
    if not isinstance(content, dict):
        raise UserError(f"--resume {path} is not a checkpoint of this engine")
    missing = [name for name in to_load if name not in content]
    if missing:
        raise UserError(
            f"--resume {path} lacks {', '.join(missing)}; expected a checkpoint_<epoch>.pt written by train.py"
        )
    for name in ("model", "loss"):
        target = to_load[name]
        target = target.module if hasattr(target, "module") else target
        load_checked(target, content[name], f"--resume {path} ({name})", f"the {name} built from this config")
    rest = {k: v for k, v in to_load.items() if k not in ("model", "loss")}
    try:
        Checkpoint.load_objects(rest, {k: content[k] for k in rest})
    except (ValueError, KeyError, RuntimeError) as err:
        raise WeightsMismatchError(
            f"--resume {path}: the saved optimizer/scheduler state does not fit this config ({err})"
        ) from None
    logger.info("Resumed from %s (epoch %d)", path, to_load["trainer"].state.epoch)
