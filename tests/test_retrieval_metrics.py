"""Tests for engine.evaluation.retrieval_metrics against an independent brute-force reference,
hand-computed cases and pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import engine.evaluation.retrieval_metrics as rm
from engine.evaluation.retrieval_metrics import nmi, retrieval_metrics


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The arrays here are tiny: intra-op threads only add overhead.  Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=[16, 2])
def block(request):
    """Run a test with the default block size of the block-minima prefilter (too big for
    these small galleries: plain top-k) and with blocks of 2 columns (prefilter used)."""
    return request.param


# ---------------------------------------------------------------------------
# Independent reference: numpy float64, full distance matrix, one query at a time.
# ---------------------------------------------------------------------------
def _ref_dist(qf: np.ndarray, gf: np.ndarray, metric: str) -> np.ndarray:
    qf = qf.astype(np.float64)
    gf = gf.astype(np.float64)
    if metric == "euclidean":
        return ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    if metric == "cosine":
        qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        return 1.0 - qn @ gn.T
    if metric == "l1":
        return np.abs(qf[:, None, :] - gf[None, :, :]).sum(-1)
    raise AssertionError(metric)


def _ref_metrics(qf, ql, gf=None, gl=None, ks=(1, 2, 4, 8), metric="euclidean"):
    self_mode = gf is None
    if self_mode:
        gf, gl = qf, ql
    ql, gl = np.asarray(ql), np.asarray(gl)
    dist = _ref_dist(qf, gf, metric)
    recall = {k: [] for k in ks}
    maps, rps, marps = [], [], []
    skipped = 0
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        if self_mode:
            order = order[order != i]  # by index, never by distance
        rel = gl[order] == ql[i]
        r = int(rel.sum())
        if r == 0:
            skipped += 1
            continue
        for k in ks:
            recall[k].append(float(rel[:k].any()))
        s, hits = 0.0, 0
        for pos in range(1, r + 1):
            if rel[pos - 1]:
                hits += 1
                s += hits / pos
        maps.append(s / r)
        rps.append(hits / r)
        marps.append(s / hits if hits else 0.0)
    out = {f"R@{k}": float(np.mean(v)) for k, v in recall.items()}
    out.update(
        {
            "MAP@R": float(np.mean(maps)),
            "R-precision": float(np.mean(rps)),
            "mARP": float(np.mean(marps)),
            "num_query": dist.shape[0],
            "num_skipped_query": skipped,
        }
    )
    return out


def _assert_same(res: dict, ref: dict, tol: float = 1e-12) -> None:
    for key, val in ref.items():
        assert res[key] == pytest.approx(val, abs=tol), (key, res[key], val)


def _int_data(rng: np.random.Generator, n: int, d: int, n_cls: int, lo: int = -2, hi: int = 2):
    """Small-integer features (exact in fp16/fp32/fp64, so every computation gives the
    same distances and plenty of exact ties), with duplicated rows and lone labels."""
    x = rng.integers(lo, hi + 1, size=(n, d)).astype(np.float32)
    dup = rng.choice(n, size=n // 5, replace=False)
    x[dup] = x[rng.integers(0, n, size=dup.size)]
    y = rng.integers(0, n_cls, size=n)
    y[:3] = n_cls + np.arange(3)  # labels with a single item
    return x, y


# ---------------------------------------------------------------------------
# Brute-force comparison (exact ties, several chunk sizes, both gallery modes)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
@pytest.mark.parametrize("topk_cap", [128, 2])
def test_query_is_gallery_matches_bruteforce(seed, chunk_size, topk_cap, block):
    # topk_cap 2: K > 2 go through the counting pass
    rng = np.random.default_rng(seed)
    x, y = _int_data(rng, 150, 5, 25)
    # max K 500 > G: exact first-hit ranks; max K 20: most first hits are beyond it
    ks = (1, 2, 3, 5, 10, 40, 149, 500) if seed != 1 else (1, 3, 7, 20)
    res = retrieval_metrics(
        torch.from_numpy(x), torch.from_numpy(y), ks=ks, chunk_size=chunk_size, topk_cap=topk_cap, block_size=block
    )
    ref = _ref_metrics(x, y, ks=ks)
    _assert_same(res, ref)
    assert res["num_skipped_query"] >= 3  # the three lone labels (random labels may add more)
    assert res["num_valid_query"] == 150 - res["num_skipped_query"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk_size", [5, 1000])
@pytest.mark.parametrize("topk_cap", [128, 1])
def test_separate_gallery_matches_bruteforce(seed, chunk_size, topk_cap, block):
    rng = np.random.default_rng(100 + seed)
    xq, yq = _int_data(rng, 60, 4, 12)
    xg, yg = _int_data(rng, 130, 4, 12)
    xq[:10] = xg[rng.integers(0, 130, size=10)]  # queries duplicated in the gallery
    ks = (1, 4, 16, 129, 130, 300) if seed == 0 else (1, 2, 5, 9)
    res = retrieval_metrics(
        torch.from_numpy(xq),
        yq,
        torch.from_numpy(xg),
        yg,
        ks=ks,
        chunk_size=chunk_size,
        topk_cap=topk_cap,
        block_size=block,
    )
    ref = _ref_metrics(xq, yq, xg, yg, ks=ks)
    _assert_same(res, ref)
    # query labels n_cls.. also exist once in the gallery: only absent labels are skipped
    assert res["num_skipped_query"] == ref["num_skipped_query"]


def test_exact_fallback_in_small_batches(block):
    """Boundary ties on every row, with the exact-key fallback split into 1-row batches."""
    rng = np.random.default_rng(7)
    x, y = _int_data(rng, 90, 2, 10, lo=-1, hi=1)  # 9 distinct points: ties everywhere
    ks = (1, 2, 5, 30)
    for chunk in (4, 90):
        res = retrieval_metrics(
            torch.from_numpy(x), y, ks=ks, chunk_size=chunk, exact_cells=1, topk_cap=1, block_size=block
        )
        _assert_same(res, _ref_metrics(x, y, ks=ks))


@pytest.mark.parametrize("separate", [False, True])
def test_fast_paths_without_ties(separate, block):
    """Wide-range integer features (exact distances, few ties): exercises the fast top-k
    boundary check and the fast sign-counting pass for the first-hit rank."""
    rng = np.random.default_rng(21)
    x = rng.integers(-400, 401, size=(220, 8)).astype(np.float32)
    y = rng.integers(0, 30, size=220)
    ks = (1, 3, 10, 50, 119, 219) if block == 16 else (1, 3, 10, 25)
    if separate:
        args = (torch.from_numpy(x[:100]), y[:100], torch.from_numpy(x[100:]), y[100:])
        ref = _ref_metrics(x[:100], y[:100], x[100:], y[100:], ks=ks)
    else:
        args = (torch.from_numpy(x), y)
        ref = _ref_metrics(x, y, ks=ks)
    for chunk in (9, 300):
        _assert_same(retrieval_metrics(*args, ks=ks, chunk_size=chunk, topk_cap=1, block_size=block), ref)


def test_cosine_matches_bruteforce():
    """Unit vectors with four +-1/2 entries, scaled by powers of two: normalisation and
    dot products are exact in fp32 and fp64, and there are many exact ties."""
    rng = np.random.default_rng(3)
    n, d = 160, 8
    x = np.zeros((n, d), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(d, size=4, replace=False)
        x[i, cols] = rng.choice([-0.5, 0.5], size=4)
    x *= (2.0 ** rng.integers(-3, 4, size=(n, 1))).astype(np.float32)
    y = rng.integers(0, 20, size=n)
    ks = (1, 2, 4, 8, 100)
    for chunk in (16, 500):
        res = retrieval_metrics(torch.from_numpy(x), y, ks=ks, metric="cosine", chunk_size=chunk)
        _assert_same(res, _ref_metrics(x, y, ks=ks, metric="cosine"))
    xg, yg = x[:100], y[:100]
    res = retrieval_metrics(
        torch.from_numpy(x[100:]), y[100:], torch.from_numpy(xg), yg, ks=ks, metric="cosine", chunk_size=16
    )
    _assert_same(res, _ref_metrics(x[100:], y[100:], xg, yg, ks=ks, metric="cosine"))


@pytest.mark.parametrize("cap", [128, 1])
def test_non_finite_features_rank_last(block, cap):
    """NaN distances rank after +inf (as np.argsort); results still exact.  A NaN in a
    block of the block-minima prefilter hides that block's finite minimum."""
    rng = np.random.default_rng(11)
    x, y = _int_data(rng, 300, 3, 40)
    x[rng.choice(300, size=12, replace=False), 1] = np.nan  # NaN rows: NaN distances in rows and columns
    ks = (1, 2, 8, 100)
    for chunk in (16, 300):
        res = retrieval_metrics(torch.from_numpy(x), y, ks=ks, chunk_size=chunk, topk_cap=cap, block_size=block)
        _assert_same(res, _ref_metrics(x, y, ks=ks))
    res = retrieval_metrics(
        torch.from_numpy(x[:100]),
        y[:100],
        torch.from_numpy(x[100:]),
        y[100:],
        ks=ks,
        chunk_size=32,
        topk_cap=cap,
        block_size=block,
    )
    _assert_same(res, _ref_metrics(x[:100], y[:100], x[100:], y[100:], ks=ks))


