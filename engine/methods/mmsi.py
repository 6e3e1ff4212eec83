"""MMSI: meta-mining with semi-global information (seed 001; Jiang et al., IEEE TNNLS 2024), as a training method.

Per iteration (../specs: meta_methods.md, steps 1-8):
1. forward the batch; push its detached features into the per-class FIFO memory (METHOD.MMSI.DSIZE per
   class); until MIN_CLASSES classes are in it, no step is taken (counted: skipped_warmup);
2. mine the pairs once (contrastive: every positive and the negatives above the margin; ms: the MS miner);
3.-6. the raw weight gradient G = d L_val(theta - lr grad L_tr(theta, w)) / d w at w = 0, L_val the plain loss
   of a validation batch (VAL_BATCH images, VAL_K per class, drawn from the training split with the training
   augmentation) against the whole memory (engine/methods/meta_step.py, GRAD_MODE double_backward | jvp);
   L_val = 0: no step (skipped_zero_val);
7. w = relu(-G) / max; all zero: no step (skipped_zero_weight);
8. the weighted loss (WCon or WMS, WEIGHT_PLACEMENT) on the same mined pairs with w constant: backward, step.
The meta step runs in fp32; the batch's forward and the real step follow SOLVER.AMP. The logged 'loss' and its
parts are the plain criterion's on the batch (comparable with a run of the plain loss); the epoch statistics
count the steps taken and skipped and the mean weights of the kept positive and negative pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from config.choices import META_GRAD_MODES, PAIR_WEIGHT_PLACEMENTS
from config.errors import ConfigError, check_choice
from engine.handlers.epoch_clock import batches_done_in_epoch
from engine.methods.base import Run, TrainingMethod
from engine.methods.feature_memory import FeatureMemory
from engine.methods.meta_step import pair_weights, raw_weight_gradient, virtual_step_rates
from engine.methods.standard import forward_with_logged_loss, take_step
from engine.methods.validation_batches import ValidationStream, build_validation_loader
from layers.weighted_pair_losses import (
    PAIR_LOSS_KINDS,
    contrastive_on_pairs,
    label_masks,
    mined_pairs,
    ms_on_pairs,
    normalized_similarities,
    weighted_contrastive,
    weighted_ms,
)

STAT_NAMES = (
    "mmsi_steps",
    "mmsi_skipped_warmup",
    "mmsi_skipped_zero_val",
    "mmsi_skipped_zero_weight",
    "mmsi_pos_weight",
    "mmsi_neg_weight",
)


class PairLoss:
    """The plain and weighted forms of the run's metric loss (MODEL.METRIC_LOSS_TYPE contrastive or ms) on
    similarities and masks, with the config's margins and scales."""

    def __init__(self, cfg):
        kind = cfg.MODEL.METRIC_LOSS_TYPE
        if kind not in PAIR_LOSS_KINDS or cfg.MODEL.CLS_LOSS_TYPE != "none":
            raise ConfigError(
                f"SOLVER.METHOD {cfg.SOLVER.METHOD} weights the pairs of one pair loss: MODEL.METRIC_LOSS_TYPE "
                f"must be one of {', '.join(PAIR_LOSS_KINDS)} and MODEL.CLS_LOSS_TYPE 'none' (got "
                f"{kind!r} and {cfg.MODEL.CLS_LOSS_TYPE!r})"
            )
        if kind == "contrastive" and cfg.LOSS.CONTRASTIVE.REDUCTION != "sum":
            raise ConfigError(
                "SOLVER.METHOD mmsi uses MMSI's contrastive loss: LOSS.CONTRASTIVE.REDUCTION must be 'sum'"
            )
        placement = cfg.METHOD.MMSI.WEIGHT_PLACEMENT
        check_choice("METHOD.MMSI.WEIGHT_PLACEMENT", placement, PAIR_WEIGHT_PLACEMENTS)
        self.kind, self.placement = kind, placement
        ms = cfg.LOSS.MS
        self.margin = cfg.LOSS.CONTRASTIVE.MARGIN if kind == "contrastive" else ms.MINING_MARGIN
        self.ms_args = (ms.POS_SCALE, ms.NEG_SCALE, ms.THRESH, ms.COEF)

    def mine(self, sim, pos_mask, neg_mask):
        return mined_pairs(self.kind, sim, pos_mask, neg_mask, self.margin)

    def plain(self, sim, pos_keep, neg_keep) -> torch.Tensor:
        if self.kind == "contrastive":
            return contrastive_on_pairs(sim, pos_keep, neg_keep)
        return ms_on_pairs(sim, pos_keep, neg_keep, *self.ms_args)

    def weighted(self, sim, pos_keep, neg_keep, weights) -> torch.Tensor:
        if self.kind == "contrastive":
            return weighted_contrastive(sim, pos_keep, neg_keep, weights)
        return weighted_ms(sim, pos_keep, neg_keep, weights, *self.ms_args, self.placement)

    def semi_global(self, val_feats, val_labels, memory: FeatureMemory) -> torch.Tensor:
        """The plain loss of the validation features against every feature of the memory."""
        keys, key_labels, filled = memory.keys()
        sim = normalized_similarities(val_feats, keys.to(val_feats.dtype))
        pos_mask, neg_mask = label_masks(val_labels, key_labels, filled)
        return self.plain(sim, *self.mine(sim, pos_mask, neg_mask))


