#!/usr/bin/env python
"""Forward + backward time of every loss, ours next to pytorch-metric-learning's equivalent.

    python tools/benchmark_losses.py                           # CPU, batch 120 and 180, d 512
    python tools/benchmark_losses.py --device cuda --repeats 50
    python tools/benchmark_losses.py --losses ms proxy_anchor --batches 180

Each loss is built from the config defaults (`build_loss`), fed a PK batch (K = 4) of random 512-d features
that require a gradient, and timed as the median of `--repeats` forward + backward passes after a warm-up.
Pair losses run with C = 100 classes; proxy and classification losses also with C = 11,318 (SOP's training
classes). The PML column builds the class with the same hyper-parameters (the same definition unless the
note says otherwise); '-' where PML has no such loss.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from config import load_config  # noqa: E402
from layers import build_loss  # noqa: E402

SOP_CLASSES = 11318


def _pml_builders(cfg):
    """name -> (builder(num_classes, dim) of PML's loss + miner, note)."""
    from pytorch_metric_learning import distances, losses, miners, reducers

    L = cfg.LOSS

    def pair(loss, miner=None):
        return lambda c, d: (loss(), miner() if miner else None)

    return {
        "triplet": (
            pair(
                lambda: losses.TripletMarginLoss(
                    margin=cfg.SOLVER.MARGIN,
                    distance=distances.LpDistance(normalize_embeddings=False),
                    reducer=reducers.MeanReducer(),
                ),
                lambda: miners.BatchHardMiner(distance=distances.LpDistance(normalize_embeddings=False)),
            ),
            "same",
        ),
        "tri-n": (
            pair(
                lambda: losses.TripletMarginLoss(margin=cfg.SOLVER.MARGIN, reducer=reducers.MeanReducer()),
                lambda: miners.BatchHardMiner(),
            ),
            "same",
        ),
        "contrastive": (
            pair(
                lambda: losses.ContrastiveLoss(
                    pos_margin=1.0, neg_margin=L.CONTRASTIVE.MARGIN, distance=distances.CosineSimilarity()
                )
            ),
            "PML: relu(s - m) on negatives, non-zero mean",
        ),
        "ms": (
            pair(
                lambda: losses.MultiSimilarityLoss(alpha=L.MS.POS_SCALE, beta=L.MS.NEG_SCALE, base=L.MS.THRESH),
                lambda: miners.MultiSimilarityMiner(epsilon=L.MS.MINING_MARGIN),
            ),
            "same up to COEF",
        ),
        "circle": (pair(lambda: losses.CircleLoss(m=L.CIRCLE.MARGIN, gamma=L.CIRCLE.SCALE)), "same"),
        "margin": (
            pair(
                lambda: losses.MarginLoss(margin=L.MARGIN_LOSS.ALPHA, beta=L.MARGIN_LOSS.BETA),
                lambda: miners.DistanceWeightedMiner(
                    cutoff=L.MARGIN_LOSS.CUTOFF, nonzero_loss_cutoff=L.MARGIN_LOSS.NONZERO_LOSS_CUTOFF
                ),
            ),
            "PML: triplets' average",
        ),
        "proxy_nca": (lambda c, d: (losses.ProxyNCALoss(c, d, softmax_scale=L.PROXY_NCA.SCALE), None), "same"),
        "proxy_anchor": (
            lambda c, d: (losses.ProxyAnchorLoss(c, d, margin=L.PROXY_ANCHOR.DELTA, alpha=L.PROXY_ANCHOR.ALPHA), None),
            "same",
        ),
        "cls:arcface": (
            lambda c, d: (losses.ArcFaceLoss(c, d, margin=math.degrees(L.ARCFACE.MARGIN), scale=cfg.SOLVER.CS), None),
            "same",
        ),
        "cls:cosface": (
            lambda c, d: (losses.CosFaceLoss(c, d, margin=L.COSFACE.MARGIN, scale=cfg.SOLVER.CS), None),
            "same",
        ),
        "cls:n-softmax": (
            lambda c, d: (losses.NormalizedSoftmaxLoss(c, d, temperature=1.0 / cfg.SOLVER.CS), None),
            "same",
        ),
    }


PAIR_LOSSES = ["triplet", "tri-n", "contrastive", "ms", "soft_contrastive", "circle", "cosface", "margin", "center"]
CLASS_LOSSES = [
    "proxy_nca",
    "proxy_anchor",
    "amloss",
    "cls:softmax",
    "cls:arcface",
    "cls:cosface",
    "cls:n-softmax",
    "cls:circle",
]


def _ours(name: str, num_classes: int, dim: int, device: str):
    if name.startswith("cls:"):
        opts = ["MODEL.METRIC_LOSS_TYPE", "none", "MODEL.CLS_LOSS_TYPE", name[4:], "MODEL.IF_LABELSMOOTH", "off"]
    else:
        opts = ["MODEL.METRIC_LOSS_TYPE", name, "MODEL.CLS_LOSS_TYPE", "none"]
    criterion = build_loss(load_config(None, opts), num_classes, dim).to(device)
    if criterion.cls_term is not None:  # the term alone: the composite's accuracy is not the loss's cost
        return lambda feats, labels: criterion.cls_term(feats, labels)[0]
    (term,) = criterion.metric_terms.values()
    return term


def _pml(builder, num_classes: int, dim: int, device: str):
    loss, miner = builder(num_classes, dim)
    loss = loss.to(device)

    def run(feats, labels):
        return loss(feats, labels, miner(feats, labels) if miner is not None else None)

    return run


def _batch(batch: int, num_classes: int, dim: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    per = 4
    ids = torch.randperm(num_classes, generator=g)[: batch // per]
    labels = ids.repeat_interleave(per)
    feats = torch.randn(len(labels), dim, generator=g)
    return feats.to(device), labels.to(device)


def _time(fn, feats, labels, repeats: int, device: str) -> float:
    """Median seconds of fn(feats, labels).backward() after a warm-up."""

    def once():
        x = feats.clone().requires_grad_(True)
        fn(x, labels).backward()

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        once()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[120, 180])
    parser.add_argument("--losses", nargs="+", default=None, help="names as in the table (cls: for heads)")
    args = parser.parse_args(argv)
    try:
        pml = _pml_builders(load_config(None, []))
    except ImportError:
        pml = {}
        print("pytorch-metric-learning is not installed: only our timings are shown")
    rows = []
    for name in args.losses or PAIR_LOSSES + CLASS_LOSSES:
        class_counts = [100] if name in PAIR_LOSSES else [100, SOP_CLASSES]
        for num_classes in class_counts:
            for batch in args.batches:
                feats, labels = _batch(batch, num_classes, args.dim, args.device)
                torch.manual_seed(0)
                ours = _time(_ours(name, num_classes, args.dim, args.device), feats, labels, args.repeats, args.device)
                theirs, note = None, ""
                if name in pml:
                    builder, note = pml[name]
                    torch.manual_seed(0)
                    theirs = _time(
                        _pml(builder, num_classes, args.dim, args.device), feats, labels, args.repeats, args.device
                    )
                rows.append((name, batch, num_classes, ours, theirs, note))
    print(
        f"\nforward + backward, d = {args.dim}, device {args.device}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}\n"
    )
    print("| loss | batch | classes | ours ms | PML ms | PML / ours | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, batch, c, ours, theirs, note in rows:
        pml_ms = f"{1000 * theirs:.2f}" if theirs is not None else "-"
        ratio = f"{theirs / ours:.2f}" if theirs is not None else "-"
        print(f"| {name} | {batch} | {c} | {1000 * ours:.2f} | {pml_ms} | {ratio} | {note} |")


if __name__ == "__main__":
    main()
