"""Learning-rate schedules advance by epochs (the seeds' STEPS, WARMUP_ITERS and decay steps count epochs)."""

from __future__ import annotations

from ignite.engine import Engine, Events

from solver import Solver


class ScheduleStepping:
    """At each EPOCH_COMPLETED: advance every scheduler of the solver by one epoch. Iterations that take no
    optimizer step (a method's skipped steps) do not move the schedule: it counts epochs, not steps."""

    def __init__(self, solver: Solver):
        self.solver = solver

    def __call__(self, engine: Engine) -> None:
        self.solver.epoch_completed()

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self)
