"""test.py over a folder of runs: each run's best.pt with its own config.yaml, one table (engine/runs_testing.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config import load_config
from engine.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_a_folder_of_runs_is_evaluated_run_by_run_with_their_own_configs(tiny_opts, market_root, tmp_path):
    sweep = tmp_path / "sweep"
    one_epoch = {"SOLVER.MAX_EPOCHS": "1", "SOLVER.EVAL_PERIOD": "1", "LOG.PLOTS": "no"}
    train(load_config(None, tiny_opts(market_root, sweep / "a", **one_epoch)))
    # another embedding size: loading b's best.pt into a model of a's config would fail
    train(load_config(None, tiny_opts(market_root, sweep / "nested/b", **one_epoch, **{"MODEL.EMBEDDING_DIM": "32"})))
    out = tmp_path / "tested"
    proc = subprocess.run(
        [
            sys.executable,
            "test.py",
            "TEST.WEIGHT",
            str(sweep),
            "OUTPUT_DIR",
            str(out),
            "DATASETS.ROOT_DIR",
            str(market_root),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "test_summary.md").read_text().splitlines()
    assert table[0].startswith("| run | dataset | rank1 | mAP") and len(table) == 4
    assert table[2].startswith("| a | market1501 |") and table[3].startswith("| nested/b | market1501 |")
    for run in ("a", "nested/b"):
        tested = json.loads((out / run / "test_metrics.json").read_text())
        best = json.loads((sweep / run / "metrics.jsonl").read_text().splitlines()[-1])
        assert tested["mAP"] == pytest.approx(best["mAP"], abs=1e-9) and tested["weight"].endswith("best.pt")
    assert "2 run(s) under" in proc.stdout


def test_a_folder_without_runs_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "test.py", "TEST.WEIGHT", str(tmp_path / "empty"), "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: TEST.WEIGHT {tmp_path / 'empty'} holds no run: expected best.pt and config.yaml in it or in folders "
        "below it"
    ]
