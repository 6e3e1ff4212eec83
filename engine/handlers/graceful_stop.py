"""Stopping on SIGTERM (how SLURM and Kubernetes preempt) and SIGINT (Ctrl-C) without losing the run.

A signal only sets a flag: nothing is interrupted half-way (a checkpoint being written is finished). The run
acts on it at the next safe point and raises StopRequested: after the current iteration (at the end of an
optimizer step of the training method), after the epoch's own checkpoint at an epoch's end, or between two
batches of an evaluation. engine/training.py then writes a checkpoint of that state, prints one line with the
--resume command, and exits 143 (SIGTERM) or 130 (SIGINT). A second Ctrl-C stops at once (KeyboardInterrupt;
files being written are removed, never left half-written).

With several processes, the ranks must stop at the same iteration: the flag is agreed by an all-reduce every
`agree_every` iterations (SOLVER.LOG_PERIOD) and at each epoch's end, and evaluations are not interrupted.
"""

from __future__ import annotations

import signal
import sys
import threading

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from engine.handlers.epoch_clock import epoch_finished

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopRequested(BaseException):  # noqa: N818 (a request, not an error)
    """A signal asked the run to stop; raised at a safe point of the training loop. Like KeyboardInterrupt it is
    not an Exception, so that no handler of errors (an evaluation's, a retry) takes it for one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


class SignalWatch:
    """Installs handlers of SIGTERM and SIGINT that record the signal (main thread only; elsewhere it watches
    nothing); `uninstall` restores the previous handlers."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> SignalWatch:
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        if self.received is None:
            self.received = signum
            if signum == signal.SIGINT:  # someone at a terminal: say that the stop is under way
                # no logging in a signal handler (it may hold the logging lock); straight to stderr
                sys.stderr.write("\nCtrl-C: stopping after this iteration with a checkpoint (Ctrl-C again: at once)\n")
                sys.stderr.flush()


class GracefulStop:
    """Raises StopRequested at the run's safe points once `watch` has seen a signal.

    `at_step_boundary(engine)`: whether the training method has no pending work after this iteration (e.g.
    gradients accumulated for a later step); the stop waits for it."""

    def __init__(self, watch: SignalWatch, at_step_boundary, agree_every: int = 1):
        self.watch = watch
        self.at_step_boundary = at_step_boundary
        self.distributed = idist.get_world_size() > 1
        self.agree_every = max(1, agree_every) if self.distributed else 1

    def _requested(self) -> int | None:
        if not self.distributed:
            return self.watch.received
        flag = torch.tensor(float(self.watch.received or 0), device=idist.device())
        agreed = int(idist.all_reduce(flag, op="MAX").item())
        return agreed or None

    def after_iteration(self, engine: Engine) -> None:
        """ITERATION_COMPLETED: stop within an epoch (its last iteration goes on to the epoch's handlers)."""
        if epoch_finished(engine) or not self.at_step_boundary(engine):
            return
        if self.distributed and engine.state.iteration % self.agree_every:
            return
        signum = self._requested()
        if signum is not None:
            raise StopRequested(signum)

    def after_epoch_checkpoint(self, engine: Engine) -> None:
        """EPOCH_COMPLETED, after the checkpoint and before the evaluation."""
        signum = self._requested()
        if signum is not None:
            raise StopRequested(signum)

    def during_evaluation(self, engine: Engine) -> None:
        """ITERATION_COMPLETED of an evaluation's extractor (one process only)."""
        if self.watch.received is not None:
            raise StopRequested(self.watch.received)

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.after_iteration)

    def attach_after_checkpoint(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.after_epoch_checkpoint)

    def attach_to_evaluations(self, evaluations) -> None:
        if not self.distributed:
            for evaluation in evaluations:
                evaluation.engine.add_event_handler(Events.ITERATION_COMPLETED, self.during_evaluation)
