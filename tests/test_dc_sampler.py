"""Divide & Conquer's adaptbalanced batches per cluster, clusters in turn (engine/methods/dc/sampler.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from engine.methods.dc.sampler import ClusterBatches


def labels_of(counts: dict[int, int]) -> list[int]:
    return [label for label, n in counts.items() for _ in range(n)]


def test_batches_take_distinct_classes_two_unseen_images_each_within_one_cluster():
    labels = labels_of({c: 8 for c in range(12)})  # 96 images, 12 classes
    sampler = ClusterBatches(labels, batch_size=8, per_class=2, seed=3)
    assignment = np.array([0 if label < 6 else 1 for label in labels])
    sampler.set_assignment(assignment)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 * 6  # K x max(48 // 8)
    seen = {0: Counter(), 1: Counter()}
    for number, batch in enumerate(batches):
        clusters = {cluster for _, _, cluster in batch}
        assert clusters == {number % 2}  # round-robin, one cluster per batch
        indices = [index for index, _, _ in batch]
        assert set(assignment[indices]) == {number % 2}
        per_class = Counter(labels[i] for i in indices)
        assert len(per_class) == 4 and set(per_class.values()) == {2}
        seen[number % 2].update(indices)
    # per-class pointers: over an epoch each image comes once before any comes twice
    for cluster in (0, 1):
        assert max(seen[cluster].values()) - min(seen[cluster].values()) <= 1


def test_a_cluster_with_few_classes_uses_them_all_and_short_classes_are_topped_up():
    labels = labels_of({0: 10, 1: 10, 2: 1, 3: 12})
    sampler = ClusterBatches(labels, batch_size=8, per_class=2, seed=0)
    sampler.set_assignment(np.zeros(len(labels), dtype=np.int64))
    for batch in sampler:
        indices = [index for index, _, _ in batch]
        assert len(indices) == 8
        counts = Counter(labels[i] for i in indices)
        # 4 classes < 8 / 2: all of them with 2 each; class 2 has one image, its missing one comes from the cluster
        assert set(counts) <= {0, 1, 2, 3} and counts[2] >= 1


def test_an_epoch_is_a_function_of_seed_and_epoch_and_can_skip_its_first_batches():
    labels = labels_of({c: 6 for c in range(10)})
    sampler = ClusterBatches(labels, batch_size=6, per_class=2, seed=5)
    sampler.set_assignment(np.array([c % 3 for c in labels]))
    sampler.set_epoch(2)
    first = list(sampler)
    assert list(sampler) == first
    sampler.skip_batches(4)
    assert list(sampler) == first[4:]
    sampler.set_epoch(3)
    assert list(sampler) != first


def test_images_left_out_of_a_round_are_never_drawn():
    labels = labels_of({c: 4 for c in range(6)})
    assignment = np.array([-1 if i % 4 == 0 else (i // 4) % 2 for i in range(len(labels))])
    sampler = ClusterBatches(labels, batch_size=4, per_class=2, seed=1)
    sampler.set_assignment(assignment)
    drawn = {index for batch in sampler for index, _, _ in batch}
    assert drawn and not drawn & set(np.flatnonzero(assignment == -1).tolist())


def test_the_dataset_returns_each_item_with_its_cluster(tmp_path):
    import torch
    from PIL import Image

    from data.image_dataset import ImageDataset
    from data.records import Record

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    dataset = ImageDataset([Record(str(tmp_path / "a.jpg"), 0, 1)], lambda image: torch.rand(2))
    assert dataset[(0, 5, 3)]["cluster"] == 3
    assert "cluster" not in dataset[(0, 5)] and torch.equal(dataset[(0, 5)]["image"], dataset[(0, 5, 1)]["image"])
