"""Evaluation as ignite parts: an Engine that extracts embeddings and a Metric that scores them.

With several processes each rank embeds its share of query + gallery; the metric gathers the shares,
restores the dataset order and ranks on every rank, so all ranks report the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn

from config.choices import DIST_METRICS, NECK_FEATS, YES_NO
from config.errors import check_choice
from data.device_augment import build_eval_preprocess
from engine.evaluation.protocol import EvalSpec, evaluate_embeddings
from engine.evaluation.reid_metrics import uses_compiled_kernel
from engine.run.precision import Precision


def build_extractor(
    model: nn.Module,
    precision: Precision,
    device: torch.device,
    neck_feat: str,
    flip: str = "no",
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Engine:
    """An Engine whose output per batch is the embedding (fp32) with labels, cameras and dataset indices.

    flip 'yes' (TEST.FLIP): the embedding, and the uncertainty offset of a model with NAMA's head, is the mean
    of those of the image and of its horizontal mirror; normalisation (TEST.FEAT_NORM) comes later, in the metric.
    `preprocess`: applied to the images on the device first (INPUT.AUGMENT_ON device: the loader sends uint8
    images, data/device_augment.py::build_eval_preprocess normalises them there).
    """
    check_choice("TEST.NECK_FEAT", neck_feat, NECK_FEATS)
    check_choice("TEST.FLIP", flip, YES_NO)
    key = "neck_feat" if neck_feat == "after" else "feat"

    def embed(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with precision.autocast():
            outputs = model(images)
        return outputs[key].float(), outputs["uc"].float() if "uc" in outputs else None

    @torch.no_grad()
    def step(engine: Engine, batch: dict) -> dict:
        model.eval()
        images = batch["image"].to(device, non_blocking=True)
        if preprocess is not None:
            images = preprocess(images)
        feats, uc = embed(images)
        if flip == "yes":
            # a second pass rather than one batch of twice the size: the same peak memory as without flip
            mirror_feats, mirror_uc = embed(torch.flip(images, dims=[3]))
            feats = (feats + mirror_feats) / 2
            uc = (uc + mirror_uc) / 2 if uc is not None else None
        return {
            "feats": feats,
            # non-blocking (from pinned memory): no batch waits on the host; the values are read once, after
            # the last batch, when the metric gathers them
            "labels": batch["label"].to(device, non_blocking=True),
            "camids": batch["camid"].to(device, non_blocking=True),
            "index": batch["index"].to(device, non_blocking=True),
            # what rank pictures and TEST.NORM_K need: the embedding's norm before any normalisation, and
            # the uncertainty head's offset u (0 without a head)
            "norms": feats.norm(dim=1),
            "uc": uc if uc is not None else feats.new_zeros(len(feats)),
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


class EmbeddingMetric(Metric):
    """Scores one dataset's test embeddings per its EvalSpec (re-ID: CMC/mAP/mINP; retrieval: Recall@K,
    MAP@R, R-precision, mARP, NMI). compute() returns a dict of numbers (and the CMC curve for re-ID)."""

    required_output_keys = ("feats", "labels", "camids", "index", "norms", "uc")

    def __init__(
        self, spec: EvalSpec, feat_norm: bool = True, device: torch.device | str = "cpu", keep_embeddings: bool = False
    ):
        check_choice("TEST.DIST_METRIC", spec.dist_metric, DIST_METRICS)
        self.spec = spec
        self.feat_norm = feat_norm
        # test.py's rank pictures and ranked lists read the scored embeddings afterwards; training does not,
        # and keeping them would hold a dataset's features in memory between evaluations
        self.keep_embeddings = keep_embeddings
        super().__init__(output_transform=lambda out: out, device=device, skip_unrolling=True)

    def reset(self) -> None:
        self._feats, self._labels, self._camids, self._index, self._norms, self._uc = [], [], [], [], [], []
        self.last: dict[str, torch.Tensor] = {}

    def update(self, output: tuple) -> None:
        feats, labels, camids, index, norms, uc = output
        self._feats.append(feats.detach())
        self._labels.append(labels)
        self._camids.append(camids)
        self._index.append(index)
        self._norms.append(norms.detach())
        self._uc.append(uc.detach())

    def gathered(self) -> dict[str, torch.Tensor]:
        """Embeddings (normalised if TEST.FEAT_NORM), labels, cameras, raw embedding norms and uncertainty
        offsets of every item in dataset order (query first), across ranks."""
        index = torch.cat(self._index)
        out = {
            name: _gather_in_order(torch.cat(parts), index)
            for name, parts in (
                ("feats", self._feats),
                ("labels", self._labels),
                ("camids", self._camids),
                ("norms", self._norms),
                ("uc", self._uc),
            )
        }
        if self.feat_norm:
            out["feats"] = F.normalize(out["feats"], dim=1)
        return out

    def compute(self) -> dict:
        last = self.gathered()
        # the per-batch pieces are not needed any more: do not hold them until the next evaluation
        self._feats, self._labels, self._camids, self._index, self._norms, self._uc = [], [], [], [], [], []
        if self.keep_embeddings:
            self.last = last
        return evaluate_embeddings(self.spec, last["feats"], last["labels"], last["camids"], uc=last["uc"])


def build_evaluator(
    cfg, model: nn.Module, precision: Precision, device: torch.device, spec: EvalSpec, keep_embeddings: bool = False
) -> tuple[Engine, EmbeddingMetric]:
    """Extractor engine with the EmbeddingMetric of `spec` attached as 'eval' (its keys also land in state.metrics)."""
    check_choice("TEST.FEAT_NORM", cfg.TEST.FEAT_NORM, YES_NO)
    evaluator = build_extractor(
        model, precision, device, cfg.TEST.NECK_FEAT, cfg.TEST.FLIP, preprocess=build_eval_preprocess(cfg)
    )
    metric = EmbeddingMetric(
        spec, feat_norm=cfg.TEST.FEAT_NORM == "yes", device=device, keep_embeddings=keep_embeddings
    )
    metric.attach(evaluator, "eval")
    return evaluator, metric


class DatasetEvaluation:
    """Evaluation of one dataset of the run: its spec, its loader and the ignite evaluator engine."""

    def __init__(
        self, cfg, model: nn.Module, precision: Precision, device: torch.device, eval_set, keep_embeddings: bool = False
    ):
        from engine.evaluation.protocol import build_eval_spec

        self.spec = build_eval_spec(cfg, eval_set.splits)
        self.splits = eval_set.splits
        self.loader = eval_set.loader
        self.device = torch.device(device)
        self.engine, self.metric = build_evaluator(cfg, model, precision, device, self.spec, keep_embeddings)

    def run(self) -> dict:
        """Embed and score; returns {'dataset', 'protocol', 'eval_seconds', **metrics}."""
        start = time.perf_counter()
        if self.spec.protocol == "reid" and any(
            uses_compiled_kernel(len(query), len(gallery), self.device, self.spec.chunk_size)
            for query, gallery in self.spec.trials
        ):
            from engine.evaluation.match_count_kernel import preload_kernel  # numba: imported when it is used

            preload_kernel()  # loads while the features are extracted
        self.engine.run(self.loader)
        metrics = self.engine.state.metrics["eval"]
        return {
            "dataset": self.spec.name,
            "protocol": self.spec.protocol,
            **metrics,
            "eval_seconds": round(time.perf_counter() - start, 3),
        }


def format_metrics(result: dict) -> str:
    """One line of the main numbers in percent (re-ID or retrieval)."""
    keys = [k for k in result if k.startswith("R@")] + ["MAP@R", "R-precision", "mARP", "NMI"]
    if result.get("protocol") == "reid":
        keys = ["mAP", "rank1", "rank5", "rank10", "mINP"]
    return "  ".join(f"{k}: {100 * result[k]:.2f}%" for k in keys if isinstance(result.get(k), float))
