"""Faults during evaluation lose no training: the epoch's checkpoint is on disk before the evaluation runs, a
failed evaluation says which checkpoint holds the run and how to resume, and a resumed run keeps the best
score of the evaluation that ran after its checkpoint."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from config import load_config
from engine.evaluation.dataset_evaluation import DatasetEvaluation
from engine.handlers import BestModel
from engine.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_opts(tiny_opts):
    """The shared tiny run for 2 epochs, evaluated and checkpointed after each (conftest's fixture with this
    module's settings)."""
    settings = {
        "SOLVER.MAX_EPOCHS": "2",
        "SOLVER.EVAL_PERIOD": "1",
        "SOLVER.CHECKPOINT_PERIOD": "1",
        "LOG.TENSORBOARD": "no",
        "LOG.PLOTS": "no",
    }
    return lambda root, out, **overrides: tiny_opts(root, out, **{**settings, **overrides})


def test_best_model_catches_up_with_the_evaluation_after_its_checkpoint(tmp_path, caplog):
    path = tmp_path / "best.pt"
    best = BestModel(nn.Linear(2, 2), path, "mAP")
    best.load_state_dict({"score": 0.3, "epoch": 1})
    best.catch_up(2)  # no best.pt: the checkpoint's state stands
    assert best.state_dict() == {"score": 0.3, "epoch": 1}
    torch.save({"model": {}, "epoch": 2, "metrics": {"mAP": 0.5, "dataset": "market1501"}}, path)
    best.catch_up(1)  # best.pt is newer than the resumed epoch: a later run's, not this checkpoint's
    assert best.state_dict() == {"score": 0.3, "epoch": 1}
    best.catch_up(2)
    assert best.state_dict() == {"score": 0.5, "epoch": 2}
    path.write_bytes(b"not a checkpoint")
    other = BestModel(nn.Linear(2, 2), path, "mAP")
    with caplog.at_level(logging.WARNING, logger="train"):
        other.catch_up(2)
    assert other.state_dict() == {"score": float("-inf"), "epoch": 0}
    assert "Could not read the best score" in caplog.text


@pytest.mark.e2e
def test_the_checkpoint_is_on_disk_before_the_evaluation_and_a_crash_says_how_to_resume(
    tiny_opts, market_root, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    original = DatasetEvaluation.run
    seen = []

    def failing_run(self):
        epoch = len(seen) + 1
        seen.append((out / "checkpoints" / f"checkpoint_{epoch}.pt").is_file())
        if epoch == 2:
            raise RuntimeError("out of memory while ranking")
        return original(self)

    monkeypatch.setattr(DatasetEvaluation, "run", failing_run)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(load_config(None, tiny_opts(market_root, out)))
    assert seen == [True, True]  # each epoch's checkpoint was written before its evaluation started
    log = (out / "log.txt").read_text()
    assert "Evaluation after epoch 2 failed" in log and "checkpoint_2.pt" in log and f"--resume {out}" in log


@pytest.mark.e2e
def test_a_resumed_run_keeps_the_best_score_of_the_evaluation_after_its_checkpoint(
    tiny_opts, market_root, tmp_path, monkeypatch
):
    """checkpoint_2 is written before epoch 2's evaluation (the only one), so it holds no best score; resumed
    from it, the run must still know that evaluation (best.pt): a worse epoch 3 must not replace it."""
    import json

    out = tmp_path / "run"
    opts = {"SOLVER.EVAL_PERIOD": "2"}
    train(load_config(None, tiny_opts(market_root, out, **opts)))
    epoch2 = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    original = DatasetEvaluation.run
    monkeypatch.setattr(DatasetEvaluation, "run", lambda self: {**original(self), "mAP": -1.0})
    train(load_config(None, tiny_opts(market_root, out, **opts, **{"SOLVER.MAX_EPOCHS": "3"})), resume=str(out))
    epoch3 = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert epoch3["epoch"] == 3 and epoch3["mAP"] == -1.0
    assert (epoch3["best_mAP"], epoch3["best_epoch"]) == (epoch2["mAP"], 2)
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2


@pytest.mark.e2e
def test_an_unreadable_gallery_image_ends_in_one_line_and_keeps_the_epoch(tiny_opts, market_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(market_root, root)
    victim = sorted((root / "market1501/bounding_box_test").glob("0*.jpg"))[-1]
    victim.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "run"
    # unchecked: the image check would stop the run before its first epoch (tests/test_image_check.py)
    command = [sys.executable, "train.py", *tiny_opts(root, out, **{"DATALOADER.CHECK_IMAGES": "off"})]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "evaluation after epoch 1 failed" in lines[0] and victim.name in lines[0]
    assert f"--resume {out}" in lines[0]
    assert (out / "checkpoints/checkpoint_1.pt").is_file()


def test_a_failed_evaluation_without_any_checkpoint_says_so(tmp_path):
    from engine.handlers.evaluation import PeriodicEvaluation

    evaluation = PeriodicEvaluation([], nn.Linear(2, 2), period=1, last_epoch=1, output_dir=tmp_path)
    assert "no checkpoint has been written yet" in evaluation.resume_hint(1)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/checkpoint_3.pt").write_bytes(b"")
    assert "checkpoint_3.pt" in evaluation.resume_hint(3) and f"--resume {tmp_path}" in evaluation.resume_hint(3)
