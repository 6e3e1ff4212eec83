"""Tests for engine.evaluation.ranking: the one order rule (distance, then gallery index; NaN last whatever its
sign bit), the id converter, the distance-block provider, and the same order from the four rankers (re-ID
metrics, retrieval metrics, rank pictures, re-ranking) on the same distance rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.evaluation import ranking, reranking
from engine.evaluation.ranking import (
    FeatureDistances,
    GivenDistances,
    as_id_tensor,
    np_order_keys,
    order_keys,
    ordered_bits,
    row_order,
    smallest_k,
    unpack_index,
)
from engine.evaluation.reid_metrics import reid_metrics_from_distances
from engine.evaluation.retrieval_metrics import retrieval_metrics
from engine.reporting.rank_pictures import ranked_lists


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny arrays: intra-op threads only add overhead on a shared machine.  Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------------
# NaNs of every kind, and the reference order
# ---------------------------------------------------------------------------------------------------------
def _arithmetic_nan() -> torch.Tensor:
    """``inf - inf``: the NaN that real computations produce (its sign bit is set on x86)."""
    return torch.tensor(float("inf")) - torch.tensor(float("inf"))


def _nan_from_bits(bits: int) -> torch.Tensor:
    """An fp32 NaN with the given raw bits (sign bit and payload)."""
    return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)[0]


def _nans() -> list[torch.Tensor]:
    """NaNs of both signs and several payloads: float('nan'), inf - inf, -nan and signalling NaNs from bits."""
    bits = (0xFFC00000 - 2**32, 0xFFC00001 - 2**32, 0xFF800001 - 2**32, 0x7F800001, 0x7FFFFFFF)
    return [torch.tensor(float("nan")), _arithmetic_nan()] + [_nan_from_bits(b) for b in bits]


def _reference_order(row: np.ndarray) -> list[int]:
    """The order rule by Python's sorted: NaN last, then ascending value (-0.0 == 0.0), ties by index."""

    def key(j: int):
        v = float(row[j])
        return (math.isnan(v), 0.0 if math.isnan(v) else v, j)

    return sorted(range(row.size), key=key)


def _rows(seed: int, num_rows: int, width: int) -> torch.Tensor:
    """fp32 distance rows with many exact ties, signed zeros, +-inf and NaNs of every kind."""
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(rng.integers(-3, 4, (num_rows, width)).astype(np.float32) / 2)
    nans = _nans()
    for r in range(num_rows):
        cols = rng.permutation(width)
        for j, c in enumerate(cols[: len(nans)]):
            rows[r, c] = nans[(j + r) % len(nans)]
        rows[r, cols[len(nans)]] = float("inf")
        rows[r, cols[len(nans) + 1]] = float("-inf")
        rows[r, cols[len(nans) + 2]] = -0.0
        rows[r, cols[len(nans) + 3]] = 0.0
    return rows


def test_arithmetic_and_negative_nan_rank_after_inf():
    nan = _arithmetic_nan()
    assert torch.isnan(nan)
    neg = _nan_from_bits(0xFFC00000 - 2**32)
    assert torch.isnan(neg) and neg.view(torch.int32) < 0  # sign bit set: raw bits would rank it first
    row = torch.stack([torch.tensor(1.0), nan, torch.tensor(math.inf), torch.tensor(-math.inf), neg, torch.tensor(0.5)])
    expected = [3, 5, 0, 2, 1, 4]  # -inf, 0.5, 1, +inf, then the NaNs by index
    assert row_order(row[None]).tolist() == [expected]
    assert row_order(row[None], numpy_on_cpu=False).tolist() == [expected]
    assert row_order(row[None].double()).tolist() == [expected]
    assert unpack_index(smallest_k(row[None], 6)).tolist() == [expected]


def test_ordered_bits_is_the_order_of_the_values():
    ascending = [-math.inf, -3.0e38, -1.5, -1e-45, -0.0, 0.0, 1e-45, 1.5, 3.0e38, math.inf]
    for dtype in (torch.float32, torch.float64):
        values = torch.tensor(ascending, dtype=dtype)
        bits = ordered_bits(values).tolist()
        assert bits == sorted(bits) and len(set(bits)) == len(bits) - 1  # only -0.0 and 0.0 share a value
        assert bits[4] == bits[5] == 0
        nan_bits = {int(ordered_bits(n.to(dtype)[None])) for n in _nans()}
        assert len(nan_bits) == 1 and nan_bits.pop() > bits[-1]  # one value for every NaN, above +inf


def test_order_keys_tie_by_index_and_numpy_twin():
    rows = _rows(0, 5, 30)
    index = torch.arange(30)
    keys = order_keys(rows, index)
    assert torch.equal(torch.from_numpy(np_order_keys(rows.numpy(), index.numpy())), keys)
    assert torch.equal(unpack_index(keys), index.expand(5, 30))
    for r in range(5):
        assert torch.argsort(keys[r]).tolist() == _reference_order(rows[r].numpy())
    with pytest.raises(TypeError):
        order_keys(rows.double(), index)


