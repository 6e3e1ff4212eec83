"""Loading weights from local files, with errors that name the mismatching tensors. Nothing downloads."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from config.errors import UserError
from modeling.state_checksum import ChecksumMismatchError, verify_checksum

logger = logging.getLogger(__name__)


class WeightsMismatchError(UserError):
    """A weights file whose tensors do not fit the model built from the config."""


class CorruptFileError(UserError):
    """A weights or checkpoint file that cannot be read, or whose content does not match its checksum."""


def read_weights_file(path: str | Path, what: str = "weights file") -> dict:
    """torch.load a local file on the CPU, or raise UserError naming it (`what`: the key that named it). A run
    folder (an OUTPUT_DIR of train.py) stands for its best.pt. A file that does not load (truncated, foreign)
    or whose content does not match the checksum written with it raises CorruptFileError."""
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            path = path / "best.pt"
        else:
            found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
            shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "nothing"
            raise UserError(
                f"{what} {path} is a folder without best.pt (it holds {shown}); expected a .pt file, or a run "
                "folder of train.py holding best.pt"
            )
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, keep the reason
        raise CorruptFileError(f"cannot read {what} {path}: {err}") from None
    try:
        verify_checksum(content)
    except ChecksumMismatchError as err:
        raise CorruptFileError(f"{what} {path} is corrupted: {err} (damaged on disk or in a copy)") from None
    return content


def _strip_prefix(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checked(module: nn.Module, state: dict, source: str, what: str) -> None:
    """Load `state` into `module` strictly; on any mismatch raise one error listing the first ones."""
    state = _strip_prefix(state, "module.")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)} expected"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise WeightsMismatchError(f"{source} does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def default_imagenet_path(weights_file: str) -> Path:
    """torchvision's cache location of an ImageNet file (used only when it is already there)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file


def load_imagenet_backbone(backbone: nn.Module, path: str) -> None:
    """ImageNet weights into the backbone, with strict key matching (WeightsMismatchError names the misfits).

    The file's classifier is dropped when the backbone does not hold one: a backbone lists the prefixes to drop
    in `imagenet_dropped_prefixes`, default ("fc.",), torchvision's ResNet classifier. BN-Inception lists none:
    it holds `last_linear` (unused by forward) so that its file loads strictly as it is, and a foreign tensor
    in it is an error rather than silently skipped. BatchNorm `num_batches_tracked` buffers absent from the
    file (older files predate them) keep the module's value; any other missing tensor is an error.
    """
    if not path:
        candidate = default_imagenet_path(backbone.weights_file)
        if not candidate.is_file():
            raise UserError(
                f"MODEL.PRETRAIN_CHOICE 'imagenet' needs MODEL.PRETRAIN_PATH, a local file of the backbone's ImageNet "
                f"weights ({backbone.weights_file}); nothing is downloaded. Looked in {candidate}. "
                "Use MODEL.PRETRAIN_CHOICE none to train from scratch"
            )
        path = str(candidate)
    state = read_weights_file(path, "MODEL.PRETRAIN_PATH")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"MODEL.PRETRAIN_PATH {path} holds a {type(state).__name__}, not a dict of tensors")
    dropped = tuple(getattr(backbone, "imagenet_dropped_prefixes", ("fc.",)))
    state = {k: v for k, v in _strip_prefix(state, "module.").items() if not (dropped and k.startswith(dropped))}
    for key, value in backbone.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value
    load_checked(backbone, state, f"MODEL.PRETRAIN_PATH {path}", "the backbone of MODEL.NAME")
    logger.info("Loaded ImageNet weights from %s", path)


def model_state_from_checkpoint(path: str | Path, key: str = "checkpoint") -> dict:
    """The model's state dict from one of our checkpoints (periodic .pt or best.pt)."""
    content = read_weights_file(path, key)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        return content["model"]
    raise UserError(
        f"{key} {path} is not a checkpoint of this engine (no 'model' entry); expected a .pt written by train.py"
    )


def load_model_checkpoint(model: nn.Module, path: str | Path, key: str) -> None:
    """Our checkpoint's model weights into `model`; `key` names the config key that pointed at it."""
    load_checked(model, model_state_from_checkpoint(path, key), f"{key} {path}", "the model built from this config")
    logger.info("Loaded model weights from %s", path)
