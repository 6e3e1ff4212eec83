"""Config loading: defaults <- YAML file <- KEY VALUE pairs, then checks, then freeze.

yacs does the bookkeeping; the merge is ours because the seeds' command lines rely on conversions yacs
refuses (``SOLVER.TRI_LOSS_WEIGHT 1`` for a float key, ``SOLVER.IMS_PER_BATCH "(120)"``, ``SOLVER.STEPS
"60, 120"``) and because a user mistake must end in one line naming the key, not a traceback.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

from config.choices import check_choices
from config.defaults import get_defaults
from config.errors import ConfigError

_BOOL_WORDS = {"true": True, "false": False}
# Element type of list keys whose default is empty
_EMPTY_LIST_ELEMENT = {"TEST.RECALL_KS": 0, "TEST.DATASETS": ""}


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    """Every leaf key, dotted."""
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        if isinstance(value, CfgNode):
            keys.extend(_all_keys(value, full + "."))
        else:
            keys.append(full)
    return keys


def _unknown_key(key: str, root: CfgNode, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(root), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown config key {key} (from {source}){hint}")


def _parse_literal(text: str) -> Any:
    """A command-line string as the Python literal it spells, or the string itself."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def _coerce_scalar(key: str, value: Any, default: Any, source: str) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{key} = {value!r} (from {source}) has the wrong type; expected {expected}")

    if isinstance(default, bool):
        if isinstance(value, str):
            value = (
                _parse_literal(value)
                if value.strip().lower() not in _BOOL_WORDS
                else _BOOL_WORDS[value.strip().lower()]
            )
        if isinstance(value, bool):
            return value
        raise fail("True or False")
    if isinstance(default, int):
        if isinstance(value, str):
            value = _parse_literal(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail("an integer")
    if isinstance(default, float):
        if isinstance(value, str):
            value = _parse_literal(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail("a number")
    if isinstance(default, str):
        if isinstance(value, bool) and default in ("yes", "no", "on", "off"):
            # YAML 1.1 reads unquoted yes/no/on/off as booleans; these keys spell them as words
            return ("yes" if value else "no") if default in ("yes", "no") else ("on" if value else "off")
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail("a string")
    return value


# String keys that also take several names (a tuple), e.g. DATASETS.NAMES "('market1501', 'dukemtmc')"
_NAME_LIST_KEYS = {"DATASETS.NAMES"}


def _coerce_names(key: str, value: Any, source: str) -> str | tuple[str, ...]:
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "([":
            value = _parse_literal(text)
        elif "," in text:
            value = [part.strip() for part in text.split(",") if part.strip()]
        else:
            return text
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return value[0] if len(value) == 1 else tuple(value)
    raise ConfigError(f"{key} = {value!r} (from {source}); expected a name or a tuple of names")


# String keys holding keyword arguments: a YAML file may write them as a mapping (kept as its literal)
_KWARGS_KEYS = {"LOSS.PML_KWARGS", "LOSS.MINER_KWARGS"}


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Convert `value` to the type of `default`, or raise ConfigError naming `key`."""
    if key in _KWARGS_KEYS and isinstance(value, dict):
        return repr(value)
    if key in _NAME_LIST_KEYS:
        return _coerce_names(key, value, source)
    if default is None:
        return _parse_literal(value) if isinstance(value, str) else value
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            value = _parse_literal(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # "(120)" or "40" for a sequence key: one element
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{key} = {value!r} (from {source}) has the wrong type; expected a list like {list(default)}"
            )
        template = default[0] if default else _EMPTY_LIST_ELEMENT.get(key)
        if template is not None:
            value = [_coerce_scalar(f"{key}[{i}]", v, template, source) for i, v in enumerate(value)]
        return type(default)(value)
    return _coerce_scalar(key, value, default, source)


def _merge_dict(cfg: CfgNode, updates: dict, source: str, root: CfgNode, prefix: str = "") -> None:
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in cfg:
            raise _unknown_key(key, root, source)
        current = cfg[name]
        if isinstance(current, CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} (from {source}) is a group of keys; expected a mapping, got {value!r}")
            _merge_dict(current, value, source, root, key + ".")
        else:
            cfg[name] = _coerce(key, value, current, source)


def merge_yaml_file(cfg: CfgNode, path: str | Path) -> None:
    """Merge a YAML experiment file into `cfg` (keys must exist in the defaults)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; expected a YAML file such as configs/softmax_triplet.yml"
        )
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config groups, got {type(content).__name__}")
    _merge_dict(cfg, content, str(path), cfg)


def merge_pairs(cfg: CfgNode, pairs: Iterable[str]) -> None:
    """Merge command-line ``KEY VALUE`` pairs (values parsed as Python literals where they are ones)."""
    pairs = list(pairs)
    if len(pairs) % 2:
        raise ConfigError(
            f"command-line overrides must come in KEY VALUE pairs; {pairs[-1]!r} has no value "
            "(an empty shell variable leaves a key without its value)"
        )
    for key, value in zip(pairs[0::2], pairs[1::2]):
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CfgNode):
                raise _unknown_key(key, cfg, "the command line")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], CfgNode):
            raise _unknown_key(key, cfg, "the command line")
        node[parts[-1]] = _coerce(key, value, node[parts[-1]], "the command line")