@pytest.mark.parametrize("numpy_on_cpu", [True, False])
def test_row_order_matches_reference(numpy_on_cpu):
    rows = _rows(1, 7, 40)
    expected = [_reference_order(r) for r in rows.numpy()]
    assert row_order(rows, numpy_on_cpu).tolist() == expected
    assert row_order(rows.double(), numpy_on_cpu).tolist() == expected  # fp64: same rule, stable sort
    assert row_order(rows[:, :0]).shape == (7, 0)


def test_smallest_k_is_the_head_of_row_order():
    rows = _rows(2, 9, 25)
    full = row_order(rows)
    for k in (1, 2, 5, 12, 24, 25):
        keys = smallest_k(rows, k, index_offset=100)
        assert torch.equal(unpack_index(keys) - 100, full[:, :k])
        assert torch.equal(keys, keys.sort(dim=1).values)


# ---------------------------------------------------------------------------------------------------------
# One order from the four rankers
# ---------------------------------------------------------------------------------------------------------
def _reid_order(rows: torch.Tensor, counting: str) -> list[list[int]]:
    """Row orders read from reid_metrics: query (r, j) has row r's distances and gallery item j as its
    only true match, so its first-match rank is the position of j in row r."""
    num_rows, width = rows.shape
    row_of = torch.arange(num_rows).repeat_interleave(width)
    out = reid_metrics_from_distances(
        lambda a, b: rows[row_of[a:b]],
        np.tile(np.arange(width), num_rows),
        np.arange(width),
        np.zeros(num_rows * width, dtype=np.int64),
        np.ones(width, dtype=np.int64),
        chunk_size=7,
        return_per_query=True,
        counting=counting,
    )
    pos = out["per_query"]["first_match_rank"].reshape(num_rows, width) - 1
    return np.argsort(pos, axis=1).tolist()


def _retrieval_rank(row: torch.Tensor, item: int, **opts) -> int:
    """The rank of gallery ``item`` in ``row`` read from retrieval_metrics' Recall@K (its only same-label item)."""
    width = row.numel()
    labels = np.arange(width)
    res = retrieval_metrics(
        torch.zeros(1, 1),
        [item],
        torch.zeros(width, 1),
        labels,
        ks=tuple(range(1, width + 1)),
        with_map_at_r=False,
        distance_fn=lambda q, g: row[None],
        **opts,
    )
    return min(k for k in range(1, width + 1) if res[f"R@{k}"] == 1.0)


def test_the_four_rankers_give_one_order():
    rows = _rows(3, 4, 24)
    expected = [_reference_order(r) for r in rows.numpy()]
    # rank pictures: every gallery item listed, in rank order
    for flag in (True, False):
        records = ranked_lists(
            lambda a, b: rows[a:b], 4, [-1] * 4, None, [0] * 24, None, top_k=25, reid=False, numpy_sort_on_cpu=flag
        )
        assert [rec.gallery_indices.tolist() for rec in records] == expected
    # re-ID metrics, every counting path
    for counting in ("compiled", "binned", "search"):
        assert _reid_order(rows, counting) == expected
    # retrieval metrics: plain top-L, and block minima with the counting pass for the first hit
    for opts in ({}, {"block_size": 2, "topk_cap": 1}):
        for r in range(rows.shape[0]):
            ranks = [_retrieval_rank(rows[r], j, **opts) for j in range(24)]
            assert np.argsort(ranks).tolist() == expected[r], opts
    # re-ranking builds its neighbour lists with the shared selection
    assert reranking.smallest_k is ranking.smallest_k and reranking.unpack_index is ranking.unpack_index
    for k in (3, 24):
        assert unpack_index(smallest_k(rows, k)).tolist() == [e[:k] for e in expected]


def test_reranker_neighbour_lists_follow_the_rule():
    # duplicated items: exact ties in the neighbour lists, broken by item index
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (30, 2), generator=g).float()
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    rank, _ = reranking._knn_lists(x, (x * x).sum(1), 30, 7)
    assert rank.tolist() == [_reference_order(r) for r in d.numpy()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_order():
    rows = _rows(5, 6, 50)
    gpu = rows.cuda()
    assert torch.equal(ordered_bits(gpu).cpu(), ordered_bits(rows))
    assert torch.equal(row_order(gpu).cpu(), row_order(rows))
    assert torch.equal(row_order(gpu.double()).cpu(), row_order(rows))
    for k in (1, 9, 50):
        assert torch.equal(smallest_k(gpu, k).cpu(), smallest_k(rows, k))
    assert _reid_order(gpu, True) == _reid_order(rows, True)


# ---------------------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------------------
def test_as_id_tensor_inputs():
    expected = torch.tensor([3, 1, 4], dtype=torch.int64)
    for ids in ([3, 1, 4], np.array([3, 1, 4], dtype=np.int32), torch.tensor([3, 1, 4], dtype=torch.int16)):
        out = as_id_tensor(ids, "query_pids", 3)
        assert out.dtype == torch.int64 and torch.equal(out, expected)
    assert torch.equal(as_id_tensor(np.array([[3], [1], [4]]), "x"), expected)  # flattened
    assert as_id_tensor([True, False], "flags").tolist() == [1, 0]
    assert as_id_tensor([], "empty", 0).dtype == torch.int64  # numpy makes [] float: still fine
    assert as_id_tensor(expected, "x", device="cpu").device.type == "cpu"


def test_as_id_tensor_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"gallery_camids has 2 entries, expected 3"):
        as_id_tensor([0, 1], "gallery_camids", 3)
    with pytest.raises(TypeError, match="query_labels must contain integers"):
        as_id_tensor([0.5, 1.0], "query_labels")
    with pytest.raises(TypeError, match="query_labels"):
        as_id_tensor(torch.tensor([1.0]), "query_labels")
    with pytest.raises(TypeError, match="pids"):
        as_id_tensor(["a", "b"], "pids")