@pytest.mark.parametrize("cap", [128, 1])
def test_distance_fn_replaces_metric(block, cap):
    """A custom distance from the features (L1, exact on small integers, many ties), in both
    gallery modes: the query's own column is still excluded by index."""
    rng = np.random.default_rng(13)
    x, y = _int_data(rng, 140, 3, 20)

    def l1(q, g):
        assert q.dtype == torch.float32 and g.dtype == torch.float32
        return (q[:, None, :] - g[None, :, :]).abs().sum(-1)

    ks = (1, 2, 8, 60)
    opts = {"ks": ks, "distance_fn": l1, "metric": "ignored", "topk_cap": cap, "block_size": block}
    for chunk in (9, 200):
        res = retrieval_metrics(torch.from_numpy(x), y, chunk_size=chunk, **opts)
        _assert_same(res, _ref_metrics(x, y, ks=ks, metric="l1"))
    res = retrieval_metrics(torch.from_numpy(x[:50]), y[:50], torch.from_numpy(x[50:]), y[50:], chunk_size=16, **opts)
    _assert_same(res, _ref_metrics(x[:50], y[:50], x[50:], y[50:], ks=ks, metric="l1"))


def test_chunk_size_does_not_change_numbers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    y = rng.integers(0, 30, size=200)
    ks = (1, 2, 4, 8, 64)
    base = retrieval_metrics(torch.from_numpy(x), y, ks=ks, chunk_size=200)
    for chunk in (1, 13, 64):
        assert retrieval_metrics(torch.from_numpy(x), y, ks=ks, chunk_size=chunk) == base


