"""Evaluation as ignite parts: an Engine that extracts embeddings and a Metric that ranks them.

With several processes each rank embeds its share of query + gallery; the metric gathers the shares,
restores the dataset order and ranks on every rank, so all ranks report the same numbers.
"""

from __future__ import annotations

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn

from config.errors import check_choice
from engine.metrics import VALID_METRICS, reid_metrics
from engine.precision import Precision


def build_extractor(model: nn.Module, precision: Precision, device: torch.device, neck_feat: str) -> Engine:
    """An Engine whose output per batch is the embedding (fp32) with labels, cameras and dataset indices."""
    check_choice("TEST.NECK_FEAT", neck_feat, ("after", "before"))
    key = "neck_feat" if neck_feat == "after" else "feat"

    @torch.no_grad()
    def step(engine: Engine, batch: dict) -> dict:
        model.eval()
        with precision.autocast():
            outputs = model(batch["image"].to(device, non_blocking=True))
        return {
            "feats": outputs[key].float(),
            "labels": batch["label"].to(device),
            "camids": batch["camid"].to(device),
            "index": batch["index"].to(device),
        }

    return Engine(step)


def _gather_in_order(local: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of `local` (rows = dataset items `index`), in dataset order."""
    world = idist.get_world_size()
    if world == 1:
        return local[torch.argsort(index)]
    size = torch.tensor([len(index)], device=index.device)
    longest = int(idist.all_reduce(size.clone(), op="MAX").item())
    pad = longest - len(index)
    padded = torch.cat([local, local.new_zeros((pad,) + tuple(local.shape[1:]))])
    padded_index = torch.cat([index, index.new_full((pad,), -1)])
    rows = idist.all_gather(padded)
    indices = idist.all_gather(padded_index)
    keep = indices >= 0
    rows, indices = rows[keep], indices[keep]
    return rows[torch.argsort(indices)]


class ReIDMetric(Metric):
    """CMC / mAP / mINP of the query (first `num_query` items) against the gallery (the rest).

    compute() returns a dict: rank1, rank5, rank10, mAP, mINP (fractions), cmc (list), and query counts.
    """

    required_output_keys = ("feats", "labels", "camids", "index")

    def __init__(self, num_query: int, feat_norm: bool = True, dist_metric: str = "euclidean",
                 max_rank: int = 50, chunk_size: int = 256, device: torch.device | str = "cpu"):
        check_choice("TEST.DIST_METRIC", dist_metric, VALID_METRICS)
        self.num_query = num_query
        self.feat_norm = feat_norm
        self.dist_metric = dist_metric
        self.max_rank = max_rank
        self.chunk_size = chunk_size
        super().__init__(output_transform=lambda out: out, device=device, skip_unrolling=True)

    def reset(self) -> None:
        self._feats, self._labels, self._camids, self._index = [], [], [], []

    def update(self, output: tuple) -> None:
        feats, labels, camids, index = output
        self._feats.append(feats.detach())
        self._labels.append(labels)
        self._camids.append(camids)
        self._index.append(index)

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings, labels and cameras of every item in dataset order (query first), across ranks."""
        index = torch.cat(self._index)
        feats = _gather_in_order(torch.cat(self._feats), index)
        labels = _gather_in_order(torch.cat(self._labels), index)
        camids = _gather_in_order(torch.cat(self._camids), index)
        if self.feat_norm:
            feats = F.normalize(feats, dim=1)
        return feats, labels, camids

    def compute(self) -> dict:
        feats, labels, camids = self.gathered()
        q = self.num_query
        result = reid_metrics(
            feats[:q], feats[q:], labels[:q], labels[q:], camids[:q], camids[q:],
            max_rank=self.max_rank, metric=self.dist_metric, chunk_size=self.chunk_size,
        )
        out = {k: float(result[k]) for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}
        out["cmc"] = [float(v) for v in result["cmc"]]
        out["num_query"] = int(result["num_query"])
        out["num_valid_query"] = int(result["num_valid_query"])
        return out


def build_evaluator(cfg, model: nn.Module, precision: Precision, device: torch.device, num_query: int) -> Engine:
    """Extractor engine with the ReIDMetric attached as 'reid' (its keys also land in state.metrics)."""
    check_choice("TEST.FEAT_NORM", cfg.TEST.FEAT_NORM, ("yes", "no"))
    evaluator = build_extractor(model, precision, device, cfg.TEST.NECK_FEAT)
    ReIDMetric(
        num_query,
        feat_norm=cfg.TEST.FEAT_NORM == "yes",
        dist_metric=cfg.TEST.DIST_METRIC,
        max_rank=cfg.TEST.MAX_RANK,
        chunk_size=cfg.TEST.EVAL_CHUNK,
        device=device,
    ).attach(evaluator, "reid")
    return evaluator
