"""DDTAS (seed 000; Jiang, Yao, Liu, Shen, Nie, Hua: "Dual Dynamic Threshold Adjustment Strategy", ACM TOMM
2024): AT-ASMS mining with the soft contrastive loss, and its online threshold generator (OTG), as a training
method. The OTG was never released; METHOD.DDTAS.OTG_MODE chooses how it is built (../specs: meta_methods.md):

- none (the seed's OTG 0): the soft contrastive loss on the AT-ASMS pairs, a standard step;
- threshold: per-anchor threshold offsets delta (0 at each iteration) enter the loss as lambda_i = lambda +
  delta_i; with the virtual step theta' = theta - lr grad_theta L_tr(theta, lambda + delta) and L_val the plain
  loss of a validation batch against itself at theta', g = d L_val(theta') / d delta (at delta = 0, through the
  second-order graph), and the real step trains with lambda_i = clip(lambda - eta g_i, [THRESHOLD_MIN,
  THRESHOLD_MAX]) (eta = THRESHOLD_STEP); the thresholds' mean, min and max are logged per epoch;
- pair_weight: the released code's MMSI-style weights on the batch's kept pairs (engine/methods/meta_step.py;
  the validation batch against itself, no memory): w = relu(-G) / max, the real step's pair terms scaled by w;
  a zero validation loss or all-zero weights take no step (counted).
The validation batch (VAL_BATCH images, VAL_K per class) comes from the training split with the training
augmentation, seeded from (SEED, epoch); every counter and the stream's position are checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch.func import functional_call

from config.choices import META_GRAD_MODES, THRESHOLD_GENERATOR_MODES
from config.errors import ConfigError, check_choice
from engine.handlers.epoch_clock import batches_done_in_epoch
from engine.methods.base import Run, TrainingMethod
from engine.methods.meta_step import (
    buffer_copies,
    pair_weights,
    raw_weight_gradient,
    trainable_parameters,
    virtual_step_rates,
)
from engine.methods.standard import forward_with_logged_loss, standard_step, take_step
from engine.methods.validation_batches import ValidationStream, build_validation_loader
from layers.loss_inputs import compute_dtype
from layers.soft_contrastive import SoftContrastiveLoss, soft_contrastive_on_pairs
from layers.weighted_pair_losses import label_masks, normalized_similarities

STAT_NAMES = (
    "ddtas_steps",
    "ddtas_skipped",
    "ddtas_threshold_mean",
    "ddtas_threshold_min",
    "ddtas_threshold_max",
)


def threshold_gradient(
    model: torch.nn.Module,
    images: torch.Tensor,
    kept: tuple[torch.Tensor, torch.Tensor],
    loss: SoftContrastiveLoss,
    val_images: torch.Tensor,
    val_loss: Callable[[torch.Tensor], torch.Tensor],
    lrs: dict[str, float],
    feats: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, L_val): g = d L_val(theta - lr grad_theta L_tr(theta, lambda + delta)) / d delta at delta = 0 (n x 1), L_tr
    the soft contrastive loss on the batch's kept pairs with per-anchor thresholds. fp32 (float64 in tests);
    BatchNorm statistics untouched (the forwards run on copies of the buffers). `feats`: the batch's features
    already computed by `model` in fp32 with their graph (computed here when None)."""
    params = trainable_parameters(model)
    with torch.autocast(images.device.type, enabled=False):
        if feats is None:
            feats = compute_dtype(functional_call(model, {**params, **buffer_copies(model)}, (images,))["feat"])
        delta = feats.new_zeros(len(images), 1, requires_grad=True)
        train_loss = soft_contrastive_on_pairs(
            normalized_similarities(feats), *kept, loss.pos_scale, loss.neg_scale, loss.thresh + delta
        )
        grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True, allow_unused=True)
        virtual = {name: p if g is None else p - lrs[name] * g for (name, p), g in zip(params.items(), grads)}
        val_feats = compute_dtype(functional_call(model, {**virtual, **buffer_copies(model)}, (val_images,))["feat"])
        validation = val_loss(val_feats)
    if not validation.requires_grad:
        return torch.zeros_like(delta).detach(), validation.detach()
    (gradient,) = torch.autograd.grad(validation, delta, allow_unused=True)
    return (torch.zeros_like(delta) if gradient is None else gradient).detach(), validation.detach()


