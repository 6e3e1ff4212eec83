"""Divide & Conquer's re-clustering (engine/methods/dc/clustering.py): the hierarchy's K per epoch, the Hungarian
re-assignment on a hand-made case, the retry rule, the 2-means split into children 2c / 2c+1, and the images a
round leaves out."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from engine.methods.dc.clustering import (
    cluster_summary,
    clusters_at_epoch,
    hungarian_reassignment,
    is_recluster_epoch,
    kmeans_with_retries,
    recluster,
    split_in_two,
    trainable_images,
    well_formed,
)


def blobs(centres: int, per_centre: int, dim: int = 8, spread: float = 0.01, seed: int = 0):
    """Well separated points: `centres` blobs of `per_centre` points; each blob holds 2 classes."""
    rng = np.random.default_rng(seed)
    middles = rng.normal(size=(centres, dim)) * 10
    features = np.concatenate([m + spread * rng.normal(size=(per_centre, dim)) for m in middles])
    blob = np.repeat(np.arange(centres), per_centre)
    classes = blob * 2 + (np.arange(len(blob)) % 2)
    return features.astype(np.float32), classes, blob


def test_k_doubles_every_mod_epoch_up_to_the_number_of_clusters():
    ks = [clusters_at_epoch(e, mod_epoch=2, nb_clusters=32) for e in range(14)]
    assert ks == [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 32, 32]
    assert [is_recluster_epoch(e, 2) for e in range(5)] == [True, False, True, False, True]


def test_hungarian_reassignment_keeps_the_previous_names():
    previous = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    # the same partition under other names, and one image that moved (index 4: from cluster 1 to cluster 2)
    new = np.array([2, 2, 2, 0, 1, 1, 1, 1, 1])
    # costs |A_i| + |B_j| - 2|A_i n B_j|: new 2 -> previous 0 (0), new 0 -> previous 1 (1), new 1 -> previous 2 (1)
    assert hungarian_reassignment(new, previous, 3).tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]


def test_hungarian_reassignment_minimises_the_total_l1_distance():
    rng = np.random.default_rng(4)
    for _ in range(20):
        previous, new = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        matched = hungarian_reassignment(new, previous, 4)
        # brute force over the 24 relabellings
        from itertools import permutations

        best = min(
            sum(int(((np.array(p)[new] == c) != (previous == c)).sum()) for c in range(4))
            for p in permutations(range(4))
        )
        assert sum(int(((matched == c) != (previous == c)).sum()) for c in range(4)) == best


def test_kmeans_retries_until_every_cluster_has_two_classes_with_two_images():
    features, classes, blob = blobs(3, 8)
    calls = []

    def flaky(x, k, niter, seed):
        calls.append(seed)
        if len(calls) < 3:  # a cluster of one class: not well formed
            return np.where(classes == 0, 0, 1 + (np.arange(len(x)) % (k - 1))).astype(np.int64), "test"
        return blob, "test"  # the blobs: 2 classes of 4 images each per cluster

    found = kmeans_with_retries(features, classes, 3, seed=10, kmeans_fn=flaky)
    assert calls == [10, 11, 12] and found.tries == 3 and found.well_formed
    never = kmeans_with_retries(
        features,
        classes,
        3,
        seed=10,
        max_tries=4,
        kmeans_fn=lambda x, k, n, s: (np.zeros(len(x), dtype=np.int64), "test"),
    )
    assert never.tries == 4 and not never.well_formed


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_kmeans_finds_separated_blobs_with_either_backend(monkeypatch, backend):
    features, classes, blob = blobs(4, 10)
    if backend == "sklearn":
        monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss then fails: the scikit-learn fallback
    else:
        pytest.importorskip("faiss", reason="faiss-cpu is in the test extra")
    found = kmeans_with_retries(features, classes, 4, seed=0)
    assert found.well_formed and found.backend == backend

    def is_the_blobs(assignment):  # the same partition as the blobs, whatever the names
        return len({(a, b) for a, b in zip(assignment.tolist(), blob.tolist())}) == 4

    if backend == "sklearn":  # k-means++ seeding: one centre per blob
        assert is_the_blobs(found.assignment)
    else:  # faiss seeds with random rows (two may share a blob): some seed of the first ten finds the blobs
        assert any(is_the_blobs(kmeans_with_retries(features, classes, 4, seed=s).assignment) for s in range(10))


def test_a_doubling_splits_every_cluster_into_children_2c_and_2c_plus_1():
    features, classes, blob = blobs(4, 10)
    previous = blob // 2  # two clusters, each of two blobs
    children = split_in_two(features, classes, previous, 2, seed=0).assignment
    assert set(children[previous == 0].tolist()) == {0, 1} and set(children[previous == 1].tolist()) == {2, 3}
    assert len({(a, b) for a, b in zip(children.tolist(), blob.tolist())}) == 4
    # recluster: k-means with 2, named as the previous round named the same images, then the split to 4
    two = kmeans_with_retries(features, classes, 2, seed=0).assignment
    previous = 1 - two  # the previous round called these clusters the other way round
    found = recluster(features, classes, previous, k_before=2, k_now=4, seed=0)
    assert found.k == 4 and found.well_formed
    assert set(found.assignment[previous == 0].tolist()) == {0, 1}
    assert set(found.assignment[previous == 1].tolist()) == {2, 3}
    with pytest.raises(ValueError, match="not 3"):
        recluster(features, classes, previous, k_before=2, k_now=3, seed=0)


def test_a_class_with_one_image_in_a_cluster_sits_out_that_round():
    assignment = np.array([0, 0, 0, 1, 1, 1])
    classes = np.array([5, 5, 6, 6, 6, 7])
    assert trainable_images(assignment, classes).tolist() == [True, True, False, True, True, False]
    assert not well_formed(assignment, classes, 2)
    assert cluster_summary(assignment, classes, 2) == [
        {"cluster": 0, "images": 3, "classes": 2},
        {"cluster": 1, "images": 3, "classes": 2},
    ]
