"""test.py's run: load TEST.WEIGHT into the model of the config, evaluate, print and save the numbers."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from config import UserError
from data.build import build_data
from engine.device import resolve_device
from engine.evaluator import build_evaluator
from engine.precision import resolve_precision
from engine.run_dir import atomic_write_text, save_config, setup_logging
from engine.training import format_metrics
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
    evaluator = build_evaluator(cfg, model, precision, device, data.num_query)
    start = time.perf_counter()
    evaluator.run(data.eval_loader)
    metrics = evaluator.state.metrics["reid"]
    seconds = time.perf_counter() - start
    weight = str(cfg.TEST.WEIGHT) or f"untrained ({cfg.MODEL.PRETRAIN_CHOICE})"
    logger.info("Test on %s with %s (%.1f s): %s", data.splits.name, weight, seconds, format_metrics(metrics))
    cmc = metrics["cmc"]
    logger.info("CMC curve: %s", "  ".join(f"R{k}: {100 * cmc[k - 1]:.1f}%" for k in (1, 5, 10, 20, 50) if k <= len(cmc)))
    record = {"weight": weight, "dataset": data.splits.name, **metrics, "eval_seconds": round(seconds, 3)}
    atomic_write_text(output_dir / "test_metrics.json", json.dumps(record, indent=2))
    return record
