"""Ranking primitives shared by every ranker of the engine.

The re-ID metrics (:mod:`engine.evaluation.reid_metrics`), the retrieval metrics
(:mod:`engine.evaluation.retrieval_metrics`), the rank pictures (:mod:`engine.reporting.rank_pictures`) and
the k-reciprocal re-ranking (:mod:`engine.evaluation.reranking`) all rank distances with the pieces of
this module, so that they give the same order for the same distance rows.

The order rule
--------------
A row of distances is ranked by ascending distance; exact ties are broken by ascending gallery (column)
index, as a stable sort would.  ``-0.0`` equals ``+0.0``.  ``-inf`` comes first and ``+inf`` after every
finite value.  A NaN distance is the farthest of all, after ``+inf``, whatever its sign bit and payload
(``inf - inf`` gives a NaN with the sign bit set on x86, and the raw bits of a float with the sign bit set
would otherwise rank it first), on CPU and CUDA alike; NaNs tie with each other, so they come last in
gallery index order.

For fp32 distances the rule is one int64 *order key* per item (:func:`order_keys`)::

    key = ordered_bits(d) * 2**32 + index

where :func:`ordered_bits` maps the float to a signed integer with the same order (its bits read as
sign and magnitude, zeros merged, every NaN sent to one value above ``+inf``).  The keys are unique
within a row, so any sort, ``topk`` or ``searchsorted`` on them gives exactly the rule's order.  fp64
distances (accepted by the rank pictures) use the 64-bit :func:`ordered_bits` with a stable sort.

Also here: the one converter of identity / camera ids (:func:`as_id_tensor`) and the one provider of
distance blocks (:class:`FeatureDistances` for features and a metric or a ``distance_fn``,
:class:`GivenDistances` for precomputed distances or a block function).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from config.choices import DIST_METRICS
from engine.evaluation.feature_ops import check_feature_pair, row_sq_norms

__all__ = [
    "INT64_MAX",
    "VALID_METRICS",
    "BlockFn",
    "DistanceBlocks",
    "DistanceFn",
    "DistanceSource",
    "FeatureDistances",
    "GivenDistances",
    "IdArray",
    "as_distance_blocks",
    "as_id_tensor",
    "metric_block",
    "metric_gallery_term",
    "np_order_keys",
    "order_keys",
    "ordered_bits",
    "row_order",
    "smallest_k",
    "unpack_index",
]

#: Built-in distance metrics (TEST.DIST_METRIC's choices).
VALID_METRICS: tuple[str, ...] = DIST_METRICS

IdArray = torch.Tensor | np.ndarray | Sequence[int]
#: ``distance_fn(query_rows, gallery) -> (rows, G)`` distances from fp32 features (smaller = more similar).
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``block_fn(start, stop) -> (stop - start, G)`` distances of queries ``start..stop-1`` to the whole gallery.
BlockFn = Callable[[int, int], torch.Tensor]

INT64_MAX = torch.iinfo(torch.int64).max
_NORM_EPS = 1e-12
# Per float width: (integer view, magnitude mask, bits of +inf, bits of the canonical quiet NaN).  Every
# NaN gets the canonical NaN's bits, one value above +inf.
_F32 = (torch.int32, 0x7FFFFFFF, 0x7F800000, 0x7FC00000)
_F64 = (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 0x7FF8000000000000)
_INDEX_MASK = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------
# The order key
# ---------------------------------------------------------------------------------------------------------
def ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 image of fp32 / fp64 values that sorts like the values under the order rule.

    A float's bits are sign and magnitude; the image is the magnitude, negated for a set sign bit (so
    ``-0.0`` and ``+0.0`` both map to 0), and every NaN (either sign, any payload) maps to the canonical
    NaN's bits, above ``+inf``.  Works for any shape, on any device.
    """
    if values.dtype == torch.float32:
        view, mask, inf_bits, nan_bits = _F32
    elif values.dtype == torch.float64:
        view, mask, inf_bits, nan_bits = _F64
    else:
        raise TypeError(f"ordered_bits needs float32 or float64 values, got {values.dtype}")
    bits = values.contiguous().view(view)
    magnitude = bits & mask
    # In the native width: -magnitude never overflows, and fp32 keys stay cheap int32 until widened.
    signed = torch.where(bits < 0, -magnitude, magnitude).masked_fill_(magnitude > inf_bits, nan_bits)
    return signed.to(torch.int64)