class MMSIMethod(TrainingMethod):
    """SOLVER.METHOD mmsi (see the module docstring); its keys are METHOD.MMSI.*. One process only."""

    name = "mmsi"
    supports_device_augment = True
    stat_names = STAT_NAMES

    def __init__(self, run: Run):
        super().__init__(run)
        cfg = run.cfg
        keys = cfg.METHOD.MMSI
        if idist.get_world_size() > 1:
            raise ConfigError(
                "SOLVER.METHOD mmsi runs in one process: its memory and meta step are not distributed; start it "
                "without torchrun"
            )
        check_choice("METHOD.MMSI.GRAD_MODE", keys.GRAD_MODE, META_GRAD_MODES)
        for key in ("DSIZE", "MIN_CLASSES", "VAL_BATCH", "VAL_K"):
            if getattr(keys, key) < 1:
                raise ConfigError(f"METHOD.MMSI.{key} = {getattr(keys, key)}; expected a positive number")
        self.loss = PairLoss(cfg)
        self.grad_mode = keys.GRAD_MODE
        classes = run.data.num_classes
        self.min_classes = min(keys.MIN_CLASSES, classes)
        self.memory = FeatureMemory(classes, keys.DSIZE, run.model.feat_dim, run.device)
        self.validation = ValidationStream(build_validation_loader(run, "METHOD.MMSI", keys.VAL_BATCH, keys.VAL_K))
        self.warm = False  # the memory holds MIN_CLASSES classes (it never loses one: checked until it does)
        self.counts = dict.fromkeys(STAT_NAMES[:4], 0)
        self.weight_sums = {"pos": 0.0, "neg": 0.0}

    def _count(self, name: str) -> None:
        self.counts[name] += 1

    def process_function(self) -> Callable[[Engine, dict], dict]:
        run = self.run

        def step(engine: Engine, batch: dict) -> dict:
            batch = run.to_device(batch)
            labels = batch["label"]
            outputs, output = forward_with_logged_loss(run, batch)
            feats = outputs["feat"].float()
            self.memory.push(feats, labels)
            self.warm = self.warm or self.memory.classes_seen() >= self.min_classes
            if not self.warm:
                self._count("mmsi_skipped_warmup")
                return output
            # how many were drawn is checkpointed
            val_images, val_labels = self.validation.next(run.device, run.augment)
            sim = normalized_similarities(feats)
            pos_keep, neg_keep = self.loss.mine(sim, *label_masks(labels))
            result = raw_weight_gradient(
                run.model,
                batch["image"],
                lambda s, w: self.loss.weighted(s, pos_keep, neg_keep, w),
                val_images,
                lambda val_feats: self.loss.semi_global(val_feats, val_labels, self.memory),
                virtual_step_rates(run.solver.main, run.model),
                self.grad_mode,
                # fp32 meta step: under AMP the batch's features are recomputed outside autocast
                feats=feats if self.grad_mode == "double_backward" and not run.precision.enabled else None,
            )
            if not bool(result.validation_loss > 0):
                self._count("mmsi_skipped_zero_val")
                return output
            weights = pair_weights(result.weight_gradient, pos_keep | neg_keep)
            if not bool(weights.max() > 0):
                self._count("mmsi_skipped_zero_weight")
                return output
            take_step(run, self.loss.weighted(sim, pos_keep, neg_keep, weights))
            self._count("mmsi_steps")
            zero = weights.new_zeros(())
            self.weight_sums["pos"] += float(torch.where(pos_keep, weights, zero).sum() / pos_keep.sum().clamp_min(1))
            self.weight_sums["neg"] += float(torch.where(neg_keep, weights, zero).sum() / neg_keep.sum().clamp_min(1))
            return output

        return step

    def _epoch_started(self, engine: Engine) -> None:
        if batches_done_in_epoch(engine) == 0:  # an epoch resumed after its k-th batch keeps its statistics
            self.counts = dict.fromkeys(self.counts, 0)
            self.weight_sums = {"pos": 0.0, "neg": 0.0}
        self.validation.start_epoch(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        steps = max(1, self.counts["mmsi_steps"])
        engine.state.metrics.update(self.counts)
        engine.state.metrics["mmsi_pos_weight"] = self.weight_sums["pos"] / steps
        engine.state.metrics["mmsi_neg_weight"] = self.weight_sums["neg"] / steps

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def checkpoint_state(self) -> dict:
        return {"mmsi": self}

    def state_dict(self) -> dict:
        return {
            "memory": self.memory.state_dict(),
            "counts": dict(self.counts),
            "weight_sums": dict(self.weight_sums),
            "validation_drawn": self.validation.drawn,
        }

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self.weight_sums = {k: float(v) for k, v in state["weight_sums"].items()}
        self.validation.drawn = int(state["validation_drawn"])
