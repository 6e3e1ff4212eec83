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
distance to ``q``; exact ties are broken by gallery index (a stable sort).
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

1. the ``(chunk, G)`` fp32 distance block is one matrix product;
2. the same-identity items of each query (true matches and junk) are listed
   sparsely from a pid-sorted gallery index, never via a dense mask;
3. every distance is mapped to one of ``B`` equal-width bins spanning its
   row's ``[min, max]`` (a monotone map, so a lower bin means a strictly
   smaller distance); a per-row histogram and its cumulative sum give, for
   each true match, the number of non-matching items in lower bins;
4. the few items sharing a bin with a true match are compared exactly with the
   match using the integer key ``(order-preserving bits of the fp32 distance,
   gallery index)``, which is exactly the stable sort order.

If a distance block holds non-finite values, a fallback computes the same
counts with a batched ``searchsorted`` of every item's exact key among the
sorted true-match keys.  The final float arithmetic (AP, INP, CMC) is done in
float64 with numpy from the integer ranks, so CPU and CUDA give identical
numbers whenever they produce the same distances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from engine.evaluation.feature_ops import row_sq_norms

__all__ = ["reid_metrics", "VALID_METRICS"]

#: Built-in distance metrics accepted by :func:`reid_metrics`.
VALID_METRICS: tuple[str, ...] = ("euclidean", "cosine")

