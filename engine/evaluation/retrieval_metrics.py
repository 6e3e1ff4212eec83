"""Exact, memory-bounded retrieval metrics (Recall@K, MAP@R, R-precision, mARP, NMI).

This module implements the deep-metric-learning retrieval protocol (CUB-200,
Cars-196, Stanford Online Products, In-shop, VehicleID retrieval) as a pure
function, :func:`retrieval_metrics`, that processes the queries in chunks so
that peak memory is ``O(chunk_size x G)``, never ``O(Q x G)``.

Protocol
--------
Every query ``q`` is ranked against its *gallery* by ascending fp32 distance;
exact ties are broken by gallery index (a stable sort) and a NaN distance ranks
after ``+inf`` whatever its sign bit (the order rule of
:mod:`engine.evaluation.ranking`, shared by every ranker of the engine).  When no separate
gallery is given, the query set is the gallery and each query is removed from
its own gallery **by index** (never by distance, so exact duplicates of a query
stay in its gallery and still count as hits).  A *hit* (``rel(i) = 1``) is a
gallery item at rank ``i`` with the same label as the query.  ``R`` is the
number of same-label items in the query's gallery (itself excluded).

* **Recall@K** (``R@K``; the "R@K" of the DML papers, e.g. Oh Song et al.,
  "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016;
  it equals CMC@K of re-ID): ``1`` if at least one hit is among the ``K``
  nearest gallery items, else ``0``; averaged over the queries.
* **MAP@R** (Musgrave, Belongie & Lim, "A Metric Learning Reality Check",
  ECCV 2020): ``MAP@R = (1/R) * sum_{i=1..R} P(i) * rel(i)`` with
  ``P(i)`` the precision at rank ``i`` (hits within the first ``i`` / ``i``);
  averaged over the queries.
* **R-precision** (same paper): hits within the first ``R`` / ``R``.
* **mARP** (Sanakoyeu et al., "Divide and Conquer the Embedding Space for
  Metric Learning", CVPR 2019, and its code): the same sum
  ``sum_{i=1..R} P(i) * rel(i)`` divided by the number of hits within the
  first ``R`` instead of by ``R`` (``0`` when there is no hit there), so
  ``mARP >= MAP@R``.  It is labelled ``mARP`` and must not be reported as MAP@R.
* **NMI** (normalized mutual information, as used since Oh Song et al. 2016
  and Musgrave et al. 2020): k-means on the *query* embeddings (the test set)
  with ``k`` = the number of distinct query labels, then
  ``NMI = I(labels; clusters) / ((H(labels) + H(clusters)) / 2)`` (arithmetic
  mean normaliser, natural logarithms), averaged over ``nmi_runs`` k-means
  seeds ``nmi_seed, nmi_seed + 1, ...``.  k-means is ``faiss.Kmeans`` (20
  iterations, as pytorch-metric-learning's ``AccuracyCalculator``) when faiss
  is importable, else scikit-learn's ``KMeans`` (``n_init=1``, at most 20
  iterations); NMI is ``sklearn.metrics.normalized_mutual_info_score`` when
  scikit-learn is importable, else the float64 implementation :func:`nmi` of
  this module (same definition and limit cases).

Queries without any same-label gallery item (``R = 0``) are *skipped* for
every retrieval metric, Recall@K included: they are counted in
``num_skipped_query`` and left out of every mean.  This is what
pytorch-metric-learning's ``AccuracyCalculator`` does (its "lone query
labels" are removed from ``precision_at_1`` (= R@1), ``r_precision`` and
``mean_average_precision_at_r`` alike), and what the re-ID CMC does (see
``engine.evaluation.reid_metrics``).  NMI uses all queries.

Algorithm
---------
Per chunk of ``c`` queries:

1. the ``(c, G)`` fp32 distance block comes from the distance-block provider
   of :mod:`engine.evaluation.ranking`: one matrix product (squared Euclidean
   ``||g||^2 - 2 q.g``, the per-query constant ``||q||^2`` being irrelevant
   for the ranking, or ``-cos(q, g)``), or a custom ``distance_fn``; in the
   query = gallery case the query's own column is set to ``+inf`` and
   excluded by index;
2. *block minima*: the columns are partitioned into blocks of 16 columns
   (``block_size``; block ``b``
   = columns ``b, b + nb, b + 2 nb, ...``, so the minima are element-wise
   minima of contiguous rows: one cheap read pass).  The ``L + 1`` smallest
   items of a row lie in the ``L + 1`` blocks with the smallest minima, so
   ``torch.topk`` runs on those ``16 (L + 1)`` candidates only (on the whole row
   for small galleries), with ``L`` = the largest ``R`` of the chunk (for
   MAP@R) and the ``K`` values up to 32 (``topk_cap``).  ``topk`` returns the right *values*
   but an arbitrary choice among tied items, so a row is accepted only if its
   ``L``-th value is strictly smaller than its ``(L+1)``-th one and than the
   ``(L+2)``-th smallest block minimum (then the first ``L`` items are exactly
   the items with distance ``<=`` that value); they are sorted by the order
   key of :mod:`engine.evaluation.ranking` (``ordered_bits(distance) * 2**32 +
   gallery index``), which is the order rule.  Rows with a tie across the
   boundary, or with non-finite selected values, or with a NaN anywhere (a NaN
   block minimum hides the block's finite items), are redone exactly by a
   ``topk`` of those unique int64 keys (``exact_cells`` elements at a time);
3. for ``K > L`` only the rank ``r_1`` of the first hit matters (``R@K`` is
   ``r_1 <= K``).  For the rows whose first hit is not among the ``L``
   selected items, the first hit (the smallest key among the row's same-label
   items, listed sparsely from a label-sorted gallery index) has distance
   ``d_1``.  Every block whose minimum is ``< d_1`` holds an item ranked
   before it, so with at least ``max(K)`` such blocks the first hit is beyond
   every ``K``.  Otherwise ``r_1 = 1 + #{items with a smaller key}`` is
   counted with one pass ``s = sign(d - d_1)``: ``sum(s) = #greater -
   #smaller`` and ``sum(|s|) = #greater + #smaller``, both exact integer sums;
   a row with any other item at exactly ``d_1`` (or a non-finite value) is
   counted exactly with the order keys instead.

Only the matrix product grows with ``Q x G x D``; the rest is a few passes
over each distance block (block minima; the counting pass only for the rows
that need it) and ``O(c L)`` work.

The per-query float arithmetic is done in float64 with numpy from the integer
hit pattern, so CPU and CUDA give identical numbers whenever they produce the
same distances, and the result does not depend on ``chunk_size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from engine.evaluation.kmeans import kmeans
from engine.evaluation.ranking import (
    INT64_MAX,
    VALID_METRICS,
    DistanceFn,
    FeatureDistances,
    as_id_tensor,
    np_order_keys,
    order_keys,
)

__all__ = ["retrieval_metrics", "nmi", "VALID_METRICS"]

LabelArray = torch.Tensor | np.ndarray | Sequence[int]

#: Default number of queries per chunk.  The per-chunk temporaries are about
#: ``8 * chunk_size * G`` bytes (fp32 distances + an fp32 work buffer): 0.5 GB
#: for SOP (G = 60,502) with 1024 (measured peak: ~0.45 GB above the features),
#: plus transiently up to ~0.5 GB for the exact fallback on tied rows
#: (``exact_cells``).  Larger chunks make the CPU matrix product a little more
#: efficient; 1024 was within noise of 2048 on a 2-core CPU.
DEFAULT_CHUNK_SIZE = 1024

# Defaults of retrieval_metrics' tuning arguments (the tests vary them):
# K values up to this are taken from the top-L selection; larger K use the
# counting pass of the first hit's rank (cheaper than a large top-k).
DEFAULT_TOPK_CAP = 32
# Columns per block of the block minima (see _BlockMins).
DEFAULT_BLOCK_SIZE = 16
# Elements per sub-batch of the exact int64-key fallback (bounds its memory).
DEFAULT_EXACT_CELLS = 1 << 24
# k-means iterations (faiss niter / sklearn max_iter), as pytorch-metric-learning.
_KMEANS_NITER = 20


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _row_keys(dist: torch.Tensor, gidx: torch.Tensor, self_cols: torch.Tensor | None) -> torch.Tensor:
    """Order keys of whole rows; the query's own column (if any) gets INT64_MAX (ranked after everything)."""
    keys = order_keys(dist, gidx.unsqueeze(0))
    if self_cols is not None:
        keys[torch.arange(dist.shape[0], device=dist.device), self_cols] = INT64_MAX
    return keys


