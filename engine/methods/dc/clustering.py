"""Divide & Conquer's re-clustering of the training set (seed 003; Sanakoyeu, Ma, Tschernezki, Büchler, Ommer:
"Improving Deep Metric Learning by Divide and Conquer", TPAMI 2021), as ../specs: divide_conquer.md states it.

- k-means with retries: up to `max_tries` seeds until every cluster holds at least 2 classes with at least 2
  images each (the last try is kept, and said, when none does);
- the `top_bot` hierarchy: K starts at 1 and doubles every MOD_EPOCH epochs up to NB_CLUSTERS; at a doubling,
  k-means with the current K, Hungarian re-assignment to the previous labels, then every cluster split by
  2-means into children 2c and 2c + 1; once K is reached, k-means with K and the Hungarian re-assignment every
  MOD_EPOCH epochs;
- the Hungarian re-assignment matches new clusters to previous ones by the L1 distance of their membership
  indicators (scipy's linear_sum_assignment), so that cluster c keeps meaning the same images (and mask);
- within a cluster, a class with a single image there is left out for that round.
All functions are pure (numpy in, numpy out); engine/methods/dc runs them on rank 0 and broadcasts the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from engine.evaluation.kmeans import kmeans

logger = logging.getLogger("train")

KMEANS_NITER = 100  # the seed's faiss niter
MAX_TRIES = 30  # the seed's re-tries with new seeds
KMeansFn = Callable[[np.ndarray, int, int, int], tuple[np.ndarray, str]]  # (x, k, niter, seed) -> (ids, backend)


def clusters_at_epoch(epoch: int, mod_epoch: int, nb_clusters: int) -> int:
    """K during 0-based `epoch` of the top_bot hierarchy: 1, doubling every `mod_epoch` epochs, at most
    `nb_clusters` (e.g. MOD_EPOCH 2, 32 clusters: K = 1, 1, 2, 2, 4, 4, ..., 32 from epoch 10 on)."""
    return min(nb_clusters, 2 ** (epoch // mod_epoch))


def is_recluster_epoch(epoch: int, mod_epoch: int) -> bool:
    """Whether the training set is re-clustered before 0-based `epoch` (every MOD_EPOCH epochs, epoch 0 too)."""
    return epoch % mod_epoch == 0


def well_formed(assignment: np.ndarray, classes: np.ndarray, k: int) -> bool:
    """Every one of the `k` clusters holds at least 2 classes with at least 2 images in it."""
    for cluster in range(k):
        _, counts = np.unique(classes[assignment == cluster], return_counts=True)
        if (counts >= 2).sum() < 2:
            return False
    return True


@dataclass
class Clustering:
    """An assignment of every training image to a cluster, and how it was found."""

    assignment: np.ndarray  # int64, one cluster id per training image
    k: int
    tries: int = 1
    backend: str = ""
    well_formed: bool = True


def kmeans_with_retries(
    features: np.ndarray,
    classes: np.ndarray,
    k: int,
    seed: int,
    max_tries: int = MAX_TRIES,
    niter: int = KMEANS_NITER,
    kmeans_fn: KMeansFn = kmeans,
) -> Clustering:
    """k-means with seeds seed, seed + 1, ... until the clusters are well formed (at most `max_tries`)."""
    if k == 1:  # nothing to cluster
        one = np.zeros(len(features), dtype=np.int64)
        return Clustering(one, 1, 0, "none", well_formed(one, classes, 1))
    assignment, backend = None, ""
    for attempt in range(max_tries):
        assignment, backend = kmeans_fn(features, k, niter, seed + attempt)
        if well_formed(assignment, classes, k):
            return Clustering(assignment, k, attempt + 1, backend, True)
    logger.warning(
        "k-means with %d clusters: no try of %d gave every cluster 2 classes with 2 images; keeping the last",
        k,
        max_tries,
    )
    return Clustering(assignment, k, max_tries, backend, False)


def hungarian_reassignment(new: np.ndarray, previous: np.ndarray, k: int) -> np.ndarray:
    """`new` relabelled so that each new cluster takes the label of the previous cluster whose members it
    matches best: cost(i, j) = L1 distance of the membership indicators = |A_i| + |B_j| - 2 |A_i n B_j|,
    minimised over one-to-one matchings (scipy.optimize.linear_sum_assignment)."""
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (new, previous), 1)
    sizes_new = np.bincount(new, minlength=k)
    sizes_previous = np.bincount(previous, minlength=k)
    cost = sizes_new[:, None] + sizes_previous[None, :] - 2 * overlap
    rows, cols = linear_sum_assignment(cost)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return mapping[new]


def split_in_two(
    features: np.ndarray,
    classes: np.ndarray,
    assignment: np.ndarray,
    k: int,
    seed: int,
    max_tries: int = MAX_TRIES,
    niter: int = KMEANS_NITER,
    kmeans_fn: KMeansFn = kmeans,
) -> Clustering:
    """Each cluster c split by 2-means into children 2c and 2c + 1 (a cluster of fewer than 2 images gives all
    of them to 2c); the tries of all the splits are summed."""
    children = np.empty_like(assignment)
    tries, backend = 0, "none"
    for cluster in range(k):
        members = np.flatnonzero(assignment == cluster)
        if len(members) < 2:
            children[members] = 2 * cluster
            continue
        halves = kmeans_with_retries(
            features[members], classes[members], 2, seed + 1000 * cluster, max_tries, niter, kmeans_fn
        )
        children[members] = 2 * cluster + halves.assignment
        tries, backend = tries + halves.tries, halves.backend
    return Clustering(children, 2 * k, tries, backend, well_formed(children, classes, 2 * k))


def recluster(
    features: np.ndarray,
    classes: np.ndarray,
    previous: np.ndarray | None,
    k_before: int,
    k_now: int,
    seed: int,
    max_tries: int = MAX_TRIES,
    niter: int = KMEANS_NITER,
    kmeans_fn: KMeansFn = kmeans,
) -> Clustering:
    """One re-clustering of the top_bot hierarchy: k-means with `k_before` clusters (Hungarian-matched to
    `previous` when there is one), then, when K doubles (`k_now` = 2 `k_before`), every cluster split in two."""
    if k_now not in (k_before, 2 * k_before):
        raise ValueError(f"top_bot goes from {k_before} clusters to {k_before} or {2 * k_before}, not {k_now}")
    found = kmeans_with_retries(features, classes, k_before, seed, max_tries, niter, kmeans_fn)
    assignment = found.assignment
    if previous is not None and k_before > 1:
        assignment = hungarian_reassignment(assignment, previous, k_before)
    tries, backend = found.tries, found.backend
    if k_now == 2 * k_before:
        split = split_in_two(features, classes, assignment, k_before, seed, max_tries, niter, kmeans_fn)
        assignment, tries = split.assignment, tries + split.tries
        backend = backend if backend != "none" else split.backend
    return Clustering(assignment, k_now, tries, backend, well_formed(assignment, classes, k_now))


def trainable_images(assignment: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Boolean mask of the images a round trains on: within each cluster, a class with a single image there is
    left out."""
    keep = np.ones(len(assignment), dtype=bool)
    pairs = assignment.astype(np.int64) * (int(classes.max()) + 1) + classes
    _, inverse, counts = np.unique(pairs, return_inverse=True, return_counts=True)
    keep[counts[inverse] < 2] = False
    return keep


def cluster_summary(assignment: np.ndarray, classes: np.ndarray, k: int) -> list[dict]:
    """Per cluster: its images and classes (what the log and the run folder record)."""
    return [
        {"cluster": c, "images": int((assignment == c).sum()), "classes": int(len(np.unique(classes[assignment == c])))}
        for c in range(k)
    ]