# ---------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------
def test_hand_computed_separate_gallery():
    # 1-D features, one query at 0; gallery positions 1..6 (distances 1..6).
    # labels by rank:  A  B  A  B  B  A    -> R = 3 (three A's)
    q = torch.tensor([[0.0]])
    g = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    gl = [0, 1, 0, 1, 1, 0]
    res = retrieval_metrics(q, [0], g, gl, ks=(1, 2, 6))
    # hits at ranks 1 and 3 within R = 3: sum P(i) rel(i) = 1/1 + 2/3
    assert res["R@1"] == 1.0 and res["R@2"] == 1.0 and res["R@6"] == 1.0
    assert res["MAP@R"] == pytest.approx((1 + 2 / 3) / 3)
    assert res["R-precision"] == pytest.approx(2 / 3)
    assert res["mARP"] == pytest.approx((1 + 2 / 3) / 2)
    assert res["num_query"] == 1 and res["num_skipped_query"] == 0

    # labels by rank: B A B A A B -> first hit at rank 2
    res = retrieval_metrics(q, [0], g, [1, 0, 1, 0, 0, 1], ks=(1, 2, 4))
    assert res["R@1"] == 0.0 and res["R@2"] == 1.0 and res["R@4"] == 1.0
    assert res["MAP@R"] == pytest.approx((1 / 2) / 3)  # only rank 2 is a hit within R = 3
    assert res["R-precision"] == pytest.approx(1 / 3)
    assert res["mARP"] == pytest.approx(1 / 2)

    # no hit within R: MAP@R = R-precision = mARP = 0, R@K counts the later hit
    res = retrieval_metrics(q, [0], g, [1, 1, 1, 1, 0, 1], ks=(1, 4, 5))
    assert (res["R@1"], res["R@4"], res["R@5"]) == (0.0, 0.0, 1.0)
    assert res["MAP@R"] == 0.0 and res["R-precision"] == 0.0 and res["mARP"] == 0.0


