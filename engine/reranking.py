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
  itself included), ties broken by item index (a stable sort).
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
:func:`k_reciprocal_dense` follows the definitions with ``N x N`` matrices (about
30 bytes per item pair: only for small problems and as the reference).
:class:`KReciprocalReranker` never forms an ``N x N`` array: the ``N(p, k)``
lists and ``M_p`` come from ``chunk_size x N`` distance blocks (``topk`` with
exact tie handling), ``V`` is stored sparsely (CSR: at most
``(k1 + 1)(k1h + 2)`` non-zeros per row before query expansion, ``k2`` times
that after), and the final distances are produced per query chunk: the
Jaccard term from the query rows of ``V`` and an inverted index (column
``j`` -> gallery rows with ``V[g, j] != 0``), the original term from a
``chunk x G`` matrix product.  :func:`rerank_and_evaluate` plugs it into
:func:`engine.metrics.reid_metrics` so that the whole evaluation stays
memory-bounded.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .metrics import IdArray, reid_metrics

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
_DENSE_BYTES_PER_PAIR = 30
# Scratch budgets of the sparse path (elements): gathered feature values when
# computing the kernel weights, and (query entry, gallery row) pairs per
# Jaccard sub-batch.
_GATHER_BUDGET = 1 << 23
_PAIR_BUDGET = 1 << 22


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------
def _check_inputs(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, k1: int, k2: int, lambda_value: float
) -> None:
    if query_feats.dim() != 2 or gallery_feats.dim() != 2:
        raise ValueError(
            "query_feats and gallery_feats must be 2-D (N, D), got shapes "
            f"{tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}"
        )
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"feature dimensions differ: query {query_feats.shape[1]} vs gallery {gallery_feats.shape[1]}"
        )
    if query_feats.device != gallery_feats.device:
        raise ValueError(
            f"query_feats is on {query_feats.device} but gallery_feats is on {gallery_feats.device}"
        )
    if query_feats.shape[0] < 1 or gallery_feats.shape[0] < 1:
        raise ValueError("re-ranking needs at least one query and one gallery item")
    if int(k1) < 1 or int(k2) < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _all_feats(query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` fp32 features, queries first; raises on non-finite values."""
    x = torch.cat((query_feats.detach(), gallery_feats.detach())).to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    return x


def _half_k(k1: int) -> int:
    """``round(k1 / 2)`` with round-half-to-even, like the common ``np.around``."""
    return int(round(k1 / 2))


def _row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1)


def _sq_dists(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` squared Euclidean distances, fp32, clamped at 0."""
    d = torch.addmm(b_sq.unsqueeze(0), a, b.t(), beta=1.0, alpha=-2.0)
    d.add_(a_sq.unsqueeze(1))
    return d.clamp_(min=0.0)


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
    needs about ``30 (Q + G)^2`` bytes, so use it only for small problems (see
    :func:`k_reciprocal_distances` and :class:`KReciprocalReranker`).
    """
    _check_inputs(query_feats, gallery_feats, k1, k2, lambda_value)
    k1, k2, lam = int(k1), int(k2), float(lambda_value)
    num_q = query_feats.shape[0]
    with torch.no_grad():
        x = _all_feats(query_feats, gallery_feats)
        n = x.shape[0]
        sq = _row_sq_norms(x)
        d = _sq_dists(x, sq, x, sq)
        d.fill_diagonal_(0.0)
        dn = d / _safe_max(d.max(dim=1).values).unsqueeze(1)  # original distance d~
        rank = torch.sort(d, dim=1, stable=True).indices  # N(p, .) lists, ties by index
        del d

        def reciprocal(k: int) -> torch.Tensor:
            nbr = torch.zeros((n, n), dtype=torch.bool, device=x.device)
            nbr.scatter_(1, rank[:, : k + 1], True)  # nbr[p, q]: q in N(p, k)
            return nbr & nbr.t()  # q in N(p, k) and p in N(q, k)

        r1 = reciprocal(k1)
        rh = reciprocal(_half_k(k1))
        r1f, rhf = r1.float(), rh.float()
        inter = r1f @ rhf.t()  # inter[p, q] = |R(p, k1) n R(q, k1h)| (exact small integers)
        accept = r1 & (3.0 * inter > 2.0 * rhf.sum(dim=1).unsqueeze(0))
        expanded = r1 | ((accept.float() @ rhf) > 0)  # R*(p)
        del inter, accept, r1f, rhf, r1, rh

        w = torch.where(expanded, torch.exp(-dn), torch.zeros_like(dn))
        v = w / w.sum(dim=1, keepdim=True)
        del w, expanded
        k2e = min(k2, n)
        if k2e > 1:  # local query expansion
            v_qe = v[rank[:, 0]].clone()
            for t in range(1, k2e):
                v_qe += v[rank[:, t]]
            v = v_qe.div_(k2e)

        v_gal = v[num_q:]
        m = torch.empty((num_q, n - num_q), dtype=torch.float32, device=x.device)
        for i in range(num_q):  # sum_j min(V[i, j], V[g, j]) over the non-zeros of row i
            nz = v[i].nonzero().squeeze(1)
            m[i] = torch.minimum(v[i, nz].unsqueeze(0), v_gal[:, nz]).sum(dim=1)
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
            "use the sparse, chunked path instead: engine.reranking.KReciprocalReranker "
            "(distances per query chunk) or engine.reranking.rerank_and_evaluate"
        )
    return k_reciprocal_dense(query_feats, gallery_feats, k1, k2, lambda_value)