def _row_batches(rows: np.ndarray, g: int, exact_cells: int) -> Iterator[np.ndarray]:
    """Split ``rows`` into batches of at most ``exact_cells / g`` rows (bounds the exact fallback's keys)."""
    step = max(1, exact_cells // max(g, 1))
    for s in range(0, rows.size, step):
        yield rows[s : s + step]


# ---------------------------------------------------------------------------
# One chunk: exact top-L neighbours and first-hit ranks
# ---------------------------------------------------------------------------
class _BlockMins:
    """Minima of disjoint column blocks of a ``(c, G)`` distance block.

    Block ``b < nb`` holds the ``block_size`` columns ``b, b + nb, b + 2 nb, ...``
    (a strided partition: the minimum is ``block_size - 1`` element-wise minima of
    contiguous rows, one cheap read pass); the ``G - nb * block_size`` tail columns
    are singleton blocks ``nb, nb + 1, ...``.  NaN propagates into a block's
    minimum, so a row with a NaN anywhere has a NaN block minimum.
    """

    def __init__(self, dist: torch.Tensor, block_size: int) -> None:
        c, g = dist.shape
        self.block_size = block_size
        self.nb = g // block_size
        self.g_floor = self.nb * block_size
        mins = torch.amin(dist[:, : self.g_floor].unflatten(1, (block_size, self.nb)), dim=1)
        self.mins = torch.cat((mins, dist[:, self.g_floor :]), dim=1)  # (c, nb + tail)

    def columns(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Columns ``(c, k * block_size)`` of blocks ``(c, k)``, and a validity mask
        (a tail block repeats its single column, valid once)."""
        j = torch.arange(self.block_size, device=blocks.device)
        in_main = (blocks < self.nb).unsqueeze(2)
        cols = torch.where(in_main, blocks.unsqueeze(2) + j * self.nb, (blocks + (self.g_floor - self.nb)).unsqueeze(2))
        valid = in_main | (j == 0)
        return cols.flatten(1), valid.flatten(1)


def _use_blocks(num_l: int, g: int, block_size: int) -> bool:
    """Block minima pay off when the candidate columns are a small part of a row."""
    return 4 * (num_l + 2) * block_size <= g


def _top_l(
    dist: torch.Tensor,
    num_l: int,
    gidx: torch.Tensor,
    self_cols: torch.Tensor | None,
    bm: _BlockMins | None,
    exact_cells: int,
) -> np.ndarray:
    """Gallery indices ``(c, L)`` (numpy int64) of the ``L`` nearest valid gallery
    items of every row, in the order rule's order (distance, then gallery index).

    ``dist`` already holds ``+inf`` at the query's own column (``self_cols``).
    With block minima ``bm``, the ``L + 1`` blocks with the smallest minima hold
    the ``L + 1`` smallest values, so ``topk`` runs on those blocks only.  The
    small ``(c, L + 1)`` selection is post-processed with numpy.
    """
    c, g = dist.shape
    k_sel = min(num_l + 1, g)
    ok_extra = None
    if bm is not None:
        bvals, blocks = torch.topk(bm.mins, num_l + 2, dim=1, largest=False, sorted=True)
        cols, valid = bm.columns(blocks[:, : num_l + 1])
        cand = torch.gather(dist, 1, cols).masked_fill_(~valid, float("inf"))
        vals_t, pos_t = torch.topk(cand, k_sel, dim=1, largest=False, sorted=False)
        idx_t = torch.gather(cols, 1, pos_t)
        # every item <= the L-th value must lie in a selected block: all other
        # blocks have minima >= the (L+2)-th smallest block minimum.  A NaN
        # minimum hides its block's finite items: such rows take the exact path.
        ok_extra = torch.where(torch.isnan(bm.mins).any(dim=1), float("nan"), bvals[:, num_l + 1]).cpu().numpy()
    else:
        vals_t, idx_t = torch.topk(dist, k_sel, dim=1, largest=False, sorted=False)
    vals, idx = vals_t.cpu().numpy(), idx_t.cpu().numpy()
    order = np.argsort(np_order_keys(vals, idx), axis=1)
    sel = np.take_along_axis(idx, order[:, :num_l], axis=1).astype(np.int64)
    if k_sel == num_l + 1:
        # topk's values are right, but among tied items its choice is arbitrary:
        # accept a row only if no tie crosses the boundary (L-th < (L+1)-th value).
        vs = np.take_along_axis(vals, order, axis=1)
        ok = (vs[:, num_l - 1] < vs[:, num_l]) & np.isfinite(vs[:, :num_l]).all(axis=1)
        if ok_extra is not None:
            ok &= vs[:, num_l - 1] < ok_extra  # (False for a NaN block minimum)
        bad = np.flatnonzero(~ok)
    else:  # L == G (separate gallery): every item is selected, nothing to resolve
        bad = np.zeros(0, dtype=np.int64)
    for rows in _row_batches(bad, g, exact_cells):  # exact fallback: top-L of the unique order keys
        rows_t = torch.from_numpy(rows).to(dist.device)
        keys_t = _row_keys(dist[rows_t], gidx, None if self_cols is None else self_cols[rows_t])
        sel[rows] = torch.topk(keys_t, num_l, dim=1, largest=False, sorted=True).indices.cpu().numpy()
        del keys_t
    return sel


def _first_hit_ranks(
    dist: torch.Tensor,
    rows: np.ndarray,
    q_lab: np.ndarray,
    g_order: np.ndarray,
    g_start: np.ndarray,
    g_count: np.ndarray,
    gidx: torch.Tensor,
    self_cols: torch.Tensor | None,
    work: torch.Tensor,
    bm: _BlockMins | None,
    max_k: int,
    exact_cells: int,
) -> np.ndarray:
    """1-based rank of the first hit of each chunk row in ``rows`` (all have
    ``R > 0``), exact when it is ``<= max_k``; ranks beyond ``max_k`` may be
    returned as ``max_k + 1``.

    Args:
        dist: ``(c, G)`` fp32 distances (``+inf`` at the query's own column).
        rows: chunk rows to process (numpy int64).
        q_lab: dense labels of the chunk's queries (numpy).
        g_order, g_start, g_count: gallery indices sorted by dense label, and
            the start / length of every label's run in ``g_order`` (numpy).
        gidx: ``arange(G)`` on the device.
        self_cols: the query's own gallery column per chunk row, or None.
        work: ``(c, G)`` fp32 scratch buffer (used when most rows need the pass).
        bm: block minima of ``dist`` or None.
        max_k: the largest K of interest.
        exact_cells: elements per sub-batch of the exact fallback.
    """
    dev = dist.device
    c, g = dist.shape
    n = rows.size
    lab = q_lab[rows]
    # Same-label items of every row, listed sparsely (the query itself excluded).
    cnt = g_count[lab]
    m_rows = np.repeat(np.arange(n), cnt)
    first = np.cumsum(cnt) - cnt
    m_cols = g_order[np.arange(m_rows.size) - first[m_rows] + g_start[lab][m_rows]]
    if self_cols is not None:
        own = self_cols.cpu().numpy()[rows]
        keep = m_cols != own[m_rows]
        m_rows, m_cols = m_rows[keep], m_cols[keep]
    m_vals = dist[torch.from_numpy(rows[m_rows]).to(dev), torch.from_numpy(m_cols).to(dev)].cpu().numpy()
    m_keys = np_order_keys(m_vals, m_cols)
    key1 = np.full(n, INT64_MAX, dtype=np.int64)
    np.minimum.at(key1, m_rows, m_keys)
    is_first = m_keys == key1[m_rows]
    d1 = np.zeros(n, dtype=np.float32)
    d1[m_rows[is_first]] = m_vals[is_first]

    ranks = np.full(n, max_k + 1, dtype=np.int64)
    todo = np.arange(n)
    if bm is not None:
        # Every block whose minimum is < d1 holds an item ranked before the
        # first hit: with max_k such blocks, the first hit is beyond max_k.
        # (Counted as -sum(min(sign(m - d1), 0)) in fp32: fast, exact; NaN -> exact path.)
        d1_t = torch.from_numpy(d1).to(dev).unsqueeze(1)
        mins = bm.mins if n == c else bm.mins[torch.from_numpy(rows).to(dev)]
        below = torch.sub(mins, d1_t).sign_().clamp_(max=0.0).sum(dim=1)
        todo = np.flatnonzero(~(-below.cpu().numpy() >= max_k))
        if todo.size == 0:
            return ranks
    t_rows, t_d1 = rows[todo], d1[todo]
    nt = todo.size

    # One pass: s = sign(d - d1); #smaller = (sum|s| - sum s) / 2, #equal = G - sum|s|.
    # Exact integer sums (fp32 while G < 2**24); a spurious 0 (denormal flush)
    # only sends the row to the exact path below.  When most rows need it, the
    # pass runs over the whole block (no row gather).
    sum_dtype = torch.float32 if g < (1 << 24) else torch.float64
    full = 2 * nt >= c
    if full:
        d1_all = np.zeros(c, dtype=np.float32)
        d1_all[t_rows] = t_d1
        buf = torch.sub(dist, torch.from_numpy(d1_all).to(dev).unsqueeze(1), out=work[:c])
    else:
        # (advanced indexing: torch.index_select on CPU is ~50x slower here)
        buf = dist[torch.from_numpy(t_rows).to(dev)]
        buf.sub_(torch.from_numpy(t_d1).to(dev).unsqueeze(1))
    buf.sign_()
    s1 = buf.sum(dim=1, dtype=sum_dtype)
    buf.abs_()
    s2 = buf.sum(dim=1, dtype=sum_dtype)
    s12 = torch.stack((s1, s2)).cpu().numpy().astype(np.float64)
    s1, s2 = (s12[0][t_rows], s12[1][t_rows]) if full else (s12[0], s12[1])
    ok = np.isfinite(t_d1) & np.isfinite(s1) & np.isfinite(s2) & (s2 == g - 1)
    ranks[todo] = np.where(ok, np.round((np.where(ok, s2, 0) - np.where(ok, s1, 0)) / 2), 0) + 1

    for b in _row_batches(todo[~ok], g, exact_cells):  # ties at d1, non-finite values: exact keys
        b_t = torch.from_numpy(rows[b]).to(dev)
        keys_t = _row_keys(dist[b_t], gidx, None if self_cols is None else self_cols[b_t])
        key1_t = torch.from_numpy(key1[b]).to(dev)
        ranks[b] = (keys_t < key1_t.unsqueeze(1)).sum(dim=1).cpu().numpy() + 1
        del keys_t
    return ranks


# ---------------------------------------------------------------------------
# NMI
# ---------------------------------------------------------------------------
def nmi(labels_true: LabelArray, labels_pred: LabelArray) -> float:
    """Normalized mutual information with the arithmetic-mean normaliser.

    ``NMI = I(U; V) / ((H(U) + H(V)) / 2)`` with natural logarithms, computed
    in float64 from the contingency table.  Limit cases follow scikit-learn's
    ``normalized_mutual_info_score``: ``1.0`` when both labelings have a single
    class (or are empty), ``0.0`` when the mutual information is 0.
    """
    u = np.asarray(labels_true).reshape(-1)
    v = np.asarray(labels_pred).reshape(-1)
    if u.shape != v.shape:
        raise ValueError(f"label arrays differ in length: {u.size} vs {v.size}")
    _, ui = np.unique(u, return_inverse=True)
    _, vi = np.unique(v, return_inverse=True)
    nu, nv = int(ui.max(initial=-1)) + 1, int(vi.max(initial=-1)) + 1
    if nu == nv and nu <= 1:
        return 1.0
    if nu == 1 or nv == 1:
        return 0.0
    n = float(u.size)
    cells, counts = np.unique(ui.astype(np.int64) * nv + vi, return_counts=True)
    a = np.bincount(ui, minlength=nu).astype(np.float64)
    b = np.bincount(vi, minlength=nv).astype(np.float64)
    nij = counts.astype(np.float64)
    terms = nij / n * (np.log(nij) + math.log(n) - np.log(a[cells // nv] * b[cells % nv]))
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
    mi = max(float(terms.sum()), 0.0)
    if mi == 0.0:
        return 0.0
    h_u = -float(np.sum(a / n * np.log(a / n)))
    h_v = -float(np.sum(b / n * np.log(b / n)))
    normaliser = max((h_u + h_v) / 2.0, float(np.finfo(np.float64).eps))
    return float(mi / normaliser)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, str]:
    """Cluster ids of the rows of ``x`` (float32) by k-means; and the backend."""
    return kmeans(x, k, _KMEANS_NITER, seed)


def _nmi_score(labels: np.ndarray, clusters: np.ndarray) -> float:
    try:
        from sklearn.metrics import normalized_mutual_info_score
    except ImportError:
        return nmi(labels, clusters)
    return float(normalized_mutual_info_score(labels, clusters))


def _map_at_r(rel: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``(MAP@R, R-precision, mARP)`` of the rows of a chunk from their hit pattern.

    ``rel`` is the ``(c, L)`` hit pattern of the ``L >= max(R)`` first valid items, ``r`` the ``R`` of
    every row; ``sum_{i <= R} P(i) rel(i)`` divided by ``R`` (MAP@R) or by the hits within ``R`` (mARP).
    """
    rr = r.astype(np.int64)
    pos = np.arange(1, rel.shape[1] + 1, dtype=np.int64)
    rel_r = rel & (pos[None, :] <= rr[:, None])
    cum = np.cumsum(rel_r, axis=1)
    ap_sum = np.where(rel_r, cum / pos[None, :], 0.0).sum(axis=1)
    hits_r = cum[:, -1]
    ok = rr > 0
    den = np.where(ok, rr, 1)
    map_r = np.where(ok, ap_sum / den, 0.0)
    r_prec = np.where(ok, hits_r / den, 0.0)
    marp = np.where(hits_r > 0, ap_sum / np.maximum(hits_r, 1), 0.0)
    return map_r, r_prec, marp


def _nmi_of(
    query_feats: torch.Tensor, labels: np.ndarray, runs: int, seed: int, num_clusters: int | None
) -> tuple[float, str]:
    """Mean NMI of ``runs`` k-means clusterings of the query features against their labels, and the backend."""
    x = query_feats.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    k = int(num_clusters) if num_clusters is not None else int(np.unique(labels).size)
    if k < 1:
        raise ValueError(f"num_clusters must be >= 1, got {k}")
    k = min(k, x.shape[0])
    scores = []
    backend = ""
    for run in range(runs):
        clusters, backend = _kmeans(x, k, seed + run)
        scores.append(_nmi_score(labels, clusters))
    return float(np.mean(scores)), backend


class _LabelIndex:
    """Dense labels of queries and gallery, and the gallery indices grouped by label (numpy)."""

    def __init__(self, q_lab: torch.Tensor, g_lab: torch.Tensor, self_mode: bool) -> None:
        num_q = q_lab.numel()
        uniq, inv = torch.unique(torch.cat((q_lab, g_lab)), return_inverse=True)
        q_dense, g_dense = inv[:num_q], inv[num_q:]
        g_count = torch.bincount(g_dense, minlength=uniq.numel())
        self.r = (g_count[q_dense] - int(self_mode)).numpy()  # R of every query
        self.q_lab = q_dense.numpy()
        self.g_lab = g_dense.numpy()
        self.g_count = g_count.numpy()
        self.g_order = torch.sort(g_dense, stable=True).indices.numpy()
        self.g_start = np.cumsum(self.g_count) - self.g_count


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def retrieval_metrics(
    query_feats: torch.Tensor,
    query_labels: LabelArray,
    gallery_feats: torch.Tensor | None = None,
    gallery_labels: LabelArray | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    metric: str = "euclidean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_map_at_r: bool = True,
    nmi_runs: int = 0,
    nmi_seed: int = 0,
    num_clusters: int | None = None,
    distance_fn: DistanceFn | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    topk_cap: int = DEFAULT_TOPK_CAP,
    exact_cells: int = DEFAULT_EXACT_CELLS,
) -> dict[str, Any]:
    """Exact retrieval evaluation: Recall@K, MAP@R, R-precision, mARP and NMI.

    See the module docstring for the definitions and the algorithm.  Distances
    are computed in fp32 (features of any float dtype are cast to float32) on
    the device of the features, ``chunk_size`` queries at a time, by
    :class:`engine.evaluation.ranking.FeatureDistances`; per-chunk
    temporaries are about ``8 * chunk_size * G`` bytes plus ``O(chunk_size *
    L)`` for the selected neighbours (``L`` = largest ``R`` of the chunk,
    and the ``K`` values up to ``topk_cap``); the gallery is cast to fp32 once if
    needed and never copied per chunk.

    Args:
        query_feats: ``(Q, D)`` query features.
        query_labels: ``Q`` integer labels (tensor, ndarray or list).
        gallery_feats: ``(G, D)`` gallery features on the same device, or
            ``None``: then the query set is the gallery and every query is
            excluded from its own gallery by index.
        gallery_labels: ``G`` integer labels; given iff ``gallery_feats`` is.
        ks: the ``K`` of Recall@K (positive ints); a ``K`` larger than the
            gallery behaves like the gallery size.
        metric: ``"euclidean"`` (ranked by squared Euclidean distance) or
            ``"cosine"`` (ranked by ``-cos``).  Ignored when ``distance_fn`` is given.
        chunk_size: number of queries per chunk.
        with_map_at_r: also compute ``MAP@R``, ``R-precision`` and ``mARP``.
        nmi_runs: number of k-means runs for NMI (0: no NMI).
        nmi_seed: seed of the first k-means run (run ``i`` uses
            ``nmi_seed + i``).
        num_clusters: k of k-means; default the number of distinct query labels.
        distance_fn: optional ``distance_fn(q_chunk, gallery) -> (chunk, G)``
            distances (smaller = more similar) from fp32 features; replaces
            ``metric``; its output is cast to fp32.
        block_size: columns per block of the block-minima prefilter.
        topk_cap: ``K`` values up to this come from the top-``L`` selection,
            larger ones from the counting pass of the first hit's rank.
        exact_cells: elements per sub-batch of the exact-key fallback (memory).
            The last three change the speed and memory, never the numbers.

    Returns:
        dict with ``R@{k}`` for every ``k`` in ``ks`` (floats), ``MAP@R``,
        ``R-precision``, ``mARP`` (floats, if ``with_map_at_r``),
        ``num_query``, ``num_valid_query`` (queries with ``R > 0``, those
        averaged over), ``num_skipped_query`` (queries with ``R = 0``) and, if
        ``nmi_runs > 0``, ``NMI`` (float, mean over the runs) and
        ``NMI_backend`` (``"faiss"`` or ``"sklearn"``: the k-means used).

    Raises:
        ValueError: on inconsistent shapes/arguments, an unknown ``metric``,
            or if no query has a same-label gallery item.
    """
    ks = tuple(int(k) for k in ks)
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    if int(block_size) < 1 or int(exact_cells) < 1:
        raise ValueError(f"block_size and exact_cells must be >= 1, got {block_size} and {exact_cells}")
    block_size, topk_cap, exact_cells = int(block_size), int(topk_cap), int(exact_cells)
    if (gallery_feats is None) != (gallery_labels is None):
        raise ValueError("gallery_feats and gallery_labels must be given together")
    self_mode = gallery_feats is None
    blocks = FeatureDistances(query_feats, query_feats if self_mode else gallery_feats, metric, distance_fn)
    nmi_runs = int(nmi_runs)
    if nmi_runs < 0:
        raise ValueError(f"nmi_runs must be >= 0, got {nmi_runs}")

    device = query_feats.device
    num_q, num_g = blocks.num_query, blocks.num_gallery
    q_lab_cpu = as_id_tensor(query_labels, "query_labels", num_q, "cpu")
    g_lab_cpu = q_lab_cpu if self_mode else as_id_tensor(gallery_labels, "gallery_labels", num_g, "cpu")
    labels = _LabelIndex(q_lab_cpu, g_lab_cpu, self_mode)
    r_all = labels.r
    num_valid_gal = num_g - int(self_mode)

    first_rank = np.zeros(num_q, dtype=np.int64)  # 0: no hit found / skipped
    map_r = np.zeros(num_q, dtype=np.float64)
    r_prec = np.zeros(num_q, dtype=np.float64)
    marp = np.zeros(num_q, dtype=np.float64)
    valid_all = r_all > 0
    max_k = max(ks)
    small_k = max([k for k in ks if k <= topk_cap], default=1)
    no_hit_rank = np.iinfo(np.int64).max

    with torch.no_grad():
        if num_q > 0 and num_valid_gal > 0 and valid_all.any():
            gidx = torch.arange(num_g, dtype=torch.int64, device=device)
            cs = min(chunk_size, num_q)
            dist_buf = torch.empty((cs, num_g), dtype=torch.float32, device=device)
            work: torch.Tensor | None = None  # lazily allocated scratch for the counting pass

            for start in range(0, num_q, cs):
                stop = min(start + cs, num_q)
                c = stop - start
                r_chunk = r_all[start:stop]
                if not (r_chunk > 0).any():
                    continue
                # (c, G) fp32 distances (ranking-equivalent), in dist_buf: written below
                dist = blocks.block(start, stop, out=dist_buf)
                self_cols = None
                if self_mode:
                    self_cols = torch.arange(start, stop, device=device)
                    dist[torch.arange(c, device=device), self_cols] = float("inf")

                # --- exact top-L neighbours, hits ------------------------------
                num_l = small_k
                if with_map_at_r:
                    num_l = max(num_l, int(r_chunk.max()))
                num_l = max(1, min(num_l, num_valid_gal))
                bm = _BlockMins(dist, block_size) if _use_blocks(num_l, num_g, block_size) else None
                sel = _top_l(dist, num_l, gidx, self_cols, bm, exact_cells)
                rel = labels.g_lab[sel] == labels.q_lab[start:stop, None]
                has_hit = rel.any(axis=1)
                rank1 = np.where(has_hit, np.argmax(rel, axis=1) + 1, 0)

                # --- rank of the first hit beyond L, when some K > L -----------
                if max_k > num_l:
                    need = np.flatnonzero((r_chunk > 0) & ~has_hit)
                    if need.size > 0:
                        if work is None:
                            work = torch.empty((cs, num_g), dtype=torch.float32, device=device)
                        rank1[need] = _first_hit_ranks(
                            dist,
                            need,
                            labels.q_lab[start:stop],
                            labels.g_order,
                            labels.g_start,
                            labels.g_count,
                            gidx,
                            self_cols,
                            work,
                            bm,
                            max_k,
                            exact_cells,
                        )
                first_rank[start:stop] = np.where(rank1 > 0, rank1, no_hit_rank)

                if with_map_at_r:
                    map_r[start:stop], r_prec[start:stop], marp[start:stop] = _map_at_r(rel, r_chunk)
                del dist, bm

    num_valid = int(valid_all.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a same-label item in the gallery; check that query and gallery "
            "share labels (in the query = gallery case, a label needs at least 2 items)"
        )
    result: dict[str, Any] = {}
    fr = first_rank[valid_all]
    for k in ks:
        result[f"R@{k}"] = float(np.mean(fr <= k))
    if with_map_at_r:
        result["MAP@R"] = float(np.mean(map_r[valid_all]))
        result["R-precision"] = float(np.mean(r_prec[valid_all]))
        result["mARP"] = float(np.mean(marp[valid_all]))
    result["num_query"] = int(num_q)
    result["num_valid_query"] = num_valid
    result["num_skipped_query"] = int(num_q - num_valid)

    if nmi_runs > 0:
        result["NMI"], result["NMI_backend"] = _nmi_of(query_feats, q_lab_cpu.numpy(), nmi_runs, nmi_seed, num_clusters)
    return result
