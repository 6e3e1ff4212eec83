"""A compiled CPU kernel for the re-ID ranker: per query, how many valid non-matching gallery items rank before
each of its true matches (engine/evaluation/reid_metrics.py gives the ranks from these counts).

The torch path of reid_metrics needs about eight passes over a ``(chunk, G)`` distance block (row minima and
maxima, a bin map, its integer cast, a histogram, a gather of flagged cells, a nonzero) and several of those
torch ops run on one thread: on a 2-core CPU they cost a third to a half of the distance product itself. This
kernel reads each distance once, in parallel over the rows (numba, compiled once and cached on disk).

For a query row with true matches sorted by the order rule (ascending distance, ties by gallery index;
their distances finite), ``m_1 <= ... <= m_K``, and the row's other items (same-identity items are skipped:
they are the true matches themselves or junk):

- a distance below ``m_1`` ranks before every match, a distance above ``m_K`` (or NaN) after every match;
- in between, ``t = (d - m_1) * (B - 1) / (m_K - m_1)`` puts the distance in one of ``B`` buckets, a map
  that never decreases with ``d``; the matches are put in buckets by the same arithmetic, so the matches of
  lower buckets rank before the item and those of higher buckets after it; only the few matches sharing its
  bucket are compared with the item's exact order key (``ordered_bits(d) * 2**32 + index``, the key of
  engine/evaluation/ranking.py).

``before[j]`` (the number of items ranked before the row's ``j``-th match) is the cumulative count of items
whose position among the matches is at most ``j``.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch

# Buckets per match of a row (about 1/64 of the items then share a bucket with a match and are compared exactly),
# and their bounds per row (a row's int32 bucket table stays within the L1/L2 cache).
_BUCKETS_PER_MATCH, _MIN_BUCKETS, _MAX_BUCKETS = 64, 1024, 8192


@numba.njit(cache=True, nogil=True, inline="always")
def _order_key(bits, index):  # pragma: no cover
    """ordered_bits of a finite fp32 distance (its bits as int32) * 2**32 + gallery index."""
    magnitude = bits & 0x7FFFFFFF
    signed = -magnitude if bits < 0 else magnitude
    return np.int64(signed) * 4294967296 + index


@numba.njit(parallel=True, cache=True, nogil=True)
def _count_before(dist, bits, query_pids, gallery_pids, match_ptr, match_dist, match_keys, before):  # pragma: no cover
    rows, width = dist.shape
    for row in numba.prange(rows):
        first, last = match_ptr[row], match_ptr[row + 1]
        num = last - first
        if num == 0:
            continue
        low, high = match_dist[first], match_dist[last - 1]
        buckets = min(max(num * _BUCKETS_PER_MATCH, _MIN_BUCKETS), _MAX_BUCKETS)
        scale = np.float32((buckets - 1) / (np.float64(high) - np.float64(low))) if high > low else np.float32(0.0)
        if not np.isfinite(scale):  # matches closer than fp32 resolves: one bucket, every item compared exactly
            scale = np.float32(0.0)
        # table[b] = 2 * (the number of matches in buckets below b) + (1 if bucket b holds a match)
        table = np.zeros(buckets + 1, dtype=np.int32)
        for j in range(num):
            table[_bucket(match_dist[first + j], low, scale, buckets) + 1] += 2
        for bucket in range(buckets):
            table[bucket + 1] += table[bucket]
        for j in range(num):
            table[_bucket(match_dist[first + j], low, scale, buckets)] |= 1
        counts = np.zeros(num + 1, dtype=np.int64)  # counts[p]: items with exactly p matches before them
        pid = query_pids[row]
        values, value_bits = dist[row], bits[row]
        for col in range(width):
            if gallery_pids[col] == pid:
                continue
            value = values[col]
            if value < low:
                counts[0] += 1
                continue
            if not value <= high:  # above the last match, or NaN
                continue
            bucket = _bucket(value, low, scale, buckets)
            entry = table[bucket]
            pos = entry >> 1
            if entry & 1:  # compare with the bucket's matches by the exact order key
                end = table[bucket + 1] >> 1
                key = _order_key(value_bits[col], col)
                while pos < end and match_keys[first + pos] < key:
                    pos += 1
            counts[pos] += 1
        total = 0
        for j in range(num):
            total += counts[j]
            before[first + j] = total


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket(value, low, scale, buckets):  # pragma: no cover
    """The bucket of a distance in [low, high]: never decreasing with the distance (fp32 rounding is monotone)."""
    return min(np.int32((value - low) * scale), buckets - 1)


def count_before_matches(
    dist: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    match_rows: torch.Tensor,
    match_dist: torch.Tensor,
    match_keys: torch.Tensor,
) -> torch.Tensor | None:
    """For each true match, the number of valid non-matching items ranked before it in its row.

    Args:
        dist: ``(c, G)`` fp32 CPU distances of a chunk of queries.
        query_pids, gallery_pids: int64 identities of the chunk's queries and of the gallery.
        match_rows, match_dist, match_keys: the true matches' rows, fp32 distances and order keys, sorted by
            (row, key).

    Returns:
        int64 counts in the order of the matches given, or ``None`` when a match's distance is not finite
        (the caller then takes the exact searchsorted path).
    """
    if not bool(torch.isfinite(match_dist).all()):
        return None
    dist = dist.contiguous()
    ptr = torch.zeros(dist.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(match_rows, minlength=dist.shape[0]), 0, out=ptr[1:])
    before = np.zeros(match_keys.numel(), dtype=np.int64)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _count_before(
        dist.numpy(),
        dist.view(torch.int32).numpy(),
        query_pids.contiguous().numpy(),
        gallery_pids.contiguous().numpy(),
        ptr.numpy(),
        match_dist.contiguous().numpy(),
        match_keys.contiguous().numpy(),
        before,
    )
    return torch.from_numpy(before)


def load_kernel() -> None:
    """Compile the kernel for the argument types count_before_matches passes, or load it from numba's on-disk
    cache (about half a second per process, several seconds the first time). Compiling runs nothing: a load in a
    background thread never launches the parallel kernel beside a call of the main thread (numba's workqueue
    threading layer, used where no OpenMP is found, refuses concurrent launches)."""
    dist = np.zeros((1, 2), dtype=np.float32)
    ids = np.zeros(1, dtype=np.int64)
    arguments = (dist, dist.view(np.int32), ids, ids, ids, dist[0], ids, ids)
    _count_before.compile(tuple(numba.typeof(argument) for argument in arguments))


_preload_lock = threading.Lock()
_preloading: threading.Thread | None = None


def preload_kernel() -> None:
    """load_kernel in a background thread, once per process: started when an evaluation begins extracting
    features (which takes longer), so that its ranking does not wait for the load."""
    global _preloading
    with _preload_lock:
        if _preloading is None:
            _preloading = threading.Thread(target=load_kernel, name="match-count-kernel-load", daemon=True)
            _preloading.start()
