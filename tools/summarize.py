#!/usr/bin/env python
"""One table over a sweep of runs: the config keys that differ between them and their main numbers.

    python tools/summarize.py logs/                                  # every run folder under logs/
    python tools/summarize.py logs/market logs/duke --format csv --output sweep.csv
    python tools/summarize.py logs/ --keys MODEL.NAME SOLVER         # also show these keys (a section: all its keys)

A run folder is an OUTPUT_DIR of train.py: it holds `config.yaml` and/or `metrics.jsonl` (and maybe test.py's
`test_metrics.json`). A path given on the command line is either a run folder or a folder searched recursively
for run folders (the subfolders of a run folder are not searched).

One row per (run, evaluated dataset), with these columns:

- `run`: the run folder, relative to the common parent of the runs;
- the config keys (dotted, e.g. `SOLVER.BASE_LR`) whose values differ between the runs (OUTPUT_DIR ignored),
  in config order, plus those asked for with --keys;
- `dataset`;
- re-ID datasets: `mAP`, `rank-1` (last evaluation), `best mAP`, `best mAP epoch`, `rank-1 at best` (the rank-1
  of that evaluation);
- retrieval datasets: `R@K` (K = the first Recall@K of the run's list), `MAP@R` (last evaluation), `best R@K`,
  `best R@K epoch`, `NMI` (last evaluation, when the run computed it);
- when a run folder holds test_metrics.json: `test mAP`, `test rank-1` / `test R@K`, `test MAP@R`;
- `epochs`: the last epoch seen in metrics.jsonl (the epochs trained up to the last evaluation).

A protocol's columns appear only when some row uses it; a row leaves the other protocol's cells empty, and a run
without any evaluation yet leaves every metric cell empty (when no run has one, the re-ID columns are shown).
Numbers are in percent with two decimals. When a resumed run evaluated an epoch twice, the later line of
metrics.jsonl wins. The best evaluation is recomputed per dataset from the lines (the earliest epoch among equal
scores), because the `best_*` fields the trainer writes follow the first evaluated dataset only.

This script imports no torch (it starts in a fraction of a second): PyYAML and the standard library only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.reporting.run_files import CONFIG_FILE, METRICS_FILE, TEST_METRICS_FILE  # noqa: E402

logger = logging.getLogger("summarize")

RUN_MARKERS = (CONFIG_FILE, METRICS_FILE)
# Every run has its own OUTPUT_DIR by construction: showing it would only repeat the `run` column.
IGNORED_KEYS = ("OUTPUT_DIR",)
FORMATS = ("markdown", "csv")

REID_COLUMNS = ("mAP", "rank-1", "best mAP", "best mAP epoch", "rank-1 at best")
_MISSING = object()


class SummaryError(Exception):
    """A problem with the user's input (path, file content, key); main() prints it as one line and exits 2."""


# ---------------------------------------------------------------------------------------------------------
# Finding the runs


def is_run_dir(path: Path) -> bool:
    """A folder that train.py used as OUTPUT_DIR (it holds config.yaml or metrics.jsonl)."""
    return path.is_dir() and any((path / name).is_file() for name in RUN_MARKERS)


