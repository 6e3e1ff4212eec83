"""test.py's run: load TEST.WEIGHT into the model of the config, evaluate, print and save the numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from config import UserError
from data.build import build_data
from engine.device import resolve_device
from engine.evaluator import DatasetEvaluation, format_metrics
from engine.precision import resolve_precision
from engine.run_dir import atomic_write_text, save_config, setup_logging
from modeling import build_model
from modeling.weights import load_model_checkpoint

logger = logging.getLogger("test")


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
        load_model_checkpoint(model, cfg.TEST.WEIGHT, "TEST.WEIGHT")
    else:
        # No checkpoint: evaluate the model as MODEL.PRETRAIN_CHOICE builds it (the untrained baseline).
        logger.warning("TEST.WEIGHT is empty: evaluating the model as MODEL.PRETRAIN_CHOICE %r builds it",
                       cfg.MODEL.PRETRAIN_CHOICE)
        model = build_model(cfg)
    model.to(device)
    data = build_data(cfg, with_train=False)
    weight = str(cfg.TEST.WEIGHT) or f"untrained ({cfg.MODEL.PRETRAIN_CHOICE})"
    results = []
    for eval_set in data.eval_sets:
        result = {"weight": weight, **DatasetEvaluation(cfg, model, precision, device, eval_set).run()}
        logger.info("Test on %s with %s (%.1f s): %s", result["dataset"], weight, result["eval_seconds"],
                    format_metrics(result))
        if "cmc" in result:
            cmc = result["cmc"]
            logger.info("CMC curve: %s", "  ".join(f"R{k}: {100 * cmc[k - 1]:.1f}%" for k in (1, 5, 10, 20, 50) if k <= len(cmc)))
        results.append(result)
    content = results[0] if len(results) == 1 else {"weight": weight, "datasets": results}
    atomic_write_text(output_dir / "test_metrics.json", json.dumps(content, indent=2))
    return results[0] if len(results) == 1 else content
