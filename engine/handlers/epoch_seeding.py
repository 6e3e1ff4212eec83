"""Everything random in epoch e follows from (SEED, e), so that a resumed run repeats its epochs exactly."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from engine.run.seeding import epoch_seed, seed_everything

# Called at each epoch start with (epoch, the epoch's seed): a sampler's set_epoch, a loader's worker seeds
Reseeder = Callable[[int, int], None]


def loader_reseeder(loader: DataLoader) -> Reseeder:
    """Re-seed a training loader at each epoch: its batch sampler's permutation (set_epoch, which mixes in
    SEED and the rank itself) and the generator its workers' seeds come from."""

    def reseed(epoch: int, seed: int) -> None:
        loader.batch_sampler.set_epoch(epoch)
        loader.generator.manual_seed(seed)

    return reseed


class EpochSeeding:
    """At each EPOCH_STARTED: seed Python, NumPy and torch from (SEED, epoch), then call every reseeder of the
    run in order (the training loader's first; a method appends its own, e.g. a validation loader's)."""

    def __init__(self, seed: int, reseeders: list[Reseeder]):
        self.seed = seed
        self.reseeders = reseeders  # the run's list: a method may append to it before training starts

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch)
        seed_everything(seed)
        for reseed in self.reseeders:
            reseed(engine.state.epoch, seed)

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self)
