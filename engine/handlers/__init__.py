"""The handler objects a training run is composed of, each with its own `attach` (and `state_dict` where it
keeps state). engine/training.py::attach_run_handlers is the one place that states their order."""

from engine.handlers.best_model import BestModel
from engine.handlers.epoch_seeding import EpochSeeding, loader_reseeder
from engine.handlers.evaluation import PeriodicEvaluation, RunEvents
from engine.handlers.progress import TrainingProgress
from engine.handlers.records import EvaluationRecords
from engine.handlers.schedule import ScheduleStepping
from engine.handlers.warm_epochs import WarmEpochs

__all__ = [
    "BestModel",
    "EpochSeeding",
    "EvaluationRecords",
    "PeriodicEvaluation",
    "RunEvents",
    "ScheduleStepping",
    "TrainingProgress",
    "WarmEpochs",
    "loader_reseeder",
]