class DDTASMethod(TrainingMethod):
    """SOLVER.METHOD ddtas (see the module docstring); its keys are METHOD.DDTAS.*."""

    name = "ddtas"
    supports_device_augment = True
    stat_names = STAT_NAMES

    def __init__(self, run: Run):
        super().__init__(run)
        cfg = run.cfg
        keys = cfg.METHOD.DDTAS
        check_choice("METHOD.DDTAS.OTG_MODE", keys.OTG_MODE, THRESHOLD_GENERATOR_MODES)
        check_choice("METHOD.DDTAS.GRAD_MODE", keys.GRAD_MODE, META_GRAD_MODES)
        if cfg.MODEL.METRIC_LOSS_TYPE != "soft_contrastive" or cfg.MODEL.CLS_LOSS_TYPE != "none":
            raise ConfigError(
                "SOLVER.METHOD ddtas trains the soft contrastive loss: MODEL.METRIC_LOSS_TYPE must be "
                f"'soft_contrastive' and MODEL.CLS_LOSS_TYPE 'none' (got {cfg.MODEL.METRIC_LOSS_TYPE!r} and "
                f"{cfg.MODEL.CLS_LOSS_TYPE!r})"
            )
        self.mode = keys.OTG_MODE
        self.loss = next(t for t in run.criterion.terms() if isinstance(t, SoftContrastiveLoss))
        self.validation = None
        if self.mode != "none":
            if idist.get_world_size() > 1:
                raise ConfigError(
                    f"METHOD.DDTAS.OTG_MODE {self.mode} runs in one process (its meta step is not distributed); "
                    "start it without torchrun, or use OTG_MODE none"
                )
            if not keys.THRESHOLD_MIN <= self.loss.thresh <= keys.THRESHOLD_MAX:
                raise ConfigError(
                    f"METHOD.DDTAS.THRESHOLD_MIN/MAX = [{keys.THRESHOLD_MIN}, {keys.THRESHOLD_MAX}] must hold the "
                    f"loss's threshold LOSS.SOFT_CONTRASTIVE.THRESH = {self.loss.thresh}"
                )
            self.validation = ValidationStream(build_validation_loader(run, "METHOD.DDTAS", keys.VAL_BATCH, keys.VAL_K))
        self.step_size, self.bounds = keys.THRESHOLD_STEP, (keys.THRESHOLD_MIN, keys.THRESHOLD_MAX)
        self.grad_mode = keys.GRAD_MODE
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.counts = {"ddtas_steps": 0, "ddtas_skipped": 0}
        self.thresholds = {"sum": 0.0, "count": 0, "min": float("inf"), "max": float("-inf")}

    def _validation_loss(self, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The plain loss of the validation batch against itself, on its own AT-ASMS pairs."""

        def loss(feats: torch.Tensor) -> torch.Tensor:
            sim = normalized_similarities(feats)
            pos_keep, neg_keep, _ = self.loss.mine(sim, *label_masks(labels))
            return soft_contrastive_on_pairs(
                sim, pos_keep, neg_keep, self.loss.pos_scale, self.loss.neg_scale, self.loss.thresh
            )

        return loss

    def process_function(self) -> Callable[[Engine, dict], dict]:
        run = self.run

        def standard(engine: Engine, batch: dict) -> dict:
            self.counts["ddtas_steps"] += 1
            return standard_step(run, batch)

        def meta(engine: Engine, batch: dict) -> dict:
            batch = run.to_device(batch)
            outputs, output = forward_with_logged_loss(run, batch)
            feats = outputs["feat"].float()
            sim = normalized_similarities(feats)
            pos_keep, neg_keep, _ = self.loss.mine(sim, *label_masks(batch["label"]))
            val_images, val_labels = self.validation.next(run.device, run.augment)
            val_loss = self._validation_loss(val_labels)
            rates = virtual_step_rates(run.solver.main, run.model)
            thresholds, weights = self.loss.thresh, None
            if self.mode == "threshold":
                gradient, _ = threshold_gradient(
                    run.model,
                    batch["image"],
                    (pos_keep, neg_keep),
                    self.loss,
                    val_images,
                    val_loss,
                    rates,
                    # fp32 meta step: under AMP the batch's features are recomputed outside autocast
                    feats=None if run.precision.enabled else feats,
                )
                thresholds = (self.loss.thresh - self.step_size * gradient).clamp(*self.bounds)
                self._record_thresholds(thresholds)
            else:
                result = raw_weight_gradient(
                    run.model,
                    batch["image"],
                    lambda s, w: soft_contrastive_on_pairs(
                        s, pos_keep, neg_keep, self.loss.pos_scale, self.loss.neg_scale, self.loss.thresh, w
                    ),
                    val_images,
                    val_loss,
                    rates,
                    self.grad_mode,
                    feats=feats if self.grad_mode == "double_backward" and not run.precision.enabled else None,
                )
                weights = pair_weights(result.weight_gradient, pos_keep | neg_keep)
                if not bool(result.validation_loss > 0) or not bool(weights.max() > 0):
                    self.counts["ddtas_skipped"] += 1
                    return output
            take_step(
                run,
                soft_contrastive_on_pairs(
                    sim, pos_keep, neg_keep, self.loss.pos_scale, self.loss.neg_scale, thresholds, weights
                ),
            )
            self.counts["ddtas_steps"] += 1
            return output

        return standard if self.mode == "none" else meta

    def _record_thresholds(self, thresholds: torch.Tensor) -> None:
        values = thresholds.detach()
        self.thresholds["sum"] += float(values.sum())
        self.thresholds["count"] += values.numel()
        self.thresholds["min"] = min(self.thresholds["min"], float(values.min()))
        self.thresholds["max"] = max(self.thresholds["max"], float(values.max()))

    def _epoch_started(self, engine: Engine) -> None:
        if batches_done_in_epoch(engine) == 0:  # an epoch resumed after its k-th batch keeps its statistics
            self._reset_epoch()
        if self.validation is not None:
            self.validation.start_epoch(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        engine.state.metrics.update(self.counts)
        if self.mode == "threshold" and self.thresholds["count"]:
            t = self.thresholds
            engine.state.metrics.update(
                ddtas_threshold_mean=t["sum"] / t["count"], ddtas_threshold_min=t["min"], ddtas_threshold_max=t["max"]
            )
        else:  # thresholds are the loss's own
            engine.state.metrics.update(dict.fromkeys(STAT_NAMES[2:], self.loss.thresh))

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def checkpoint_state(self) -> dict:
        return {"ddtas": self}

    def state_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "thresholds": dict(self.thresholds),
            "validation_drawn": self.validation.drawn if self.validation is not None else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self.thresholds = {k: (int(v) if k == "count" else float(v)) for k, v in state["thresholds"].items()}
        if self.validation is not None:
            self.validation.drawn = int(state["validation_drawn"])
