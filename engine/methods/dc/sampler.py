"""Divide & Conquer's batches: `adaptbalanced` batches within each cluster, the clusters taken in turn
(seed 003; ../specs: divide_conquer.md).

Within a cluster, a batch of B images takes B / n classes, n images each (n = 2), chosen at random without
replacement among the cluster's classes; each class gives its next unseen images (its images are shuffled once
per epoch and read through a pointer; a class that runs out starts a new shuffle). A cluster with fewer than
B / n classes uses all of them with more images each (B split as evenly as it goes). A class that has fewer
images than it must give is topped up with other images of the cluster. A cluster gives max(1, images // B)
batches per epoch; the epoch takes batch i from cluster i mod K (its (i // K)-th batch; a cluster that ran out
starts over with new draws), for K x (the most batches of any cluster) batches.

Everything of epoch e follows from (seed, e): the batches, and each image's augmentation seed (as
data/samplers.py::SeededBatches). Items are (index, augmentation seed, cluster).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ClassPointers:
    """The per-class shuffled pointers of one cluster for one epoch."""

    def __init__(self, by_class: dict[int, np.ndarray], rng: np.random.Generator):
        self.by_class, self.rng = by_class, rng
        self.order = {c: rng.permutation(ix) for c, ix in by_class.items()}
        self.position = dict.fromkeys(by_class, 0)

    def take(self, label: int, count: int) -> list[int]:
        """The class's next `count` unseen images (a new shuffle when fewer are left); a class with no more
        than `count` images gives each of them once (the batch is then topped up from the cluster)."""
        images = self.by_class[label]
        if len(images) <= count:
            return [int(i) for i in self.rng.permutation(images)]
        if self.position[label] + count > len(images):
            self.order[label] = self.rng.permutation(images)
            self.position[label] = 0
        start = self.position[label]
        self.position[label] += count
        return [int(i) for i in self.order[label][start : start + count]]


def adaptbalanced_batch(
    classes: list[int], pointers: ClassPointers, members: np.ndarray, batch_size: int, per_class: int, rng
) -> list[int]:
    """One batch of a cluster (see the module docstring)."""
    wanted = batch_size // per_class
    if len(classes) >= wanted:
        chosen = rng.choice(classes, size=wanted, replace=False)
        counts = [per_class] * wanted
    else:
        chosen = rng.permutation(classes)
        base, extra = divmod(batch_size, len(classes))
        counts = [base + (1 if i < extra else 0) for i in range(len(classes))]
    batch = []
    for label, count in zip(chosen.tolist(), counts):
        batch += pointers.take(label, count)
    missing = batch_size - len(batch)
    if missing > 0:  # classes short of images: other images of the cluster
        batch += rng.choice(members, size=missing, replace=len(members) < missing).tolist()
    return batch


class ClusterBatches(Sampler):
    """The training loader's batch sampler under Divide & Conquer: call `set_assignment` after each
    re-clustering (cluster id per training image, -1 for an image left out of the round) and `set_epoch` at
    each epoch start. With several processes every rank takes the same clusters in the same turns (one
    assignment, broadcast) and draws its own batches of them (`rank` enters every draw): `batch_size` is the
    batch of all processes together, of which each draws batch_size / world_size images; the epoch's batches
    per cluster count global batches."""

    def __init__(
        self,
        labels: list[int],
        batch_size: int = 80,
        per_class: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size or (batch_size // world_size) % per_class:
            raise ValueError(
                f"a batch of {batch_size} images cannot be split into {world_size} process(es) of whole classes of "
                f"{per_class} images"
            )
        self.labels = np.asarray(labels)
        self.batch_size, self.per_class, self.seed, self.rank = batch_size, per_class, seed, rank
        self.local_batch_size = batch_size // world_size
        self.assignment = np.zeros(len(labels), dtype=np.int64)
        self.epoch = 0
        self._skip = 0

    def set_assignment(self, assignment: np.ndarray) -> None:
        self.assignment = np.asarray(assignment, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, count: int) -> None:
        self._skip = count

    @property
    def k(self) -> int:
        return int(self.assignment.max()) + 1

    def _members(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.assignment == cluster)

    def batches_per_cluster(self) -> list[int]:
        return [max(1, len(self._members(c)) // self.batch_size) for c in range(self.k)]

    def __len__(self) -> int:
        return self.k * max(self.batches_per_cluster())

    def _cluster_stream(self, cluster: int) -> Iterator[list[int]]:
        members = self._members(cluster)
        by_class = {int(c): members[self.labels[members] == c] for c in np.unique(self.labels[members])}
        classes = sorted(by_class)
        for restart in range(1 << 30):  # a cluster that ran out starts over with new draws
            rng = np.random.default_rng([self.seed, self.epoch, cluster, restart, self.rank])
            pointers = ClassPointers(by_class, rng)
            for _ in range(max(1, len(members) // self.batch_size)):
                yield adaptbalanced_batch(classes, pointers, members, self.local_batch_size, self.per_class, rng)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        streams = [self._cluster_stream(c) for c in range(self.k)]
        for number in range(len(self)):
            cluster = number % self.k
            batch = next(streams[cluster])
            if number < skip:
                continue
            seeds = np.random.default_rng([self.seed, self.epoch, 7, number, self.rank]).integers(
                0, 2**63 - 1, size=len(batch), dtype=np.int64
            )
            yield [(index, int(seed), cluster) for index, seed in zip(batch, seeds)]
