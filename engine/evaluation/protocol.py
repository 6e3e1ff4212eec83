"""From embeddings to numbers: the protocol of the dataset (re-ID or retrieval), trials, re-ranking."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from config.choices import TEST_PROTOCOLS, YES_NO
from config.errors import ConfigError, check_choice
from data.records import DatasetSplits


@dataclass
class EvalSpec:
    """How one dataset's test embeddings are scored.

    The embeddings arrive in the order of `splits.eval_records()`: the query records, then (unless the query
    set is the gallery) the gallery records. `trials` holds (query indices, gallery indices) into that order;
    one trial for fixed protocols, several for VehicleID's random galleries (numbers are averaged).
    """

    name: str
    protocol: str
    query_is_gallery: bool
    trials: list[tuple[np.ndarray, np.ndarray]]
    recall_ks: tuple[int, ...]
    dist_metric: str = "euclidean"
    max_rank: int = 50
    chunk_size: int = 0  # 0: the metric function's own default
    nmi_runs: int = 0
    seed: int = 0
    re_ranking: tuple[int, int, float] | None = None
    norm_k: float = 0.0  # TEST.NORM_K: D = 2 asin(d/2) - K u_g (normalised features, re-ID protocol)
    notes: list[str] = field(default_factory=list)

    def chunk_kwargs(self) -> dict:
        return {"chunk_size": self.chunk_size} if self.chunk_size > 0 else {}

    @property
    def main_metric(self) -> str:
        """What picks the best model: mAP for re-ID, Recall@(first K) for retrieval."""
        return "mAP" if self.protocol == "reid" else f"R@{self.recall_ks[0]}"


def _trial_indices(splits: DatasetSplits) -> list[tuple[np.ndarray, np.ndarray]]:
    nq = len(splits.query)
    if splits.query_is_gallery:
        everything = np.arange(nq)
        return [(everything, everything)]
    trials = [(np.arange(nq), np.arange(nq, nq + len(splits.gallery)))]
    if splits.extra_trials:
        position = {r.path: i for i, r in enumerate(splits.eval_records())}
        for query, gallery in splits.extra_trials:
            trials.append((np.array([position[r.path] for r in query]), np.array([position[r.path] for r in gallery])))
    return trials


def build_eval_spec(cfg, splits: DatasetSplits) -> EvalSpec:
    """The scoring of `splits` under TEST.* (protocol override, K list, NMI, re-ranking)."""
    check_choice("TEST.PROTOCOL", cfg.TEST.PROTOCOL, TEST_PROTOCOLS)
    check_choice("TEST.RE_RANKING", cfg.TEST.RE_RANKING, YES_NO)
    protocol = splits.protocol if cfg.TEST.PROTOCOL == "auto" else cfg.TEST.PROTOCOL
    if protocol == "reid" and splits.query_is_gallery:
        raise ConfigError(
            f"TEST.PROTOCOL 'reid' needs separate query and gallery sets, but {splits.name} uses its "
            "query set as the gallery; use 'retrieval' or 'auto'"
        )
    re_ranking = None
    if cfg.TEST.RE_RANKING == "yes":
        if protocol != "reid":
            raise ConfigError(
                f"TEST.RE_RANKING 'yes' applies to the re-ID protocol; {splits.name} is evaluated with '{protocol}'"
            )
        re_ranking = (cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2, cfg.TEST.RE_RANKING_LAMBDA)
    if cfg.TEST.NORM_K != 0:
        _check_norm_k(cfg, protocol, splits.name)
    ks = tuple(cfg.TEST.RECALL_KS) or tuple(splits.recall_ks)
    if any(k <= 0 for k in ks):
        raise ConfigError(f"TEST.RECALL_KS = {list(ks)}; expected positive integers")
    return EvalSpec(
        name=splits.name,
        protocol=protocol,
        query_is_gallery=splits.query_is_gallery,
        trials=_trial_indices(splits),
        recall_ks=ks,
        dist_metric=cfg.TEST.DIST_METRIC,
        max_rank=cfg.TEST.MAX_RANK,
        chunk_size=cfg.TEST.EVAL_CHUNK,
        nmi_runs=cfg.TEST.NMI_RUNS,
        seed=cfg.SEED,
        re_ranking=re_ranking,
        norm_k=float(cfg.TEST.NORM_K),
    )


def _check_norm_k(cfg, protocol: str, name: str) -> None:
    from modeling.arch import parse_arch

    k = cfg.TEST.NORM_K
    if cfg.TEST.FEAT_NORM != "yes":
        raise ConfigError(
            f"TEST.NORM_K = {k} uses the angle 2 asin(d/2) between L2-normalised features, but "
            "TEST.FEAT_NORM is 'no': set TEST.FEAT_NORM yes (or TEST.NORM_K 0)"
        )
    if not parse_arch(cfg.MODEL.ARCH).uncertainty:
        raise ConfigError(
            f"TEST.NORM_K = {k} needs the uncertainty head's offsets, but MODEL.ARCH "
            f"{cfg.MODEL.ARCH!r} has none: use the 'uc' / 'clsuc' ARCH the model was trained with"
        )
    if protocol != "reid":
        raise ConfigError(f"TEST.NORM_K applies to the re-ID protocol; {name} is evaluated with '{protocol}'")
    if cfg.TEST.RE_RANKING == "yes":
        raise ConfigError("TEST.NORM_K and TEST.RE_RANKING cannot be combined (re-ranking uses its own distance)")


def uncertainty_distance(gallery_uc: torch.Tensor, k: float):
    """distance_fn(q, g) = 2 asin(||q - g|| / 2) - k u_g for L2-normalised q, g (NAMA's test distance; only
    the gallery term changes a query's ranking)."""

    def distance(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        chord = (2.0 - 2.0 * query @ gallery.t()).clamp_min(0.0).sqrt()
        return 2.0 * torch.asin((chord / 2.0).clamp(max=1.0)) - k * gallery_uc.to(chord)[None, :]

    return distance


def display_distance(spec: EvalSpec, gallery_uc: torch.Tensor | None = None):
    """pair_fn(query_rows, gallery_rows, gallery_index) of the distance the spec ranks by, in readable units
    (Euclidean distance, 1 - cos, or NAMA's angle minus K u_g): what rank pictures and ranked lists print.

    Row i of the (n, D) query_rows is paired with row i of gallery_rows (gallery item gallery_index[i], which
    picks its offset in gallery_uc); the result is the (n,) distances of the pairs.  Only the shown items are
    measured: the order itself comes from the blocks the metrics ranked by.
    """
    if spec.norm_k != 0:
        if gallery_uc is None:
            raise ValueError("spec.norm_k needs the gallery's uncertainty offsets gallery_uc")

        def angle(q: torch.Tensor, g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            chord = (2.0 - 2.0 * (q * g).sum(dim=1)).clamp_min(0.0).sqrt()
            uc = gallery_uc.to(chord)[index.to(chord.device)]
            return 2.0 * torch.asin((chord / 2.0).clamp(max=1.0)) - spec.norm_k * uc

        return angle
    if spec.dist_metric == "cosine":
        normalize = torch.nn.functional.normalize
        return lambda q, g, index: 1.0 - (normalize(q, dim=1) * normalize(g, dim=1)).sum(dim=1)
    return lambda q, g, index: torch.linalg.vector_norm(q - g, dim=1)


def _mean_of_trials(results: list[dict]) -> dict:
    if len(results) == 1:
        return results[0]
    out = {}
    for key, value in results[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(np.mean([r[key] for r in results]))
        elif isinstance(value, list):
            out[key] = [float(v) for v in np.mean([r[key] for r in results], axis=0)]
        else:
            out[key] = value
    out["num_trials"] = len(results)
    return out


def _take(tensor: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """Rows `index` of `tensor`: a view when they are a contiguous run (no copy of a large gallery)."""
    if len(index) and index[-1] - index[0] + 1 == len(index) and np.all(np.diff(index) == 1):
        return tensor[int(index[0]) : int(index[-1]) + 1]
    return tensor[torch.as_tensor(index, device=tensor.device)]


def _reid(spec: EvalSpec, feats, labels, camids, q, g, uc=None) -> dict:
    from engine.evaluation.reid_metrics import reid_metrics

    args = (_take(feats, q), _take(feats, g), _take(labels, q), _take(labels, g), _take(camids, q), _take(camids, g))
    if spec.re_ranking is not None:
        from engine.evaluation.reranking import rerank_and_evaluate

        k1, k2, lam = spec.re_ranking
        result = rerank_and_evaluate(
            *args, k1=k1, k2=k2, lambda_value=lam, max_rank=spec.max_rank, **spec.chunk_kwargs()
        )
    else:
        distance_fn = uncertainty_distance(_take(uc, g), spec.norm_k) if spec.norm_k != 0 else None
        result = reid_metrics(
            *args, max_rank=spec.max_rank, metric=spec.dist_metric, distance_fn=distance_fn, **spec.chunk_kwargs()
        )
    out = {k: float(result[k]) for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}
    out["cmc"] = [float(v) for v in result["cmc"]]
    out["num_query"] = int(result["num_query"])
    out["num_valid_query"] = int(result["num_valid_query"])
    return out


def _retrieval(spec: EvalSpec, feats, labels, q, g) -> dict:
    from engine.evaluation.retrieval_metrics import retrieval_metrics

    # a query-is-gallery benchmark passes no gallery: each query is left out of its own ranking by index
    gallery = () if spec.query_is_gallery else (_take(feats, g), _take(labels, g))
    result = retrieval_metrics(
        _take(feats, q),
        _take(labels, q),
        *gallery,
        ks=spec.recall_ks,
        metric=spec.dist_metric,
        nmi_runs=spec.nmi_runs,
        nmi_seed=spec.seed,
        **spec.chunk_kwargs(),
    )
    return {
        k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) else v)
        for k, v in result.items()
    }


def evaluate_embeddings(
    spec: EvalSpec, feats: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor, uc: torch.Tensor | None = None
) -> dict:
    """The numbers of one dataset from its embeddings (already normalised if TEST.FEAT_NORM says so); `uc`,
    the uncertainty offsets of the items, is needed when spec.norm_k is not 0."""
    if spec.norm_k != 0 and uc is None:
        raise ValueError("spec.norm_k needs the items' uncertainty offsets uc")
    results = []
    for q, g in spec.trials:
        if spec.protocol == "reid":
            results.append(_reid(spec, feats, labels, camids, q, g, uc))
        else:
            results.append(_retrieval(spec, feats, labels, q, g))
    return _mean_of_trials(results)
