"""The EpochClock (engine/handlers/epoch_clock.py): epochs whose length changes at each start run whole, the
run ends by its epoch count (not by ignite's iteration arithmetic), and a state saved within an epoch or between
epochs resumes with exactly the batches an uninterrupted run trains."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from engine.handlers.epoch_clock import EpochClock, batches_done_in_epoch, iteration_in_epoch

LENGTHS = [4, 4, 4, 1, 6]  # the short 4th epoch would end ignite's run early: 13 >= 1 x 5 epochs


class PlannedLoader:
    """Epoch e (1-based, set at EPOCH_STARTED) yields LENGTHS[e - 1] batches (e, 0), (e, 1), ...; `skip` drops
    the first batches of the next pass (what ResumeWithinEpoch asks of a sampler)."""

    def __init__(self, lengths: list[int]):
        self.lengths = lengths
        self.epoch, self.skip = 0, 0

    def __len__(self):
        return self.lengths[self.epoch - 1]

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter([(self.epoch, i) for i in range(skip, len(self))])


def trainer_with_clock(
    seen: list, stop_after: int | None = None, lengths: list[int] = LENGTHS
) -> tuple[Engine, EpochClock, PlannedLoader]:
    """An engine recording its batches, with the clock's three handlers where engine/training.py puts them."""
    loader = PlannedLoader(lengths)

    def step(engine, batch):
        seen.append(batch)
        if stop_after is not None and engine.state.iteration == stop_after:
            engine.terminate()

    trainer = Engine(step)
    clock = EpochClock(trainer, loader)
    clock.attach_begin(trainer)

    def plan_epoch(engine):  # a method's epoch planning: the sampler's epoch and the batches to skip
        loader.epoch = engine.state.epoch
        loader.skip = batches_done_in_epoch(engine)

    trainer.add_event_handler(Events.EPOCH_STARTED, plan_epoch)
    clock.attach_plan(trainer)
    clock.attach_end(trainer)
    return trainer, clock, loader


def expected_batches(lengths: list[int] = LENGTHS) -> list[tuple[int, int]]:
    return [(e + 1, i) for e, length in enumerate(lengths) for i in range(length)]


def test_epochs_of_changing_length_run_whole_and_the_run_ends_by_its_epoch_count():
    seen: list = []
    trainer, _, loader = trainer_with_clock(seen)
    positions = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: positions.append(iteration_in_epoch(e)))
    trainer.run(loader, max_epochs=len(LENGTHS))
    assert seen == expected_batches()
    assert trainer.state.epoch == len(LENGTHS) and trainer.state.iteration == sum(LENGTHS)
    assert positions == [i + 1 for length in LENGTHS for i in range(length)]


@pytest.mark.parametrize("stop_after", [6, 8, 12, 13, 15])  # within epochs 2 and 5, at the ends of 2, 3 and 4
def test_a_state_saved_within_or_between_epochs_resumes_with_the_remaining_batches(stop_after):
    seen: list = []
    trainer, clock, loader = trainer_with_clock(seen, stop_after)
    trainer.run(loader, max_epochs=len(LENGTHS))
    saved = clock.state_dict()  # the trainer's checkpoint entry

    resumed_seen: list = []
    resumed, resumed_clock, resumed_loader = trainer_with_clock(resumed_seen)
    resumed_clock.load_state_dict(saved)
    expected = expected_batches()
    assert resumed.state.epoch == sum(1 for end in _epoch_ends() if end <= stop_after)
    assert resumed_clock.resumed_batches() == stop_after - max([0, *(e for e in _epoch_ends() if e <= stop_after)])
    resumed.run(resumed_loader, max_epochs=len(LENGTHS))
    assert seen + resumed_seen == expected
    assert resumed.state.epoch == len(LENGTHS) and resumed.state.iteration == sum(LENGTHS)


def _epoch_ends() -> list[int]:
    ends, total = [], 0
    for length in LENGTHS:
        total += length
        ends.append(total)
    return ends


def test_a_resume_that_raises_max_epochs_runs_every_new_epoch():
    # 4 epochs, then resumed to 5: with the 4th epoch's length (1) ignite would refuse the state (epoch 13 > 4)
    # and its run-end test would stop at once (13 >= 1 x 5)
    seen: list = []
    trainer, clock, loader = trainer_with_clock(seen)
    trainer.run(loader, max_epochs=4)
    resumed_seen: list = []
    resumed, resumed_clock, resumed_loader = trainer_with_clock(resumed_seen)
    resumed_clock.load_state_dict(clock.state_dict())
    resumed.run(resumed_loader, max_epochs=len(LENGTHS))
    assert seen + resumed_seen == expected_batches()


def test_a_trainer_entry_without_the_clock_part_resumes_by_ignite_arithmetic():
    # checkpoints written before the clock existed hold ignite's state dict alone (epochs of one length)
    lengths = [3, 3, 3]
    seen: list = []
    trainer, _, loader = trainer_with_clock(seen, stop_after=4, lengths=lengths)
    trainer.run(loader, max_epochs=3)
    resumed_seen: list = []
    resumed, resumed_clock, resumed_loader = trainer_with_clock(resumed_seen, lengths=lengths)
    resumed_clock.load_state_dict(dict(trainer.state_dict()))
    assert resumed.state.epoch == 1 and resumed_clock.resumed_batches() == 1
    resumed.run(resumed_loader, max_epochs=3)
    assert seen + resumed_seen == expected_batches(lengths)


def test_a_resumed_epoch_that_plans_another_length_is_refused():
    seen: list = []
    trainer, clock, loader = trainer_with_clock(seen, stop_after=6)
    trainer.run(loader, max_epochs=len(LENGTHS))
    state = clock.state_dict()
    state["clock"]["epoch_length"] += 1  # the epoch had another length when it was interrupted
    resumed, resumed_clock, resumed_loader = trainer_with_clock([])
    resumed_clock.load_state_dict(state)
    with pytest.raises(RuntimeError, match="plans 4 batches but had 5"):
        resumed.run(resumed_loader, max_epochs=len(LENGTHS))
