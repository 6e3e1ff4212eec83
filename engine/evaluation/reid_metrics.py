"""Exact, memory-bounded re-identification metrics (CMC, mAP, mINP).

This module implements the standard re-ID evaluation protocol
(Market-1501 / DukeMTMC-reID / MSMT17 style) as a pure function,
:func:`reid_metrics`, that processes the queries in chunks so that peak memory
is ``O(chunk_size x G)`` instead of ``O(Q x G)``.

Protocol
--------
For every query ``q`` the *valid gallery* is the whole gallery minus the
"junk" items, i.e. the items that have the same identity **and** the same
camera as ``q`` (camera id ``-1`` means "no camera information"; such items are
never removed for camera reasons).  The valid gallery is ranked by ascending
distance to ``q``; exact ties are broken by gallery index (a stable sort), and
a NaN distance ranks after ``+inf`` whatever its sign bit (the order rule of
:mod:`engine.evaluation.ranking`, shared by every ranker of the engine).
A *true match* is a valid gallery item with the same identity as ``q``.
Queries without any true match are skipped: they are not counted in any mean,
and their number is reported.

With ``r_1 < r_2 < ... < r_K`` the 1-based ranks of the ``K`` true matches in
the valid ranked list:

* **CMC@k** (cumulative matching characteristic): ``1`` if ``r_1 <= k`` else
  ``0``, averaged over the non-skipped queries.  ``rank-1`` is CMC@1.
* **AP** (average precision): ``AP = (1/K) * sum_j  j / r_j``, i.e. the mean
  over the true matches of the precision at the rank of that match.  **mAP**
  is the mean of AP over the non-skipped queries.
* **INP** (inverse negative penalty; Ye et al., "Deep Learning for Person
  Re-identification: A Survey and Outlook", TPAMI 2021, with the AGW
  baseline): ``INP = K / r_K`` where ``r_K`` is the rank of the *hardest*
  (last) true match.  **mINP** is the mean of INP over the non-skipped queries.

Algorithm
---------
Only the ranks ``r_j`` of the (few) true matches are needed, and
``r_j = j + #{valid non-matching items ranked before match j}``; so no row is
ever fully sorted (on CPU a full sort of the distance block costs more than
the matrix product itself).  Per chunk of queries:

1. the ``(chunk, G)`` fp32 distance block comes from the distance-block provider
   of :mod:`engine.evaluation.ranking` (one matrix product for a built-in metric),
   or is given (:func:`reid_metrics_from_distances`, e.g. re-ranked distances);
2. the same-identity items of each query (true matches and junk) are listed
   sparsely from a pid-sorted gallery index, never via a dense mask;
3. every distance is mapped to one of ``B`` equal-width bins spanning its
   row's ``[min, max]`` (a monotone map, so a lower bin means a strictly
   smaller distance); a per-row histogram and its cumulative sum give, for
   each true match, the number of non-matching items in lower bins;
4. the few items sharing a bin with a true match are compared exactly with the
   match using the order key of :mod:`engine.evaluation.ranking`
   (``ordered_bits(distance) * 2**32 + gallery index``), which is exactly the
   order rule: ascending distance, ties by gallery index, NaN last.

On the CPU, large blocks take :mod:`engine.evaluation.match_count_kernel`
instead of steps 3-4: a compiled kernel that reads each distance once, in
parallel over the rows, and compares an item exactly only with the matches of
its bucket (the torch passes of steps 3-4, several of them single-threaded,
cost a third to a half of the distance product on a 2-core CPU).

If a distance block holds non-finite values, a fallback computes the same
counts with a batched ``searchsorted`` of every item's exact key among the
sorted true-match keys.  The final float arithmetic (AP, INP, CMC) is done in
float64 with numpy from the integer ranks, so CPU and CUDA give identical
numbers whenever they produce the same distances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.evaluation.ranking import (
    INT64_MAX,
    VALID_METRICS,
    DistanceBlocks,
    DistanceFn,
    DistanceSource,
    FeatureDistances,
    IdArray,
    as_distance_blocks,
    as_id_tensor,
    order_keys,
)

#: The ways of counting the items ranked before a true match (see reid_metrics' ``counting``).
COUNTING_PATHS = ("auto", "compiled", "binned", "search")
# The smallest CPU distance block "auto" counts with the compiled kernel (Market-1501: 256 x 15,913 = 4.1M).
_COMPILED_MIN_ELEMENTS = 2**20

#: Queries ranked at once by default (bounds memory to DEFAULT_CHUNK_SIZE x gallery size).
DEFAULT_CHUNK_SIZE = 256

__all__ = ["reid_metrics", "reid_metrics_from_distances", "VALID_METRICS", "IdArray", "DistanceFn"]

# Histogram bins per query row: about G / 8, a power of two in [16, 4096]; and
# chunk * bins stays below 2**22 so that fp32 bin coordinates are exact enough.
_MIN_BINS, _MAX_BINS, _MAX_CELLS = 16, 4096, 2**22


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _num_bins(num_gallery: int, chunk: int) -> int:
    """Histogram bins per row for a ``(chunk, G)`` block (see the constants above)."""
    b = 1 << max(0, (max(num_gallery // 8, 1) - 1).bit_length())
    b = min(max(b, _MIN_BINS), _MAX_BINS)
    while b > 4 and chunk * b > _MAX_CELLS:
        b //= 2
    return b


class _SameIdIndex:
    """Gallery indices grouped by pid, to list each query's same-pid items sparsely."""

    def __init__(self, gpids: torch.Tensor) -> None:
        self.sorted_pids, self.order = torch.sort(gpids, stable=True)

    def coords(self, qpids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-major ``(rows, cols)`` of all (query, gallery) pairs with equal pids."""
        start = torch.searchsorted(self.sorted_pids, qpids)
        count = torch.searchsorted(self.sorted_pids, qpids, right=True) - start
        rows = torch.repeat_interleave(torch.arange(qpids.numel(), device=qpids.device), count)
        first = torch.cumsum(count, 0) - count  # where each row's run starts
        pos = torch.arange(rows.numel(), device=qpids.device) - first[rows] + start[rows]
        return rows, self.order[pos]


# ---------------------------------------------------------------------------
# Ranks of the true matches for one chunk
# ---------------------------------------------------------------------------
def _count_before_binned(
    dist: torch.Tensor,
    qpids: torch.Tensor,
    gpids: torch.Tensor,
    same_rows: torch.Tensor,
    same_cols: torch.Tensor,
    t_rows: torch.Tensor,
    t_cols: torch.Tensor,
    t_keys: torch.Tensor,
    work_f: torch.Tensor,
    work_i: torch.Tensor,
) -> torch.Tensor | None:
    """For each true match (given sparsely), #valid non-matching items before it.

    Args:
        dist: ``(c, G)`` fp32 distances of the chunk.
        qpids, gpids: pids of the chunk's queries / of the gallery.
        same_rows, same_cols: coordinates of all same-pid items (true matches
            and junk), which are not "non-matching valid items".
        t_rows, t_cols, t_keys: coordinates and exact keys of the true matches.
        work_f, work_i: ``(>= c, G)`` fp32 / int32 scratch buffers.

    A per-row histogram over ``B`` distance bins counts the non-matching items
    in the bins below a match's bin; the items sharing a bin with a true
    match are compared exactly.  Returns ``None`` when the block has
    non-finite distances (the caller then uses :func:`_count_before_search`).
    """
    c, g = dist.shape
    dev = dist.device
    lo, hi = dist.amin(dim=1), dist.amax(dim=1)  # two passes: torch.aminmax's one is slower on the CPU
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        return None
    nbins = _num_bins(g, c)
    # Monotone map d -> r * B + floor((d - lo_r) * s_r), bins in [0, B - 2].
    span = (hi - lo).double()
    scale = torch.where(span > 0, (nbins - 2) / span.clamp(min=1e-300), 0.0).float()
    scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
    row_off = torch.arange(c, device=dev, dtype=torch.float32) * nbins
    work = work_f[:c]
    torch.sub(dist, lo.unsqueeze(1), out=work)
    torch.addcmul(row_off.unsqueeze(1), work, scale.unsqueeze(1), out=work)
    cell = work_i[:c].copy_(work)  # int32, truncation (monotone)
    cell_flat = cell.view(-1)
    ncells = c * nbins

    # Items per (row, bin), without the same-pid items (true matches and junk).
    hist = torch.bincount(cell_flat, minlength=ncells)
    hist -= torch.bincount(cell[same_rows, same_cols].long(), minlength=ncells)
    excl = torch.cumsum(hist, 0) - hist  # exclusive prefix over the flat (row, bin) cells
    row_base = excl[torch.arange(c, device=dev) * nbins]
    t_cells = cell[t_rows, t_cols].long()
    before = excl[t_cells] - row_base[t_rows]  # non-matches in lower bins of the row

    # Non-matching items sharing a bin with a true match: compare exactly.
    flagged = torch.zeros(ncells, dtype=torch.bool, device=dev)
    flagged[t_cells] = True
    e_idx = torch.index_select(flagged, 0, cell_flat).nonzero().squeeze(1)
    e_rows = torch.div(e_idx, g, rounding_mode="floor")
    e_cols = e_idx - e_rows * g
    keep = qpids[e_rows] != gpids[e_cols]  # drop the true matches and junk
    e_idx, e_rows, e_cols = e_idx[keep], e_rows[keep], e_cols[keep]
    if e_idx.numel() == 0:
        return before
    e_keys = order_keys(dist.view(-1)[e_idx], e_cols)
    e_cells = cell_flat[e_idx].long()
    # #E lexicographically (row, key) before a match, minus #E in lower cells,
    # = #E in the match's cell with a smaller key (cells are monotone in keys).
    n_e = e_keys.numel()
    all_keys = torch.cat((e_keys, t_keys))
    all_rows = torch.cat((e_rows, t_rows))
    o1 = torch.argsort(all_keys)
    order = o1[torch.argsort(all_rows[o1], stable=True)]
    is_e = (order < n_e).to(torch.int64)
    e_before = torch.cumsum(is_e, 0) - is_e
    lex_before = torch.empty(t_keys.numel(), dtype=torch.int64, device=dev)
    m_pos = order >= n_e
    lex_before[order[m_pos] - n_e] = e_before[m_pos]
    lower_cells = torch.searchsorted(torch.sort(e_cells).values, t_cells)
    return before + lex_before - lower_cells


def _count_before_search(
    dist: torch.Tensor,
    gidx: torch.Tensor,
    same_rows: torch.Tensor,
    same_keys: torch.Tensor,
    t_rows: torch.Tensor,
    t_keys: torch.Tensor,
) -> torch.Tensor:
    """Same as :func:`_count_before_binned` via a batched ``searchsorted`` of the
    exact keys of all items among each row's sorted true-match keys (handles
    any distances, including inf/nan)."""
    c = dist.shape[0]
    dev = dist.device
    num_matches = torch.bincount(t_rows, minlength=c)
    k_max = int(num_matches.max())
    # True-match keys in a padded (c, k_max) table, sorted per row.
    first = torch.cumsum(num_matches, 0) - num_matches
    slot = torch.arange(t_rows.numel(), device=dev) - first[t_rows]
    mkeys = torch.full((c, k_max), INT64_MAX, dtype=torch.int64, device=dev)
    mkeys[t_rows, slot] = t_keys
    mkeys = mkeys.sort(dim=1).values
    nb = k_max + 1
    keys = order_keys(dist, gidx)
    pos = torch.searchsorted(mkeys, keys, out_int32=True)  # #matches before each item
    del keys
    pos.add_(torch.arange(0, c * nb, nb, dtype=torch.int32, device=dev).unsqueeze(1))
    hist = torch.bincount(pos.view(-1), minlength=c * nb)
    del pos
    same_pos = torch.searchsorted(mkeys[same_rows], same_keys.unsqueeze(1)).squeeze(1)
    hist -= torch.bincount(same_rows * nb + same_pos, minlength=c * nb)
    cum = torch.cumsum(hist.view(c, nb), dim=1)  # cum[r, j] = #non-matches before match j
    j = torch.searchsorted(mkeys[t_rows], t_keys.unsqueeze(1)).squeeze(1)
    return cum[t_rows, j]


def _chunk_ranks(
    dist: torch.Tensor,
    qpids: torch.Tensor,
    gpids: torch.Tensor,
    q_pc: torch.Tensor,
    g_pc: torch.Tensor,
    same_index: _SameIdIndex,
    gidx: torch.Tensor,
    work: _WorkBuffers,
    counting: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the true matches of every query of a chunk, in its valid list.

    Returns numpy ``(num_matches (c,), rows (M,), ranks (M,))``: for each of the
    ``M`` true matches of the chunk, its query row and its 1-based rank in that
    query's valid ranked list.  ``counting`` (resolved, see :func:`reid_metrics`)
    picks how the items before each match are counted; every path gives the same
    numbers, and a block with a non-finite value takes the searchsorted path.
    """
    c = dist.shape[0]
    dev = dist.device
    same_rows, same_cols = same_index.coords(qpids)
    is_true = q_pc[same_rows] != g_pc[same_cols]
    t_rows, t_cols = same_rows[is_true], same_cols[is_true]
    num_matches = torch.bincount(t_rows, minlength=c)
    if t_rows.numel() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return num_matches.cpu().numpy(), empty, empty
    same_dist = dist[same_rows, same_cols]
    same_keys = order_keys(same_dist, same_cols)
    t_keys = same_keys[is_true]
    # the true matches in (row, key) order: order[i] is the i-th of them
    o1 = torch.argsort(t_keys)
    order = o1[torch.argsort(t_rows[o1], stable=True)]

    before = None
    if counting == "compiled":
        # imported here: numba loads only for evaluations that use it
        from engine.evaluation.match_count_kernel import count_before_matches

        in_order = count_before_matches(dist, qpids, gpids, t_rows[order], same_dist[is_true][order], t_keys[order])
        if in_order is not None:
            before = torch.empty_like(in_order)
            before[order] = in_order
    elif counting == "binned":
        work_f, work_i = work.get(dist)
        before = _count_before_binned(dist, qpids, gpids, same_rows, same_cols, t_rows, t_cols, t_keys, work_f, work_i)
    if before is None:
        before = _count_before_search(dist, gidx, same_rows, same_keys, t_rows, t_keys)

    # Index j (0-based) of each true match among its row's matches, by key.
    first = torch.cumsum(num_matches, 0) - num_matches
    j = torch.empty_like(order)
    j[order] = torch.arange(order.numel(), device=dev) - first[t_rows[order]]
    ranks = before + j + 1
    return num_matches.cpu().numpy(), t_rows.cpu().numpy(), ranks.cpu().numpy()


