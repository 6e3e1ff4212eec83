#!/usr/bin/env python
"""Gallery index kinds on random embeddings: build and query seconds, and recall against the exact search.

    python tools/benchmark_index.py                                    # 100,000 x 512-d, 1,000 queries, k 10
    python tools/benchmark_index.py --identities 10000                 # items clustered by identity, as embeddings
    python tools/benchmark_index.py --items 1000000 --threads 16 --nprobe 16 64 --ef-search 64 256

Items and queries are drawn from a standard normal and L2-normalised (seed 0), so the index is the inner-product one
a model with TEST.FEAT_NORM yes gets (engine/inference/gallery_index.py). One row per kind and search parameter:
build seconds (IVF: k-means training included; the same build serves every parameter of its kind), seconds for all
queries at once, queries per second, and recall@k against the exact index (the share of the exact top k found).
Uniformly random directions (the default) are the hard case for approximate search: in 512-d the nearest neighbours
are barely nearer than the rest. With --identities N the items lie around N random centres (an identity's images, as
a trained model's embeddings do), where the nearest neighbours stand apart and few probes find them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.inference.gallery_index import (  # noqa: E402
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    HNSW_M,
    GalleryIndex,
    default_nlist,
    recall_of,
)


def unit_rows(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_rows(centres: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`count` unit rows around randomly picked `centres` (an identity's images): centre + noise of norm ~`noise`."""
    dim = centres.shape[1]
    rows = centres[rng.integers(len(centres), size=count)]
    rows = rows + rng.standard_normal((count, dim), dtype=np.float32) * (noise / np.sqrt(dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="faiss (OpenMP) threads")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, DEFAULT_NPROBE, 128])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, DEFAULT_EF_SEARCH, 512])
    parser.add_argument(
        "--identities",
        type=int,
        default=0,
        help="0 (default): uniformly random directions; N: items and queries drawn around N random centres",
    )
    parser.add_argument("--noise", type=float, default=1.0, help="with --identities: the noise norm around a centre")
    args = parser.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    if args.identities:
        centres = unit_rows(args.identities, args.dim, rng)
        gallery = clustered_rows(centres, args.items, args.noise, rng)
        queries = clustered_rows(centres, args.queries, args.noise, rng)
        data = f"around {args.identities:,} centres, noise {args.noise}"
    else:
        gallery, queries = unit_rows(args.items, args.dim, rng), unit_rows(args.queries, args.dim, rng)
        data = "uniformly random"
    print(
        f"{args.items:,} items x {args.dim}-d ({data}, L2-normalised, inner product), {args.queries:,} queries, "
        f"k {args.k}, faiss {faiss.__version__}, {args.threads} threads"
    )
    rows = []
    exact, build_s = timed(lambda: GalleryIndex.build(gallery, kind="exact"))
    exact_hits, query_s = timed(lambda: exact.search(queries, args.k))
    rows.append(("exact", "flat", build_s, query_s, 1.0))
    approximate = (
        (
            "ivf",
            args.nprobe,
            lambda value: {"nprobe": value},
            lambda value: f"nlist {default_nlist(args.items)}, nprobe {value}",
        ),
        ("hnsw", args.ef_search, lambda value: {"ef_search": value}, lambda value: f"M {HNSW_M}, efSearch {value}"),
    )
    for kind, values, params, described in approximate:
        index, build_s = timed(lambda kind=kind: GalleryIndex.build(gallery, kind=kind))
        for value in values:
            index.set_search_params(**params(value))
            hits, query_s = timed(lambda index=index: index.search(queries, args.k))
            rows.append((kind, described(value), build_s, query_s, recall_of(hits.indices, exact_hits.indices)))

    header = f"| kind  | parameters                | build s | query s | queries/s | recall@{args.k} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for kind, params, build_s, query_s, recall in rows:
        print(
            f"| {kind:<5} | {params:<25} | {build_s:7.2f} | {query_s:7.3f} | {args.queries / query_s:9.0f} "
            f"| {recall:9.4f} |"
        )


if __name__ == "__main__":
    main()
