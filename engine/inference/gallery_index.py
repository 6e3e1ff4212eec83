"""A searchable gallery of embeddings over faiss, saved as the faiss index plus a JSON sidecar.

The index space follows the model's test-time embedding: inner product (IndexFlatIP) when the embedding is
L2-normalised (TEST.FEAT_NORM yes) or TEST.DIST_METRIC is cosine (gallery and queries are then normalised, so the
inner product is the cosine), squared L2 (IndexFlatL2) for euclidean on raw embeddings. Distances come back in the
units test.py's ranked lists print (engine/evaluation/protocol.py::display_distance): 1 - cos for cosine, the
Euclidean distance otherwise (sqrt(2 - 2 cos) between unit vectors), ascending.

Kinds: 'exact' (the flat index, every item compared), 'ivf' (IndexIVFFlat: k-means into nlist ~ 4 sqrt(N) lists,
`nprobe` of them searched) and 'hnsw' (IndexHNSWFlat, M = 32 links, `ef_search` candidates) for galleries too big to
scan per query; recall_against_exact measures what they lose.

On disk, ``gallery.index`` is faiss's file and ``gallery.index.json`` its sidecar: the gallery's paths (and labels),
the kind, space, metric, dimension and the ModelIdentity of the features. search refuses, in one line, queries of
another dimension or from another model (checkpoint SHA-256, TEST.NECK_FEAT / FLIP / FEAT_NORM); load refuses an
index without its sidecar.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from config.errors import UserError
from engine.inference.embedding import Embeddings, ModelIdentity
from engine.reporting.run_files import atomic_write, atomic_write_text

try:
    import faiss
except ImportError:  # faiss-cpu is an optional dependency (the 'faiss' extra): build and load say so
    faiss = None

INDEX_KINDS = ("exact", "ivf", "hnsw")
DIST_METRICS = ("euclidean", "cosine")
SIDECAR_FORMAT = 1
HNSW_M = 32  # links per node: faiss's recommended range is 16-64; 32 keeps recall high at 512-d
DEFAULT_NPROBE = 32  # IVF lists searched per query (of ~4 sqrt(N)): see tools/benchmark_index.py
DEFAULT_EF_SEARCH = 128  # HNSW candidates kept per query (faiss's default, 16, loses recall at 512-d)
NORMALISED_TOLERANCE = 1e-4  # |norm - 1| below which raw features count as L2-normalised


class Hits(NamedTuple):
    """The k nearest gallery items of each query, nearest first: distances (Q, k) float32, indices (Q, k) int64
    into the gallery (-1 where an approximate index found fewer than k), and their paths ('' for -1)."""

    distances: np.ndarray
    indices: np.ndarray
    paths: list[list[str]]


def sidecar_path(index_path: str | Path) -> Path:
    """The JSON file beside an index file: its name plus '.json'."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".json")


def default_nlist(count: int) -> int:
    """IVF lists for `count` items: about 4 sqrt(N), at least 1, at most N."""
    return max(1, min(count, round(4 * math.sqrt(count))))


