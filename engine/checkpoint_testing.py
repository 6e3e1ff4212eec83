"""test.py's run: load TEST.WEIGHT into the model of the config, evaluate, print and save the numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ignite.distributed as idist
import torch

from config import UserError
from config.choices import RANKED_LIST_FORMATS
from config.errors import check_choice
from data.build import build_data
from engine.evaluation.dataset_evaluation import DatasetEvaluation, format_metrics
from engine.reporting.run_files import (
    TEST_CONFIG_FILE,
    TEST_LOG_FILE,
    TEST_METRICS_FILE,
    VISRANK_DIR,
    atomic_write_text,
    ranked_list_name,
)
from engine.run.device import resolve_device
from engine.run.output_dir import save_config, setup_logging
from engine.run.precision import resolve_precision
from modeling import build_model, load_weights

logger = logging.getLogger("test")


class RankingInputs:
    """What rank pictures and ranked lists of one evaluated dataset need (its first trial): paths, labels,
    cameras, raw embedding norms, and the ranking of the metrics of test_metrics.json.

    The gallery of every query is ordered by the very distance blocks the metrics ranked (same provider,
    metric, distance function and chunking): FeatureDistances' ranking form of TEST.DIST_METRIC, NAMA's
    TEST.NORM_K distance, or with TEST.RE_RANKING the KReciprocalReranker's re-ranked distances.  Without
    re-ranking the distance shown is the readable one (Euclidean distance, 1 - cos, NAMA's angle) of the shown
    items; with it, the re-ranked distance."""

    def __init__(self, evaluation: DatasetEvaluation):
        import numpy as np

        spec, last = evaluation.spec, evaluation.metric.last
        self.spec = spec
        q_index, g_index = (np.asarray(ix) for ix in spec.trials[0])
        device = last["feats"].device
        self._query = last["feats"][torch.as_tensor(q_index, device=device)]
        self._gallery = last["feats"][torch.as_tensor(g_index, device=device)]
        uc = last.get("uc")
        self._gallery_uc = None if uc is None else uc[torch.as_tensor(g_index, device=uc.device)]
        records = evaluation.splits.eval_records()
        self.query_paths = [records[i].path for i in q_index]
        self.gallery_paths = [records[i].path for i in g_index]
        labels, camids, norms = (last[k].cpu().numpy() for k in ("labels", "camids", "norms"))
        self.query_labels, self.gallery_labels = labels[q_index], labels[g_index]
        self.query_camids, self.gallery_camids = camids[q_index], camids[g_index]
        self.query_norms, self.gallery_norms = norms[q_index], norms[g_index]

    def _chunk_size(self) -> int:
        """The query chunk of the metrics (TEST.EVAL_CHUNK, else the metric function's default): the same
        blocks, to the last bit, as the metrics ranked."""
        from engine.evaluation import reid_metrics, retrieval_metrics

        if self.spec.chunk_size > 0:
            return self.spec.chunk_size
        # reid_metrics' and rerank_and_evaluate's default, or retrieval_metrics'
        module = reid_metrics if self.spec.protocol == "reid" else retrieval_metrics
        return module.DEFAULT_CHUNK_SIZE

    def order_source(self):
        """(ranking blocks, display pair function or None) as engine.evaluation.protocol's metrics rank the
        first trial: the re-ranker's block function with TEST.RE_RANKING (its distances shown as they are),
        else FeatureDistances of the spec's metric / NAMA distance with display_distance for showing."""
        from engine.evaluation.protocol import display_distance, uncertainty_distance
        from engine.evaluation.ranking import FeatureDistances

        spec = self.spec
        if spec.re_ranking is not None:
            from engine.evaluation.reranking import KReciprocalReranker

            k1, k2, lam = spec.re_ranking
            reranker = KReciprocalReranker(self._query, self._gallery, k1, k2, lam, self._chunk_size())
            return reranker.distance_block, None
        distance_fn = None
        if spec.norm_k != 0:
            distance_fn = uncertainty_distance(self._gallery_uc, spec.norm_k)
        blocks = FeatureDistances(self._query, self._gallery, spec.dist_metric, distance_fn)
        pair_fn = display_distance(spec, self._gallery_uc)
        feats_device = self._query.device

        def display(query_index: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
            qi, gi = query_index.to(feats_device), gallery_index.to(feats_device)
            return pair_fn(self._query[qi].float(), self._gallery[gi].float(), gi)

        return blocks, display

    def ranked(self, top_k: int):
        """engine.reporting.rank_pictures.ranked_lists of every query (the top_k - 1 best valid items + last match)."""
        from engine.reporting.rank_pictures import ranked_lists

        blocks, display = self.order_source()
        return ranked_lists(
            blocks,
            len(self.query_paths),
            self.query_labels,
            self.query_camids,
            self.gallery_labels,
            self.gallery_camids,
            top_k=top_k,
            reid=self.spec.protocol == "reid",
            chunk=self._chunk_size(),
            query_is_gallery=self.spec.query_is_gallery,
            display=display,
        )


def write_visrank(cfg, inputs: RankingInputs, output_dir: Path) -> list[Path]:
    """TEST.VISRANK's rank pictures under OUTPUT_DIR/visrank/<dataset>/."""
    from engine.reporting.rank_pictures import write_rank_pictures

    return write_rank_pictures(
        output_dir,
        inputs.spec.name,
        inputs.query_paths,
        inputs.gallery_paths,
        inputs.ranked(cfg.TEST.VISRANK),
        inputs.query_labels,
        inputs.gallery_labels,
        inputs.query_norms,
        inputs.gallery_norms,
        size=tuple(cfg.INPUT.SIZE_TEST),
    )


def write_ranked_list(cfg, inputs: RankingInputs, output_dir: Path) -> Path:
    """TEST.RANKED_LIST's top-k of every query as OUTPUT_DIR/ranked_list_<dataset>.<csv|json>."""
    from engine.reporting.ranked_lists import write_ranked_lists

    fmt = cfg.TEST.RANKED_LIST_FORMAT
    path = output_dir / ranked_list_name(inputs.spec.name, fmt)
    return write_ranked_lists(
        path,
        fmt,
        inputs.ranked(cfg.TEST.RANKED_LIST + 1),
        inputs.query_paths,
        inputs.gallery_paths,
        inputs.query_labels,
        inputs.gallery_labels,
        inputs.query_camids,
        inputs.gallery_camids,
    )


def run_test(cfg) -> dict:
    """Evaluate TEST.WEIGHT on the test splits of TEST.DATASETS (empty: DATASETS.NAMES), in that order; writes
    OUTPUT_DIR/test_metrics.json. Datasets that only train are not loaded.

    With TEST.WEIGHT empty the model is evaluated as MODEL.PRETRAIN_CHOICE builds it (random, ImageNet or
    MODEL.PRETRAIN_PATH), which is how the untrained baseline of a recipe is measured.
    """
    output_dir = Path(cfg.OUTPUT_DIR)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create OUTPUT_DIR {output_dir}: {err}") from None
    setup_logging(output_dir, TEST_LOG_FILE)
    save_config(cfg, output_dir, TEST_CONFIG_FILE)
    device = resolve_device(cfg.MODEL.DEVICE)
    precision = resolve_precision(cfg.SOLVER.AMP, device)
    if cfg.TEST.WEIGHT:
        model = build_model(cfg, load_pretrained=False)
        load_weights(cfg, model, cfg.TEST.WEIGHT, "TEST.WEIGHT")
    else:
        # No checkpoint: evaluate the model as MODEL.PRETRAIN_CHOICE builds it (the untrained baseline).
        logger.warning(
            "TEST.WEIGHT is empty: evaluating the model as MODEL.PRETRAIN_CHOICE %r builds it",
            cfg.MODEL.PRETRAIN_CHOICE,
        )
        model = build_model(cfg)
    model.to(device)
    data = build_data(cfg, with_train=False)
    weight = str(cfg.TEST.WEIGHT) or f"untrained ({cfg.MODEL.PRETRAIN_CHOICE})"
    if cfg.TEST.VISRANK < 0:
        raise UserError(f"TEST.VISRANK = {cfg.TEST.VISRANK}; expected 0 (no pictures) or the number of gallery tiles")
    if cfg.TEST.RANKED_LIST < 0:
        raise UserError(
            f"TEST.RANKED_LIST = {cfg.TEST.RANKED_LIST}; expected 0 (none) or the number of items per query"
        )
    check_choice("TEST.RANKED_LIST_FORMAT", cfg.TEST.RANKED_LIST_FORMAT, RANKED_LIST_FORMATS)
    results = []
    for eval_set in data.eval_sets:
        evaluation = DatasetEvaluation(
            cfg, model, precision, device, eval_set, keep_embeddings=cfg.TEST.VISRANK > 0 or cfg.TEST.RANKED_LIST > 0
        )
        result = {"weight": weight, **evaluation.run()}
        logger.info(
            "Test on %s with %s (%.1f s): %s", result["dataset"], weight, result["eval_seconds"], format_metrics(result)
        )
        if "cmc" in result:
            cmc = result["cmc"]
            logger.info(
                "CMC curve: %s",
                "  ".join(f"R{k}: {100 * cmc[k - 1]:.1f}%" for k in (1, 5, 10, 20, 50) if k <= len(cmc)),
            )
        if (cfg.TEST.VISRANK > 0 or cfg.TEST.RANKED_LIST > 0) and idist.get_rank() == 0:
            inputs = RankingInputs(evaluation)
            if cfg.TEST.RANKED_LIST > 0:
                logger.info(
                    "Ranked lists (top %d per query) in %s",
                    cfg.TEST.RANKED_LIST,
                    write_ranked_list(cfg, inputs, output_dir),
                )
            if cfg.TEST.VISRANK > 0:
                pictures = write_visrank(cfg, inputs, output_dir)
                logger.info(
                    "Rank pictures of %d queries (%d gallery tiles each) in %s",
                    len(pictures),
                    cfg.TEST.VISRANK,
                    output_dir / VISRANK_DIR / result["dataset"],
                )
        results.append(result)
    content = results[0] if len(results) == 1 else {"weight": weight, "datasets": results}
    atomic_write_text(output_dir / TEST_METRICS_FILE, json.dumps(content, indent=2))
    return results[0] if len(results) == 1 else content
