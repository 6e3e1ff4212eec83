"""k-reciprocal re-ranking for re-identification (dense reference and a memory-bounded form).

Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017; defaults ``k1 = 20``, ``k2 = 6``, ``lambda = 0.3``.

Definitions (over all ``N = Q + G`` items, queries first)
---------------------------------------------------------
* Original distance: ``d(p, q) = ||x_p - x_q||^2`` (fp32, computed as
  ``||x_p||^2 + ||x_q||^2 - 2 x_p.x_q``, clamped at 0, ``d(p, p) = 0``) and its
  normalised form ``d~(p, q) = d(p, q) / M_p`` with ``M_p = max_k d(p, k)``
  over all ``N`` items (the common implementation divides each column of the
  symmetric matrix by its maximum and transposes; this is the same number).
* ``N(p, k)``: the ``k + 1`` first items of ``p``'s ranking by ``d`` (``p``
  itself included), ties broken by item index: the order rule of
  :mod:`engine.evaluation.ranking`, shared by every ranker of the engine.
* k-reciprocal set ``R(p, k) = {q in N(p, k) : p in N(q, k)}``.
* Expanded set ``R*(p) = R(p, k1)  U  R(q, k1h)`` for every ``q in R(p, k1)``
  with ``|R(q, k1h) n R(p, k1)| > 2/3 |R(q, k1h)|``, where
  ``k1h = round(k1 / 2)`` (round half to even, as ``np.around``).
* Gaussian-kernel encoding ``V[p, q] = exp(-d~(p, q)) / sum_{q' in R*(p)} exp(-d~(p, q'))``
  for ``q in R*(p)``, else 0 (so every row sums to 1).
* Local query expansion (``k2 > 1``): ``V[p] <- mean of V[q] over the k2 first
  items q of p's ranking`` (``p`` included).
* Jaccard distance ``d_J(p, g) = 1 - sum_j min(V[p, j], V[g, j]) / sum_j max(V[p, j], V[g, j])``,
  evaluated as ``1 - m / (2 - m)`` with ``m = sum_j min(...)`` because both
  rows sum to 1 (``sum max = sum V_p + sum V_g - sum min``).
* Final distance for query ``p`` and gallery item ``g``:
  ``d*(p, g) = (1 - lambda) d_J(p, g) + lambda d~(p, g)``.

Implementations
---------------
:func:`k_reciprocal_dense` follows the definitions with ``N x N`` matrices (peak
about 24 bytes per item pair, and ``O(N^3)`` work for the set intersections:
only for small problems and as the reference).
:class:`KReciprocalReranker` never forms an ``N x N`` array: the ``N(p, k)``
lists and ``M_p`` come from ``chunk_size x N`` distance blocks of the upper
triangle of the symmetric distance matrix (half the matrix-product work; each
block also serves the later items through its transpose; ``topk`` with exact
tie handling, :func:`engine.evaluation.ranking.smallest_k`), ``V`` is stored sparsely (CSR: at most
``(k1 + 1)(k1h + 2)`` non-zeros per row before query expansion, ``k2`` times
that after), and the final distances are produced per query chunk: the
Jaccard term from the query rows of ``V`` and an inverted index (column
``j`` -> gallery rows with ``V[g, j] != 0``), the original term from a
``chunk x G`` matrix product.  :func:`rerank_and_evaluate` hands these distance
blocks to :func:`engine.evaluation.reid_metrics.reid_metrics_from_distances`, so
that the whole evaluation stays memory-bounded.  The original distances come
from :func:`engine.evaluation.ranking.metric_block` (``full=True``: the true
squared distance, clamped at 0).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.evaluation.feature_ops import check_feature_pair, row_sq_norms
from engine.evaluation.ranking import INT64_MAX, IdArray, metric_block, smallest_k, unpack_index
from engine.evaluation.reid_metrics import DEFAULT_CHUNK_SIZE, reid_metrics_from_distances

__all__ = [
    "DEFAULT_MAX_DENSE_ITEMS",
    "KReciprocalReranker",
    "dense_memory_bytes",
    "k_reciprocal_dense",
    "k_reciprocal_distances",
    "rerank_and_evaluate",
]

#: Largest ``Q + G`` for which :func:`k_reciprocal_distances` runs the dense path.
DEFAULT_MAX_DENSE_ITEMS = 4096
#: Approximate peak bytes per (item, item) pair of :func:`k_reciprocal_dense`.
_DENSE_BYTES_PER_PAIR = 24
#: Default scratch budgets of the sparse path (elements): gathered feature values
#: when computing the kernel weights, and (query entry, gallery row) pairs per
#: Jaccard sub-batch (see :class:`KReciprocalReranker`).
DEFAULT_GATHER_BUDGET = 1 << 22
DEFAULT_PAIR_BUDGET = 1 << 21
# Feature rows per block for the norms and the finiteness check.
_ROW_BLOCK = 4096


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------
def _check_inputs(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, k1: int, k2: int, lambda_value: float
) -> None:
    check_feature_pair(query_feats, gallery_feats)
    if query_feats.shape[0] < 1 or gallery_feats.shape[0] < 1:
        raise ValueError("re-ranking needs at least one query and one gallery item")
    if int(k1) < 1 or int(k2) < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _all_feats(query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` fp32 features, queries first; raises on non-finite values."""
    x = torch.cat((query_feats.detach(), gallery_feats.detach())).to(torch.float32)
    for s in range(0, x.shape[0], _ROW_BLOCK):
        if not bool(torch.isfinite(x[s : s + _ROW_BLOCK]).all()):
            raise ValueError("features contain NaN or inf")
    return x


