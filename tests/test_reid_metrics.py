"""Tests for engine.evaluation.reid_metrics.reid_metrics against an independent brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.evaluation.reid_metrics as metrics_mod
from engine.evaluation.reid_metrics import reid_metrics


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The arrays here are tiny: intra-op threads only add overhead (a lot of it
    on a loaded machine, where OpenMP threads spin-wait).  Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["compiled", "binned", "search"])
def rank_path(request):
    """Run a test through each counting implementation (the compiled CPU kernel,
    torch's histogram-of-bins with exact in-bin comparison, and the batched
    searchsorted): keyword arguments for every reid_metrics call of the test."""
    return {"counting": request.param}


# ---------------------------------------------------------------------------
# Independent reference: plain numpy, float64, one query at a time.
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
    raise AssertionError(metric)


def _ref_metrics(dist, qp, gp, qc, gc, max_rank):
    qp, gp, qc, gc = (np.asarray(a) for a in (qp, gp, qc, gc))
    nq = dist.shape[0]
    aps = np.full(nq, np.nan)
    inps = np.full(nq, np.nan)
    firsts = np.zeros(nq, dtype=np.int64)
    cmcs = []
    for i in range(nq):
        keep = ~((gp == qp[i]) & (gc == qc[i]) & (qc[i] != -1))
        d = dist[i][keep]
        m = gp[keep] == qp[i]
        order = np.argsort(d, kind="stable")
        m = m[order]
        if not m.any():
            continue
        hit_pos = np.flatnonzero(m) + 1  # 1-based ranks of the true matches
        k = len(hit_pos)
        aps[i] = np.mean(np.arange(1, k + 1) / hit_pos)
        inps[i] = k / hit_pos[-1]
        firsts[i] = hit_pos[0]
        cmcs.append([1.0 if hit_pos[0] <= r else 0.0 for r in range(1, max_rank + 1)])
    valid = firsts > 0
    return {
        "cmc": np.mean(np.array(cmcs), axis=0),
        "mAP": np.mean(aps[valid]),
        "mINP": np.mean(inps[valid]),
        "ap": aps,
        "inp": inps,
        "first": firsts,
        "valid": valid,
    }


def _random_problem(seed, nq=30, ng=200, dim=16, npids=12, ncams=6, quantize=False):
    """Random features/pids/cams.  With ``quantize`` the features are multiples of
    1/4 in [-4, 4]: every squared Euclidean distance is then exact in fp32 (so the
    float64 reference sees exactly the same values, including random ties)."""
    rng = np.random.default_rng(seed)
    qf = rng.standard_normal((nq, dim)).astype(np.float32)
    gf = rng.standard_normal((ng, dim)).astype(np.float32)
    if quantize:
        qf = np.clip(np.round(qf * 4), -16, 16) / 4
        gf = np.clip(np.round(gf * 4), -16, 16) / 4
    qp = rng.integers(0, npids, nq)
    gp = rng.integers(0, npids, ng)
    qc = rng.integers(0, ncams, nq)
    gc = rng.integers(0, ncams, ng)
    return qf, gf, qp, gp, qc, gc


def _assert_no_near_ties(dist, rel_gap):
    """Gaussian-feature tests compare fp32 results with a float64 reference: make
    sure no two distances of a row are so close that fp32 rounding could swap them
    (seeds are picked to satisfy this guard)."""
    assert np.diff(np.sort(dist, axis=1), axis=1).min() > rel_gap * np.abs(dist).max()


def _check_against_ref(out, ref, tol=1e-6):
    np.testing.assert_allclose(out["cmc"], ref["cmc"], atol=tol, rtol=0)
    assert abs(out["mAP"] - ref["mAP"]) < tol
    assert abs(out["mINP"] - ref["mINP"]) < tol
    assert out["rank1"] == pytest.approx(ref["cmc"][0], abs=tol)


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed, quantize", [(0, True), (1, True), (2, True), (3, True), (8, False), (9, False)])
@pytest.mark.parametrize("chunk_size", [7, 64])
def test_random_matches_reference(seed, quantize, chunk_size, rank_path):
    qf, gf, qp, gp, qc, gc = _random_problem(seed, quantize=quantize)
    d = _ref_dist(qf, gf, "euclidean")
    if not quantize:
        _assert_no_near_ties(d, rel_gap=5e-7)
    ref = _ref_metrics(d, qp, gp, qc, gc, 50)
    out = reid_metrics(
        torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, max_rank=50, chunk_size=chunk_size, **rank_path
    )
    _check_against_ref(out, ref)
    assert isinstance(out["cmc"], np.ndarray) and out["cmc"].dtype == np.float64
    assert out["cmc"].shape == (50,)
    assert out["rank5"] == pytest.approx(ref["cmc"][4], abs=1e-12)
    assert out["rank10"] == pytest.approx(ref["cmc"][9], abs=1e-12)
    assert out["num_query"] == 30
    assert out["num_valid_query"] == int(ref["valid"].sum())
    assert out["num_skipped_query"] == 30 - int(ref["valid"].sum())
    assert 0.0 <= out["mINP"] <= out["mAP"] <= 1.0


@pytest.mark.parametrize("seed", [0, 5])
def test_id_input_types(seed):
    qf, gf, qp, gp, qc, gc = _random_problem(seed, quantize=True)
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 20)
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    as_list = reid_metrics(q, g, qp.tolist(), gp.tolist(), qc.tolist(), gc.tolist(), max_rank=20)
    as_tensor = reid_metrics(
        q,
        g,
        torch.from_numpy(qp),
        torch.from_numpy(gp),
        torch.from_numpy(qc).int(),
        torch.from_numpy(gc).int(),
        max_rank=20,
    )
    for out in (as_list, as_tensor):
        _check_against_ref(out, ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_broken_by_gallery_index(seed, rank_path):
    # Gallery made of a few distinct vectors, each repeated many times with
    # different pids: almost every distance is tied, so the result depends
    # entirely on the stable by-index tie breaking.  Small integer features
    # make every fp32 distance exact, so the float64 reference sees the same ties.
    rng = np.random.default_rng(100 + seed)
    base = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    gf = base[rng.integers(0, 5, 120)]
    qf = base[rng.integers(0, 5, 25)]
    qp, gp = rng.integers(0, 6, 25), rng.integers(0, 6, 120)
    qc, gc = rng.integers(0, 3, 25), rng.integers(0, 3, 120)
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 30)
    for cs in (4, 100):
        out = reid_metrics(
            torch.from_numpy(qf),
            torch.from_numpy(gf),
            qp,
            gp,
            qc,
            gc,
            max_rank=30,
            chunk_size=cs,
            return_per_query=True,
            **rank_path,
        )
        _check_against_ref(out, ref)
        np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])
        np.testing.assert_allclose(out["per_query"]["ap"], ref["ap"], atol=1e-12, equal_nan=True)


def test_ties_cosine(rank_path):
    # One-hot features scaled by powers of two: cosine distances are exactly 0 or 1.
    rng = np.random.default_rng(7)
    eye = np.eye(4, dtype=np.float32)
    gf = eye[rng.integers(0, 4, 90)] * rng.choice([0.5, 1.0, 2.0, 4.0], (90, 1)).astype(np.float32)
    qf = eye[rng.integers(0, 4, 20)] * rng.choice([0.5, 1.0, 4.0], (20, 1)).astype(np.float32)
    qp, gp = rng.integers(0, 5, 20), rng.integers(0, 5, 90)
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 90)
    ref = _ref_metrics(_ref_dist(qf, gf, "cosine"), qp, gp, qc, gc, 50)
    out = reid_metrics(
        torch.from_numpy(qf),
        torch.from_numpy(gf),
        qp,
        gp,
        qc,
        gc,
        metric="cosine",
        chunk_size=6,
        return_per_query=True,
        **rank_path,
    )
    _check_against_ref(out, ref)
    np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])


def test_hand_computed_single_query(rank_path):
    # Query pid 1, cam 0.  Gallery distances along a line: 1, 2, 3, 4, 5, 6.
    #   idx: 0      1      2      3      4      5
    #   pid: 2      1      1      3      1      1
    #   cam: 0      0      1      0      2      1
    # idx1 (pid 1, cam 0) is junk and removed.  Valid ranked list:
    #   idx0 (neg), idx2 (match), idx3 (neg), idx4 (match), idx5 (match)
    # match ranks 2, 4, 5 -> AP = (1/2 + 2/4 + 3/5)/3 = 1.6/3, INP = 3/5,
    # CMC = [0, 1, 1, ...].
    qf = torch.zeros(1, 2)
    gf = torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0]])
    out = reid_metrics(
        qf, gf, [1], [2, 1, 1, 3, 1, 1], [0], [0, 0, 1, 0, 2, 1], max_rank=8, return_per_query=True, **rank_path
    )
    assert out["mAP"] == pytest.approx(1.6 / 3, abs=1e-12)
    assert out["mINP"] == pytest.approx(0.6, abs=1e-12)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1, 1, 1, 1, 1, 1])
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0 and out["rank10"] == 1.0
    assert out["per_query"]["first_match_rank"].tolist() == [2]
    # CMC stays at its last value beyond the (5-item) valid gallery.
    out50 = reid_metrics(qf, gf, [1], [2, 1, 1, 3, 1, 1], [0], [0, 0, 1, 0, 2, 1], **rank_path)
    assert out50["cmc"].shape == (50,) and out50["cmc"][-1] == 1.0

    # With no camera information (-1) the junk item idx1 becomes a match at rank 2:
    # ranks 2, 3, 5, 6 -> AP = (1/2 + 2/3 + 3/5 + 4/6)/4, INP = 4/6.
    out = reid_metrics(qf, gf, [1], [2, 1, 1, 3, 1, 1], [-1], [-1] * 6, max_rank=8, **rank_path)
    assert out["mAP"] == pytest.approx((0.5 + 2 / 3 + 0.6 + 4 / 6) / 4, abs=1e-12)
    assert out["mINP"] == pytest.approx(4 / 6, abs=1e-12)


def test_camid_minus_one_removes_nothing(rank_path):
    qf, gf, qp, gp, _, _ = _random_problem(7, quantize=True)
    qc = np.full(len(qp), -1)
    gc = np.full(len(gp), -1)
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 50)
    # nothing removed == all gallery items count, same pid = match
    ref_nocam = _ref_metrics(
        _ref_dist(qf, gf, "euclidean"), qp, gp, np.arange(len(qp)) + 1000, np.zeros(len(gp), int) - 5, 50
    )
    assert ref["mAP"] == pytest.approx(ref_nocam["mAP"], abs=1e-12)
    out = reid_metrics(torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, chunk_size=7, **rank_path)
    _check_against_ref(out, ref)
    assert out["num_skipped_query"] == int((~np.isin(qp, gp)).sum())


def test_skipped_queries_counted_and_excluded(rank_path):
    qf, gf, qp, gp, qc, gc = _random_problem(3, quantize=True)
    qp = qp.copy()
    qc = qc.copy()
    qp[:4] = 999  # pid absent from the gallery
    # only same-camera matches for query 4: all are junk -> skipped
    qp[4] = 555
    gp = gp.copy()
    gc = gc.copy()
    gp[:3] = 555
    gc[:3] = qc[4]
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 50)
    assert not ref["valid"][:5].any()
    out = reid_metrics(
        torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, chunk_size=3, return_per_query=True, **rank_path
    )
    _check_against_ref(out, ref)
    assert out["num_skipped_query"] == int((~ref["valid"]).sum()) >= 5
    assert out["num_valid_query"] + out["num_skipped_query"] == out["num_query"] == 30
    pq = out["per_query"]
    assert np.isnan(pq["ap"][:5]).all() and np.isnan(pq["inp"][:5]).all()
    assert (pq["first_match_rank"][:5] == 0).all() and not pq["valid"][:5].any()


def test_all_skipped_raises():
    qf, gf, qp, gp, qc, gc = _random_problem(0)
    with pytest.raises(ValueError, match="no query has a true match"):
        reid_metrics(torch.from_numpy(qf), torch.from_numpy(gf), qp + 1000, gp, qc, gc)
    # every match is same-camera junk
    with pytest.raises(ValueError, match="no query has a true match"):
        reid_metrics(
            torch.from_numpy(qf),
            torch.from_numpy(gf),
            np.zeros(30, int),
            np.zeros(200, int),
            np.zeros(30, int),
            np.zeros(200, int),
        )


@pytest.mark.parametrize("seed", [2, 3, 6])
def test_cosine_matches_reference(seed):
    qf, gf, qp, gp, qc, gc = _random_problem(seed)
    qf = qf * np.random.default_rng(seed).uniform(0.1, 10, (len(qf), 1)).astype(np.float32)
    d = _ref_dist(qf, gf, "cosine")
    _assert_no_near_ties(d, rel_gap=1e-6)
    ref = _ref_metrics(d, qp, gp, qc, gc, 50)
    out = reid_metrics(torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, metric="cosine", chunk_size=7)
    _check_against_ref(out, ref)


def test_low_precision_inputs_computed_in_fp32():
    qf, gf, qp, gp, qc, gc = _random_problem(11, dim=64)
    for dtype in (torch.float16, torch.bfloat16):
        q_lp, g_lp = torch.from_numpy(qf).to(dtype), torch.from_numpy(gf).to(dtype)
        for metric in ("euclidean", "cosine"):
            lp = reid_metrics(q_lp, g_lp, qp, gp, qc, gc, metric=metric, chunk_size=7, return_per_query=True)
            fp = reid_metrics(
                q_lp.float(), g_lp.float(), qp, gp, qc, gc, metric=metric, chunk_size=7, return_per_query=True
            )
            np.testing.assert_array_equal(lp["cmc"], fp["cmc"])
            assert lp["mAP"] == fp["mAP"] and lp["mINP"] == fp["mINP"]
            np.testing.assert_array_equal(lp["per_query"]["first_match_rank"], fp["per_query"]["first_match_rank"])
            ref = _ref_metrics(_ref_dist(q_lp.float().numpy(), g_lp.float().numpy(), metric), qp, gp, qc, gc, 50)
            _check_against_ref(lp, ref)


@pytest.mark.parametrize("chunk_size", [5, 1000])
def test_per_query_matches_reference(chunk_size, rank_path):
    qf, gf, qp, gp, qc, gc = _random_problem(9, npids=30, quantize=True)  # sparser: some skipped
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 50)
    out = reid_metrics(
        torch.from_numpy(qf),
        torch.from_numpy(gf),
        qp,
        gp,
        qc,
        gc,
        chunk_size=chunk_size,
        return_per_query=True,
        **rank_path,
    )
    pq = out["per_query"]
    assert set(pq) == {"ap", "inp", "first_match_rank", "valid"}
    assert all(len(v) == 30 for v in pq.values())
    np.testing.assert_array_equal(pq["valid"], ref["valid"])
    np.testing.assert_array_equal(pq["first_match_rank"], ref["first"])
    np.testing.assert_allclose(pq["ap"], ref["ap"], atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(pq["inp"], ref["inp"], atol=1e-12, equal_nan=True)
    assert out["mAP"] == pytest.approx(np.nanmean(pq["ap"]), abs=1e-12)


def test_distance_fn_override():
    # A custom metric computed from the features: L1, which ranks differently from
    # the squared Euclidean distance.  Quantized features make it exact in fp32.
    qf, gf, qp, gp, qc, gc = _random_problem(2, quantize=True)
    calls = []

    def l1(q_chunk, gallery):
        assert q_chunk.dtype == torch.float32 and gallery.dtype == torch.float32
        calls.append(q_chunk.shape[0])
        return (q_chunk[:, None, :] - gallery[None, :, :]).abs().sum(-1)

    out = reid_metrics(
        torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, chunk_size=7, distance_fn=l1, metric="ignored"
    )
    d_ref = np.abs(qf[:, None, :].astype(np.float64) - gf[None, :, :]).sum(-1)
    _check_against_ref(out, _ref_metrics(d_ref, qp, gp, qc, gc, 50))
    assert calls == [7, 7, 7, 7, 2]
    assert out["mAP"] != pytest.approx(_ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 50)["mAP"])


def test_from_distances_tensor_and_block_function(rank_path):
    # Precomputed distances, as a (Q, G) tensor or as a block function: the same numbers
    # as the reference, with blocks asked for chunk_size queries at a time.
    qf, gf, qp, gp, qc, gc = _random_problem(4, quantize=True)
    rng = np.random.default_rng(4)
    d = (_ref_dist(qf, gf, "euclidean") + rng.integers(0, 3, (30, 200))).astype(np.float32)  # exact, with ties
    ref = _ref_metrics(d.astype(np.float64), qp, gp, qc, gc, 50)
    d_t = torch.from_numpy(d)
    calls = []

    def block(start, stop):
        calls.append((start, stop))
        return d_t[start:stop].double()  # any float dtype: cast to fp32

    for source in (d_t, block):
        out = metrics_mod.reid_metrics_from_distances(
            source, qp, gp, qc, gc, chunk_size=8, return_per_query=True, **rank_path
        )
        _check_against_ref(out, ref)
        np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])
    assert calls == [(0, 8), (8, 16), (16, 24), (24, 30)]
    with pytest.raises(ValueError, match="gallery_pids"):
        metrics_mod.reid_metrics_from_distances(d_t, qp, gp[:-1], qc, gc)
    with pytest.raises(ValueError, match="expected"):
        metrics_mod.reid_metrics_from_distances(lambda a, b: d_t[a:b, :5], qp, gp, qc, gc)


def test_negative_and_signed_zero_distances(rank_path):
    # Given distances may be negative and -0.0; ordering must be numeric.
    rng = np.random.default_rng(3)
    d = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 3.0], dtype=np.float32), (12, 40))
    qp, gp = rng.integers(0, 4, 12), rng.integers(0, 4, 40)
    qc, gc = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    out = metrics_mod.reid_metrics_from_distances(
        torch.from_numpy(d), qp, gp, qc, gc, max_rank=40, chunk_size=12, return_per_query=True, **rank_path
    )
    ref = _ref_metrics(d.astype(np.float64), qp, gp, qc, gc, 40)
    _check_against_ref(out, ref)
    np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])


def test_larger_gallery_matches_reference(rank_path):
    # G large enough for many histogram bins (the binned path then resolves most
    # items by bin and only a few exactly); quantized features -> exact distances.
    qf, gf, qp, gp, qc, gc = _random_problem(21, nq=40, ng=3000, dim=24, npids=40, quantize=True)
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 50)
    out = reid_metrics(
        torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, chunk_size=16, return_per_query=True, **rank_path
    )
    _check_against_ref(out, ref)
    np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])
    np.testing.assert_allclose(out["per_query"]["ap"], ref["ap"], atol=1e-12, equal_nan=True)


def _neg_nan() -> np.float32:
    """A NaN with the sign bit set, built from its bits."""
    return np.array([0xFFC00001], dtype=np.uint32).view(np.float32)[0]


def test_non_finite_and_constant_distances(rank_path):
    # +-inf / NaN distances (the binned path falls back to the exact search) and
    # rows where every distance is equal (pure index order).  NaNs of either sign
    # (inf - inf has its sign bit set on x86) rank last, like numpy's argsort.
    rng = np.random.default_rng(5)
    d = rng.standard_normal((10, 60)).astype(np.float32)
    d[rng.random((10, 60)) < 0.2] = np.inf
    d[rng.random((10, 60)) < 0.05] = -np.inf
    d[rng.random((10, 60)) < 0.05] = np.nan
    d[rng.random((10, 60)) < 0.05] = (torch.tensor(float("inf")) - torch.tensor(float("inf"))).item()
    d[rng.random((10, 60)) < 0.05] = _neg_nan()
    d[3] = 1.5
    d[7] = np.inf
    qp, gp = rng.integers(0, 4, 10), rng.integers(0, 4, 60)
    qc, gc = rng.integers(0, 3, 10), rng.integers(0, 3, 60)
    ref = _ref_metrics(d.astype(np.float64), qp, gp, qc, gc, 50)
    d_t = torch.from_numpy(d)
    for cs in (10, 5):
        out = metrics_mod.reid_metrics_from_distances(
            lambda a, b: d_t[a:b], qp, gp, qc, gc, chunk_size=cs, return_per_query=True, **rank_path
        )
        _check_against_ref(out, ref)
        np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])
    # finite rows only, with a constant row: exercised by the binned path itself
    d2 = d[[0, 3]].copy()
    d2[~np.isfinite(d2)] = 7.0
    ref2 = _ref_metrics(d2.astype(np.float64), qp[[0, 3]], gp, qc[[0, 3]], gc, 50)
    out2 = metrics_mod.reid_metrics_from_distances(
        torch.from_numpy(d2), qp[[0, 3]], gp, qc[[0, 3]], gc, return_per_query=True, **rank_path
    )
    np.testing.assert_allclose(out2["per_query"]["ap"], ref2["ap"], atol=1e-12, equal_nan=True)


def _with_matches_finite(d: np.ndarray, qp: np.ndarray, gp: np.ndarray) -> np.ndarray:
    """``d`` with every same-identity distance made finite (the compiled kernel's own case: non-finite values
    only among the other items; a non-finite true match sends the chunk to the search path)."""
    same = qp[:, None] == gp[None, :]
    d = d.copy()
    d[same & ~np.isfinite(d)] = 0.25
    return d


@pytest.mark.parametrize("counting", ["compiled", "binned", "search"])
def test_counting_paths_on_hard_rows(counting):
    # Rows the compiled kernel's buckets must get right: non-finite non-matching items around finite matches,
    # many exact ties with matches (ranked by gallery index), matches one fp32 step apart (a bucket width
    # fp32 cannot resolve), all matches at one distance, items below the first and above the last match.
    rng = np.random.default_rng(11)
    nq, ng = 16, 400
    qp, gp = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    d = rng.choice(np.array([-1.0, 0.0, 0.5, 0.75, 2.0], dtype=np.float32), (nq, ng))
    d[0] = rng.standard_normal(ng).astype(np.float32)
    d[1][rng.random(ng) < 0.3] = np.inf
    d[1][rng.random(ng) < 0.1] = -np.inf
    d[1][rng.random(ng) < 0.1] = np.nan
    d[1][rng.random(ng) < 0.05] = _neg_nan()
    tiny = np.float32(1.0)
    d[2] = np.where(rng.random(ng) < 0.5, tiny, np.nextafter(tiny, np.float32(2)))
    d[3] = np.float32(1e-40) * rng.integers(0, 3, ng)  # subnormal distances: their span overflows a scale
    d[4] = 3.0
    d = _with_matches_finite(d, qp, gp)
    ref = _ref_metrics(d.astype(np.float64), qp, gp, qc, gc, 50)
    out = metrics_mod.reid_metrics_from_distances(
        torch.from_numpy(d), qp, gp, qc, gc, chunk_size=5, return_per_query=True, counting=counting
    )
    _check_against_ref(out, ref)
    np.testing.assert_array_equal(out["per_query"]["first_match_rank"], ref["first"])
    np.testing.assert_allclose(out["per_query"]["ap"], ref["ap"], atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(out["per_query"]["inp"], ref["inp"], atol=1e-12, equal_nan=True)


def test_auto_counting_by_block():
    from engine.evaluation.reid_metrics import resolve_counting

    assert resolve_counting("auto", torch.zeros(256, 4096)) == "compiled"  # 2**20 distances on the CPU
    assert resolve_counting("auto", torch.zeros(2, 100)) == "binned"  # the kernel's load would cost more
    assert resolve_counting("search", torch.zeros(256, 4096)) == "search"
    with pytest.raises(ValueError, match="unknown counting 'fast'"):
        resolve_counting("fast", torch.zeros(1, 1))


def test_small_max_rank_and_validation():
    qf, gf, qp, gp, qc, gc = _random_problem(1, quantize=True)
    ref = _ref_metrics(_ref_dist(qf, gf, "euclidean"), qp, gp, qc, gc, 10)
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    out = reid_metrics(q, g, qp, gp, qc, gc, max_rank=3)
    assert out["cmc"].shape == (3,)
    assert out["rank5"] == pytest.approx(ref["cmc"][4]) and out["rank10"] == pytest.approx(ref["cmc"][9])
    with pytest.raises(ValueError, match="euclidean"):
        reid_metrics(q, g, qp, gp, qc, gc, metric="manhattan")
    with pytest.raises(ValueError):
        reid_metrics(q, g, qp[:-1], gp, qc, gc)
    with pytest.raises(ValueError):
        reid_metrics(q, g[:, :8], qp, gp, qc, gc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    qf, gf, qp, gp, qc, gc = _random_problem(8, dim=4)
    # integer-valued features: distances exact on both devices
    qf, gf = np.round(qf * 3), np.round(gf * 3)
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    cpu = reid_metrics(q, g, qp, gp, qc, gc, chunk_size=7, return_per_query=True)
    gpu = reid_metrics(q.cuda(), g.cuda(), torch.from_numpy(qp).cuda(), gp, qc, gc, chunk_size=7, return_per_query=True)
    np.testing.assert_array_equal(cpu["cmc"], gpu["cmc"])
    assert cpu["mAP"] == gpu["mAP"] and cpu["mINP"] == gpu["mINP"]
    for k in ("ap", "inp", "first_match_rank", "valid"):
        np.testing.assert_array_equal(cpu["per_query"][k], gpu["per_query"][k])


def test_the_kernel_loaded_ahead_is_the_one_a_ranking_calls():
    # An evaluation loads the kernel while it extracts (match_count_kernel.preload_kernel): the types it compiles
    # for must be those of the real call, or the ranking would compile a second version on the spot.
    from engine.evaluation import match_count_kernel

    match_count_kernel.load_kernel()
    qf, gf, qp, gp, qc, gc = _random_problem(4, quantize=True)
    reid_metrics(torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, counting="compiled")
    assert len(match_count_kernel._count_before.signatures) == 1
