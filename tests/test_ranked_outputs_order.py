"""test.py's rank pictures and ranked lists (engine.checkpoint_testing.RankingInputs) rank every query's gallery
exactly as the metrics of test_metrics.json did, and show readable (or, with re-ranking, re-ranked) distances."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.checkpoint_testing import RankingInputs
from engine.evaluation.protocol import EvalSpec
from engine.evaluation.ranking import FeatureDistances, row_order
from engine.evaluation.reranking import KReciprocalReranker, rerank_and_evaluate

RERANK = (5, 3, 0.3)


def _evaluation(feats, labels, camids, nq, uc=None, **spec_kwargs):
    """The parts of a DatasetEvaluation that RankingInputs reads: spec, the metric's last embeddings, records."""
    n = len(feats)
    spec = EvalSpec(
        name="tiny",
        protocol="reid",
        query_is_gallery=False,
        trials=[(np.arange(nq), np.arange(nq, n))],
        recall_ks=(1,),
        max_rank=5,
        **spec_kwargs,
    )
    last = {
        "feats": feats,
        "labels": torch.as_tensor(labels),
        "camids": torch.as_tensor(camids),
        "norms": feats.norm(dim=1),
        "uc": torch.zeros(n) if uc is None else uc,
    }
    records = [SimpleNamespace(path=f"img_{i:03d}.jpg") for i in range(n)]
    return SimpleNamespace(
        spec=spec, metric=SimpleNamespace(last=last), splits=SimpleNamespace(eval_records=lambda: records)
    )


def _problem(seed=0, nq=8, ng=30, d=6):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(nq + ng, d, generator=g)
    labels = np.concatenate([np.arange(nq) % 4, np.arange(ng) % 5])
    camids = np.concatenate([np.zeros(nq, dtype=np.int64), np.arange(ng) % 3])  # some same-camera junk
    return feats, labels, camids, nq


def _valid_order(dist: torch.Tensor, qlab, qcam, glab, gcam) -> list[list[int]]:
    """Per query, the valid gallery indices in the order rule's order of `dist` (re-ID junk removed)."""
    order = row_order(dist.float().contiguous()).numpy()
    return [[int(j) for j in row if not (glab[j] == qlab[i] and gcam[j] == qcam[i])] for i, row in enumerate(order)]


def test_reranked_lists_follow_the_reranked_distances():
    feats, labels, camids, nq = _problem()
    inputs = RankingInputs(_evaluation(feats, labels, camids, nq, re_ranking=RERANK))
    q, g = feats[:nq], feats[nq:]
    qlab, glab, qcam, gcam = labels[:nq], labels[nq:], camids[:nq], camids[nq:]
    reranked = KReciprocalReranker(q, g, *RERANK).distance_block(0, nq)
    expected = _valid_order(reranked, qlab, qcam, glab, gcam)
    # re-ranking does move items here, so the test tells the two orders apart
    assert expected != _valid_order(torch.cdist(q, g), qlab, qcam, glab, gcam)

    records = inputs.ranked(len(g) + 1)
    for rec, exp in zip(records, expected):
        assert rec.gallery_indices.tolist() == exp
        # the distance shown is the re-ranked one
        np.testing.assert_allclose(rec.distances, reranked[rec.query_index, exp].double().numpy(), rtol=0, atol=0)

    # each query's first true-match rank is the one the re-ranked metrics report
    per_query = rerank_and_evaluate(q, g, qlab, glab, qcam, gcam, *RERANK, max_rank=5, return_per_query=True)
    first = per_query["per_query"]["first_match_rank"]
    for rec in records:  # every valid item is listed (top_k = G + 1)
        if rec.has_match:
            assert int(np.flatnonzero(rec.is_match)[0]) + 1 == first[rec.query_index]


def _near_ties(seed=0, nq=10, ng=60, d=16):
    """Gallery rows that differ from one vector only in their last bits: the distance formula decides ties."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=gen)
    q = base + torch.randn(nq, d, generator=gen)
    g = base.repeat(ng, 1)
    g[:, -1] += torch.arange(ng) * 1e-6
    g[:, -2] -= torch.arange(ng).flip(0) * 1e-6
    labels = np.concatenate([np.arange(nq) % 3, np.arange(ng) % 7])
    camids = np.concatenate([np.zeros(nq, dtype=np.int64), np.ones(ng, dtype=np.int64)])  # nothing is junk
    return torch.cat([q, g]), labels, camids, nq


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_near_ties_follow_the_metric_blocks(metric):
    feats, labels, camids, nq = _near_ties()
    q, g = feats[:nq], feats[nq:]
    blocks = FeatureDistances(q, g, metric).block(0, nq)  # reid_metrics' ranking form
    expected = row_order(blocks).tolist()
    if metric == "euclidean":  # the readable formula does order these near-ties differently
        assert expected != row_order(torch.cdist(q, g)).tolist()
    inputs = RankingInputs(_evaluation(feats, labels, camids, nq, dist_metric=metric))
    records = inputs.ranked(len(g) + 1)
    assert [rec.gallery_indices.tolist() for rec in records] == expected


def test_displayed_distances_are_readable():
    feats, labels, camids, nq = _problem(seed=1)
    q, g = feats[:nq], feats[nq:]
    glab, gcam = labels[nq:], camids[nq:]

    euclid = RankingInputs(_evaluation(feats, labels, camids, nq)).ranked(6)
    cosine = RankingInputs(_evaluation(feats, labels, camids, nq, dist_metric="cosine")).ranked(6)
    one_minus_cos = 1.0 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).t()
    for records, readable in ((euclid, torch.cdist(q, g)), (cosine, one_minus_cos)):
        for rec in records:
            shown = readable[rec.query_index, rec.gallery_indices].double().numpy()
            np.testing.assert_allclose(rec.distances, shown, rtol=1e-5, atol=1e-5)
            assert rec.last_match_distance == pytest.approx(
                float(readable[rec.query_index, rec.last_match_index]), abs=1e-5
            )
            assert (
                rec.gallery_indices.tolist()
                == _valid_order(readable, labels[:nq], camids[:nq], glab, gcam)[rec.query_index][
                    : len(rec.gallery_indices)
                ]
            )

    # TEST.NORM_K: NAMA's angle 2 asin(d / 2) - K u_g of normalised features
    k = 0.7
    normed = torch.nn.functional.normalize(feats, dim=1)
    uc = 0.3 * torch.randn(len(feats), generator=torch.Generator().manual_seed(2))
    nama = RankingInputs(_evaluation(normed, labels, camids, nq, uc=uc, norm_k=k)).ranked(6)
    for rec in nama:
        for j, shown in zip(rec.gallery_indices, rec.distances):
            chord = float((normed[rec.query_index] - normed[nq + j]).norm())
            assert shown == pytest.approx(2 * math.asin(min(chord / 2, 1.0)) - k * float(uc[nq + j]), abs=1e-5)