def test_hand_computed_query_is_gallery_ties_and_duplicates():
    # Points on a line: 0 (A), 0 (A, duplicate), 1 (B), -1 (B), 2 (A)
    x = torch.tensor([[0.0], [0.0], [1.0], [-1.0], [2.0]])
    y = [0, 0, 1, 1, 0]
    res = retrieval_metrics(x, y, ks=(1, 2))
    # q0: gallery {1:0, 2:1, 3:1, 4:4}: ranks 1(A) 2(B) 3(B) 4(A); R = 2 -> AP sum 1
    # q1: same as q0 with item 0 -> R = 2, sum 1
    # q2 (B at 1): d: 0->1, 1->1, 3->4, 4->1: order 0(A),1(A),4(A),3(B): R = 1, rel(1)=0 -> 0
    # q3 (B at -1): d: 0->1,1->1,2->4,4->9: order 0,1,2(B),4: R = 1 -> 0; R@2 = 0
    # q4 (A at 2): d: 0->4,1->4,2->1,3->9: order 2(B),0(A),1(A),3: R = 2 -> hit at 2: 1/2
    assert res["R@1"] == pytest.approx((1 + 1 + 0 + 0 + 0) / 5)
    assert res["R@2"] == pytest.approx((1 + 1 + 0 + 0 + 1) / 5)
    assert res["MAP@R"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.25) / 5)
    assert res["R-precision"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.5) / 5)
    assert res["mARP"] == pytest.approx((1 + 1 + 0 + 0 + 0.5) / 5)


def test_duplicate_of_query_is_a_hit():
    """Self is excluded by index, so an exact duplicate is still the first neighbour."""
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [5.0, 5.0], [5.0, 6.0]])
    res = retrieval_metrics(x, [0, 0, 1, 1], ks=(1,))
    assert res["R@1"] == 1.0 and res["MAP@R"] == 1.0


def test_queries_without_same_label_items_are_skipped():
    x = torch.tensor([[0.0], [0.1], [5.0], [9.0]])
    # label 2 and 3 have one item each: skipped (R = 0) for every metric
    res = retrieval_metrics(x, [1, 1, 2, 3], ks=(1, 3))
    assert res == retrieval_metrics(x, [1, 1, 2, 3], ks=(1, 3), chunk_size=1)  # chunks with no valid query
    assert res["num_query"] == 4 and res["num_skipped_query"] == 2 and res["num_valid_query"] == 2
    assert res["R@1"] == 1.0 and res["R@3"] == 1.0 and res["MAP@R"] == 1.0
    # separate gallery: query label absent from the gallery is skipped
    res = retrieval_metrics(torch.tensor([[0.0], [1.0]]), [7, 1], torch.tensor([[0.5], [3.0]]), [1, 2], ks=(1,))
    assert res["num_skipped_query"] == 1 and res["R@1"] == 1.0
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(x, [0, 1, 2, 3])


