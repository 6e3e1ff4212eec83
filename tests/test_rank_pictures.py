"""Tests for engine.reporting.rank_pictures (TEST.VISRANK).

`ranked_lists` is checked against a brute-force reference written here: the full distance matrix, one query
at a time, the junk removed by a plain loop, the valid items sorted by (distance, gallery index) with
Python's `sorted`, and AP computed from its definition (1/K) sum_j j / r_j.  `write_rank_pictures` is
checked on tiny generated images by reading back the files: names, pixel size, frame colours, index.csv.
"""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.reporting import rank_pictures
from engine.reporting.rank_pictures import (
    TILE_BORDER,
    TILE_PAD,
    RankedQuery,
    ranked_lists,
    tile_size,
    write_rank_pictures,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny arrays: intra-op threads only add overhead on a shared machine.  Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------------
# Brute-force reference
# ---------------------------------------------------------------------------------------------------------
def _reference(dist, qlab, qcam, glab, gcam, top_k, reid=True, query_is_gallery=False):
    """Per query: (top gallery indices, their distances, their match flags, AP, K, last rank/index/dist)."""
    dist = np.asarray(dist, dtype=np.float64)
    out = []
    for q in range(dist.shape[0]):
        valid = []
        for g in range(dist.shape[1]):
            if query_is_gallery and g == q:
                continue
            if reid and qlab[q] == glab[g] and qcam[q] == gcam[g] and qcam[q] != -1:
                continue  # junk: same identity seen by the same camera
            valid.append(g)

        # NaN last, then ascending distance, ties by gallery index.
        def key(g, q=q):
            d = dist[q, g]
            return (math.isnan(d), 0.0 if math.isnan(d) else d, g)

        ranking = sorted(valid, key=key)
        match_ranks = [r + 1 for r, g in enumerate(ranking) if glab[g] == qlab[q]]
        ap = sum((j + 1) / r for j, r in enumerate(match_ranks)) / len(match_ranks) if match_ranks else 0.0
        top = ranking[: top_k - 1]
        last = None
        if match_ranks:
            r = match_ranks[-1]
            last = (r, ranking[r - 1], dist[q, ranking[r - 1]])
        out.append(
            {
                "top": top,
                "dist": [dist[q, g] for g in top],
                "match": [bool(glab[g] == qlab[q]) for g in top],
                "ap": ap,
                "num_matches": len(match_ranks),
                "num_valid": len(valid),
                "last": last,
            }
        )
    return out


def _check(records: list[RankedQuery], ref: list[dict], top_k: int) -> None:
    assert len(records) == len(ref)
    for i, (rec, exp) in enumerate(zip(records, ref)):
        assert rec.query_index == i
        assert rec.top_k == top_k
        assert rec.gallery_indices.tolist() == exp["top"], i
        np.testing.assert_allclose(rec.distances, exp["dist"], rtol=0, atol=1e-6)  # NaNs compare equal here
        assert rec.is_match.tolist() == exp["match"]
        assert rec.num_matches == exp["num_matches"]
        assert rec.num_valid == exp["num_valid"]
        assert rec.ap == pytest.approx(exp["ap"], abs=1e-12)
        if exp["last"] is None:
            assert rec.last_match_rank is None and rec.last_match_index is None
            assert rec.last_match_distance is None and not rec.has_match
        else:
            assert (rec.last_match_rank, rec.last_match_index) == exp["last"][:2]
            assert rec.last_match_distance == pytest.approx(exp["last"][2], abs=1e-6, nan_ok=True)


def _reid_problem(seed=0, q=13, g=41):
    rng = np.random.default_rng(seed)
    qlab = rng.integers(0, 5, q)
    glab = rng.integers(0, 5, g)
    qcam = rng.integers(0, 3, q)
    gcam = rng.integers(0, 3, g)
    qlab[0] = 77  # no true match anywhere
    qcam[1] = -1  # no camera information: nothing is junk for it
    qlab[2], qcam[2] = 9, 0  # only same-camera items of its identity: all junk, so no true match
    glab[:2], gcam[:2] = 9, 0
    glab[2:4], gcam[2:4] = qlab[1], -1  # camera -1 on both sides is "unknown", not "the same camera"
    dist = rng.random((q, g))
    return dist, qlab, qcam, glab, gcam


def _fn(dist, calls=None, dtype=torch.float64):
    t = torch.as_tensor(dist, dtype=dtype)

    def dist_fn(start: int, stop: int) -> torch.Tensor:
        if calls is not None:
            calls.append((start, stop))
        return t[start:stop].clone()

    return dist_fn


# ---------------------------------------------------------------------------------------------------------
# ranked_lists
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("top_k", [1, 4, 60])
def test_reid_matches_bruteforce(top_k, dtype, key_sort):
    dist, qlab, qcam, glab, gcam = _reid_problem()
    if dtype == torch.float32:
        dist = dist.astype(np.float32)  # the reference then sees exactly the fp32 values
    records = ranked_lists(_fn(dist, dtype=dtype), len(qlab), qlab, qcam, glab, gcam, top_k=top_k, chunk=5, **key_sort)
    _check(records, _reference(dist, qlab, qcam, glab, gcam, top_k), top_k)
    assert records[0].ap == 0.0 and not records[0].has_match
    assert records[2].num_matches == 0 and records[2].num_valid == len(glab) - 2
    assert records[1].num_valid == len(glab) and records[1].num_matches >= 2
    # top_k - 1 larger than the valid list: every valid item is listed.
    if top_k == 60:
        assert all(len(r.gallery_indices) == r.num_valid for r in records)


def test_chunking_gives_identical_results():
    dist, qlab, qcam, glab, gcam = _reid_problem(seed=1, q=17)
    results = []
    for chunk in (1, 3, 16, 17, 256):
        calls = []
        records = ranked_lists(_fn(dist, calls), len(qlab), qlab, qcam, glab, gcam, top_k=6, chunk=chunk)
        # Bounded memory: never more than `chunk` rows asked for, and every row exactly once.
        assert all(stop - start <= chunk for start, stop in calls)
        assert [i for start, stop in calls for i in range(start, stop)] == list(range(len(qlab)))
        results.append(records)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.gallery_indices.tolist() == b.gallery_indices.tolist()
            assert a.distances.tolist() == b.distances.tolist()
            assert a.is_match.tolist() == b.is_match.tolist()
            assert (a.ap, a.num_matches, a.num_valid) == (b.ap, b.num_matches, b.num_valid)
            assert (a.last_match_rank, a.last_match_index, a.last_match_distance) == (
                b.last_match_rank,
                b.last_match_index,
                b.last_match_distance,
            )


@pytest.fixture(params=["numpy", "torch"])
def key_sort(request):
    """Run a test through both fp32 key sorts (numpy on CPU; torch, as for CUDA tensors): keyword arguments
    for the test's ranked_lists calls."""
    return {"numpy_sort_on_cpu": request.param == "numpy"}


def test_numpy_and_torch_key_sorts_agree():
    """numpy_sort_on_cpu changes the speed only: both sorts give the same records, ties and NaNs included."""
    dist, qlab, qcam, glab, gcam = _reid_problem(seed=8, q=11, g=300)
    dist = np.round(dist * 20).astype(np.float32)  # many exact ties
    dist[:, ::13] = np.nan
    dist[:, 5::17] = -np.nan
    fast, plain = (
        rank_pictures.ranked_lists(
            _fn(dist, dtype=torch.float32), 11, qlab, qcam, glab, gcam, top_k=40, chunk=4, numpy_sort_on_cpu=flag
        )
        for flag in (True, False)
    )
    for a, b in zip(fast, plain):
        assert a.gallery_indices.tolist() == b.gallery_indices.tolist()
        assert (a.ap, a.last_match_rank, a.last_match_index) == (b.ap, b.last_match_rank, b.last_match_index)
    _check(fast, _reference(dist, qlab, qcam, glab, gcam, 40), 40)


def test_ties_are_broken_by_gallery_index_fp32(key_sort):
    rng = np.random.default_rng(2)
    dist = rng.integers(0, 3, (9, 30)).astype(np.float32)  # many exact ties
    qlab, glab = rng.integers(0, 3, 9), rng.integers(0, 3, 30)
    qcam, gcam = rng.integers(0, 2, 9), rng.integers(0, 2, 30)
    records = ranked_lists(_fn(dist, dtype=torch.float32), 9, qlab, qcam, glab, gcam, top_k=12, chunk=4, **key_sort)
    _check(records, _reference(dist, qlab, qcam, glab, gcam, 12), 12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_inf_negative_distances(dtype, key_sort):
    """NaN ranks last (whatever its sign bit), after +inf; negative distances, -0.0 == +0.0, -inf first."""
    dist, qlab, qcam, glab, gcam = _reid_problem(seed=3, q=6, g=20)
    dist = dist - 0.5
    dist[:, ::3] = np.nan
    dist[1, 1] = -np.nan
    dist[4, 2] = (torch.tensor(float("inf")) - torch.tensor(float("inf"))).item()  # sign bit set on x86
    dist[:, 4] = np.inf
    dist[2, 5] = -np.inf
    dist[:, 7], dist[:, 8] = 0.0, -0.0  # a tie, broken by index
    dist = dist.astype(np.float32 if dtype == torch.float32 else np.float64)
    records = ranked_lists(_fn(dist, dtype=dtype), 6, qlab, qcam, glab, gcam, top_k=25, chunk=4, **key_sort)
    _check(records, _reference(dist, qlab, qcam, glab, gcam, 25), 25)
    assert records[2].gallery_indices[0] == 5


def test_retrieval_query_is_gallery_excludes_self_only():
    rng = np.random.default_rng(4)
    n = 15
    feats = rng.standard_normal((n, 3))
    feats[7] = feats[3]  # an exact duplicate of query 3 stays in its gallery (removal is by index)
    dist = np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1))
    labels = rng.integers(0, 4, n)
    labels[7] = labels[3]
    labels[11] = 50  # a singleton class: no true match once itself is removed
    records = ranked_lists(
        _fn(dist), n, labels, None, labels, None, top_k=5, reid=False, chunk=4, query_is_gallery=True
    )
    _check(records, _reference(dist, labels, None, labels, None, 5, reid=False, query_is_gallery=True), 5)
    for rec in records:
        assert rec.query_index not in rec.gallery_indices.tolist()
        assert rec.num_valid == n - 1
    assert records[3].gallery_indices[0] == 7 and records[3].distances[0] == 0.0
    assert records[11].ap == 0.0 and records[11].last_match_rank is None
    # Without the flag the query itself is its own best match at distance 0.
    plain = ranked_lists(_fn(dist), n, labels, None, labels, None, top_k=5, reid=False)
    assert plain[11].num_matches == 1 and plain[11].ap == 1.0


