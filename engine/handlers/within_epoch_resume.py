"""Resuming inside an epoch: a run stopped by a signal writes a checkpoint after k batches of epoch e
(engine/run/checkpoints.py, `checkpoint_<e>_iter<k>.pt`); resumed, it trains the same remaining batches of that
epoch with the same random numbers, so that it ends as the uninterrupted run would have."""

from __future__ import annotations

from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from engine.handlers.epoch_clock import batches_done_in_epoch
from engine.run.seeding import restore_rng_states, rng_states


class ResumeWithinEpoch:
    """Saved (as 'within_epoch') only in a mid-epoch checkpoint: the global generators' states after the k-th
    batch. On the resumed EPOCH_STARTED (ignite fires it for the partial epoch: batches_done_in_epoch is k),
    after EpochSeeding has seeded the epoch as usual: the generators are set to
    the saved states and the training loader skips the k batches already trained (its batches and their
    augmentation seeds follow from (SEED, epoch) and their position: data/samplers.py::SeededBatches).

    A training method that draws batches of its own (a validation loader) restores its own position through its
    checkpoint_state()."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.pending: dict | None = None

    def __call__(self, engine: Engine) -> None:
        done = batches_done_in_epoch(engine)
        if self.pending is None or done == 0:
            return
        restore_rng_states(self.pending["rng"])
        self.loader.batch_sampler.skip_batches(done)
        self.pending = None

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self)

    def state_dict(self) -> dict:
        return {"rng": rng_states()}

    def load_state_dict(self, state: dict) -> None:
        self.pending = dict(state)