def test_with_map_at_r_false_and_errors():
    x = torch.randn(20, 4)
    y = torch.arange(20) % 4
    res = retrieval_metrics(x, y, ks=(1, 5), with_map_at_r=False)
    assert "MAP@R" not in res and "mARP" not in res and "R-precision" not in res
    full = retrieval_metrics(x, y, ks=(1, 5))
    assert res["R@1"] == full["R@1"] and res["R@5"] == full["R@5"]
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, metric="manhattan")
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, ks=(0,))
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x)
    with pytest.raises(TypeError):
        retrieval_metrics(x, y.float())


# ---------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_computed_in_fp32(dtype):
    rng = np.random.default_rng(9)
    x, y = _int_data(rng, 120, 6, 15)  # small integers: exact in fp16 / bf16
    ks = (1, 2, 4, 8)
    res = retrieval_metrics(torch.from_numpy(x).to(dtype), y, ks=ks, chunk_size=32)
    _assert_same(res, _ref_metrics(x, y, ks=ks))
    # fp16 features whose squares overflow fp16 still work (fp32 arithmetic)
    big = torch.from_numpy(x * 100.0).to(dtype)
    res = retrieval_metrics(big, y, ks=ks, chunk_size=32)
    _assert_same(res, _ref_metrics(big.float().numpy(), y, ks=ks))


