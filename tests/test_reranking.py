"""Tests for engine.evaluation.reranking (k-reciprocal re-ranking, Zhong et al. CVPR 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.evaluation.reranking as rr
from engine.evaluation.reid_metrics import reid_metrics
from engine.evaluation.reranking import (
    KReciprocalReranker,
    k_reciprocal_dense,
    k_reciprocal_distances,
    rerank_and_evaluate,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny arrays: intra-op threads only add overhead.  Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random(seed: int, nq: int, ng: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(nq, dim, generator=g), torch.randn(ng, dim, generator=g)


# ---------------------------------------------------------------------------
# Independent reference: numpy float64, explicit loops over the definitions.
# ---------------------------------------------------------------------------
def _ref_rerank(qf: np.ndarray, gf: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, nq = x.shape[0], qf.shape[0]
    d = np.zeros((n, n))
    for p in range(n):
        for q in range(n):
            d[p, q] = float(((x[p] - x[q]) ** 2).sum())
    dn = d / d.max(axis=1, keepdims=True)
    ranking = [list(np.argsort(d[p], kind="stable")) for p in range(n)]

    def nbrs(p: int, k: int) -> list[int]:  # N(p, k): k + 1 items, p included
        return [int(i) for i in ranking[p][: k + 1]]

    def recip(p: int, k: int) -> list[int]:  # R(p, k)
        return [q for q in nbrs(p, k) if p in nbrs(q, k)]

    kh = int(np.around(k1 / 2))
    v = np.zeros((n, n))
    for p in range(n):
        r_p = recip(p, k1)
        expanded = set(r_p)
        for q in r_p:
            r_q = recip(q, kh)
            if len(set(r_q) & set(r_p)) > 2.0 / 3.0 * len(r_q):
                expanded |= set(r_q)
        members = sorted(expanded)
        w = np.exp(-dn[p, members])
        v[p, members] = w / w.sum()
    if k2 > 1:
        v_qe = np.zeros_like(v)
        for p in range(n):
            v_qe[p] = np.mean([v[q] for q in ranking[p][:k2]], axis=0)
        v = v_qe
    out = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(n - nq):
            a, b = v[i], v[nq + j]
            jac = 1.0 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            out[i, j] = (1.0 - lam) * jac + lam * dn[i, nq + j]
    return out


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 5, 3, 0.5), (3, 8, 1, 0.0)])
def test_dense_matches_loop_reference(seed, k1, k2, lam):
    q, g = _random(seed, 10, 30, 8)
    ref = _ref_rerank(q.numpy(), g.numpy(), k1, k2, lam)
    got = k_reciprocal_dense(q, g, k1, k2, lam)
    assert got.dtype == torch.float32 and got.shape == (10, 30)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("chunk", [7, 16])
def test_sparse_matches_dense(seed, chunk):
    q, g = _random(seed, 30, 120, 16)
    dense = k_reciprocal_dense(q, g)
    rer = KReciprocalReranker(q, g, chunk_size=chunk)
    np.testing.assert_allclose(rer.all_distances().numpy(), dense.numpy(), atol=1e-5, rtol=0)
    # arbitrary (non-contiguous) query chunks
    idx = torch.tensor([29, 3, 3, 17, 0])
    np.testing.assert_allclose(rer.distances(idx).numpy(), dense[idx].numpy(), atol=1e-5, rtol=0)
    assert rer.nnz <= 150 * 6 * 21 * 12


@pytest.mark.parametrize("k1,k2,lam", [(5, 3, 0.5), (4, 1, 0.3), (20, 6, 1.0)])
def test_sparse_matches_dense_other_params(k1, k2, lam):
    q, g = _random(7, 25, 60, 12)
    dense = k_reciprocal_dense(q, g, k1, k2, lam)
    rer = KReciprocalReranker(q, g, k1, k2, lam, chunk_size=9)
    np.testing.assert_allclose(rer.all_distances().numpy(), dense.numpy(), atol=1e-5, rtol=0)


def test_sparse_matches_dense_with_ties_and_tiny_sets():
    # Integer features: many exactly tied distances and duplicate items, which
    # exercises the tie handling of the top-k lists (ties broken by index).
    g = torch.Generator().manual_seed(5)
    q = torch.randint(0, 3, (12, 4), generator=g).float()
    gal = torch.randint(0, 3, (50, 4), generator=g).float()
    dense = k_reciprocal_dense(q, gal)
    # tiny budgets: many Jaccard sub-batches and many weight sub-batches
    rer = KReciprocalReranker(q, gal, chunk_size=5, pair_budget=7, gather_budget=40)
    np.testing.assert_allclose(rer.all_distances().numpy(), dense.numpy(), atol=1e-5, rtol=0)
    # fewer items than k1 + 1
    q2, g2 = q[:3], gal[:8]
    np.testing.assert_allclose(
        KReciprocalReranker(q2, g2, chunk_size=4).all_distances().numpy(),
        k_reciprocal_dense(q2, g2).numpy(),
        atol=1e-5,
        rtol=0,
    )


def test_smallest_k_matches_stable_sort():
    # the selection the neighbour lists are built with (engine.evaluation.ranking.smallest_k)
    g = torch.Generator().manual_seed(0)
    block = torch.randint(0, 5, (40, 30), generator=g).float()
    for k in (1, 4, 11, 30):
        got = rr.unpack_index(rr.smallest_k(block, k))
        exp = torch.sort(block, dim=1, stable=True).indices[:, :k]
        assert torch.equal(got, exp)


@pytest.mark.parametrize("chunk", [1, 3, 8, 50])
def test_knn_lists_match_full_stable_sort(chunk):
    # integer features: exact distances with many ties and duplicate items
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (47, 3), generator=g).float()
    sq = (x * x).sum(dim=1)
    d = torch.cdist(x.double(), x.double()).pow(2).float()
    d.fill_diagonal_(0.0)
    for k in (1, 6, 21, 47):
        rank, row_max = rr._knn_lists(x, sq, k, chunk)
        assert torch.equal(rank, torch.sort(d, dim=1, stable=True).indices[:, :k])
        assert torch.equal(row_max, d.max(dim=1).values)


def _clustered(seed: int, num_ids: int = 40, per_id: int = 8, dim: int = 32, noise: float = 1.1):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids, dim))
    feats = centers[np.repeat(np.arange(num_ids), per_id)] + noise * rng.normal(size=(num_ids * per_id, dim))
    pids = np.repeat(np.arange(num_ids), per_id)
    cams = np.tile(np.arange(per_id), num_ids) % 4
    is_q = np.tile(np.arange(per_id) < 2, num_ids)  # 2 queries per identity
    t = torch.from_numpy(feats).float()
    return t[is_q], t[~is_q], pids[is_q], pids[~is_q], cams[is_q], cams[~is_q]


def test_reranking_improves_map_on_clustered_data():
    qf, gf, qp, gp, qc, gc = _clustered(0)
    base = reid_metrics(qf, gf, qp, gp, qc, gc)
    rer = rerank_and_evaluate(qf, gf, qp, gp, qc, gc, chunk_size=32)
    assert 0.2 < base["mAP"] < 0.9
    assert rer["mAP"] > base["mAP"] + 0.02


@pytest.mark.parametrize("chunk", [13, 64])
def test_rerank_and_evaluate_equals_reid_metrics_on_dense(chunk):
    qf, gf, qp, gp, qc, gc = _clustered(1, num_ids=25)
    dense = k_reciprocal_dense(qf, gf)
    from engine.evaluation.reid_metrics import reid_metrics_from_distances

    got = rerank_and_evaluate(qf, gf, qp, gp, qc, gc, max_rank=20, chunk_size=chunk, return_per_query=True)
    exp = reid_metrics_from_distances(dense, qp, gp, qc, gc, max_rank=20, chunk_size=chunk, return_per_query=True)
    assert set(got) == set(exp)
    np.testing.assert_allclose(got["cmc"], exp["cmc"], atol=1e-12)
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert got[key] == pytest.approx(exp[key], abs=1e-12)
    for key in ("num_query", "num_valid_query", "num_skipped_query"):
        assert got[key] == exp[key]
    np.testing.assert_array_equal(got["per_query"]["first_match_rank"], exp["per_query"]["first_match_rank"])


def test_distance_block_and_small_budgets():
    """The block function rerank_and_evaluate hands to the re-ID metrics is distances() of a query range;
    the scratch budgets change neither the distances nor the metrics."""
    qf, gf, qp, gp, qc, gc = _clustered(2, num_ids=15)
    rer = KReciprocalReranker(qf, gf, chunk_size=11)
    assert torch.equal(rer.distance_block(3, 9), rer.distances(torch.arange(3, 9)))
    small = KReciprocalReranker(qf, gf, chunk_size=11, pair_budget=5, gather_budget=33)
    np.testing.assert_allclose(small.all_distances().numpy(), rer.all_distances().numpy(), atol=1e-6, rtol=0)
    base = rerank_and_evaluate(qf, gf, qp, gp, qc, gc, chunk_size=11, return_per_query=True)
    tiny = rerank_and_evaluate(
        qf, gf, qp, gp, qc, gc, chunk_size=11, return_per_query=True, pair_budget=5, gather_budget=33
    )
    np.testing.assert_array_equal(base["per_query"]["first_match_rank"], tiny["per_query"]["first_match_rank"])
    assert base["mAP"] == pytest.approx(tiny["mAP"], abs=1e-12)


def test_dense_size_limit():
    q, g = _random(0, 10, 30, 8)
    with pytest.raises(ValueError, match="max_dense_items.*KReciprocalReranker"):
        k_reciprocal_distances(q, g, max_dense_items=39)
    out = k_reciprocal_distances(q, g, max_dense_items=40)
    assert torch.equal(out, k_reciprocal_dense(q, g))


def test_input_validation():
    q, g = _random(0, 4, 6, 3)
    with pytest.raises(ValueError):
        k_reciprocal_dense(q, g[:, :2])
    with pytest.raises(ValueError):
        KReciprocalReranker(q, g, k1=0)
    with pytest.raises(ValueError):
        KReciprocalReranker(q, g, lambda_value=1.5)
    bad = q.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        KReciprocalReranker(bad, g)
    with pytest.raises(IndexError):
        KReciprocalReranker(q, g).distances(torch.tensor([4]))
