"""test.py over a folder of runs (the seed 003 `eval_model.py <folder>`): TEST.WEIGHT names a folder above run
folders, and every run under it (a folder holding best.pt and config.yaml) is evaluated with its own config,
the command line's KEY VALUE pairs on top; one table of the results at the end.

tools/summarize.py browses what the runs recorded while training (metrics.jsonl); this evaluates their best.pt
again, e.g. with other TEST.* keys (re-ranking, flip, another dataset)."""

from __future__ import annotations

import logging
from pathlib import Path

from config import UserError, load_config
from engine.checkpoint_testing import run_test
from engine.reporting.run_files import BEST_MODEL_FILE, CONFIG_FILE, TEST_LOG_FILE, atomic_write_text
from engine.run.output_dir import setup_logging

logger = logging.getLogger("test")

SUMMARY_FILE = "test_summary.md"
# the columns of the table: re-ID and retrieval metrics, whichever a result holds
SHOWN_METRICS = ("rank1", "mAP", "mINP", "R@1", "MAP@R", "NMI")


def run_folders(folder: Path) -> list[Path]:
    """The run folders under `folder` (itself included): those holding best.pt and config.yaml, in path order."""
    return sorted({p.parent for p in folder.rglob(BEST_MODEL_FILE) if (p.parent / CONFIG_FILE).is_file()})


def is_folder_of_runs(weight: str) -> bool:
    """TEST.WEIGHT names a folder without its own best.pt (a run folder stands for its best.pt)."""
    path = Path(weight)
    return bool(weight) and path.is_dir() and not (path / BEST_MODEL_FILE).is_file()


def summary_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table: one row per run and evaluated dataset."""
    shown = [m for m in SHOWN_METRICS if any(m in result for _, result in rows)]
    lines = ["| run | dataset | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for run, result in rows:
        values = [f"{100 * result[m]:.2f}" if m in result else "" for m in shown]
        lines.append(f"| {run} | {result.get('dataset', '')} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def evaluate_runs(cfg, opts: list[str]) -> list[tuple[str, dict]]:
    """Evaluate every run under cfg.TEST.WEIGHT: each with its config.yaml and then `opts` (the command line's
    KEY VALUE pairs), its best.pt, and OUTPUT_DIR/<the run's path under the folder>; then log the table and
    write it to OUTPUT_DIR/test_summary.md. Returns (run, result) per run and dataset."""
    folder = Path(cfg.TEST.WEIGHT)
    runs = run_folders(folder)
    if not runs:
        raise UserError(
            f"TEST.WEIGHT {folder} holds no run: expected best.pt and config.yaml in it or in folders below it"
        )
    output_dir = Path(cfg.OUTPUT_DIR)
    rows = []
    for run in runs:
        name = str(run.relative_to(folder)) if run != folder else run.name
        overrides = [*opts, "TEST.WEIGHT", str(run / BEST_MODEL_FILE), "OUTPUT_DIR", str(output_dir / name)]
        result = run_test(load_config(run / CONFIG_FILE, overrides))
        rows += [(name, r) for r in result["datasets"]] if "datasets" in result else [(name, result)]
    setup_logging(output_dir, TEST_LOG_FILE)
    table = summary_table(rows)
    logger.info("%d run(s) under %s, each with its own config.yaml:\n%s", len(runs), folder, table)
    atomic_write_text(output_dir / SUMMARY_FILE, table + "\n")
    return rows


def run_test_command(cfg, opts: list[str]):
    """test.py's job: the folder of runs TEST.WEIGHT names (evaluate_runs), or one checkpoint (run_test)."""
    return evaluate_runs(cfg, opts) if is_folder_of_runs(cfg.TEST.WEIGHT) else run_test(cfg)