# ---------------------------------------------------------------------------------------------------------
# Distance blocks
# ---------------------------------------------------------------------------------------------------------
def _features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(13, 6, generator=g), torch.randn(21, 6, generator=g)


def test_feature_distances_metrics():
    q, g = _features()
    q64, g64 = q.double(), g.double()
    sq = (q64 * q64).sum(1, keepdim=True) + (g64 * g64).sum(1) - 2 * q64 @ g64.t()
    cos = torch.nn.functional.normalize(q64, dim=1) @ torch.nn.functional.normalize(g64, dim=1).t()
    cases = {
        ("euclidean", False): sq - (q64 * q64).sum(1, keepdim=True),  # ranking form: no ||q||^2
        ("euclidean", True): sq.clamp(min=0),
        ("cosine", False): -cos,
        ("cosine", True): (1 - cos).clamp(min=0),
    }
    for (metric, full), ref in cases.items():
        blocks = FeatureDistances(q, g, metric, full=full)
        got = torch.cat([blk.clone() for _, _, blk in blocks.chunks(5)])
        assert got.dtype == torch.float32 and got.shape == (13, 21)
        np.testing.assert_allclose(got.double().numpy(), ref.numpy(), atol=1e-5)
        assert [(a, b) for a, b, _ in blocks.chunks(5)] == [(0, 5), (5, 10), (10, 13)]


def test_feature_distances_casts_and_checks():
    q, g = _features(1)
    half = FeatureDistances(q.half(), g.half()).block(0, 13)
    assert torch.equal(half, FeatureDistances(q.half().float(), g.half().float()).block(0, 13))
    # query = gallery: the query rows are read from the one fp32 gallery
    self_blocks = FeatureDistances(g, g)
    assert self_blocks._query is self_blocks.gallery
    # a custom distance may compare features of different widths; its output is cast to fp32
    fn = FeatureDistances(q, g[:, :4], distance_fn=lambda a, b: torch.cdist(a[:, :4], b).double())
    blk = fn.block(2, 7)
    assert blk.dtype == torch.float32 and torch.allclose(blk, torch.cdist(q[2:7, :4], g[:, :4]))
    with pytest.raises(ValueError, match=r"distance_fn\(queries 0..12, gallery\) returned \(13, 20\), expected"):
        FeatureDistances(q, g, distance_fn=lambda a, b: torch.zeros(a.shape[0], 20)).block(0, 13)
    with pytest.raises(ValueError, match="unknown metric"):
        FeatureDistances(q, g, "manhattan")
    with pytest.raises(ValueError, match="dimensions differ"):
        FeatureDistances(q, g[:, :4])
    with pytest.raises(ValueError, match="2-D"):
        FeatureDistances(q[0], g)


def test_given_distances():
    d = torch.arange(12.0).view(3, 4)
    blocks = GivenDistances(d, 3, 4)
    chunks = list(blocks.chunks(2))
    assert [(a, b) for a, b, _ in chunks] == [(0, 2), (2, 3)]
    assert torch.equal(torch.cat([blk for _, _, blk in chunks]), d)
    for _, _, blk in blocks.chunks(2, writable=True):
        blk.fill_(-1.0)  # a writable block never aliases the source
    assert torch.equal(d, torch.arange(12.0).view(3, 4))
    assert GivenDistances(lambda a, b: d[a:b].double(), 3, 4).block(0, 3).dtype == torch.float32
    assert GivenDistances(lambda a, b: d[a:b].double(), 3, 4, keep_float64=True).block(0, 3).dtype == torch.float64
    assert GivenDistances(lambda a, b: d[a:b].int(), 3, 4).block(1, 2).tolist() == [[4.0, 5.0, 6.0, 7.0]]
    with pytest.raises(ValueError, match=r"dist_fn\(0, 2\) returned \(2, 3\), expected \(2, 4\)"):
        GivenDistances(lambda a, b: d[a:b, :3], 3, 4, name="dist_fn").block(0, 2)
    with pytest.raises(ValueError, match=r"dist_fn\(0, 2\) returned list"):
        GivenDistances(lambda a, b: [0.0], 3, 4, name="dist_fn").block(0, 2)
    with pytest.raises(ValueError, match="shape"):
        GivenDistances(d, 3, 5)