def test_retrieval_ignores_cameras():
    dist, qlab, qcam, glab, gcam = _reid_problem(seed=5)
    records = ranked_lists(_fn(dist), len(qlab), qlab, qcam, glab, gcam, top_k=8, reid=False)
    _check(records, _reference(dist, qlab, qcam, glab, gcam, 8, reid=False), 8)
    assert records[2].num_matches >= 2  # the same-camera items count in retrieval


def test_input_checks():
    dist, qlab, qcam, glab, gcam = _reid_problem(q=4, g=6)
    with pytest.raises(ValueError, match="top_k"):
        ranked_lists(_fn(dist), 4, qlab, qcam, glab, gcam, top_k=0)
    with pytest.raises(ValueError, match="chunk"):
        ranked_lists(_fn(dist), 4, qlab, qcam, glab, gcam, top_k=3, chunk=0)
    with pytest.raises(ValueError, match="camids"):
        ranked_lists(_fn(dist), 4, qlab, None, glab, None, top_k=3)
    with pytest.raises(ValueError, match="expected"):
        ranked_lists(lambda a, b: torch.zeros(b - a, 5), 4, qlab, qcam, glab, gcam, top_k=3)
    with pytest.raises(ValueError, match="query_is_gallery"):
        ranked_lists(_fn(dist), 4, qlab, qcam, glab, gcam, top_k=3, query_is_gallery=True)
    assert ranked_lists(_fn(dist[:0]), 0, [], [], glab, gcam, top_k=3) == []