def _search(root: Path) -> list[Path]:
    if is_run_dir(root):
        return [root.resolve()]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if any(name in filenames for name in RUN_MARKERS):
            found.append(Path(dirpath).resolve())
            # A run's own subfolders (checkpoints/, visrank/, a test.py OUTPUT_DIR inside it) are part of it.
            dirnames[:] = []
        else:
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
    return found


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The run folders named by `paths` (run folders, or folders searched recursively), sorted, without repeats.

    A path to one of a run's files (config.yaml, metrics.jsonl, test_metrics.json) names its run folder. Raises
    SummaryError for a path that does not exist or holds no run.
    """
    runs: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SummaryError(f"{raw}: no such file or folder")
        if path.is_file():
            if path.name not in RUN_MARKERS + (TEST_METRICS_FILE,):
                raise SummaryError(f"{raw}: not a run folder (a folder holding {CONFIG_FILE} or {METRICS_FILE})")
            path = path.parent
        found = _search(path)
        if not found:
            raise SummaryError(f"{raw}: no run folder (a folder holding {CONFIG_FILE} or {METRICS_FILE}) in it")
        runs.update(found)
    # Sorting by parts keeps a folder's runs together ('a/x' before 'a-b', which plain strings would invert).
    return sorted(runs, key=lambda run: run.parts)


# ---------------------------------------------------------------------------------------------------------
# Configs


def flatten_config(config: Mapping | str | os.PathLike | None, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested config, in its order: {'SOLVER': {'BASE_LR': 1e-3}} -> {'SOLVER.BASE_LR': 1e-3}.

    `config` is the parsed mapping, YAML text, or a path (pathlib.Path) to a YAML file; None (an empty file)
    gives {}. Lists stay values; an empty section stays a key whose value is {}. Already-flat mappings come
    back unchanged.
    """
    if isinstance(config, os.PathLike):
        config = Path(config).read_text()
    if isinstance(config, str):
        config = yaml.safe_load(config)
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"a config must be a mapping of keys to values, not {type(config).__name__}")
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _key_order(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the configs, in the order of its first appearance (yacs dumps every run's keys in one order)."""
    order: dict[str, None] = {}
    for flat in flats:
        order.update(dict.fromkeys(flat))
    return list(order)


def differing_keys(configs: Sequence[Mapping[str, Any]], ignore: Iterable[str] = IGNORED_KEYS) -> list[str]:
    """The dotted keys whose values differ between the configs (nested or flat), in config order.

    A key that some configs lack differs too (a run made before the key existed); `ignore` (OUTPUT_DIR) never
    differs.
    """
    flats = [flatten_config(config) for config in configs]
    ignored = set(ignore)
    keys = []
    for key in _key_order(flats):
        if key in ignored:
            continue
        values = [flat.get(key, _MISSING) for flat in flats]
        if any(value is _MISSING for value in values) or any(value != values[0] for value in values[1:]):
            keys.append(key)
    return keys


def format_value(value: Any) -> str:
    """A config value in one short cell: YAML spellings for booleans and null, lists inline ('[40, 70]')."""
    if value is _MISSING:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _shown_keys(flats: Sequence[Mapping[str, Any]], requested: Iterable[str]) -> list[str]:
    order = _key_order(flats)
    shown = set(differing_keys(flats))
    for key in requested:
        if key in order:
            shown.add(key)
            continue
        # A section name (SOLVER, LOSS.CIRCLE) stands for every key under it.
        section = [name for name in order if name.startswith(key + ".")]
        if not section:
            raise SummaryError(f"--keys {key}: no such config key in the runs' {CONFIG_FILE}")
        shown.update(section)
    return [key for key in order if key in shown]


# ---------------------------------------------------------------------------------------------------------
# Metrics


def _read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return flatten_config(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, TypeError) as err:
        if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark is not None:
            reason = f"{err.problem} at line {err.problem_mark.line + 1}"
        else:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SummaryError(f"{path}: cannot read the config ({reason})") from None


def _read_metrics(run: Path) -> list[dict]:
    path = run / METRICS_FILE
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise SummaryError(f"{path}: cannot read it ({err.strerror})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # A run killed while appending leaves a cut last line; the others still count.
            logger.warning("%s:%d: not a JSON object, skipped", path, number)
            continue
        if isinstance(record, dict) and _is_number(record.get("epoch")):
            records.append(record)
        else:
            logger.warning("%s:%d: not an evaluation record (no epoch), skipped", path, number)
    return records


def _read_test_metrics(run: Path) -> list[dict]:
    path = run / TEST_METRICS_FILE
    if not path.is_file():
        return []
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("%s: unreadable (%s), skipped", path, err)
        return []
    # test.py writes one result object, or {"weight": ..., "datasets": [results]} for several datasets.
    results = content.get("datasets", [content]) if isinstance(content, dict) else []
    return [result for result in results if isinstance(result, dict)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if _is_number(value) else ""


def _epoch(value: Any) -> str:
    return str(int(value)) if _is_number(value) and float(value).is_integer() else str(value)


def _protocol(record: Mapping[str, Any]) -> str | None:
    protocol = record.get("protocol")
    if protocol in ("reid", "retrieval"):
        return protocol
    if "mAP" in record:
        return "reid"
    if _recall_key(record):
        return "retrieval"
    return None


def _recall_key(record: Mapping[str, Any]) -> str | None:
    """The first Recall@K of the record ('R@1'): the evaluator writes them in the order of TEST.RECALL_KS,
    whose first K is also the metric that picks the best model."""
    return next((key for key in record if key.startswith("R@") and _is_number(record[key])), None)


def _best(evaluations: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    best, score = None, -math.inf
    for record in evaluations:
        value = record.get(key)
        # Strictly greater, as the trainer does: among equal scores the earliest epoch is the best.
        if _is_number(value) and value > score:
            best, score = record, value
    return best


def _by_dataset(records: Sequence[dict], default: str) -> dict[str, list[dict]]:
    """Evaluations per dataset (in order of first appearance), one per epoch (the later line wins), by epoch."""
    grouped: dict[str, dict[float, dict]] = {}
    for record in records:
        grouped.setdefault(str(record.get("dataset") or default), {})[record["epoch"]] = record
    return {name: [epochs[e] for e in sorted(epochs)] for name, epochs in grouped.items()}


def _evaluation_cells(evaluations: Sequence[Mapping[str, Any]]) -> tuple[str | None, dict[str, str]]:
    final = evaluations[-1]
    protocol = _protocol(final)
    cells: dict[str, str] = {}
    if protocol == "reid":
        cells["mAP"], cells["rank-1"] = _percent(final.get("mAP")), _percent(final.get("rank1"))
        best = _best(evaluations, "mAP")
        if best is not None:
            cells["best mAP"], cells["best mAP epoch"] = _percent(best["mAP"]), _epoch(best["epoch"])
            cells["rank-1 at best"] = _percent(best.get("rank1"))
    elif protocol == "retrieval":
        recall = _recall_key(final)
        if recall is not None:
            cells[recall] = _percent(final[recall])
            best = _best(evaluations, recall)
            if best is not None:
                cells[f"best {recall}"], cells[f"best {recall} epoch"] = _percent(best[recall]), _epoch(best["epoch"])
        cells["MAP@R"] = _percent(final.get("MAP@R"))
        if _is_number(final.get("NMI")):
            cells["NMI"] = _percent(final["NMI"])
    return protocol, cells


def _test_cells(result: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    protocol = _protocol(result)
    if protocol == "reid":
        return protocol, {"test mAP": _percent(result.get("mAP")), "test rank-1": _percent(result.get("rank1"))}
    if protocol == "retrieval":
        recall = _recall_key(result)
        cells = {"test MAP@R": _percent(result.get("MAP@R"))}
        if recall is not None:
            cells[f"test {recall}"] = _percent(result[recall])
        return protocol, cells
    return None, {}


def _run_rows(run: Path, flat: Mapping[str, Any]) -> tuple[list[dict[str, str]], set[str]]:
    """The rows of one run (metric cells only) and the protocols they use."""
    names = flat.get("DATASETS.NAMES")
    # Records always name their dataset; a single-dataset config is the fallback for hand-made files.
    default = names if isinstance(names, str) else ""
    records = _read_metrics(run)
    epochs = _epoch(max(record["epoch"] for record in records)) if records else ""
    rows: dict[str, dict[str, str]] = {}
    protocols: set[str] = set()
    for dataset, evaluations in _by_dataset(records, default).items():
        protocol, cells = _evaluation_cells(evaluations)
        rows[dataset] = {"dataset": dataset, **cells}
        protocols.add(protocol)
    for result in _read_test_metrics(run):
        dataset = str(result.get("dataset") or default)
        protocol, cells = _test_cells(result)
        rows.setdefault(dataset, {"dataset": dataset}).update(cells)
        protocols.add(protocol)
    if not rows:
        rows[""] = {"dataset": ""}
    for row in rows.values():
        row["epochs"] = epochs
    return list(rows.values()), protocols - {None}


def _metric_columns(rows: Sequence[Mapping[str, str]], protocols: set[str]) -> list[str]:
    present = {column for row in rows for column in row}
    recalls = list(dict.fromkeys(c for row in rows for c in row if c.startswith("R@")))
    test_recalls = list(dict.fromkeys(c for row in rows for c in row if c.startswith("test R@")))
    columns: list[str] = []
    # With no evaluation anywhere yet, the re-ID columns (the project's default protocol) frame the empty cells.
    if "reid" in protocols or not protocols:
        columns += REID_COLUMNS
    if "retrieval" in protocols:
        columns += recalls + ["MAP@R"]
        for recall in recalls:
            columns += [f"best {recall}", f"best {recall} epoch"]
        columns += ["NMI"] if "NMI" in present else []
    columns += [c for c in ("test mAP", "test rank-1") if c in present]
    columns += test_recalls + (["test MAP@R"] if "test MAP@R" in present else [])
    return columns + ["epochs"]


# ---------------------------------------------------------------------------------------------------------
# Output


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[str] = ()) -> str:
    """A GitHub table, padded so that it also reads as a table in a terminal; `right` columns right-aligned."""
    right = set(right)
    table = [[_markdown_cell(cell) for cell in row] for row in [header, *rows]]
    widths = [max(3, *(len(row[i]) for row in table)) for i in range(len(header))]
    aligned = [name in right for name in header]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, aligned))
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, aligned)) + " |"
    return "\n".join([line(table[0]), rule, *(line(row) for row in table[1:])]) + "\n"


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def summary_table(
    paths: Iterable[str | os.PathLike], keys: Iterable[str] = ()
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, numeric columns) of the runs under `paths`."""
    runs = find_runs(paths)
    flats = [_read_config(run) for run in runs]
    shown = _shown_keys(flats, keys)
    # Relative to the common parent of the run folders' parents, so that a single run is named by its folder.
    parent = Path(os.path.commonpath([run.parent for run in runs]))
    all_rows: list[dict[str, str]] = []
    protocols: set[str] = set()
    for run, flat in zip(runs, flats):
        rows, used = _run_rows(run, flat)
        protocols |= used
        name = run.relative_to(parent).as_posix()
        values = {key: format_value(flat.get(key, _MISSING)) for key in shown}
        all_rows += [{"run": name, **values, **row} for row in rows]
    metric_columns = _metric_columns(all_rows, protocols)
    header = ["run", *shown, "dataset", *metric_columns]
    return header, [[row.get(column, "") for column in header] for row in all_rows], metric_columns


def summarize(paths: Iterable[str | os.PathLike], fmt: str = "markdown", keys: Iterable[str] = ()) -> str:
    """The table of the runs under `paths` as text: 'markdown' (GitHub table) or 'csv' (with a header row).

    `keys` are dotted config keys (or sections) shown even where every run has the same value. Raises
    SummaryError for a bad path, an unreadable config or an unknown key.
    """
    if fmt not in FORMATS:
        raise SummaryError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    header, rows, numeric = summary_table(paths, keys)
    return to_markdown(header, rows, right=numeric) if fmt == "markdown" else to_csv(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="summarize.py",
        description="One table (markdown or CSV) over run folders: differing config keys and the main metrics.",
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="a run folder (OUTPUT_DIR) or a folder searched recursively for run folders",
    )
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default: markdown)")
    parser.add_argument("--output", metavar="FILE", help="write the table to FILE instead of stdout")
    parser.add_argument(
        "--keys",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY",
        help="config keys (dotted, or a section) to show even where all runs agree; put it after the folders",
    )
    args = parser.parse_args(argv)
    try:
        text = summarize(args.dirs, args.format, args.keys)
        if args.output:
            try:
                Path(args.output).write_text(text, newline="")
            except OSError as err:
                raise SummaryError(f"--output {args.output}: cannot write it ({err.strerror})") from None
        else:
            sys.stdout.write(text)
    except SummaryError as err:
        print(f"summarize.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