APEX_OPT_LEVELS = {"O0": "none", "O1": "fp16", "O2": "fp16"}


def _map_apex_opt_level(cfg: CfgNode) -> None:
    """SOLVER.OPT_LEVEL (apex's O0-O3, in NAMA's YAML files) onto SOLVER.AMP (torch.amp), in one line when it
    cannot be."""
    level = cfg.SOLVER.OPT_LEVEL
    if not level:
        return
    if level == "O3":
        raise ConfigError(
            "SOLVER.OPT_LEVEL = 'O3' (apex's pure fp16, without fp32 master weights) is not supported; use 'O1' or "
            "'O2' (fp16 autocast with a GradScaler) or SOLVER.AMP"
        )
    if level not in APEX_OPT_LEVELS:
        raise ConfigError(f"SOLVER.OPT_LEVEL = {level!r}; expected one of 'O0', 'O1', 'O2' (apex's levels) or ''")
    amp = APEX_OPT_LEVELS[level]
    if cfg.SOLVER.AMP not in ("auto", amp):
        raise ConfigError(
            f"SOLVER.OPT_LEVEL = {level!r} means SOLVER.AMP {amp!r}, but SOLVER.AMP = {cfg.SOLVER.AMP!r}; give one"
        )
    cfg.SOLVER.AMP = amp


def _check(cfg: CfgNode) -> None:
    """Fixed choices (config/choices.py), then checks that involve several keys or ranges. Names looked up in
    registries (MODEL.NAME, DATASETS.NAMES, the loss types, ...) are checked where those objects are built."""
    check_choices(cfg)
    for key in ("SIZE_TRAIN", "SIZE_TEST"):
        size = cfg.INPUT[key]
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"INPUT.{key} = {list(size)}; expected [height, width] with two positive integers")
    if len(cfg.INPUT.PIXEL_MEAN) != 3 or len(cfg.INPUT.PIXEL_STD) != 3:
        raise ConfigError("INPUT.PIXEL_MEAN and INPUT.PIXEL_STD need three values (R, G, B)")
    positive = {
        "SOLVER.IMS_PER_BATCH": cfg.SOLVER.IMS_PER_BATCH,
        "SOLVER.MAX_EPOCHS": cfg.SOLVER.MAX_EPOCHS,
        "SOLVER.CHECKPOINT_PERIOD": cfg.SOLVER.CHECKPOINT_PERIOD,
        "SOLVER.EVAL_PERIOD": cfg.SOLVER.EVAL_PERIOD,
        "SOLVER.LOG_PERIOD": cfg.SOLVER.LOG_PERIOD,
        "DATALOADER.NUM_INSTANCE": cfg.DATALOADER.NUM_INSTANCE,
        "TEST.IMS_PER_BATCH": cfg.TEST.IMS_PER_BATCH,
        "TEST.MAX_RANK": cfg.TEST.MAX_RANK,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} = {value}; expected a positive integer")
    if cfg.TEST.EVAL_CHUNK < 0:
        raise ConfigError(f"TEST.EVAL_CHUNK = {cfg.TEST.EVAL_CHUNK}; expected 0 (automatic) or a positive integer")
    if cfg.DATALOADER.NUM_WORKERS < 0:
        raise ConfigError(f"DATALOADER.NUM_WORKERS = {cfg.DATALOADER.NUM_WORKERS}; expected 0 or more")
    if cfg.SOLVER.BASE_LR <= 0:
        raise ConfigError(f"SOLVER.BASE_LR = {cfg.SOLVER.BASE_LR}; expected a positive number")
    if list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        raise ConfigError(f"SOLVER.STEPS = {list(cfg.SOLVER.STEPS)}; expected epochs in increasing order")
    if cfg.DATALOADER.SAMPLER in ("triplet", "softmax_triplet"):
        if cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is not a multiple of "
                f"DATALOADER.NUM_INSTANCE = {cfg.DATALOADER.NUM_INSTANCE}; a PK batch holds P identities x K images"
            )


def load_config(config_file: str | Path | None = None, opts: Iterable[str] = ()) -> CfgNode:
    """Defaults <- `config_file` <- `opts` (KEY VALUE pairs), checked and frozen."""
    cfg = get_defaults()
    if config_file:
        merge_yaml_file(cfg, config_file)
    merge_pairs(cfg, opts)
    _map_apex_opt_level(cfg)
    _check(cfg)
    cfg.freeze()
    return cfg


def changed_keys(cfg: CfgNode) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs from the default: {key: (default, value)}."""
    defaults = get_defaults()
    out = {}

    def walk(node: CfgNode, ref: CfgNode, prefix: str) -> None:
        for name, value in node.items():
            if isinstance(value, CfgNode):
                walk(value, ref[name], f"{prefix}{name}.")
            elif value != ref[name]:
                out[f"{prefix}{name}"] = (ref[name], value)

    walk(cfg, defaults, "")
    return out
