"""test.py's run: load TEST.WEIGHT into the model of the config, evaluate, print and save the numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ignite.distributed as idist
import torch

from config import UserError
from data.build import build_data
from engine.device import resolve_device
from engine.evaluator import DatasetEvaluation, format_metrics
from engine.precision import resolve_precision
from engine.run_dir import atomic_write_text, save_config, setup_logging
from modeling import build_model, load_weights

logger = logging.getLogger("test")


def write_visrank(cfg, evaluation: DatasetEvaluation, output_dir: Path) -> list[Path]:
    """TEST.VISRANK's rank pictures of the evaluation just run (its first trial), ranked by the same distance
    as the metrics (TEST.DIST_METRIC, or NAMA's TEST.NORM_K distance)."""
    import numpy as np

    from engine.evaluation import display_distance
    from engine.rank_pictures import ranked_lists, write_rank_pictures

    spec, last = evaluation.spec, evaluation.metric.last
    q_index, g_index = (torch.as_tensor(np.asarray(ix), device=last["feats"].device) for ix in spec.trials[0])
    feats, labels, camids = last["feats"], last["labels"].cpu(), last["camids"].cpu()
    query_feats, gallery_feats = feats[q_index], feats[g_index]
    distance = display_distance(spec, last["uc"][g_index])
    records = evaluation.splits.eval_records()
    ranked = ranked_lists(lambda start, stop: distance(query_feats[start:stop], gallery_feats), len(q_index),
                          labels[q_index.cpu()], camids[q_index.cpu()], labels[g_index.cpu()], camids[g_index.cpu()],
                          top_k=cfg.TEST.VISRANK, reid=spec.protocol == "reid",
                          query_is_gallery=spec.query_is_gallery)
    norms = last["norms"].cpu()
    return write_rank_pictures(output_dir, spec.name, [records[i].path for i in q_index.tolist()],
                               [records[i].path for i in g_index.tolist()], ranked, labels[q_index.cpu()],
                               labels[g_index.cpu()], norms[q_index.cpu()], norms[g_index.cpu()],
                               size=tuple(cfg.INPUT.SIZE_TEST))


def run_test(cfg) -> dict:
    """Evaluate TEST.WEIGHT on the test split of DATASETS.NAMES; writes OUTPUT_DIR/test_metrics.json.

    With TEST.WEIGHT empty the model is evaluated as MODEL.PRETRAIN_CHOICE builds it (random, ImageNet or
    MODEL.PRETRAIN_PATH), which is how the untrained baseline of a recipe is measured.
    """
    output_dir = Path(cfg.OUTPUT_DIR)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create OUTPUT_DIR {output_dir}: {err}") from None
    setup_logging(output_dir, "test_log.txt")
    save_config(cfg, output_dir, "test_config.yaml")
    device = resolve_device(cfg.MODEL.DEVICE)
    precision = resolve_precision(cfg.SOLVER.AMP, device)
    if cfg.TEST.WEIGHT:
        model = build_model(cfg, load_pretrained=False)
        load_weights(cfg, model, cfg.TEST.WEIGHT, "TEST.WEIGHT")
    else:
        # No checkpoint: evaluate the model as MODEL.PRETRAIN_CHOICE builds it (the untrained baseline).
        logger.warning("TEST.WEIGHT is empty: evaluating the model as MODEL.PRETRAIN_CHOICE %r builds it",
                       cfg.MODEL.PRETRAIN_CHOICE)
        model = build_model(cfg)
    model.to(device)
    data = build_data(cfg, with_train=False)
    weight = str(cfg.TEST.WEIGHT) or f"untrained ({cfg.MODEL.PRETRAIN_CHOICE})"
    if cfg.TEST.VISRANK < 0:
        raise UserError(f"TEST.VISRANK = {cfg.TEST.VISRANK}; expected 0 (no pictures) or the number of gallery tiles")
    results = []
    for eval_set in data.eval_sets:
        evaluation = DatasetEvaluation(cfg, model, precision, device, eval_set)
        result = {"weight": weight, **evaluation.run()}
        logger.info("Test on %s with %s (%.1f s): %s", result["dataset"], weight, result["eval_seconds"],
                    format_metrics(result))
        if "cmc" in result:
            cmc = result["cmc"]
            logger.info("CMC curve: %s", "  ".join(f"R{k}: {100 * cmc[k - 1]:.1f}%" for k in (1, 5, 10, 20, 50) if k <= len(cmc)))
        if cfg.TEST.VISRANK > 0 and idist.get_rank() == 0:
            pictures = write_visrank(cfg, evaluation, output_dir)
            logger.info("Rank pictures of %d queries (%d gallery tiles each) in %s", len(pictures), cfg.TEST.VISRANK,
                        output_dir / "visrank" / result["dataset"])
        results.append(result)
    content = results[0] if len(results) == 1 else {"weight": weight, "datasets": results}
    atomic_write_text(output_dir / "test_metrics.json", json.dumps(content, indent=2))
    return results[0] if len(results) == 1 else content