def _half_k(k1: int) -> int:
    """``round(k1 / 2)`` with round-half-to-even, like the common ``np.around``."""
    return int(round(k1 / 2))


def _sq_dists(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` squared Euclidean distances, fp32, clamped at 0 (the shared distance-block
    provider's full Euclidean block, with the rows' squared norms ``a_sq`` / ``b_sq`` precomputed)."""
    return metric_block(a, b, "euclidean", b_sq, full=True, query_sq=a_sq)


def _safe_max(m: torch.Tensor) -> torch.Tensor:
    """Row maxima for the normalisation; 1 where a row is all zeros (all items equal)."""
    return torch.where(m > 0, m, torch.ones_like(m))


def dense_memory_bytes(num_items: int) -> int:
    """Approximate peak memory of :func:`k_reciprocal_dense` for ``num_items = Q + G``."""
    return _DENSE_BYTES_PER_PAIR * int(num_items) ** 2


# ---------------------------------------------------------------------------
# Dense reference
# ---------------------------------------------------------------------------
def k_reciprocal_dense(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> torch.Tensor:
    """k-reciprocal re-ranked ``(Q, G)`` distances with dense ``N x N`` matrices.

    Straightforward transcription of the definitions in the module docstring;
    needs about ``24 (Q + G)^2`` bytes (measured peak) and ``O((Q + G)^3)``
    work, so use it only for small problems (see
    :func:`k_reciprocal_distances` and :class:`KReciprocalReranker`).
    """
    _check_inputs(query_feats, gallery_feats, k1, k2, lambda_value)
    k1, k2, lam = int(k1), int(k2), float(lambda_value)
    num_q = query_feats.shape[0]
    with torch.no_grad():
        x = _all_feats(query_feats, gallery_feats)
        n = x.shape[0]
        sq = row_sq_norms(x)
        d = _sq_dists(x, sq, x, sq)
        d.fill_diagonal_(0.0)
        # N(p, .) lists: the first columns of the order rule's ranking (ascending d, ties by index)
        kmax = min(max(k1, k2) + 1, n)
        rank = unpack_index(smallest_k(d, kmax))
        dn = d.div_(_safe_max(d.max(dim=1).values).unsqueeze(1))  # original distance d~, in place
        del d

        def reciprocal(k: int) -> torch.Tensor:
            nbr = torch.zeros((n, n), dtype=torch.bool, device=x.device)
            nbr.scatter_(1, rank[:, : k + 1], True)  # nbr[p, q]: q in N(p, k)
            return nbr & nbr.t()  # q in N(p, k) and p in N(q, k)

        r1 = reciprocal(k1)
        rh = reciprocal(_half_k(k1))
        r1f, rhf = r1.float(), rh.float()
        inter = r1f @ rhf.t()  # inter[p, q] = |R(p, k1) n R(q, k1h)| (exact small integers)
        del r1f
        accept = r1 & (3.0 * inter > 2.0 * rhf.sum(dim=1).unsqueeze(0))
        del inter
        expanded = r1 | ((accept.float() @ rhf) > 0)  # R*(p)
        del accept, rhf, r1, rh

        v = torch.exp(-dn).mul_(expanded)
        del expanded
        v /= v.sum(dim=1, keepdim=True)
        k2e = min(k2, n)
        if k2e > 1:  # local query expansion
            v_qe = v[rank[:, 0]]
            for t in range(1, k2e):
                v_qe += v[rank[:, t]]
            v = v_qe.div_(k2e)
            del v_qe

        v_gal_t = v[num_q:].t().contiguous()  # (N, G): row j = V[g, j] over the gallery
        m = torch.empty((num_q, n - num_q), dtype=torch.float32, device=x.device)
        for i in range(num_q):  # sum_j min(V[i, j], V[g, j]) over the non-zeros j of row i
            nz = v[i].nonzero().squeeze(1)
            m[i] = torch.minimum(v[i, nz].unsqueeze(1), v_gal_t[nz]).sum(dim=0)
        jaccard = 1.0 - m / (2.0 - m)
        return (1.0 - lam) * jaccard + lam * dn[:num_q, num_q:]


def k_reciprocal_distances(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_dense_items: int = DEFAULT_MAX_DENSE_ITEMS,
) -> torch.Tensor:
    """Re-ranked ``(Q, G)`` distances via the dense path, if ``Q + G <= max_dense_items``.

    Raises:
        ValueError: when ``Q + G > max_dense_items`` (the dense path would
            allocate several ``(Q + G)^2`` float matrices); use
            :class:`KReciprocalReranker` or :func:`rerank_and_evaluate`,
            which are memory-bounded, instead.
    """
    n = query_feats.shape[0] + gallery_feats.shape[0]
    if n > int(max_dense_items):
        raise ValueError(
            f"dense k-reciprocal re-ranking of Q + G = {n} items exceeds max_dense_items="
            f"{int(max_dense_items)} (it would need about {dense_memory_bytes(n) / 2**30:.1f} GiB); "
            "use the sparse, chunked path instead: engine.evaluation.reranking.KReciprocalReranker "
            "(distances per query chunk) or engine.evaluation.reranking.rerank_and_evaluate"
        )
    return k_reciprocal_dense(query_feats, gallery_feats, k1, k2, lambda_value)


# ---------------------------------------------------------------------------
# Memory-bounded (sparse, chunked) form
# ---------------------------------------------------------------------------
def _knn_lists(x: torch.Tensor, sq: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranking lists ``(N, k)`` (ascending squared distance, ties by index, with
    ``d(p, p) = 0``) and row maxima ``(N,)`` of all items, without an ``N x N`` array.

    Row band ``[s, e)`` is compared only with the items ``>= s`` (one
    ``chunk x (N - s)`` block, so the matrix products cover half of the
    symmetric matrix): the block's rows feed the band's own lists and its
    transpose feeds the lists of the later items.  Each row keeps its ``k``
    smallest candidates as order keys (:func:`engine.evaluation.ranking.smallest_k`),
    merged exactly after every band.
    """
    n, dev = x.shape[0], x.device
    # sentinel keys sort after every real candidate (NaN distances included)
    run = torch.full((n, k), INT64_MAX, dtype=torch.int64, device=dev)
    row_max = torch.zeros(n, dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        c = e - s
        block = _sq_dists(x[s:e], sq[s:e], x[s:], sq[s:])  # (c, N - s)
        ar = torch.arange(c, device=dev)
        block[ar, ar] = 0.0
        torch.maximum(row_max[s:e], block.max(dim=1).values, out=row_max[s:e])
        keys = smallest_k(block, min(k, n - s), s)
        run[s:e] = torch.cat((run[s:e], keys), dim=1).sort(dim=1).values[:, :k]
        if e < n:  # the same distances seen from the later items
            block_t = block[:, c:].t().contiguous()  # (N - e, c)
            del block
            torch.maximum(row_max[e:], block_t.max(dim=1).values, out=row_max[e:])
            keys = smallest_k(block_t, min(k, c), s)
            run[e:] = torch.cat((run[e:], keys), dim=1).sort(dim=1).values[:, :k]
            del block_t
    return unpack_index(run), row_max


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated ``arange(starts[i], starts[i] + counts[i])`` and the owner ``i`` of each."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(owner.numel(), device=counts.device) - first[owner] + starts[owner]
    return pos, owner


def _csr_indptr(rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    ptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return ptr


class KReciprocalReranker:
    """Sparse, chunked k-reciprocal re-ranking (same numbers as :func:`k_reciprocal_dense`).

    The constructor builds, chunk by chunk, the neighbour lists, the row
    maxima ``M_p`` and the sparse encoding ``V`` (with query expansion) of all
    ``N = Q + G`` items, plus an inverted index of the gallery rows of ``V``.
    :meth:`distances` then returns the final re-ranked distances of any
    chunk of queries to the whole gallery.

    Memory: the fp32 features (one ``(N, D)`` copy), ``O(N (k1 + k2))``
    neighbour lists, ``V`` (about 20 bytes per non-zero, at most
    ``k2 (k1 + 1)(k1h + 2)`` per row and far fewer in practice, see
    :attr:`nnz`) and per-chunk temporaries of ``O(chunk_size x N)`` floats.

    Args:
        query_feats: ``(Q, D)`` query features.
        gallery_feats: ``(G, D)`` gallery features (same device).
        k1, k2, lambda_value: the method's parameters (paper: 20, 6, 0.3).
        chunk_size: rows per distance block while building (blocks are
            ``chunk_size x N`` fp32).
        pair_budget: (query entry, gallery row) pairs per Jaccard sub-batch.
        gather_budget: gathered feature values per sub-batch of the kernel weights.
            These two bound scratch memory and never change the numbers.
    """

    def __init__(
        self,
        query_feats: torch.Tensor,
        gallery_feats: torch.Tensor,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        pair_budget: int = DEFAULT_PAIR_BUDGET,
        gather_budget: int = DEFAULT_GATHER_BUDGET,
    ) -> None:
        _check_inputs(query_feats, gallery_feats, k1, k2, lambda_value)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if int(pair_budget) < 1 or int(gather_budget) < 1:
            raise ValueError(f"pair_budget and gather_budget must be >= 1, got {pair_budget} and {gather_budget}")
        self.k1, self.k2, self.lambda_value = int(k1), int(k2), float(lambda_value)
        self.chunk_size = int(chunk_size)
        self._pair_budget, self._gather_budget = int(pair_budget), int(gather_budget)
        self.num_query = int(query_feats.shape[0])
        self.num_gallery = int(gallery_feats.shape[0])
        with torch.no_grad():
            self._x = _all_feats(query_feats, gallery_feats)
            self._sq = row_sq_norms(self._x)
            self.device = self._x.device
            self._build()

    # -- construction ------------------------------------------------------
    def _build(self) -> None:
        n, cs, dev = self._x.shape[0], self.chunk_size, self.device
        k1p = min(self.k1 + 1, n)  # |N(p, k1)|
        khp = min(_half_k(self.k1) + 1, n)  # |N(p, k1h)|
        k2e = min(self.k2, n)
        kmax = max(k1p, khp, k2e)

        # 1. ranking lists and row maxima, from chunk x N blocks (upper triangle).
        rank, row_max = _knn_lists(self._x, self._sq, kmax, cs)
        self._row_max = _safe_max(row_max)

        # 2. k-reciprocal membership of each slot of N(p, k1) and N(p, k1h).
        def reciprocal_mask(kp: int) -> torch.Tensor:
            mask = torch.empty((n, kp), dtype=torch.bool, device=dev)
            for s in range(0, n, 4 * cs):
                e = min(s + 4 * cs, n)
                fwd = rank[s:e, :kp]
                back = rank[fwd, :kp]  # (c, kp, kp): N(q, k) of every q in N(p, k)
                p = torch.arange(s, e, device=dev).view(-1, 1, 1)
                mask[s:e] = (back == p).any(dim=2)
            return mask

        r1_mask = reciprocal_mask(k1p)
        rh_mask = reciprocal_mask(khp)

        # 3. expanded sets R*(p) and the kernel weights, chunk by chunk (CSR).
        rows_l, cols_l, vals_l = [], [], []
        for s in range(0, n, cs):
            e = min(s + cs, n)
            c = e - s
            f1 = rank[s:e, :k1p]  # (c, k1p)
            m1 = r1_mask[s:e]
            fh = rank[f1, :khp]  # (c, k1p, khp): N(q, k1h) of each candidate q
            mh = rh_mask[f1]  # ... and which of them are in R(q, k1h)
            in_r1 = ((fh.unsqueeze(3) == f1.view(c, 1, 1, k1p)) & m1.view(c, 1, 1, k1p)).any(dim=3)
            inter = (in_r1 & mh).sum(dim=2)  # |R(q, k1h) n R(p, k1)|
            accept = m1 & (3 * inter > 2 * mh.sum(dim=2))
            members = (
                torch.cat(
                    (
                        torch.where(m1, f1, n),
                        torch.where(accept.unsqueeze(2) & mh, fh, n).flatten(1),
                    ),
                    dim=1,
                )
                .sort(dim=1)
                .values
            )
            keep = members < n
            keep[:, 1:] &= members[:, 1:] != members[:, :-1]
            r_loc, slot = keep.nonzero(as_tuple=True)  # row-major: columns ascending per row
            cols = members[r_loc, slot]
            rows = r_loc + s
            w = torch.exp(-self._pair_dist(rows, cols))
            w /= torch.zeros(c, dtype=torch.float32, device=dev).index_add_(0, r_loc, w)[r_loc]
            rows_l.append(rows)
            cols_l.append(cols)
            vals_l.append(w)
        del r1_mask, rh_mask
        v_ptr = _csr_indptr(torch.cat(rows_l), n)
        v_cols, v_vals = torch.cat(cols_l), torch.cat(vals_l)
        del rows_l, cols_l, vals_l

        # 4. local query expansion: V[p] <- mean of V over the k2e first of p's list.
        if k2e > 1:
            rows_l, cols_l, vals_l = [], [], []
            for s in range(0, n, cs):
                e = min(s + cs, n)
                nb = rank[s:e, :k2e].reshape(-1)  # row-major: (p, t)
                pos, owner = _ranges(v_ptr[nb], v_ptr[nb + 1] - v_ptr[nb])
                key = torch.div(owner, k2e, rounding_mode="floor") * n + v_cols[pos]
                uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
                acc = torch.zeros(uniq.numel(), dtype=torch.float32, device=dev)
                acc.index_add_(0, inv, v_vals[pos])  # added in t order, like the dense loop
                rows_l.append(torch.div(uniq, n, rounding_mode="floor") + s)
                cols_l.append(uniq % n)
                vals_l.append(acc.div_(k2e))
            v_ptr = _csr_indptr(torch.cat(rows_l), n)
            v_cols, v_vals = torch.cat(cols_l), torch.cat(vals_l)
            del rows_l, cols_l, vals_l
        self._v_ptr, self._v_cols, self._v_vals = v_ptr, v_cols, v_vals
        self.nnz = int(v_cols.numel())

        # 5. inverted index over the gallery rows: column j -> (gallery row, V[g, j]).
        q = self.num_query
        g_start = int(v_ptr[q])
        g_cols = v_cols[g_start:]
        g_rows = torch.repeat_interleave(torch.arange(self.num_gallery, device=dev), v_ptr[q + 1 :] - v_ptr[q:-1])
        order = torch.argsort(g_cols, stable=True)
        self._inv_ptr = _csr_indptr(g_cols[order], n)
        self._inv_rows = g_rows[order]
        self._inv_vals = v_vals[g_start:][order]

    def _pair_dist(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Normalised original distances ``d~(rows[i], cols[i])`` of listed pairs."""
        out = torch.empty(rows.numel(), dtype=torch.float32, device=self.device)
        step = max(1, self._gather_budget // max(1, self._x.shape[1]))
        for s in range(0, rows.numel(), step):
            r, c = rows[s : s + step], cols[s : s + step]
            dot = (self._x[r] * self._x[c]).sum(dim=1)
            d = (self._sq[r] + self._sq[c] - 2.0 * dot).clamp_(min=0.0)
            d[r == c] = 0.0
            out[s : s + step] = d / self._row_max[r]
        return out

    # -- queries ------------------------------------------------------------
    def distances(self, query_index: torch.Tensor) -> torch.Tensor:
        """Re-ranked ``(c, G)`` fp32 distances of the queries ``query_index`` (in ``[0, Q)``)."""
        with torch.no_grad():
            qi = torch.as_tensor(query_index, device=self.device).reshape(-1).long()
            if qi.numel() and (int(qi.min()) < 0 or int(qi.max()) >= self.num_query):
                raise IndexError(f"query indices must be in [0, {self.num_query})")
            c, g, qn = qi.numel(), self.num_gallery, self.num_query

            # Jaccard: m[i, g] = sum over the non-zeros j of V[q_i] of min(V[q_i, j], V[g, j]),
            # one (query entry, gallery entry) pair per shared column j, in sub-batches
            # of at most ~pair_budget pairs (or one query entry).
            acc = torch.zeros(c * g, dtype=torch.float32, device=self.device)
            pos, owner = _ranges(self._v_ptr[qi], self._v_ptr[qi + 1] - self._v_ptr[qi])
            j, vq = self._v_cols[pos], self._v_vals[pos]
            start = self._inv_ptr[j]
            cnt = self._inv_ptr[j + 1] - start
            cum = torch.cumsum(cnt, 0)
            target_base = owner * g
            s = 0
            while s < j.numel():
                base = int(cum[s - 1]) if s > 0 else 0
                e = int(torch.searchsorted(cum, base + self._pair_budget, right=True))
                e = min(max(e, s + 1), j.numel())
                cb = cnt[s:e]
                num_pairs = int(cum[e - 1]) - base
                if num_pairs > 0:
                    pown = torch.repeat_interleave(torch.arange(e - s, device=self.device), cb, output_size=num_pairs)
                    # position in the inverted index: start[entry] + (pair - first pair of entry)
                    ppos = (start[s:e] - (cum[s:e] - cb - base))[pown]
                    ppos += torch.arange(num_pairs, device=self.device)
                    target = target_base[s:e][pown]
                    target += self._inv_rows[ppos]
                    val = vq[s:e][pown]
                    torch.minimum(val, self._inv_vals[ppos], out=val)
                    acc.index_add_(0, target, val)
                s = e
            m = acc.view(c, g)
            jaccard = 1.0 - m / (2.0 - m)

            orig = _sq_dists(self._x[qi], self._sq[qi], self._x[qn:], self._sq[qn:])
            orig /= self._row_max[qi].unsqueeze(1)
            return jaccard.mul_(1.0 - self.lambda_value).add_(orig, alpha=self.lambda_value)

    def all_distances(self) -> torch.Tensor:
        """All ``(Q, G)`` re-ranked distances (allocates ``Q x G`` floats)."""
        return torch.cat(
            [
                self.distances(torch.arange(s, min(s + self.chunk_size, self.num_query), device=self.device))
                for s in range(0, self.num_query, self.chunk_size)
            ]
        )

    def distance_block(self, start: int, stop: int) -> torch.Tensor:
        """Re-ranked ``(stop - start, G)`` distances of queries ``start..stop-1``: a block function for
        :func:`engine.evaluation.reid_metrics.reid_metrics_from_distances` (and the other rankers)."""
        return self.distances(torch.arange(start, stop, device=self.device))


def rerank_and_evaluate(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    qpids: IdArray,
    gpids: IdArray,
    qcams: IdArray,
    gcams: IdArray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_per_query: bool = False,
    *,
    pair_budget: int = DEFAULT_PAIR_BUDGET,
    gather_budget: int = DEFAULT_GATHER_BUDGET,
) -> dict[str, Any]:
    """Re-ID metrics (:func:`engine.evaluation.reid_metrics.reid_metrics`' dict) of the
    k-reciprocal re-ranked distances, memory-bounded: builds a
    :class:`KReciprocalReranker` and hands its distance blocks, ``chunk_size``
    queries at a time, to :func:`engine.evaluation.reid_metrics.reid_metrics_from_distances`,
    so no ``Q x G`` or ``N x N`` matrix is ever formed.  ``pair_budget`` and
    ``gather_budget`` are the reranker's scratch budgets."""
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    reranker = KReciprocalReranker(
        query_feats,
        gallery_feats,
        k1,
        k2,
        lambda_value,
        chunk_size,
        pair_budget=pair_budget,
        gather_budget=gather_budget,
    )
    return reid_metrics_from_distances(
        reranker.distance_block,
        qpids,
        gpids,
        qcams,
        gcams,
        max_rank=max_rank,
        chunk_size=chunk_size,
        return_per_query=return_per_query,
    )