def order_keys(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Unique int64 order keys ``ordered_bits(d) * 2**32 + index`` of fp32 distances.

    Ascending keys are the order rule: distance, then gallery index (``0 <= index < 2**32``), NaN last.
    ``index`` broadcasts against ``values``.
    """
    if values.dtype != torch.float32:
        raise TypeError(f"order_keys needs float32 distances, got {values.dtype}")
    return torch.add(index, ordered_bits(values), alpha=2**32)


def np_order_keys(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`order_keys` (the same keys), for small arrays already on the host."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.int32)
    magnitude = bits & np.int32(_F32[1])
    keys = np.where(bits < 0, -magnitude, magnitude).astype(np.int64)
    keys[magnitude > _F32[2]] = _F32[3]
    keys <<= 32
    keys |= index
    return keys


def unpack_index(keys: torch.Tensor) -> torch.Tensor:
    """The gallery index part of order keys."""
    return keys & _INDEX_MASK


def row_order(dist: torch.Tensor, numpy_on_cpu: bool = True) -> torch.Tensor:
    """Per row, all column indices in rank order (int64 ``(c, G)``), by the order rule.

    fp32 rows sort their unique order keys (no stable sort needed); on CPU numpy's integer sort is several
    times faster than torch's stable float sort (``numpy_on_cpu=False`` takes the torch path that CUDA
    tensors take).  fp64 rows sort their 64-bit :func:`ordered_bits` stably.
    """
    num_g = dist.shape[1]
    if num_g == 0:
        return torch.zeros(dist.shape, dtype=torch.int64, device=dist.device)
    if dist.dtype == torch.float64:
        return torch.sort(ordered_bits(dist), dim=1, stable=True).indices
    if dist.dtype != torch.float32:
        raise TypeError(f"row_order needs float32 or float64 distances, got {dist.dtype}")
    if dist.device.type == "cpu" and numpy_on_cpu:
        keys = np_order_keys(dist.numpy(), np.arange(num_g, dtype=np.int64))
        keys.sort(axis=1)
        return torch.from_numpy(keys & _INDEX_MASK)
    keys = order_keys(dist, torch.arange(num_g, device=dist.device))
    return unpack_index(torch.sort(keys, dim=1).values)


def smallest_k(dist: torch.Tensor, k: int, index_offset: int = 0) -> torch.Tensor:
    """Order keys of the ``k`` first items of every row of an fp32 block, ascending.

    The same items and order as ``row_order(dist)[:, :k]``, with gallery index ``index_offset + column``
    in the keys.  ``topk`` picks ``k + 1`` candidates (its values are right; among tied values its choice
    is arbitrary), the ``k`` first are sorted by key, and a row whose ``k``-th and ``(k+1)``-th values are
    equal under the rule (a tie across the cut; NaNs are all equal) is redone with the keys of its whole row.
    """
    width = dist.shape[1]
    k = min(int(k), width)
    vals, idx = torch.topk(dist, min(k + 1, width), dim=1, largest=False, sorted=True)
    keys = order_keys(vals[:, :k], idx[:, :k] + index_offset).sort(dim=1).values
    if k < width:
        cut = ordered_bits(vals[:, k - 1 : k + 1])
        rows = (cut[:, 0] == cut[:, 1]).nonzero().squeeze(1)
        if rows.numel() > 0:
            cols = torch.arange(index_offset, index_offset + width, device=dist.device)
            keys[rows] = torch.topk(order_keys(dist[rows], cols), k, dim=1, largest=False, sorted=True).values
    return keys


# ---------------------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------------------
def as_id_tensor(
    ids: IdArray, name: str, n: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Identity labels / camera ids (tensor, ndarray or list of ints) as a flat int64 tensor on ``device``
    (default: the tensor's own device, CPU for the others).

    Raises:
        TypeError: when ``ids`` holds non-integer values (an empty list is fine).
        ValueError: when ``n`` is given and ``ids`` does not have ``n`` entries; the message names ``name``.
    """
    if isinstance(ids, torch.Tensor):
        t = ids.detach()
    else:
        arr = np.asarray(ids)
        if arr.size == 0:  # numpy makes an empty list float64: there is no value to be wrong
            arr = arr.astype(np.int64)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
            raise TypeError(f"{name} must contain integers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if (t.is_floating_point() or t.is_complex()) and t.numel() > 0:
        raise TypeError(f"{name} must contain integers, got dtype {t.dtype}")
    t = t.reshape(-1)
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n} (one per item)")
    return t.to(device=t.device if device is None else device, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------
# Distance blocks
# ---------------------------------------------------------------------------------------------------------
def metric_gallery_term(gallery: torch.Tensor, metric: str) -> torch.Tensor:
    """The per-gallery-item factor of a metric's block, computed once per gallery: ``||g||^2`` for
    ``"euclidean"``, ``1 / ||g||`` for ``"cosine"`` (fp32)."""
    sq = row_sq_norms(gallery)
    return sq if metric == "euclidean" else sq.sqrt_().clamp_(min=_NORM_EPS).reciprocal_()


def metric_block(
    query: torch.Tensor,
    gallery: torch.Tensor,
    metric: str,
    gallery_term: torch.Tensor,
    full: bool = False,
    query_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(c, G)`` fp32 distances of fp32 query rows to an fp32 gallery, one matrix product.

    ``"euclidean"``: ``||g||^2 - 2 q.g``, which ranks like the squared Euclidean distance (the per-query
    ``||q||^2`` does not change a row's order); with ``full`` the true squared distance
    ``||g||^2 - 2 q.g + ||q||^2`` (``query_sq``, computed if not given), clamped at 0.
    ``"cosine"``: ``-cos(q, g)``; with ``full`` ``1 - cos(q, g)``, clamped at 0.
    ``gallery_term`` is :func:`metric_gallery_term` of the gallery; ``out`` receives the block if given.
    """
    if metric == "euclidean":
        # a plain product of the doubled, negated queries (exact: a power of two), then the gallery term:
        # torch.addmm with a broadcast bias costs half as much again as the product on the CPU
        dist = torch.mm(query * -2.0, gallery.t(), out=out).add_(gallery_term.unsqueeze(0))
        if full:
            dist.add_((row_sq_norms(query) if query_sq is None else query_sq).unsqueeze(1)).clamp_(min=0.0)
        return dist
    if metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(VALID_METRICS)}")
    qn = query / row_sq_norms(query).sqrt_().clamp_(min=_NORM_EPS).neg_().unsqueeze(1)
    dist = torch.mm(qn, gallery.t(), out=out)
    dist.mul_(gallery_term.unsqueeze(0))
    if full:
        dist.add_(1.0).clamp_(min=0.0)
    return dist


def _check_block(got: object, call: str, rows: int, num_gallery: int) -> torch.Tensor:
    """``got`` if it is a ``(rows, G)`` tensor, else a ValueError naming the call that returned it."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (rows, num_gallery):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise ValueError(f"{call} returned {shape}, expected ({rows}, {num_gallery})")
    return got


class DistanceBlocks:
    """Distances of chunks of queries to the whole gallery: what every ranker reads its rows from.

    :meth:`block` gives the ``(stop - start, G)`` block of queries ``start..stop-1`` and :meth:`chunks`
    walks all queries in chunks, so that memory stays ``O(chunk x G)``.  ``device`` is ``None`` only for
    a block function whose device is not known before its first block.
    """

    num_query: int
    num_gallery: int
    device: torch.device | None

    def block(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The block of queries ``start..stop-1``; written into ``out[: stop - start]`` (which the caller
        may then modify) when ``out`` is given, else possibly shared with the source (read only)."""
        raise NotImplementedError

    def _reuses_buffer(self) -> bool:
        """Whether :meth:`chunks` computes blocks into one reused buffer (instead of a fresh tensor each)."""
        return False

    def chunks(self, chunk_size: int, writable: bool = False) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, block)`` for consecutive chunks of ``chunk_size`` queries.

        A block is valid until the next one is asked for (it may live in a reused buffer); with
        ``writable`` the caller may modify it in place.
        """
        buffer = None
        for start in range(0, self.num_query, chunk_size):
            stop = min(start + chunk_size, self.num_query)
            if buffer is None and self._reuses_buffer():
                rows = min(chunk_size, self.num_query)
                buffer = torch.empty((rows, self.num_gallery), dtype=torch.float32, device=self.device)
            block = self.block(start, stop, out=buffer)
            yield start, stop, (block.clone() if writable and buffer is None else block)


class FeatureDistances(DistanceBlocks):
    """fp32 distance blocks from query and gallery features, with a built-in metric or a ``distance_fn``.

    Features of any float dtype are cast to fp32 (the gallery once, the queries per chunk); blocks are on
    the features' device.  The metric blocks are :func:`metric_block` (ranking form unless ``full``);
    ``distance_fn(query_rows, gallery)`` receives fp32 features, replaces ``metric`` and its output is
    cast to fp32 on the features' device.

    Raises:
        ValueError: on features that are not 2-D, of different widths (without ``distance_fn``) or on
            different devices, or an unknown ``metric``.
    """

    def __init__(
        self,
        query_feats: torch.Tensor,
        gallery_feats: torch.Tensor,
        metric: str = "euclidean",
        distance_fn: DistanceFn | None = None,
        full: bool = False,
    ) -> None:
        if distance_fn is None and metric not in VALID_METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(VALID_METRICS)}")
        check_feature_pair(query_feats, gallery_feats, same_width=distance_fn is None)
        self.num_query, self.num_gallery = int(query_feats.shape[0]), int(gallery_feats.shape[0])
        self.device = query_feats.device
        self.metric, self.distance_fn, self.full = metric, distance_fn, full
        self.gallery = gallery_feats.detach().to(torch.float32)  # no copy if already fp32
        # The query = gallery case reads its query rows from the fp32 gallery: one cast, no second copy.
        self._query = self.gallery if query_feats is gallery_feats else query_feats.detach()
        self._term = None if distance_fn is not None else metric_gallery_term(self.gallery, metric)

    def _reuses_buffer(self) -> bool:
        return self.distance_fn is None

    def query_rows(self, start: int, stop: int) -> torch.Tensor:
        """fp32 features of queries ``start..stop-1``."""
        return self._query[start:stop].to(torch.float32)

    def block(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        c = stop - start
        target = None if out is None else out[:c]
        q = self.query_rows(start, stop)
        if self.distance_fn is None:
            return metric_block(q, self.gallery, self.metric, self._term, full=self.full, out=target)
        call = f"distance_fn(queries {start}..{stop - 1}, gallery)"
        dist = _check_block(self.distance_fn(q, self.gallery), call, c, self.num_gallery)
        dist = dist.detach().to(device=self.device, dtype=torch.float32)
        return dist.contiguous() if target is None else target.copy_(dist)


class GivenDistances(DistanceBlocks):
    """Precomputed distances: a ``(Q, G)`` tensor, or a block function ``(start, stop) -> (stop - start, G)``.

    Blocks are fp32 (fp64 kept with ``keep_float64``; other dtypes are cast to fp32) on ``device``, by
    default the tensor's device, or for a block function the device of its first block.  ``name`` is the
    argument's name in error messages.
    """

    def __init__(
        self,
        distances: torch.Tensor | BlockFn,
        num_query: int,
        num_gallery: int,
        device: torch.device | str | None = None,
        keep_float64: bool = False,
        name: str = "distances",
    ) -> None:
        if isinstance(distances, torch.Tensor):
            if tuple(distances.shape) != (num_query, num_gallery):
                raise ValueError(f"{name} has shape {tuple(distances.shape)}, expected ({num_query}, {num_gallery})")
            if device is None:
                device = distances.device
        elif not callable(distances):
            raise TypeError(f"{name} must be a (Q, G) tensor or a function (start, stop) -> block")
        self._source = distances
        self.num_query, self.num_gallery = int(num_query), int(num_gallery)
        self.device = None if device is None else torch.device(device)
        self.keep_float64, self.name = keep_float64, name

    def block(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        c = stop - start
        if isinstance(self._source, torch.Tensor):
            dist = self._source[start:stop]
        else:
            dist = _check_block(self._source(start, stop), f"{self.name}({start}, {stop})", c, self.num_gallery)
        dist = dist.detach()
        if not (dist.dtype == torch.float32 or (self.keep_float64 and dist.dtype == torch.float64)):
            # fp16 / bf16 / integer distances: ranked as fp32 (exact for the first two).
            dist = dist.to(torch.float32)
        if self.device is None:
            self.device = dist.device
        dist = dist.to(self.device)
        return dist.contiguous() if out is None else out[:c].copy_(dist)


#: What a ranker accepts as precomputed distances.
DistanceSource = DistanceBlocks | torch.Tensor | BlockFn


def as_distance_blocks(
    distances: DistanceSource, num_query: int, num_gallery: int, name: str = "distances", **kwargs
) -> DistanceBlocks:
    """``distances`` as :class:`DistanceBlocks` (a tensor or block function is wrapped in
    :class:`GivenDistances`, with ``kwargs``), checked against ``num_query`` x ``num_gallery``."""
    if not isinstance(distances, DistanceBlocks):
        return GivenDistances(distances, num_query, num_gallery, name=name, **kwargs)
    if (distances.num_query, distances.num_gallery) != (num_query, num_gallery):
        got = f"{distances.num_query} x {distances.num_gallery}"
        raise ValueError(f"{name} are {got} distances, expected {num_query} x {num_gallery}")
    return distances
