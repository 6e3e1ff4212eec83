"""Where the trainer stands within its epoch, for runs whose epochs differ in length.

A training method may plan each epoch when it starts, so that the training loader's length changes from one epoch
to the next (Divide & Conquer: K x the most batches of any cluster, after each re-clustering). ignite counts an
epoch as `state.epoch_length` iterations and assumes one length for the whole run when it derives the epoch
from the iteration count (loading a state: iteration // epoch_length), the batches already done in a resumed
epoch (iteration % epoch_length), and the end of the run (iteration >= epoch_length x max_epochs). Its
maintainers' way to change the length is to set `state.epoch_length` in a handler (pytorch/ignite#1454); the
EpochClock does that and keeps what ignite's arithmetic would get wrong:

- `state.epoch_start`: the iteration count when the current epoch began, so that the batches done in the epoch
  are iteration - epoch_start (`batches_done_in_epoch`, which every "resumed within an epoch" check reads);
- EPOCH_STARTED, first handler (`begin`): a new epoch starts at the current iteration; an epoch resumed after
  its k-th batch keeps the start saved in the checkpoint;
- EPOCH_STARTED, after the training method's handlers (`plan`): `state.epoch_length` = the training loader's
  length for this epoch, and ignite's counter of the epoch's batches starts at the batches already done;
- EPOCH_COMPLETED, last handler (`end`), and after a checkpoint is loaded: between epochs `state.epoch_length`
  holds a value that ignite's iteration >= epoch_length x max_epochs cannot mistake for the end of the run
  (which ends by its epoch count);
- the clock is the trainer's checkpoint entry ('trainer'): ignite's state dict with an epoch length ignite's
  loader accepts, plus the epochs completed, the current epoch's start and its length.

For a run whose epochs all have one length every value is ignite's own; a 'trainer' entry without the clock's
part (written before it existed, by a run of constant epoch length) resumes by ignite's arithmetic.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from torch.utils.data import DataLoader


def batches_done_in_epoch(engine: Engine) -> int:
    """At EPOCH_STARTED: how many batches of the epoch were trained before this run started it (0 for an epoch
    started afresh, k for an epoch resumed after its k-th batch: ignite fires EPOCH_STARTED for its rest too).
    (On an engine without a clock: ignite's iteration % epoch_length.)"""
    start = getattr(engine.state, "epoch_start", None)
    if start is not None:
        return engine.state.iteration - start
    length = engine.state.epoch_length
    return engine.state.iteration % length if length else 0


def iteration_in_epoch(engine: Engine) -> int:
    """During an iteration and at ITERATION_COMPLETED: its 1-based position in the epoch (the epoch's length at
    its last one). (On an engine without a clock: ignite's (iteration - 1) % epoch_length + 1.)"""
    start = getattr(engine.state, "epoch_start", None)
    if start is not None:
        return engine.state.iteration - start
    return (engine.state.iteration - 1) % engine.state.epoch_length + 1


def epoch_finished(engine: Engine) -> bool:
    """At ITERATION_COMPLETED or EPOCH_COMPLETED: whether every batch of the current epoch has been trained."""
    return engine.state.epoch_length is not None and iteration_in_epoch(engine) == engine.state.epoch_length


def _run_safe_length(length: int, iteration: int, max_epochs: int | None, epochs_completed: int) -> int:
    """`length`, raised where needed for ignite's arithmetic on the whole run: while epochs remain, iteration <
    length x max_epochs (its run-end test by iterations must not fire before the last epoch); after the last,
    iteration // length <= max_epochs (its state loader refuses an epoch past max_epochs). Unchanged for a run
    whose epochs all have one length."""
    if not max_epochs:
        return length
    if epochs_completed < max_epochs:
        return max(length, iteration // max_epochs + 1)
    return max(length, iteration // (max_epochs + 1) + 1)


class EpochClock:
    """The trainer's position within its epoch for epochs of changing length (see the module docstring)."""

    def __init__(self, trainer: Engine, loader: DataLoader):
        self.trainer, self.loader = trainer, loader
        self.length: int | None = None  # the current (or last) epoch's own length; state.epoch_length may be raised
        self._started = False  # whether this run has started an epoch
        self._loaded: dict | None = None  # the clock's part of the trainer entry resumed from

    def begin(self, engine: Engine) -> None:
        """EPOCH_STARTED, before every other handler: where the epoch starts."""
        start = engine.state.iteration
        if not self._started:
            self._started = True
            if self._loaded is not None:
                if self._loaded["done"]:
                    start = self._loaded["epoch_start"]
            elif engine.state.epoch_length:  # a fresh run (iteration 0) or a checkpoint without a clock entry
                start -= engine.state.iteration % engine.state.epoch_length
        engine.state.epoch_start = start

    def plan(self, engine: Engine) -> None:
        """EPOCH_STARTED, after the training method's handlers: the epoch's length, and ignite's count of the
        epoch's batches set to those already done."""
        done = batches_done_in_epoch(engine)
        length = len(self.loader)
        if done and self._loaded is not None and self._loaded["done"]:
            saved = self._loaded["epoch_length"]
            if length != saved:
                raise RuntimeError(
                    f"the resumed epoch {engine.state.epoch} plans {length} batches but had {saved} when it was "
                    "interrupted: the run's epoch plan is not a function of its checkpoint"
                )
        engine.state.epoch_length = self.length = length
        # ignite's own count of the epoch's batches (it would compute iteration % epoch_length, which holds only
        # for epochs of one length); read once, at the epoch's first batch
        engine._init_iter = done
        self._loaded = None

    def end(self, engine: Engine) -> None:
        """EPOCH_COMPLETED, after every other handler: a length that cannot end the run early."""
        engine.state.epoch_length = _run_safe_length(
            engine.state.epoch_length, engine.state.iteration, engine.state.max_epochs, engine.state.epoch
        )

    def attach_begin(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self.begin)

    def attach_plan(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self.plan)

    def attach_end(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.end)

    def resumed_batches(self) -> int:
        """After a checkpoint was loaded: the batches of the interrupted epoch already trained (0 between
        epochs)."""
        if self._loaded is not None:
            return self._loaded["done"]
        length = self.trainer.state.epoch_length
        return self.trainer.state.iteration % length if length else 0  # a checkpoint without the clock's part

    @property
    def state(self):
        """The trainer's ignite state (this object stands for the trainer in checkpoints)."""
        return self.trainer.state

    def state_dict(self) -> dict:
        """The trainer's checkpoint entry: ignite's state dict, whose epoch_length is one ignite's loader accepts
        (iteration // epoch_length must not pass max_epochs), and under 'clock' the epochs completed, the
        current epoch's start, its length and the batches of it done."""
        state = self.trainer.state
        length = self.length or state.epoch_length
        done = state.iteration - state.epoch_start if hasattr(state, "epoch_start") else 0
        between = done in (0, length)  # at an epoch's end, or before the next one started
        completed = state.epoch if between else state.epoch - 1
        saved = dict(self.trainer.state_dict())
        saved["epoch_length"] = _run_safe_length(length, state.iteration, state.max_epochs, completed)
        saved["clock"] = {
            "epochs_completed": completed,
            "epoch_start": state.iteration - done,
            "epoch_length": length,
            "done": 0 if between else done,
        }
        return saved

    def load_state_dict(self, saved: dict) -> None:
        """Load the trainer's ignite state, then set its epoch and length from the clock's part (an entry without
        one, written before the clock existed by a run of constant epoch length, keeps ignite's arithmetic)."""
        saved = dict(saved)
        clock = saved.pop("clock", None)
        self.trainer.load_state_dict(saved)
        if clock is None:
            return
        self._loaded = dict(clock)
        state = self.trainer.state
        state.epoch = int(clock["epochs_completed"])
        # mid-epoch: where that epoch started; between epochs: the next one starts here
        state.epoch_start = int(clock["epoch_start"]) if clock["done"] else state.iteration
        self.length = int(clock["epoch_length"])
        state.epoch_length = _run_safe_length(self.length, state.iteration, state.max_epochs, state.epoch)