# ---------------------------------------------------------------------------
# Memory-bounded (sparse, chunked) form
# ---------------------------------------------------------------------------
def _smallest_k_stable(block: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest values of each row, ordered by (value, index).

    Same result as ``torch.sort(block, dim=1, stable=True).indices[:, :k]``:
    ``topk`` picks the candidates; rows where more than ``k`` values are
    ``<=`` the k-th smallest (a tie across the cut) are fully sorted.
    """
    vals, idx = torch.topk(block, k, dim=1, largest=False, sorted=True)
    o = torch.argsort(idx, dim=1)  # order the selection by (value, index)
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    o = torch.argsort(vals, dim=1, stable=True)
    idx = idx.gather(1, o)
    n_le = (block <= vals.gather(1, o[:, -1:])).sum(dim=1)
    tied = (n_le > k).nonzero().squeeze(1)
    if tied.numel() > 0:
        idx[tied] = torch.sort(block[tied], dim=1, stable=True).indices[:, :k]
    return idx


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
    """

    def __init__(
        self,
        query_feats: torch.Tensor,
        gallery_feats: torch.Tensor,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        chunk_size: int = 256,
    ) -> None:
        _check_inputs(query_feats, gallery_feats, k1, k2, lambda_value)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.k1, self.k2, self.lambda_value = int(k1), int(k2), float(lambda_value)
        self.chunk_size = int(chunk_size)
        self.num_query = int(query_feats.shape[0])
        self.num_gallery = int(gallery_feats.shape[0])
        with torch.no_grad():
            self._x = _all_feats(query_feats, gallery_feats)
            self._sq = _row_sq_norms(self._x)
            self.device = self._x.device
            self._build()

    # -- construction ------------------------------------------------------
    def _build(self) -> None:
        n, cs, dev = self._x.shape[0], self.chunk_size, self.device
        k1p = min(self.k1 + 1, n)  # |N(p, k1)|
        khp = min(_half_k(self.k1) + 1, n)  # |N(p, k1h)|
        k2e = min(self.k2, n)
        kmax = max(k1p, khp, k2e)

        # 1. ranking lists and row maxima, from chunk x N blocks.
        rank = torch.empty((n, kmax), dtype=torch.int64, device=dev)
        row_max = torch.empty(n, dtype=torch.float32, device=dev)
        for s in range(0, n, cs):
            e = min(s + cs, n)
            block = _sq_dists(self._x[s:e], self._sq[s:e], self._x, self._sq)
            ar = torch.arange(e - s, device=dev)
            block[ar, ar + s] = 0.0
            row_max[s:e] = block.max(dim=1).values
            rank[s:e] = _smallest_k_stable(block, kmax)
            del block
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
            members = torch.cat(
                (
                    torch.where(m1, f1, n),
                    torch.where(accept.unsqueeze(2) & mh, fh, n).flatten(1),
                ),
                dim=1,
            ).sort(dim=1).values
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
        self.nnz_before_expansion = int(v_cols.numel())

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
        g_rows = torch.repeat_interleave(
            torch.arange(self.num_gallery, device=dev), v_ptr[q + 1 :] - v_ptr[q:-1]
        )
        order = torch.argsort(g_cols, stable=True)
        self._inv_ptr = _csr_indptr(g_cols[order], n)
        self._inv_rows = g_rows[order]
        self._inv_vals = v_vals[g_start:][order]

    def _pair_dist(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Normalised original distances ``d~(rows[i], cols[i])`` of listed pairs."""
        out = torch.empty(rows.numel(), dtype=torch.float32, device=self.device)
        step = max(1, _GATHER_BUDGET // max(1, self._x.shape[1]))
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

            # Jaccard: m[i, g] = sum over the non-zeros j of V[q_i] of min(V[q_i, j], V[g, j]).
            acc = torch.zeros(c * g, dtype=torch.float32, device=self.device)
            pos, owner = _ranges(self._v_ptr[qi], self._v_ptr[qi + 1] - self._v_ptr[qi])
            j, vq = self._v_cols[pos], self._v_vals[pos]
            cnt = self._inv_ptr[j + 1] - self._inv_ptr[j]
            cum = torch.cumsum(cnt, 0)
            s = 0
            while s < j.numel():  # sub-batches of at most ~_PAIR_BUDGET pairs
                base = int(cum[s - 1]) if s > 0 else 0
                e = int(torch.searchsorted(cum, base + _PAIR_BUDGET, right=True))
                e = min(max(e, s + 1), j.numel())
                ppos, pown = _ranges(self._inv_ptr[j[s:e]], cnt[s:e])
                pown += s
                mins = torch.minimum(vq[pown], self._inv_vals[ppos])
                acc.index_add_(0, owner[pown] * g + self._inv_rows[ppos], mins)
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

    def index_features(self) -> torch.Tensor:
        """``(Q, 1)`` fp32 query "features" holding the query indices (exact below 2**24)."""
        return torch.arange(self.num_query, dtype=torch.float32, device=self.device).unsqueeze(1)

    def distance_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A ``distance_fn`` for :func:`engine.metrics.reid_metrics` called with
        ``query_feats = self.index_features()``: it maps the chunk of index
        "features" back to query indices and ignores the gallery argument."""
        return lambda q_idx, _gallery: self.distances(q_idx[:, 0].long())


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
    chunk_size: int = 256,
    return_per_query: bool = False,
) -> dict[str, Any]:
    """Re-ID metrics (:func:`engine.metrics.reid_metrics`' dict) of the
    k-reciprocal re-ranked distances, memory-bounded: builds a
    :class:`KReciprocalReranker` and evaluates ``chunk_size`` queries at a
    time, so no ``Q x G`` or ``N x N`` matrix is ever formed."""
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    reranker = KReciprocalReranker(query_feats, gallery_feats, k1, k2, lambda_value, chunk_size)
    # reid_metrics never reads the gallery "features" when distance_fn is given:
    # a (G, 1) placeholder avoids a second copy of the gallery.
    placeholder = torch.zeros((reranker.num_gallery, 1), dtype=torch.float32, device=reranker.device)
    return reid_metrics(
        reranker.index_features(),
        placeholder,
        qpids,
        gpids,
        qcams,
        gcams,
        max_rank=max_rank,
        chunk_size=chunk_size,
        distance_fn=reranker.distance_fn(),
        return_per_query=return_per_query,
    )