IdArray = torch.Tensor | np.ndarray | Sequence[int]
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_INT64_MAX = torch.iinfo(torch.int64).max
_NORM_EPS = 1e-12
# Gallery rows processed at once when computing gallery norms (bounds the
# temporary used for the squared features).
# Histogram bins per query row: about G / 8, a power of two in [16, 4096]; and
# chunk * bins stays below 2**22 so that fp32 bin coordinates are exact enough.
_MIN_BINS, _MAX_BINS, _MAX_CELLS = 16, 4096, 2**22
# Set to False to always use the searchsorted path (used by the tests).
_USE_BINNING = True


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _as_id_tensor(ids: IdArray, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Convert pids/camids (tensor, ndarray or list of ints) to an int64 tensor."""
    if isinstance(ids, torch.Tensor):
        t = ids.detach()
    else:
        arr = np.asarray(ids)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
            raise TypeError(f"{name} must contain integers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must contain integers, got dtype {t.dtype}")
    t = t.reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n}")
    return t.to(device=device, dtype=torch.int64)


def _exact_keys(dist_values: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
    """Exact int64 sort keys of fp32 distances: ``ordered_bits(d) * 2**32 + index``.

    ``ordered_bits`` maps fp32 to int32 monotonically (``-0.0`` and ``+0.0``
    share a key), so ascending keys == ascending distance with ties broken by
    gallery index, i.e. the stable sort order.  Works for any shape.
    """
    bits = dist_values.contiguous().view(torch.int32).to(torch.int64)
    # A negative float with raw bits b (sign bit set) has magnitude bits b + 2**31.
    bits = torch.where(bits < 0, -bits - 2**31, bits)
    return torch.add(gallery_index, bits, alpha=2**32)


def _num_bins(num_gallery: int, chunk: int) -> int:
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
    lo, hi = torch.aminmax(dist, dim=1)
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
    e_keys = _exact_keys(dist.view(-1)[e_idx], e_cols)
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
    mkeys = torch.full((c, k_max), _INT64_MAX, dtype=torch.int64, device=dev)
    mkeys[t_rows, slot] = t_keys
    mkeys = mkeys.sort(dim=1).values
    nb = k_max + 1
    keys = _exact_keys(dist, gidx)
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
    work_f: torch.Tensor,
    work_i: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the true matches of every query of a chunk, in its valid list.

    Returns numpy ``(num_matches (c,), rows (M,), ranks (M,))``: for each of the
    ``M`` true matches of the chunk, its query row and its 1-based rank in that
    query's valid ranked list.
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
    same_keys = _exact_keys(dist[same_rows, same_cols], same_cols)
    t_keys = same_keys[is_true]

    before = None
    if _USE_BINNING:
        before = _count_before_binned(dist, qpids, gpids, same_rows, same_cols, t_rows, t_cols, t_keys, work_f, work_i)
    if before is None:
        before = _count_before_search(dist, gidx, same_rows, same_keys, t_rows, t_keys)

    # Index j (0-based) of each true match among its row's matches, by key.
    o1 = torch.argsort(t_keys)
    order = o1[torch.argsort(t_rows[o1], stable=True)]
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
    pairs = torch.stack((torch.cat((qpids, gpids)), torch.cat((qcams, gcams))), dim=1)
    inverse = torch.unique(pairs, dim=0, return_inverse=True)[1]
    q_ids, g_ids = inverse[: qpids.numel()].clone(), inverse[qpids.numel() :]
    q_ids[qcams == -1] = -1
    return q_ids, g_ids


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
    chunk_size: int = 256,
    distance_fn: DistanceFn | None = None,
    return_per_query: bool = False,
) -> dict[str, Any]:
    """Exact re-ID evaluation: CMC curve, mAP and mINP.

    See the module docstring for the protocol and the definitions.  Distances
    are computed in fp32 (features are cast to float32 whatever their dtype)
    on the device of the features, ``chunk_size`` queries at a time; the
    per-chunk temporaries are about ``13 * chunk_size * G`` bytes (fp32
    distances, fp32 + int32 work buffers, one bool mask) plus small sparse
    arrays (the fallback for non-finite distances needs about 30 bytes per
    element more), and the gallery is never copied per chunk (it is cast to
    fp32 once if it is not fp32 already).

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
            distances (smaller = more similar); receives fp32 features and
            replaces ``metric``.  Its output is cast to fp32.
        return_per_query: also return per-query arrays (see below).

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
    if distance_fn is None and metric not in VALID_METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(VALID_METRICS)}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    max_rank = int(max_rank)
    chunk_size = int(chunk_size)
    if query_feats.dim() != 2 or gallery_feats.dim() != 2:
        raise ValueError(
            "query_feats and gallery_feats must be 2-D (N, D), got shapes "
            f"{tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}"
        )
    if distance_fn is None and query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"feature dimensions differ: query {query_feats.shape[1]} vs gallery {gallery_feats.shape[1]}")
    if query_feats.device != gallery_feats.device:
        raise ValueError(f"query_feats is on {query_feats.device} but gallery_feats is on {gallery_feats.device}")

    device = query_feats.device
    num_q, num_g = query_feats.shape[0], gallery_feats.shape[0]
    qpids = _as_id_tensor(query_pids, num_q, "query_pids", device)
    gpids = _as_id_tensor(gallery_pids, num_g, "gallery_pids", device)
    qcams = _as_id_tensor(query_camids, num_q, "query_camids", device)
    gcams = _as_id_tensor(gallery_camids, num_g, "gallery_camids", device)

    hist_len = max(max_rank, 10)
    first_hist = np.zeros(hist_len + 2, dtype=np.int64)  # counts of first-match ranks
    ap_all = np.full(num_q, np.nan, dtype=np.float64)
    inp_all = np.full(num_q, np.nan, dtype=np.float64)
    first_all = np.zeros(num_q, dtype=np.int64)

    with torch.no_grad():
        if num_q > 0 and num_g > 0:
            q_pc, g_pc = _pair_ids(qpids, gpids, qcams, gcams)
            same_index = _SameIdIndex(gpids)
            gal = gallery_feats.detach().to(torch.float32)  # no copy if already fp32
            if distance_fn is None:
                if metric == "euclidean":
                    g_aux = row_sq_norms(gal)  # ||g||^2
                else:  # cosine: 1 / ||g||
                    g_aux = row_sq_norms(gal).sqrt_().clamp_(min=_NORM_EPS).reciprocal_()
            gidx = torch.arange(num_g, dtype=torch.int64, device=device)
            cs = min(chunk_size, num_q)
            dist_buf = torch.empty((cs, num_g), dtype=torch.float32, device=device)
            work_f = torch.empty((cs, num_g), dtype=torch.float32, device=device)
            work_i = torch.empty((cs, num_g), dtype=torch.int32, device=device)

            for start in range(0, num_q, cs):
                stop = min(start + cs, num_q)
                c = stop - start
                q = query_feats[start:stop].detach().to(torch.float32)

                # --- (c, G) fp32 distances (ranking-equivalent) ---------------
                if distance_fn is not None:
                    dist = distance_fn(q, gal)
                    if not isinstance(dist, torch.Tensor) or tuple(dist.shape) != (c, num_g):
                        shape = tuple(dist.shape) if isinstance(dist, torch.Tensor) else type(dist)
                        raise ValueError(f"distance_fn returned {shape}, expected ({c}, {num_g})")
                    dist = dist.detach().to(device=device, dtype=torch.float32).contiguous()
                elif metric == "euclidean":  # ||g||^2 - 2 q.g
                    dist = torch.addmm(g_aux.unsqueeze(0), q, gal.t(), beta=1.0, alpha=-2.0, out=dist_buf[:c])
                else:  # cosine: -(q/|q|).g / |g|
                    qn = q / row_sq_norms(q).sqrt_().clamp_(min=_NORM_EPS).neg_().unsqueeze(1)
                    dist = torch.mm(qn, gal.t(), out=dist_buf[:c])
                    dist.mul_(g_aux.unsqueeze(0))

                nm, m_rows, m_ranks = _chunk_ranks(
                    dist, qpids[start:stop], gpids, q_pc[start:stop], g_pc, same_index, gidx, work_f, work_i
                )
                del dist

                # --- per-query metrics (float64, CPU) -------------------------
                valid = nm > 0
                if not valid.any():
                    continue
                m_ranks = m_ranks.astype(np.float64)
                # matches sorted by (row, rank): the j-th match of a row has rank m_ranks
                order = np.lexsort((m_ranks, m_rows))
                m_rows, m_ranks = m_rows[order], m_ranks[order]
                first_idx = np.cumsum(nm) - nm  # index of each row's first match
                j = np.arange(m_rows.size) - first_idx[m_rows] + 1.0
                ap = np.bincount(m_rows, weights=j / m_ranks, minlength=c)[valid] / nm[valid]
                last_idx = first_idx + nm - 1
                inp = nm[valid] / m_ranks[last_idx[valid]]
                first = m_ranks[first_idx[valid]].astype(np.int64)

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
