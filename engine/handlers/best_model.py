"""The best model of a run: best.pt is rewritten when the main metric of the first evaluated dataset improves."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine
from torch import nn

from engine.handlers.evaluation import RunEvents
from engine.run.checkpoints import save_best_model
from modeling.weights import read_weights_file

logger = logging.getLogger("train")


class BestModel:
    """On EVALUATION_COMPLETED: when the first dataset's `main_metric` beats the best so far, write best.pt
    (rank 0, atomically). Its state (score, epoch) is saved in checkpoints under 'best', so that a resumed run
    keeps comparing against the same best. A checkpoint is written before its epoch's evaluation, so after a
    resume `catch_up` also reads the evaluation that best.pt may hold of the resumed epoch itself."""

    def __init__(self, model: nn.Module, path: Path, main_metric: str):
        self.model = model
        self.path = path
        self.main_metric = main_metric
        self.score = float("-inf")
        self.epoch = 0

    def __call__(self, engine: Engine) -> None:
        result = engine.state.evaluation[0]
        if result[self.main_metric] > self.score:
            self.score, self.epoch = result[self.main_metric], engine.state.epoch
            save_best_model(self.path, self.model, self.epoch, result)

    def catch_up(self, resumed_epoch: int) -> None:
        """Adopt best.pt's score when it records an evaluation newer than this state and not after
        `resumed_epoch` (the checkpoint of that epoch was written before that evaluation ran)."""
        if not self.path.is_file():
            return
        try:
            content = read_weights_file(self.path, "best.pt")  # its checksum verified
            epoch, score = int(content["epoch"]), float(content["metrics"][self.main_metric])
        except Exception as err:  # an unreadable best.pt must not stop a resume: the checkpoint's best stands
            logger.warning("Could not read the best score from %s (%s); keeping the checkpoint's", self.path, err)
            return
        if self.epoch < epoch <= resumed_epoch and score > self.score:
            self.score, self.epoch = score, epoch

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(RunEvents.EVALUATION_COMPLETED, self)

    def state_dict(self) -> dict:
        return {"score": self.score, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.score, self.epoch = float(state["score"]), int(state["epoch"])
