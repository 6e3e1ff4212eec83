"""Batch samplers: PK (identity-balanced) and plain random batches, seeded, epoch-aware, rank-sharded.

Both yield lists of dataset indices, one list per batch for *this* process. The global batch of
`batch_size` images is built identically on every rank from (seed, epoch) and each rank takes its slice,
so one process and N processes see the same global batches.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
from torch.utils.data import Sampler

from config.errors import ConfigError


class _EpochSeeded(Sampler):
    def __init__(self, seed: int, rank: int, world_size: int):
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.stream: tuple[int, ...] = ()  # more entropy for a sampler that must not repeat another's draws

    def set_epoch(self, epoch: int) -> None:
        """Batches of epoch e are a function of (seed, e) only: this is what makes resume exact."""
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *self.stream])


class PKBatchSampler(_EpochSeeded):
    """P identities x K images per batch (Hermans et al., "In Defense of the Triplet Loss", 2017).

    Each epoch every identity's images are shuffled and cut into groups of K (an identity with fewer than K
    images is drawn with replacement up to K; a remainder shorter than K is dropped, as in
    reid-strong-baseline). A batch takes one group from each of P distinct identities, chosen uniformly among
    the identities that still have groups; identities that ran out are refilled. The number of batches per
    epoch is fixed: (number of groups) // P.
    """

    def __init__(
        self, labels: list[int], batch_size: int, num_instances: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        super().__init__(seed, rank, world_size)
        if batch_size % num_instances:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH = {batch_size} is not a multiple of DATALOADER.NUM_INSTANCE = {num_instances}"
            )
        self.k = num_instances
        self.p = batch_size // num_instances
        if self.p % world_size:
            raise ConfigError(
                f"{self.p} identities per batch (SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE) cannot be split "
                f"evenly over {world_size} processes"
            )
        by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_label[label].append(index)
        self.labels = sorted(by_label)
        self.index_of = {label: np.asarray(by_label[label]) for label in self.labels}
        if len(self.labels) < self.p:
            raise ConfigError(
                f"a PK batch needs {self.p} identities (SOLVER.IMS_PER_BATCH {batch_size} / DATALOADER.NUM_INSTANCE "
                f"{num_instances}) but the training set has only {len(self.labels)}"
            )
        groups = sum(max(len(ix), self.k) // self.k for ix in self.index_of.values())
        self.num_batches = max(1, groups // self.p)

    def _groups(self, label: int, rng: np.random.Generator) -> list[np.ndarray]:
        indices = self.index_of[label]
        if len(indices) < self.k:
            indices = rng.choice(indices, size=self.k, replace=True)
        else:
            indices = rng.permutation(indices)
        n = len(indices) // self.k
        return [indices[i * self.k : (i + 1) * self.k] for i in range(n)]

    def __iter__(self):
        rng = self._rng()
        pending = {label: self._groups(label, rng) for label in self.labels}
        share = self.p // self.world_size
        for _ in range(self.num_batches):
            available = [lb for lb in self.labels if pending[lb]]
            if len(available) >= self.p:
                chosen = list(rng.choice(available, size=self.p, replace=False))
            else:
                others = [lb for lb in self.labels if not pending[lb]]
                chosen = available + list(rng.choice(others, size=self.p - len(available), replace=False))
            groups = []
            for label in chosen:
                if not pending[label]:
                    pending[label] = self._groups(label, rng)
                groups.append(pending[label].pop())
            mine = groups[self.rank * share : (self.rank + 1) * share]
            yield [int(i) for group in mine for i in group]

    def __len__(self) -> int:
        return self.num_batches


class RandomBatchSampler(_EpochSeeded):
    """Shuffled batches of `batch_size` images (the last incomplete batch dropped), sharded by rank."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        if batch_size % world_size:
            raise ConfigError(f"SOLVER.IMS_PER_BATCH = {batch_size} cannot be split evenly over {world_size} processes")
        if num_items < batch_size:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH = {batch_size} is larger than the training set ({num_items} images)"
            )
        self.num_items, self.batch_size = num_items, batch_size
        self.num_batches = num_items // batch_size

    def __iter__(self):
        order = self._rng().permutation(self.num_items)
        share = self.batch_size // self.world_size
        for b in range(self.num_batches):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [int(i) for i in batch[self.rank * share : (self.rank + 1) * share]]

    def __len__(self) -> int:
        return self.num_batches


class SeededBatches(Sampler):
    """The training loader's batch sampler: the batches of `batches` (PK or random), each index paired with the
    seed of that sample's augmentation (data/image_dataset.py draws its random transforms from it).

    A sample's seed follows from (seed, epoch, its position in the epoch's global batches), never from which
    process or DataLoader worker loads it: the augmentation, hence the training, is the same with any
    DATALOADER.NUM_WORKERS and any number of processes, and an epoch can be resumed after its k-th batch
    (`skip_batches`) with the same batches and the same augmentation as an uninterrupted run.
    """

    def __init__(self, batches: _EpochSeeded):
        self.batches = batches
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def skip_batches(self, count: int) -> None:
        """The next iteration starts after its first `count` batches (drawn, not yielded, so that the rest are
        those of a full iteration)."""
        self._skip = count

    def __iter__(self):
        skip, self._skip = self._skip, 0
        inner = self.batches
        for number, batch in enumerate(inner):
            if number < skip:
                continue
            share = len(batch)
            seeds = np.random.default_rng([inner.seed, inner.epoch, number]).integers(
                0, 2**63 - 1, size=share * inner.world_size, dtype=np.int64
            )
            mine = seeds[inner.rank * share : (inner.rank + 1) * share]
            yield [(index, int(seed)) for index, seed in zip(batch, mine)]

    def __len__(self) -> int:
        return len(self.batches)


class ValidationBatches(Sampler):
    """Endless class-balanced batches of the training split for a meta step's validation batch (MMSI, DDTAS):
    `batch_size` images, `per_class` of each class (PK sampling), each index paired with the seed of its
    augmentation as in SeededBatches. The batches of epoch e follow from (seed, e) alone, drawn independently
    of the training batches; when a pass over the classes runs out, a new one starts (another draw). A resumed
    epoch skips the batches it had drawn (`skip_batches`)."""

    VALIDATION_STREAM = 1  # keeps these draws apart from the training sampler's, which has the same seed

    def __init__(self, labels: list[int], batch_size: int, per_class: int, seed: int = 0):
        self.pk = PKBatchSampler(labels, batch_size, per_class, seed)
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, count: int) -> None:
        """The next iteration starts after its first `count` batches."""
        self._skip = count

    def __iter__(self):
        skip, self._skip = self._skip, 0
        number = 0
        for cycle in itertools.count():
            self.pk.set_epoch(self.epoch)
            self.pk.stream = (self.VALIDATION_STREAM, cycle)
            for batch in self.pk:
                if number >= skip:
                    seeds = np.random.default_rng([self.seed, self.epoch, self.VALIDATION_STREAM, number]).integers(
                        0, 2**63 - 1, size=len(batch), dtype=np.int64
                    )
                    yield [(index, int(seed)) for index, seed in zip(batch, seeds)]
                number += 1