def _pair_ids(
    qpids: torch.Tensor, gpids: torch.Tensor, qcams: torch.Tensor, gcams: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ids of the (pid, camid) pairs, so that "same pid and same camera"
    is one comparison.  Queries with camid -1 get id -1, which no gallery item
    has, so nothing is ever removed for camera reasons for them."""
    # dense pid and camera indices combined into one integer: a 1-D unique (torch.unique over the rows of a
    # (N, 2) tensor costs ~0.4 s on the CPU at MSMT17's size)
    pid_index = torch.unique(torch.cat((qpids, gpids)), return_inverse=True)[1]
    cams, cam_index = torch.unique(torch.cat((qcams, gcams)), return_inverse=True)
    inverse = torch.unique(pid_index * cams.numel() + cam_index, return_inverse=True)[1]
    q_ids, g_ids = inverse[: qpids.numel()].clone(), inverse[qpids.numel() :]
    q_ids[qcams == -1] = -1
    return q_ids, g_ids


class _WorkBuffers:
    """The binned path's fp32 and int32 ``(chunk, G)`` scratch blocks, made when it first needs them."""

    def __init__(self) -> None:
        self._blocks: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._blocks is None or self._blocks[0].shape[0] < dist.shape[0]:
            shape, device = tuple(dist.shape), dist.device
            self._blocks = (
                torch.empty(shape, dtype=torch.float32, device=device),
                torch.empty(shape, dtype=torch.int32, device=device),
            )
        return self._blocks


def resolve_counting(counting: str, dist: torch.Tensor) -> str:
    """``counting`` with ``"auto"`` resolved for a distance block: the compiled kernel for CPU blocks of at least
    _COMPILED_MIN_ELEMENTS distances, the binned torch path otherwise (a GPU runs its passes in parallel; on a
    small block the kernel's one-off load, about half a second per process, costs more than it saves)."""
    if counting not in COUNTING_PATHS:
        raise ValueError(f"unknown counting {counting!r}; expected one of {list(COUNTING_PATHS)}")
    if counting != "auto":
        return counting
    return "compiled" if dist.device.type == "cpu" and dist.numel() >= _COMPILED_MIN_ELEMENTS else "binned"


def uses_compiled_kernel(num_query: int, num_gallery: int, device: torch.device, chunk_size: int = 0) -> bool:
    """Whether reid_metrics with counting "auto" ranks these sizes on `device` with the compiled kernel (an
    evaluation can then load it while it extracts the features: match_count_kernel.preload_kernel)."""
    rows = min(chunk_size or DEFAULT_CHUNK_SIZE, num_query)
    return device.type == "cpu" and rows * num_gallery >= _COMPILED_MIN_ELEMENTS


class _RunState:
    """Per-evaluation tensors on the device of the distance blocks (known once the first block exists)."""

    def __init__(self, ids: tuple[torch.Tensor, ...], device: torch.device, num_gallery: int) -> None:
        self.qpids, self.gpids, qcams, gcams = (t.to(device) for t in ids)
        self.q_pc, self.g_pc = _pair_ids(self.qpids, self.gpids, qcams, gcams)
        self.same_index = _SameIdIndex(self.gpids)
        self.gidx = torch.arange(num_gallery, dtype=torch.int64, device=device)
        self.work = _WorkBuffers()

    def ranks(
        self, dist: torch.Tensor, start: int, stop: int, counting: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`_chunk_ranks` of the block of queries ``start..stop-1``."""
        return _chunk_ranks(
            dist,
            self.qpids[start:stop],
            self.gpids,
            self.q_pc[start:stop],
            self.g_pc,
            self.same_index,
            self.gidx,
            self.work,
            resolve_counting(counting, dist),
        )


def _query_metrics(
    nm: np.ndarray, m_rows: np.ndarray, m_ranks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64 per-query metrics of a chunk from the integer ranks of its true matches.

    Returns ``(valid, ap, inp, first)``: which rows have a true match, and for those rows AP
    (``(1/K) sum_j j / r_j``), INP (``K / r_K``) and the first match's rank.
    """
    valid = nm > 0
    m_ranks = m_ranks.astype(np.float64)
    # matches sorted by (row, rank): the j-th match of a row has rank m_ranks
    order = np.lexsort((m_ranks, m_rows))
    m_rows, m_ranks = m_rows[order], m_ranks[order]
    first_idx = np.cumsum(nm) - nm  # index of each row's first match
    j = np.arange(m_rows.size) - first_idx[m_rows] + 1.0
    ap = np.bincount(m_rows, weights=j / m_ranks, minlength=nm.size)[valid] / nm[valid]
    last_idx = first_idx + nm - 1
    inp = nm[valid] / m_ranks[last_idx[valid]]
    first = m_ranks[first_idx[valid]].astype(np.int64)
    return valid, ap, inp, first


def _check_sizes(max_rank: int, chunk_size: int) -> tuple[int, int]:
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(max_rank), int(chunk_size)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def reid_metrics(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
    metric: str = "euclidean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    distance_fn: DistanceFn | None = None,
    return_per_query: bool = False,
    *,
    counting: str = "auto",
) -> dict[str, Any]:
    """Exact re-ID evaluation: CMC curve, mAP and mINP.

    See the module docstring for the protocol and the definitions.  Distances
    are computed in fp32 (features are cast to float32 whatever their dtype)
    on the device of the features, ``chunk_size`` queries at a time, by
    :class:`engine.evaluation.ranking.FeatureDistances`; the per-chunk
    temporaries are the fp32 distance block (``4 * chunk_size * G`` bytes) and
    small sparse arrays, plus ``9 * chunk_size * G`` bytes for the binned path
    (fp32 + int32 work buffers, one bool mask) and about 30 bytes per element
    for the searchsorted path (non-finite distances), and the
    gallery is never copied per chunk (it is cast to fp32 once if it is not
    fp32 already).

    Args:
        query_feats: ``(Q, D)`` query features.
        gallery_feats: ``(G, D)`` gallery features (same device as queries).
        query_pids, gallery_pids: identity labels (tensor, ndarray or list of
            ints) of length ``Q`` / ``G``.
        query_camids, gallery_camids: camera ids of length ``Q`` / ``G``;
            ``-1`` means "no camera": a gallery item is removed from a query's
            ranking iff it has the same pid and the same camid and that camid
            is not ``-1``.
        max_rank: length of the returned CMC curve.
        metric: ``"euclidean"`` (squared Euclidean distance
            ``||q||^2 + ||g||^2 - 2 q.g``; the per-query constant ``||q||^2``
            is left out as it does not change the ranking) or ``"cosine"``
            (``1 - cos(q, g)``, ranked as ``-cos(q, g)``).  Ignored when
            ``distance_fn`` is given.
        chunk_size: number of queries processed at once.
        distance_fn: optional ``distance_fn(q_chunk, gallery) -> (chunk, G)``
            distances (smaller = more similar) computed from the features;
            receives fp32 features and replaces ``metric``.  Its output is cast
            to fp32.  For distances that are not a function of the features
            (precomputed, re-ranked), use :func:`reid_metrics_from_distances`.
        return_per_query: also return per-query arrays (see below).
        counting: how the items ranked before each true match are counted:
            ``"compiled"`` (:mod:`engine.evaluation.match_count_kernel`, CPU
            blocks: one parallel pass over each distance), ``"binned"`` (torch
            histogram-of-bins with exact in-bin comparison, any device),
            ``"search"`` (torch batched searchsorted of exact keys), or
            ``"auto"``: compiled for CPU blocks of 2**20 distances or more,
            binned otherwise.  All give the same numbers (the tests run each);
            a block whose true matches include a non-finite distance (binned:
            any non-finite value) takes the search path.

    Returns:
        dict with
        ``cmc`` (float64 ndarray of length ``max_rank``; ``cmc[k-1]`` =
        CMC@k, constant past the end of a short gallery),
        ``rank1``, ``rank5``, ``rank10`` (floats, CMC@1/5/10, exact even when
        ``max_rank < 10``), ``mAP``, ``mINP`` (floats in ``[0, 1]``),
        ``num_query``, ``num_valid_query``, ``num_skipped_query`` (ints) and,
        if ``return_per_query``, ``per_query``: a dict of numpy arrays over
        all queries: ``ap`` and ``inp`` (float64, nan for skipped queries),
        ``first_match_rank`` (int64, 1-based, 0 if skipped), ``valid`` (bool).

    Raises:
        ValueError: on inconsistent shapes, an unknown ``metric``, bad
            ``max_rank``/``chunk_size``, or if no query has a true match.
    """
    _check_sizes(max_rank, chunk_size)
    blocks = FeatureDistances(query_feats, gallery_feats, metric, distance_fn)
    return reid_metrics_from_distances(
        blocks,
        query_pids,
        gallery_pids,
        query_camids,
        gallery_camids,
        max_rank=max_rank,
        chunk_size=chunk_size,
        return_per_query=return_per_query,
        counting=counting,
    )


def _sizes_of(distances: DistanceSource) -> tuple[int | None, int | None]:
    """``(Q, G)`` of a distance source when it tells them (a block function does not)."""
    if isinstance(distances, DistanceBlocks):
        return distances.num_query, distances.num_gallery
    if isinstance(distances, torch.Tensor):
        if distances.dim() != 2:
            raise ValueError(f"distances must be a 2-D (Q, G) tensor, got shape {tuple(distances.shape)}")
        return int(distances.shape[0]), int(distances.shape[1])
    return None, None


def reid_metrics_from_distances(
    distances: DistanceSource,
    query_pids: IdArray,
    gallery_pids: IdArray,
    query_camids: IdArray,
    gallery_camids: IdArray,
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_per_query: bool = False,
    *,
    counting: str = "auto",
) -> dict[str, Any]:
    """Exact re-ID evaluation (:func:`reid_metrics`' protocol and dict) of given distances.

    Args:
        distances: the ``(Q, G)`` distances (smaller = more similar) as a
            tensor, or as a block function ``(start, stop) -> (stop - start, G)``
            tensor (e.g. :meth:`engine.evaluation.reranking.KReciprocalReranker.distance_block`,
            so that no ``Q x G`` matrix exists), or as
            :class:`engine.evaluation.ranking.DistanceBlocks`.  Blocks are cast
            to fp32 and ranked by the order rule of :mod:`engine.evaluation.ranking`
            (ties by gallery index, NaN last).  ``Q`` and ``G`` are the lengths of
            the pids when a block function is given.
        query_pids, gallery_pids, query_camids, gallery_camids, max_rank,
        chunk_size, return_per_query, counting: as in :func:`reid_metrics`
            (a block function is asked for ``chunk_size`` queries at a time).

    Raises:
        ValueError: on inconsistent lengths or shapes, bad ``max_rank`` /
            ``chunk_size``, or if no query has a true match.
    """
    max_rank, chunk_size = _check_sizes(max_rank, chunk_size)
    num_q, num_g = _sizes_of(distances)
    device = distances.device if isinstance(distances, DistanceBlocks) else None
    qpids = as_id_tensor(query_pids, "query_pids", num_q, device)
    gpids = as_id_tensor(gallery_pids, "gallery_pids", num_g, device)
    num_q, num_g = qpids.numel(), gpids.numel()
    qcams = as_id_tensor(query_camids, "query_camids", num_q, device)
    gcams = as_id_tensor(gallery_camids, "gallery_camids", num_g, device)
    blocks = as_distance_blocks(distances, num_q, num_g)

    hist_len = max(max_rank, 10)
    first_hist = np.zeros(hist_len + 2, dtype=np.int64)  # counts of first-match ranks
    ap_all = np.full(num_q, np.nan, dtype=np.float64)
    inp_all = np.full(num_q, np.nan, dtype=np.float64)
    first_all = np.zeros(num_q, dtype=np.int64)

    with torch.no_grad():
        if num_q > 0 and num_g > 0:
            cs = min(chunk_size, num_q)
            state = None
            for start, stop, dist in blocks.chunks(cs):
                if state is None:  # a block function's device is known from its first block
                    state = _RunState((qpids, gpids, qcams, gcams), dist.device, num_g)
                nm, m_rows, m_ranks = state.ranks(dist, start, stop, counting)
                del dist
                if not (nm > 0).any():
                    continue
                valid, ap, inp, first = _query_metrics(nm, m_rows, m_ranks)
                idx = np.arange(start, stop)[valid]
                ap_all[idx] = ap
                inp_all[idx] = inp
                first_all[idx] = first
                first_hist += np.bincount(np.minimum(first, hist_len + 1), minlength=hist_len + 2)

    valid_all = first_all > 0
    num_valid = int(valid_all.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a true match in the gallery; check that query and gallery "
            "share identities (and that not every match is removed as same-camera junk)"
        )
    cmc_full = np.cumsum(first_hist[1 : hist_len + 1]).astype(np.float64) / num_valid
    result: dict[str, Any] = {
        "cmc": cmc_full[:max_rank].copy(),
        "rank1": float(cmc_full[0]),
        "rank5": float(cmc_full[4]),
        "rank10": float(cmc_full[9]),
        "mAP": float(np.mean(ap_all[valid_all])),
        "mINP": float(np.mean(inp_all[valid_all])),
        "num_query": int(num_q),
        "num_valid_query": num_valid,
        "num_skipped_query": int(num_q - num_valid),
    }
    if return_per_query:
        result["per_query"] = {
            "ap": ap_all,
            "inp": inp_all,
            "first_match_rank": first_all,
            "valid": valid_all,
        }
    return result
