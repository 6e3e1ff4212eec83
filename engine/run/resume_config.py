"""What a resumed run may change: every key that differs from the checkpoint's config is honoured (and logged)
or refused (one line naming it). Never silently ignored.

Honoured keys fall in four kinds:
- optimizer: learning rates, weight decays, momentum: the optimizers' groups take the new values (their moments
  are kept);
- schedule: steps, gamma, warm-up, the scheduler itself: the schedulers are rebuilt from the new values at the
  checkpoint's epoch, and the learning rates set to what the new schedule gives for the next epoch;
- read each epoch or at the end: MAX_EPOCHS, periods, warm epochs, gradient clipping, evaluation, logging;
- where things are (DATASETS.ROOT_DIR, OUTPUT_DIR, MODEL.DEVICE, workers, the image check, the image cache) or
  what only builds the starting weights, which the checkpoint replaces (MODEL.PRETRAIN_*).
Every other key changes the model, the loss's parameters, the data or the batches (SEED included): a
checkpoint of one run cannot continue as another, so a change is refused. INPUT.AUGMENT_ON is one of them: device
augmentation resizes retrieval crops without PIL's antialiasing, so its images are not the CPU pipeline's.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import yaml

from config import UserError, get_defaults
from engine.reporting.run_files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CONFIG_HISTORY_DIR,
    DiskWriteError,
    atomic_write_text,
)

logger = logging.getLogger("train")

OPTIMIZER_KEYS = (
    "SOLVER.BASE_LR",
    "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.PROXY_LR_FACTOR",
    "SOLVER.MOMENTUM",
    "SOLVER.WEIGHT_DECAY",
    "SOLVER.WEIGHT_DECAY_BIAS",
    "SOLVER.WEIGHT_DECAY_NECK",
    "SOLVER.WEIGHT_DECAY_POLY",
    "SOLVER.CENTER_LR",
    "LOSS.MARGIN_LOSS.BETA_LR",
    "LOSS.AMLOSS.MARGIN_LR",
    "LOSS.AMLOSS.MARGIN_WEIGHT_DECAY",
)
SCHEDULE_KEYS = (
    "SOLVER.LR_SCHEDULER",
    "SOLVER.STEPS",
    "SOLVER.GAMMA",
    "SOLVER.WARMUP_FACTOR",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.WARMUP_METHOD",
    "SOLVER.LR_DECAY_STEP",
    "SOLVER.LR_DECAY_GAMMA",
    "LOSS.AMLOSS.MARGIN_DECAY_STEP",
    "LOSS.AMLOSS.MARGIN_DECAY_GAMMA",
)
READ_AS_THE_RUN_GOES_KEYS = (
    "SOLVER.MAX_EPOCHS",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.EVAL_PERIOD",
    "SOLVER.LOG_PERIOD",
    "SOLVER.WARM_EPOCHS",
    "SOLVER.GRAD_CLIP",
)
WHERE_KEYS = (
    "DATASETS.ROOT_DIR",
    "OUTPUT_DIR",
    "MODEL.DEVICE",
    "MODEL.PRETRAIN_PATH",
    "MODEL.PRETRAIN_CHOICE",
    "DATALOADER.NUM_WORKERS",
    "DATALOADER.CHECK_IMAGES",
    "DATALOADER.BAD_IMAGES",
    "DATALOADER.CACHE",  # where the decoded images come from: the same pixels either way
)
# every key under these nodes is honoured: evaluation and logging are rebuilt from the config on resume
HONOURED_NODES = ("TEST.", "LOG.")


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _comparable(value):
    return list(value) if isinstance(value, list | tuple) else value


def config_differences(saved_yaml: str, cfg) -> dict[str, tuple]:
    """{key: (checkpoint's value, this config's value)} for every key whose values differ. Keys that one side
    lacks (a config of an older version) count as differing only when the other side's value is not the default
    that the missing key would have had; they are compared against `cfg`'s defaults."""
    saved = _flatten(yaml.safe_load(saved_yaml) or {})
    current = _flatten(yaml.safe_load(cfg.dump()))
    defaults = _flatten(yaml.safe_load(get_defaults().dump()))
    differences = {}
    for key in sorted(set(saved) | set(current)):
        old = saved.get(key, defaults.get(key))
        new = current.get(key, defaults.get(key))
        if _comparable(old) != _comparable(new):
            differences[key] = (old, new)
    return differences