# ---------------------------------------------------------------------------
# pytorch-metric-learning's AccuracyCalculator
# ---------------------------------------------------------------------------
def _pml_data(seed: int, n: int, n_cls: int):
    """Integer features in [-400, 400]^8: every distance is an exact integer in fp32,
    and the data is redrawn until no row has a same-label / other-label tie (PML's
    k-NN breaks ties arbitrarily)."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.integers(-400, 401, size=(n, 8)).astype(np.float32)
        y = rng.integers(0, n_cls, size=n)
        y[:2] = n_cls + np.arange(2)  # lone labels
        d = _ref_dist(x, x, "euclidean")
        np.fill_diagonal(d, np.inf)
        same = y[:, None] == y[None, :]
        ok = True
        for i in range(n):
            if np.intersect1d(d[i][same[i]], d[i][~same[i]]).size:
                ok = False
                break
        if ok:
            return x, y


def _pml_calculator():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    knn = CustomKNN(LpDistance(normalize_embeddings=False, p=2, power=2))  # no faiss needed
    return AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        knn_func=knn,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning_query_is_gallery(seed):
    calc = _pml_calculator()
    x, y = _pml_data(seed, 240, 40)
    # reference=None: PML uses the query set as the reference with ref_includes_query=True
    pml = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    res = retrieval_metrics(torch.from_numpy(x), y, ks=(1,), chunk_size=50)
    assert res["R@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert res["MAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert res["R-precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    _, inv, cnt = np.unique(y, return_inverse=True, return_counts=True)
    assert res["num_skipped_query"] == int((cnt[inv] == 1).sum())  # PML drops the same "lone" queries


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning_separate_gallery(seed):
    calc = _pml_calculator()
    x, y = _pml_data(10 + seed, 300, 30)
    xq, yq, xg, yg = x[:100], y[:100], x[100:], y[100:]
    pml = calc.get_accuracy(
        torch.from_numpy(xq), torch.from_numpy(yq), torch.from_numpy(xg), torch.from_numpy(yg), ref_includes_query=False
    )
    res = retrieval_metrics(torch.from_numpy(xq), yq, torch.from_numpy(xg), yg, ks=(1,), chunk_size=32)
    assert res["R@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert res["MAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert res["R-precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert res["num_skipped_query"] == int((~np.isin(yq, yg)).sum())


# ---------------------------------------------------------------------------
# NMI
# ---------------------------------------------------------------------------
def test_own_nmi_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n, a, b in [(500, 10, 12), (300, 50, 5), (40, 3, 40), (100, 1, 7), (100, 4, 1), (60, 1, 1)]:
        u = rng.integers(0, a, size=n) * 7 - 3  # arbitrary label values
        v = rng.integers(0, b, size=n)
        assert nmi(u, v) == pytest.approx(sk.normalized_mutual_info_score(u, v), abs=1e-12)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0 == sk.normalized_mutual_info_score([0, 0, 1, 1], [0, 1, 0, 1])
    u = rng.integers(0, 6, size=200)
    assert nmi(u, (u + 3) % 6) == pytest.approx(1.0)
    assert nmi(u, u) == pytest.approx(sk.normalized_mutual_info_score(u, u))
    assert nmi([], []) == 1.0


def test_nmi_falls_back_to_own_implementation(monkeypatch):
    rng = np.random.default_rng(1)
    u, v = rng.integers(0, 5, size=300), rng.integers(0, 7, size=300)
    expected = nmi(u, v)
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)  # "from sklearn.metrics import" fails
    assert rm._nmi_score(u, v) == expected


def _blobs(seed: int = 0, n_blobs: int = 8, per_blob: int = 25):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_blobs, 16)).astype(np.float32) * 20.0
    y = np.repeat(np.arange(n_blobs), per_blob)
    x = centers[y] + rng.standard_normal((y.size, 16)).astype(np.float32) * 0.05
    return torch.from_numpy(x), torch.from_numpy(y)


def test_nmi_on_clustered_data_is_one():
    """Two far-apart tight blobs: every k-means run (faiss's random init included)
    recovers them, so NMI is 1."""
    x, y = _blobs(0, n_blobs=2, per_blob=100)
    res = retrieval_metrics(x, y, ks=(1,), nmi_runs=3, nmi_seed=1)
    assert res["NMI"] == pytest.approx(1.0, abs=1e-9)
    assert res["NMI_backend"] in ("faiss", "sklearn")
    assert res["R@1"] == 1.0
    # random embeddings: NMI far from 1
    rnd = retrieval_metrics(torch.randn(200, 16, generator=torch.Generator().manual_seed(0)), y, ks=(1,), nmi_runs=1)
    assert rnd["NMI"] < 0.1
    assert "NMI" not in retrieval_metrics(x, y, ks=(1,))


def test_nmi_sklearn_backend(monkeypatch):
    """Without faiss, scikit-learn's k-means (k-means++ init) separates 8 blobs exactly.
    (faiss's random init often merges two of them: NMI ~0.85-0.95 there.)"""
    pytest.importorskip("sklearn")
    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" raises ImportError
    x, y = _blobs(0)
    res = retrieval_metrics(x, y, ks=(1,), nmi_runs=2, nmi_seed=0)
    assert res["NMI_backend"] == "sklearn"
    assert res["NMI"] == pytest.approx(1.0, abs=1e-9)


def test_nmi_faiss_backend():
    pytest.importorskip("faiss")
    x, y = _blobs(0)
    res = retrieval_metrics(x, y, ks=(1,), nmi_runs=2)
    assert res["NMI_backend"] == "faiss"
    assert 0.6 < res["NMI"] <= 1.0


def test_nmi_is_deterministic_and_uses_num_clusters():
    x, y = _blobs(1)
    a = retrieval_metrics(x, y, ks=(1,), nmi_runs=2, nmi_seed=3)
    b = retrieval_metrics(x, y, ks=(1,), nmi_runs=2, nmi_seed=3)
    assert a["NMI"] == b["NMI"]
    one = retrieval_metrics(x, y, ks=(1,), nmi_runs=1, num_clusters=1)
    assert one["NMI"] == 0.0  # one cluster, 8 labels


# ---------------------------------------------------------------------------
# CUDA (when available): same numbers as on CPU
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    x, y = _int_data(rng, 300, 6, 40)
    ks = (1, 2, 4, 8, 200)
    cpu = retrieval_metrics(torch.from_numpy(x), y, ks=ks, chunk_size=64)
    gpu = retrieval_metrics(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), ks=ks, chunk_size=64)
    assert cpu == gpu
    _assert_same(gpu, _ref_metrics(x, y, ks=ks))