def _as_matrix(features, what: str) -> np.ndarray:
    matrix = np.asarray(features, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise UserError(f"{what} have shape {matrix.shape}; expected a non-empty (N, D) matrix")
    if not np.isfinite(matrix).all():
        raise UserError(f"{what} hold NaN or infinite values")
    return np.ascontiguousarray(matrix)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def require_faiss() -> None:
    """A one-line UserError when faiss is not installed."""
    if faiss is None:
        raise UserError("gallery indexes need faiss: pip install faiss-cpu (or the project's 'faiss' extra)")


def _flat_index(space: str, dim: int) -> faiss.Index:
    return faiss.IndexFlatIP(dim) if space == "ip" else faiss.IndexFlatL2(dim)


def _faiss_metric(space: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if space == "ip" else faiss.METRIC_L2


class GalleryIndex:
    """Gallery embeddings in a faiss index, with their paths, labels and the identity of the model."""

    def __init__(
        self,
        index: faiss.Index,
        kind: str,
        space: str,
        dist_metric: str,
        paths: list[str],
        labels: list[int] | None = None,
        identity: ModelIdentity | None = None,
    ):
        self.index, self.kind, self.space, self.dist_metric = index, kind, space, dist_metric
        self.paths, self.labels, self.identity = list(paths), labels, identity

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        features,
        paths: list[str] | None = None,
        labels=None,
        identity: ModelIdentity | None = None,
        kind: str = "exact",
        dist_metric: str | None = None,
        normalized: bool | None = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> GalleryIndex:
        """An index of `features` (N, D). The metric and normalisation come from `identity` (the model's
        TEST.DIST_METRIC and TEST.FEAT_NORM) when given, else from `dist_metric` (default euclidean) and
        `normalized` (default: whether every row has norm 1). `paths` default to the row numbers."""
        require_faiss()
        if kind not in INDEX_KINDS:
            raise UserError(f"index kind {kind!r} is not valid; expected one of: {', '.join(INDEX_KINDS)}")
        vectors = _as_matrix(features, "gallery features")
        count, dim = vectors.shape
        if identity is not None and identity.dim != dim:
            raise UserError(f"gallery features have {dim} dimensions, their model identity says {identity.dim}")
        dist_metric = dist_metric or (identity.dist_metric if identity is not None else "euclidean")
        if dist_metric not in DIST_METRICS:
            raise UserError(f"distance metric {dist_metric!r} is not valid; expected one of: {', '.join(DIST_METRICS)}")
        if normalized is None and identity is not None:
            normalized = identity.normalized
        elif normalized is None:
            normalized = bool(np.all(np.abs(np.linalg.norm(vectors, axis=1) - 1) < NORMALISED_TOLERANCE))
        space = "ip" if normalized or dist_metric == "cosine" else "l2"
        if space == "ip":
            vectors = _unit_rows(vectors)
        paths = [str(i) for i in range(count)] if paths is None else [str(p) for p in paths]
        labels = _int_list(labels)
        if len(paths) != count or (labels is not None and len(labels) != count):
            got = f"{len(paths)} paths" + ("" if labels is None else f" and {len(labels)} labels")
            raise UserError(f"{count} gallery features but {got}; expected one path (and label) per row")
        if kind == "exact":
            index = _flat_index(space, dim)
        elif kind == "ivf":
            nlist = default_nlist(count) if nlist is None else nlist
            if not 1 <= nlist <= count:
                raise UserError(f"nlist {nlist} for {count} gallery items; expected 1 <= nlist <= {count}")
            index = faiss.IndexIVFFlat(_flat_index(space, dim), dim, nlist, _faiss_metric(space))
            index.train(vectors)
        else:
            index = faiss.IndexHNSWFlat(dim, HNSW_M, _faiss_metric(space))
        index.add(vectors)
        gallery = cls(index, kind, space, dist_metric, paths, labels, identity)
        gallery.set_search_params(
            nprobe=DEFAULT_NPROBE if nprobe is None else nprobe,
            ef_search=DEFAULT_EF_SEARCH if ef_search is None else ef_search,
        )
        return gallery

    @classmethod
    def from_embeddings(cls, embeddings: Embeddings, kind: str = "exact", **options) -> GalleryIndex:
        """An index of a features file's content (tools/embed.py), its paths, labels and model identity kept."""
        return cls.build(
            embeddings.features, embeddings.paths, embeddings.labels, embeddings.identity, kind=kind, **options
        )

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """IVF: lists searched per query (capped at nlist); HNSW: candidates kept per query. None leaves a
        parameter as it is; each is ignored by the kinds it does not apply to."""
        if self.kind == "ivf" and nprobe is not None:
            if nprobe < 1:
                raise UserError(f"nprobe {nprobe}; expected 1 or more")
            self.index.nprobe = min(nprobe, self.index.nlist)
        if self.kind == "hnsw" and ef_search is not None:
            if ef_search < 1:
                raise UserError(f"ef_search {ef_search}; expected 1 or more")
            self.index.hnsw.efSearch = ef_search

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def describe(self) -> str:
        """One line: kind, size, dimension, metric and the search parameter."""
        extra = ""
        if self.kind == "ivf":
            extra = f", nlist {self.index.nlist}, nprobe {self.index.nprobe}"
        elif self.kind == "hnsw":
            extra = f", M {HNSW_M}, efSearch {self.index.hnsw.efSearch}"
        space = "inner product" if self.space == "ip" else "L2"
        return f"{self.kind} index of {len(self)} items, {self.dim}-d, {self.dist_metric} ({space}){extra}"

    # ------------------------------------------------------------------------------------------------ searching
    def _queries(self, queries, identity: ModelIdentity | None) -> np.ndarray:
        if isinstance(queries, Embeddings):
            queries, identity = queries.features, identity or queries.identity
        matrix = _as_matrix(queries, "query features")
        if matrix.shape[1] != self.dim:
            source = f" (built from {self.identity.checkpoint})" if self.identity is not None else ""
            raise UserError(
                f"query features have {matrix.shape[1]} dimensions, the index{source} holds {self.dim}-dimensional "
                "items; embed the queries with the model that embedded the gallery"
            )
        if identity is not None and self.identity is not None:
            reason = self.identity.mismatch(identity)
            if reason is not None:
                raise UserError(f"query features refused: {reason}")
        return _unit_rows(matrix) if self.space == "ip" else matrix

    def _raw_search(self, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(matrix, min(k, len(self)))

    def _distances(self, scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if self.space == "l2":
            out = np.sqrt(np.maximum(scores, 0.0))
        elif self.dist_metric == "cosine":
            out = 1.0 - scores
        else:
            out = np.sqrt(np.maximum(2.0 - 2.0 * scores, 0.0))
        out = out.astype(np.float32)
        out[indices < 0] = np.inf
        return out

    def search(self, queries, k: int = 10, identity: ModelIdentity | None = None) -> Hits:
        """The k nearest gallery items of each query (a (Q, D) array, one (D,) vector, or Embeddings, whose
        identity is checked against the index's; `identity` checks a plain array's). k above the gallery's size
        returns the whole gallery."""
        if k < 1:
            raise UserError(f"k = {k}; expected 1 or more")
        matrix = self._queries(queries, identity)
        scores, indices = self._raw_search(matrix, k)
        indices = indices.astype(np.int64)
        paths = [[self.paths[i] if i >= 0 else "" for i in row] for row in indices.tolist()]
        return Hits(self._distances(scores, indices), indices, paths)

    def stored_vectors(self) -> np.ndarray:
        """A copy of the gallery vectors as the index holds them (normalised in inner-product space)."""
        if self.kind != "ivf":
            return self.index.reconstruct_n(0, len(self))
        self.index.make_direct_map()  # IVF reconstructs by id through a map it does not keep otherwise
        try:
            return self.index.reconstruct_n(0, len(self))
        finally:
            self.index.set_direct_map_type(faiss.DirectMap.NoMap)

    def recall_against_exact(self, queries, k: int = 10) -> float:
        """recall@k of this index against an exact search of the same vectors: the mean over queries of the share
        of the exact top k that this index returns (1.0 for an exact index)."""
        if k < 1:
            raise UserError(f"k = {k}; expected 1 or more")
        matrix = self._queries(queries, None)
        _, approximate = self._raw_search(matrix, k)
        exact_index = _flat_index(self.space, self.dim)
        exact_index.add(self.stored_vectors())
        _, exact = exact_index.search(matrix, min(k, len(self)))
        return recall_of(approximate, exact)

    # ------------------------------------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the faiss index to `path` and its sidecar to `path`.json, each atomically."""
        path = Path(path)
        atomic_write(path, lambda handle: faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write)))
        sidecar = {
            "format": SIDECAR_FORMAT,
            "kind": self.kind,
            "space": self.space,
            "dist_metric": self.dist_metric,
            "dim": self.dim,
            "count": len(self),
            "nprobe": int(self.index.nprobe) if self.kind == "ivf" else None,
            "ef_search": int(self.index.hnsw.efSearch) if self.kind == "hnsw" else None,
            "model": None if self.identity is None else self.identity.as_dict(),
            "paths": self.paths,
            "labels": self.labels,
        }
        atomic_write_text(sidecar_path(path), json.dumps(sidecar))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """An index written by save, or a one-line UserError (missing file or sidecar, files that disagree)."""
        require_faiss()
        path, sidecar_file = Path(path), sidecar_path(path)
        if not path.is_file():
            raise UserError(f"gallery index {path} does not exist")
        if not sidecar_file.is_file():
            raise UserError(
                f"gallery index {path} has no sidecar {sidecar_file} (its paths, labels and model identity, written "
                "beside it by tools/index.py build); build the index again"
            )
        try:
            sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
            identity = None if sidecar["model"] is None else ModelIdentity.from_dict(sidecar["model"])
            kind, space, dist_metric = sidecar["kind"], sidecar["space"], sidecar["dist_metric"]
            paths = sidecar["paths"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"cannot read the sidecar {sidecar_file}: {err!r}; build the index again") from None
        if sidecar.get("format") != SIDECAR_FORMAT or kind not in INDEX_KINDS or space not in ("ip", "l2"):
            raise UserError(f"{sidecar_file} is not a sidecar of this engine's gallery index (format {SIDECAR_FORMAT})")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot read gallery index {path}: {reason}") from None
        if index.ntotal != len(paths) or index.d != sidecar.get("dim"):
            raise UserError(
                f"gallery index {path} holds {index.ntotal} items of {index.d} dimensions but its sidecar lists "
                f"{len(paths)} paths of {sidecar.get('dim')}; the two files are not from one build, build again"
            )
        gallery = cls(index, kind, space, dist_metric, paths, sidecar.get("labels"), identity)
        gallery.set_search_params(nprobe=sidecar.get("nprobe"), ef_search=sidecar.get("ef_search"))
        return gallery


def recall_of(found: np.ndarray, exact: np.ndarray) -> float:
    """recall@k of the (Q, k) gallery indices `found` against the exact top k `exact` (Q, k): the mean share of
    each query's exact neighbours that were found (-1 entries, fewer than k found, count as misses)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return hits / exact.size


def _int_list(labels) -> list[int] | None:
    return None if labels is None else [int(label) for label in np.asarray(labels).reshape(-1)]