def honoured_kind(key: str) -> str | None:
    """How a resumed run honours a change of `key`: 'optimizer', 'schedule', 'as the run goes', 'location';
    None when a change of it is refused."""
    if key in OPTIMIZER_KEYS:
        return "optimizer"
    if key in SCHEDULE_KEYS:
        return "schedule"
    if key in READ_AS_THE_RUN_GOES_KEYS or key.startswith(HONOURED_NODES):
        return "as the run goes"
    if key in WHERE_KEYS:
        return "location"
    return None


def check_resume_changes(differences: dict[str, tuple], checkpoint: str) -> dict[str, tuple]:
    """Raise UserError naming every refused change; return the honoured ones."""
    refused = {k: v for k, v in differences.items() if honoured_kind(k) is None}
    if refused:
        shown = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:6])
        more = f" (+{len(refused) - 6} more)" if len(refused) > 6 else ""
        raise UserError(
            f"--resume {checkpoint}: a resumed run cannot change {shown}{more}: these keys change the model, the "
            "loss's parameters or the data, so the checkpoint cannot continue under them; keep the checkpoint's "
            "values, or start a new run in another OUTPUT_DIR (a resume may change learning rates, schedule, "
            "warm-up, MAX_EPOCHS, periods, evaluation and logging keys)"
        )
    return differences


def solver_keys_changed(honoured: dict[str, tuple]) -> bool:
    """Whether the optimizers' groups and schedulers must take values other than the checkpoint's."""
    return any(honoured_kind(k) in ("optimizer", "schedule") for k in honoured)


class ConfigRecord:
    """The run's config as checkpoint entry 'config' (its YAML text), so that a resume can compare keys with the
    config the checkpoint was trained under. Loading it changes nothing: the resumed run keeps its own config,
    which check_resume_changes compared first."""

    def __init__(self, cfg):
        self.text = cfg.dump()

    def state_dict(self) -> dict:
        return {"yaml": self.text}

    def load_state_dict(self, state: dict) -> None:
        pass


def checkpoint_config_text(content: dict, checkpoint: Path) -> str | None:
    """The YAML of the config a checkpoint was trained under: its 'config' entry, or for a checkpoint of an
    older version the config.yaml of its run folder (with a warning); None when neither exists."""
    entry = content.get("config")
    if isinstance(entry, dict) and isinstance(entry.get("yaml"), str):
        return entry["yaml"]
    folder = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent
    beside = folder / CONFIG_FILE
    if beside.is_file():
        logger.warning(
            "%s holds no config (written by an older version): comparing the keys with %s", checkpoint, beside
        )
        return beside.read_text(encoding="utf-8")
    logger.warning("%s holds no config and no config.yaml is beside it: the keys cannot be compared", checkpoint)
    return None


def log_honoured_changes(honoured: dict[str, tuple]) -> None:
    """One line per key a resume changed, saying how it is honoured."""
    if honoured:
        width = max(len(k) for k in honoured)
        rows = "\n".join(
            f"  {k:<{width}}  {old!r} -> {new!r}  ({honoured_kind(k)})" for k, (old, new) in honoured.items()
        )
        logger.info("Keys changed on resume, honoured:\n%s", rows)


def record_config_history(output_dir: Path, cfg, start: str, honoured: dict[str, tuple]) -> Path:
    """Write OUTPUT_DIR/config_history/<n>_from_<start>.yaml: the config of this start, its command line and the
    keys a resume changed as comments on top (a file --config_file still accepts)."""
    folder = Path(output_dir) / CONFIG_HISTORY_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise DiskWriteError(folder, err) from None
    number = 1 + max(
        (int(p.name.split("_", 1)[0]) for p in folder.glob("*_from_*.yaml") if p.name[:4].isdigit()), default=0
    )
    header = [
        f"# started {time.strftime('%Y-%m-%d %H:%M:%S')} from {start}",
        f"# command: {shlex.join(['python', *sys.argv])}",
        *(f"# changed on resume: {k} {old!r} -> {new!r}" for k, (old, new) in honoured.items()),
    ]
    path = folder / f"{number:04d}_from_{start.replace(' ', '_')}.yaml"
    atomic_write_text(path, "\n".join(header) + "\n" + cfg.dump())
    return path
