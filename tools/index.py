#!/usr/bin/env python
"""Build a gallery index from a features file of tools/embed.py, and search it.

    python tools/index.py build gallery.npz --output gallery.index [--kind exact|ivf|hnsw] [--recall]
    python tools/index.py search gallery.index --query queries.npz -k 10 [--output hits.csv|hits.json]
    python tools/index.py search gallery.index --query photos/ -k 10 --config_file X TEST.WEIGHT ck.pt

build: an exact index by default (inner product for L2-normalised or cosine embeddings, L2 otherwise); 'ivf'
(--nlist, default ~4 sqrt(N); --nprobe) and 'hnsw' (M 32; --ef-search) for big galleries. --recall prints the
recall@10 of the index against an exact search, with 1,000 gallery items (drawn with seed 0) as queries. The index
is written with a sidecar gallery.index.json (paths, labels, model identity).

search: the query is a features file, or images (a folder, a CSV, DATASET:split) embedded first with the config and
checkpoint given as for test.py. Features of another dimension or another model are refused. Without --output, the
top-k paths and distances of each query are printed; with it, written as CSV (query, rank, path, distance,
gallery_index[, label]) or JSON. A user error exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import UserError, load_config  # noqa: E402
from engine.inference.embedding import Embeddings, ImageEmbedder, load_features  # noqa: E402
from engine.inference.gallery_index import INDEX_KINDS, GalleryIndex, Hits  # noqa: E402
from engine.inference.image_sources import resolve_image_source  # noqa: E402
from engine.reporting.run_files import atomic_write_text  # noqa: E402
from engine.run.cli import exit_status, parse_command_line  # noqa: E402

DESCRIPTION = "Build a faiss gallery index from a features file, or search one."
RECALL_QUERIES = 1000
RECALL_K = 10
OUTPUT_FORMATS = (".csv", ".json")


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are UserErrors: one line and exit status 2, as every other user error."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


def build_parser() -> ToolParser:
    parser = ToolParser(prog="tools/index.py", description=DESCRIPTION, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{build,search}")
    build = commands.add_parser("build", help="index a features file", allow_abbrev=False)
    build.add_argument("features", metavar="feats.npz", help="a features file of tools/embed.py")
    build.add_argument("--output", required=True, metavar="gallery.index", help="the index to write (+ .json)")
    build.add_argument("--kind", default="exact", choices=INDEX_KINDS, help="exact (default), ivf or hnsw")
    build.add_argument("--nlist", type=int, default=None, help="IVF lists (default about 4 sqrt(N))")
    build.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query")
    build.add_argument("--ef-search", type=int, default=None, help="HNSW candidates per query")
    build.add_argument("--recall", action="store_true", help=f"print recall@{RECALL_K} against an exact search")
    search = commands.add_parser(
        "search",
        help="the k nearest gallery items of each query",
        allow_abbrev=False,
        epilog="With image queries: --config_file FILE and KEY VALUE pairs, TEST.WEIGHT among them, as for test.py.",
    )
    search.add_argument("index", metavar="gallery.index", help="an index of tools/index.py build")
    search.add_argument("--query", required=True, metavar="DIR|feats.npz", help="features file, or images to embed")
    search.add_argument("-k", type=int, default=10, help="items per query (default 10)")
    search.add_argument("--output", default=None, metavar="hits.csv|hits.json", help="write instead of printing")
    search.add_argument("--batch-size", type=int, default=64, help="images per forward pass, for image queries")
    search.add_argument("--workers", type=int, default=None, help="image-reading processes, for image queries")
    search.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default: as built)")
    search.add_argument("--ef-search", type=int, default=None, help="HNSW candidates per query (default: as built)")
    return parser


def build_command(args: argparse.Namespace) -> GalleryIndex:
    embeddings = load_features(args.features)
    gallery = GalleryIndex.from_embeddings(
        embeddings, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, ef_search=args.ef_search
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    gallery.save(output)
    print(f"{gallery.describe()} written to {output} (+ {output.name}.json)")
    if args.recall:
        count = min(RECALL_QUERIES, len(gallery))
        rows = np.sort(np.random.default_rng(0).choice(len(gallery), size=count, replace=False))
        recall = gallery.recall_against_exact(embeddings.features[rows], k=RECALL_K)
        print(f"recall@{RECALL_K} against exact search, {count} gallery items as queries: {recall:.4f}")
    return gallery


def query_embeddings(args: argparse.Namespace, config_args: argparse.Namespace) -> Embeddings:
    """The query features: a features file as it is, or images embedded with the config's model."""
    query = Path(args.query)
    if query.suffix.lower() == ".npz":
        if config_args.config_file or config_args.opts:
            raise UserError(f"{query} is already embedded: --config_file and KEY VALUE pairs are for image queries")
        return load_features(query)
    cfg = load_config(config_args.config_file, config_args.opts)
    if not cfg.TEST.WEIGHT:
        raise UserError(
            f"--query {query} is images: give the model that embedded the gallery, --config_file FILE TEST.WEIGHT ck.pt"
        )
    source = resolve_image_source(args.query, cfg)
    workers = cfg.DATALOADER.NUM_WORKERS if args.workers is None else args.workers
    return ImageEmbedder(cfg).embed(source, batch_size=args.batch_size, workers=workers)