# ---------------------------------------------------------------------------------------------------------
# write_rank_pictures
# ---------------------------------------------------------------------------------------------------------
SIZE = (48, 24)  # (height, width) of the images in the tiles
K = 4


def _far_from(pixel, colour, tol=60):
    return max(abs(int(a) - int(b)) for a, b in zip(pixel, colour)) > tol


def _frame_pixel(img: Image.Image, slot: int, inside: int = 0):
    """A pixel of tile `slot`'s frame (its left stroke, half-way down), or `inside` pixels into the image."""
    tw, _ = tile_size(SIZE)
    y = TILE_PAD + TILE_BORDER + SIZE[0] // 4
    x = slot * tw
    while not _far_from(img.getpixel((x, y)), (255, 255, 255), 40):  # first non-white pixel: the frame
        x += 1
    return img.getpixel((x + TILE_BORDER // 2 + inside, y))


def _is_green(p):
    return p[1] > 140 and p[0] < 70 and p[2] < 70


def _is_red(p):
    return p[0] > 170 and p[1] < 60 and p[2] < 60


def _is_blue(p):
    return p[2] > 190 and p[0] < 60


@pytest.fixture
def picture_case(tmp_path):
    """4 queries and 9 gallery images (solid colours, none white or grey), with a hand-made distance matrix.

    q0: ranks g0 (match), g1 (non-match), g2 (match, unreadable file); last match g5 at rank 6 (blue).
    q1: no true match.  q2: g6 first (its only true match; g7, g8 are same-camera junk), then NaN distances;
    its last match is in the row (green).  q3: its only match g3 (rank 4, blue) is missing on disk.
    """
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rng = np.random.default_rng(0)

    def make(name):
        colour = (int(rng.integers(0, 80)), int(rng.integers(100, 200)), int(rng.integers(150, 255)))
        path = img_dir / name
        Image.new("RGB", (16, 32), colour).save(path)
        return str(path)

    qlab = np.array([1, 2, 3, 4])
    qcam = np.array([0, 0, 0, 0])
    glab = np.array([1, 5, 1, 4, 5, 1, 3, 3, 3])
    gcam = np.array([1, 1, 1, 1, 1, 2, 1, 0, 0])
    query_paths = [make(f"{i:04d}_c1s1_query{i}.jpg") for i in range(4)]
    gallery_paths = [make(f"{glab[i]:04d}_c2s1_gallery{i}.jpg") for i in range(9)]
    (img_dir / gallery_paths[2].split("/")[-1]).write_bytes(b"this is not a jpeg")
    gallery_paths[3] = str(img_dir / "missing_0004.jpg")
    dist = np.tile(np.arange(1.0, 10.0), (4, 1))  # g_i at distance i + 1 for every query
    dist[2] = [9, 9, 9, 9, 9, 9, 2, 1, 1]  # q2: junk g7, g8 (same pid, same camera) come first
    q2_valid = [i for i in range(9) if not (glab[i] == 3 and gcam[i] == 0)]
    dist[2, [i for i in q2_valid if i != 6]] = np.nan  # q2 has g6 then NaNs only (still valid, ranked last)
    ranked = ranked_lists(_fn(dist), 4, qlab, qcam, glab, gcam, top_k=K)
    return tmp_path, query_paths, gallery_paths, ranked, qlab, glab


def test_rank_record_layout_of_the_case(picture_case):
    _, _, _, ranked, _, _ = picture_case
    assert ranked[0].gallery_indices.tolist() == [0, 1, 2]
    assert ranked[0].is_match.tolist() == [True, False, True]
    assert ranked[0].last_match_rank == 6 and ranked[0].last_match_index == 5
    assert ranked[0].ap == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert not ranked[1].has_match
    assert ranked[2].gallery_indices[0] == 6 and ranked[2].last_match_rank == 1


def test_pictures_files_size_colours(picture_case, caplog):
    out_dir, query_paths, gallery_paths, ranked, qlab, glab = picture_case
    with caplog.at_level(logging.WARNING, logger="engine.reporting.rank_pictures"):
        written = write_rank_pictures(
            out_dir / "run",
            "toyset",
            query_paths,
            gallery_paths,
            ranked,
            qlab,
            glab,
            query_norms=torch.tensor([1.0, 2.0, 3.0, 4.0]),
            gallery_norms=np.linspace(1, 2, 9),
            size=SIZE,
        )
    folder = out_dir / "run" / "visrank" / "toyset"
    expected = [folder / f"{i:05d}_{i:04d}_c1s1_query{i}.jpg" for i in range(4)]
    assert written == expected
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in expected] + ["index.csv"])
    tw, th = tile_size(SIZE)
    for path in written:
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.size == ((K + 1) * tw, th)  # the query, K - 1 items, the last slot

    with Image.open(written[0]) as img:
        img = img.convert("RGB")
        assert _is_green(_frame_pixel(img, 1))  # g0: match
        assert _is_red(_frame_pixel(img, 2))  # g1: non-match
        assert _is_green(_frame_pixel(img, 3))  # g2: match, unreadable
        grey = _frame_pixel(img, 3, inside=TILE_BORDER)
        assert not _far_from(grey, (150, 150, 150), 25)  # drawn as a grey tile, not crashing
        assert _is_blue(_frame_pixel(img, 4))  # last match g5 at rank 6, beyond the row
        content = _frame_pixel(img, 4, inside=TILE_BORDER)  # the image itself
        assert _far_from(content, (255, 255, 255), 40) and _far_from(content, (150, 150, 150), 40)
    with Image.open(written[1]) as img:  # no true match: the last slot is a blank tile with a light frame
        img = img.convert("RGB")
        frame = _frame_pixel(img, 4)
        assert not _far_from(frame, (200, 200, 200), 30)
        assert not _far_from(_frame_pixel(img, 4, inside=TILE_BORDER), (255, 255, 255), 15)
    with Image.open(written[2]) as img:  # q2: one listed match, shown again in the last slot: green there
        img = img.convert("RGB")
        assert _is_green(_frame_pixel(img, 1))
        assert _is_green(_frame_pixel(img, 4))
    with Image.open(written[3]) as img:  # q3: g3 (missing file) is its match at rank 4 > K - 1: blue, grey inside
        img = img.convert("RGB")
        assert _is_blue(_frame_pixel(img, 4))
        assert not _far_from(_frame_pixel(img, 4, inside=TILE_BORDER), (150, 150, 150), 25)

    warned = " ".join(r.getMessage() for r in caplog.records)
    assert gallery_paths[2] in warned and gallery_paths[3] in warned
    assert sum(gallery_paths[2] in r.getMessage() for r in caplog.records) == 1  # once per path

    with open(folder / "index.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["query", "picture", "ap"] + [f"rank_{i}" for i in range(1, K)] + ["last_match"]
    assert len(rows) == 5
    for rec, row in zip(ranked, rows[1:]):
        q = rec.query_index
        assert row[0] == query_paths[q]
        assert row[1] == expected[q].name
        assert float(row[2]) == pytest.approx(rec.ap, abs=1e-6)
        listed = [gallery_paths[g] for g in rec.gallery_indices]
        listed += [""] * (K - 1 - len(listed))
        last = gallery_paths[rec.last_match_index] if rec.has_match else ""
        assert row[3:] == listed + [last]
    assert rows[1][3:] == [gallery_paths[0], gallery_paths[1], gallery_paths[2], gallery_paths[5]]
    assert rows[2][-1] == ""  # no true match


def test_pictures_without_norms_and_checks(picture_case):
    out_dir, query_paths, gallery_paths, ranked, qlab, glab = picture_case
    written = write_rank_pictures(out_dir, "plain", query_paths, gallery_paths, ranked[:2], qlab, glab, size=SIZE)
    assert [p.name for p in written] == ["00000_0000_c1s1_query0.jpg", "00001_0001_c1s1_query1.jpg"]
    with pytest.raises(ValueError, match="size"):
        write_rank_pictures(out_dir, "bad", query_paths, gallery_paths, ranked, qlab, glab, size=(0, 10))
    with pytest.raises(ValueError, match="gallery_norms"):
        write_rank_pictures(out_dir, "bad", query_paths, gallery_paths, ranked, qlab, glab, gallery_norms=[1.0])
    other = ranked_lists(_fn(np.ones((1, 9))), 1, qlab[:1], [0], glab, np.ones(9, int), top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        write_rank_pictures(out_dir, "bad", query_paths, gallery_paths, ranked[:1] + other, qlab, glab, size=SIZE)


def test_long_file_names_are_shortened_to_the_tile(tmp_path):
    """A long name is shortened in the middle: its start and its end are kept, the picture width is fixed."""
    from engine.reporting.rank_pictures import _fit, _text_width

    tw, _ = tile_size(SIZE)
    name = "0000_000_01_0303morning_0015_0_a_very_long_suffix_indeed.jpg"
    short = _fit(name, tw - 2 * TILE_PAD, middle=True)
    assert short != name and "..." in short and short.endswith(".jpg") and short.startswith("0000_")
    assert _text_width(short) <= tw - 2 * TILE_PAD
    assert _fit("0001_c1s1_001051_00.jpg", tw - 2 * TILE_PAD, middle=True) == "0001_c1s1_001051_00.jpg"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_distances_match_the_reference(dtype):
    dist, qlab, qcam, glab, gcam = _reid_problem(seed=6, q=20, g=50)
    dist[:, ::7] = np.nan
    dist[:, 3] = dist[:, 2]  # a tie
    dist = dist.astype(np.float32 if dtype == torch.float32 else np.float64)
    gpu = torch.as_tensor(dist, dtype=dtype, device="cuda")
    records = ranked_lists(lambda a, b: gpu[a:b], 20, torch.as_tensor(qlab), qcam, glab, gcam, top_k=9, chunk=6)
    _check(records, _reference(dist, qlab, qcam, glab, gcam, 9), 9)
