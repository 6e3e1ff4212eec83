"""test.py's ranked lists: every query's top-k gallery items with distances and match flags, as CSV or JSON.

CSV (one row per query and rank, ready for pandas / a spreadsheet):
    query_index, query_path, query_label, query_camid, query_ap, rank, gallery_path, gallery_label,
    gallery_camid, distance, match
rank runs 1..k over the valid gallery items (re-ID: same identity + same camera removed, as the metrics
do); a final row per query with rank = the rank of its lowest-ranked true match and `last_match` in the
match column's place marks it when that match lies beyond k.
JSON: a list of {"query": path, "label", "camid", "ap", "ranked": [{"rank", "path", "label", "camid",
"distance", "match"}...], "last_match": {"rank", "path", "distance"} or null}.
Order and distance (both formats): the gallery is in the order the metrics of test_metrics.json ranked it;
`distance` is the readable distance of the item (Euclidean distance, 1 - cos, or NAMA's angle minus K u_g
with TEST.NORM_K) or, with TEST.RE_RANKING yes, the re-ranked distance the order comes from.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.reporting.rank_pictures import RankedQuery
from engine.reporting.run_files import atomic_write_text

FORMATS = ("csv", "json")


def write_ranked_lists(
    path: Path,
    fmt: str,
    ranked: Sequence[RankedQuery],
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    query_labels,
    gallery_labels,
    query_camids,
    gallery_camids,
) -> Path:
    """Write the ranked lists of `ranked` (from engine.reporting.rank_pictures.ranked_lists) to `path` in `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    qlab, glab = np.asarray(query_labels), np.asarray(gallery_labels)
    qcam, gcam = np.asarray(query_camids), np.asarray(gallery_camids)
    if fmt == "json":
        content = []
        for r in ranked:
            q = r.query_index
            content.append(
                {
                    "query": str(query_paths[q]),
                    "label": int(qlab[q]),
                    "camid": int(qcam[q]),
                    "ap": float(r.ap),
                    "ranked": [
                        {
                            "rank": i + 1,
                            "path": str(gallery_paths[g]),
                            "label": int(glab[g]),
                            "camid": int(gcam[g]),
                            "distance": float(d),
                            "match": bool(m),
                        }
                        for i, (g, d, m) in enumerate(zip(r.gallery_indices, r.distances, r.is_match))
                    ],
                    "last_match": None
                    if r.last_match_index is None
                    else {
                        "rank": int(r.last_match_rank),
                        "path": str(gallery_paths[r.last_match_index]),
                        "distance": float(r.last_match_distance),
                    },
                }
            )
        atomic_write_text(path, json.dumps(content, indent=1))
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "query_index",
            "query_path",
            "query_label",
            "query_camid",
            "query_ap",
            "rank",
            "gallery_path",
            "gallery_label",
            "gallery_camid",
            "distance",
            "match",
        ]
    )
    for r in ranked:
        q = r.query_index
        head = [q, query_paths[q], int(qlab[q]), int(qcam[q]), f"{r.ap:.6f}"]
        for i, (g, d, m) in enumerate(zip(r.gallery_indices, r.distances, r.is_match)):
            writer.writerow([*head, i + 1, gallery_paths[g], int(glab[g]), int(gcam[g]), f"{d:.6f}", int(bool(m))])
        if r.last_match_index is not None and r.last_match_rank > len(r.gallery_indices):
            g = r.last_match_index
            writer.writerow(
                [
                    *head,
                    r.last_match_rank,
                    gallery_paths[g],
                    int(glab[g]),
                    int(gcam[g]),
                    f"{r.last_match_distance:.6f}",
                    "last_match",
                ]
            )
    atomic_write_text(path, buffer.getvalue())
    return path