def hits_rows(queries: Embeddings, hits: Hits, gallery: GalleryIndex) -> list[dict]:
    """One dict per (query, hit), nearest first; the places an approximate index left empty are left out."""
    rows = []
    for q, query_path in enumerate(queries.paths):
        for rank, (index, distance, path) in enumerate(zip(hits.indices[q], hits.distances[q], hits.paths[q]), 1):
            if index < 0:
                continue
            row = {"query": query_path, "rank": rank, "path": path, "distance": float(distance)}
            row["gallery_index"] = int(index)
            if gallery.labels is not None:
                row["label"] = gallery.labels[index]
            rows.append(row)
    return rows


def write_hits(path: Path, rows: list[dict], with_labels: bool) -> None:
    """The rows of hits_rows as a CSV table or as JSON (one object per query with its list of hits)."""
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        columns = ["query", "rank", "path", "distance", "gallery_index"] + (["label"] if with_labels else [])
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
        return
    per_query: dict[str, list[dict]] = {}
    for row in rows:
        per_query.setdefault(row["query"], []).append({k: v for k, v in row.items() if k != "query"})
    atomic_write_text(path, json.dumps([{"query": q, "hits": h} for q, h in per_query.items()], indent=1))


def search_command(args: argparse.Namespace, config_args: argparse.Namespace) -> list[dict]:
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"--output {output}: expected a .csv or .json file")
    gallery = GalleryIndex.load(args.index)
    gallery.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    queries = query_embeddings(args, config_args)
    hits = gallery.search(queries, k=args.k)
    rows = hits_rows(queries, hits, gallery)
    if output is None:
        for row in rows:
            if row["rank"] == 1:
                print(row["query"])
            print(f"  {row['rank']:3d}  {row['distance']:.4f}  {row['path']}")
        return rows
    output.parent.mkdir(parents=True, exist_ok=True)
    write_hits(output, rows, gallery.labels is not None)
    print(f"top {min(args.k, len(gallery))} of {len(queries)} queries in {gallery.describe()} written to {output}")
    return rows


def run(argv: list[str] | None = None):
    """Run the tool (build or search)."""
    args, rest = build_parser().parse_known_args(argv)
    config_args = parse_command_line(DESCRIPTION, with_resume=False, argv=rest)
    if args.command == "build":
        if config_args.config_file or config_args.opts:
            raise UserError("build reads a features file only: no --config_file or KEY VALUE pairs")
        return build_command(args)
    return search_command(args, config_args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return exit_status(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
