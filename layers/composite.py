"""The one criterion of a run: a classification term and weighted metric terms, computed in fp32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from layers.term import LossTerm, OwnOptimizerSpec


class CompositeLoss(nn.Module):
    """total = cls_weight * cls + sum_k metric_weight_k * metric_k, each term fed by its declared inputs.

    Called with the model's output dict and the batch (a dict holding at least 'label', on the device, and
    any other keys a term may read); returns (total, parts) where parts holds, as detached scalars, the
    classification loss and the batch accuracy (when there is a classification term), each metric term as
    '<key>_loss', and the statistics a term reports as '<key>_<stat>' (e.g. AT-ASMS's tolerances). Each term
    reads `term.inputs` from the outputs merged with the batch (outputs win on a shared key), floating
    tensors cast to fp32, and is called as term(first input, labels, *other inputs) (layers/term.py):
    typically 'neck_feat' for the classification term, 'feat' for the metric terms. Autocast is switched off
    inside: losses compute in fp32 whatever precision the forward pass ran in. The terms own their
    learnable parameters (classifier weights, proxies, margins, betas, centers) and declare how they train
    (`parameter_groups`, `own_optimizers`).

    With NAMA's uncertainty head the outputs also hold 'uc' (per-sample margin offsets), read by the terms
    that declare it among their inputs, and 'uc_norm' (the norms the head read), on which `norm_regularizer`
    adds norm_regularizer_weight * (g - g.detach()): a gradient pulling norms toward u_a, no value (NAMA's
    form); g itself is logged as 'reg_loss'.
    """

    def __init__(
        self,
        cls_term: LossTerm | None,
        metric_terms: dict[str, LossTerm] | LossTerm | None = None,
        cls_weight: float = 1.0,
        metric_weights: dict[str, float] | float = 1.0,
        norm_regularizer=None,
        norm_regularizer_weight: float = 0.0,
    ):
        super().__init__()
        if isinstance(metric_terms, nn.Module) and not isinstance(metric_terms, nn.ModuleDict):
            metric_terms = {"metric": metric_terms}  # one unnamed term
        metric_terms = dict(metric_terms or {})
        if cls_term is None and not metric_terms:
            raise ValueError("at least one loss term is needed")
        for key, term in [("cls", cls_term), *metric_terms.items()]:
            if term is not None and not isinstance(term, LossTerm):
                raise TypeError(f"loss term {key!r} is a {type(term).__name__}, not a layers.term.LossTerm")
        if not isinstance(metric_weights, dict):
            metric_weights = {key: float(metric_weights) for key in metric_terms}
        self.cls_term = cls_term
        self.metric_terms = nn.ModuleDict(metric_terms)
        self.cls_weight = cls_weight
        self.metric_weights = {key: float(metric_weights[key]) for key in metric_terms}
        self.norm_regularizer, self.norm_regularizer_weight = norm_regularizer, float(norm_regularizer_weight)
        names = ["loss"]
        if cls_term is not None:
            names += ["cls_loss", "acc"]
        for key, term in self.metric_terms.items():
            names.append(f"{key}_loss")
            names += [f"{key}_{stat}" for stat in term.stat_names]
        if cls_term is not None:
            names += [f"cls_{stat}" for stat in cls_term.stat_names]
        if norm_regularizer is not None:
            names.append("reg_loss")
        self.part_names = tuple(names)  # keys of the training step's output, for running averages

    def terms(self) -> list[LossTerm]:
        """The classification term (if any), then the metric terms in order."""
        return ([self.cls_term] if self.cls_term is not None else []) + list(self.metric_terms.values())

    def consumed_outputs(self) -> frozenset[str]:
        """The keys the terms read (model outputs; a batch key a term reads is listed too, and a model
        ignores it), plus 'uc_norm' when the norm regulariser is on: what the model's gradients flow from."""
        keys = {key for term in self.terms() for key in term.inputs}
        if self.norm_regularizer is not None:
            keys.add("uc_norm")
        return frozenset(keys)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The terms' main-optimizer groups merged: classification term first, then the metric terms in order
        (within a group, the order in which the criterion's parameters are registered)."""
        groups: dict[str, list[nn.Parameter]] = {}
        seen: set[int] = set()
        for term in self.terms():
            for group, params in term.parameter_groups().items():
                for param in params:
                    if id(param) not in seen:  # a parameter shared by two terms trains once
                        seen.add(id(param))
                        groups.setdefault(group, []).append(param)
        return groups

    def own_optimizers(self) -> dict[str, OwnOptimizerSpec]:
        """The terms' own optimizers by name (e.g. AMLoss's 'margins', the center loss's 'centers')."""
        specs: dict[str, OwnOptimizerSpec] = {}
        for term in self.terms():
            for name, spec in term.own_optimizers().items():
                if name in specs:
                    raise ValueError(f"two loss terms declare an own optimizer named {name!r}")
                specs[name] = spec
        return specs

    @staticmethod
    def _arguments(key: str, term: LossTerm, source: Mapping[str, Any], labels: torch.Tensor) -> list:
        """term's call arguments: its first input, the labels, its other inputs (floating tensors in fp32)."""
        values = []
        for name in term.inputs:
            if name not in source:
                raise ValueError(
                    f"loss term {key!r} ({type(term).__name__}) reads {name!r}, which neither the model outputs "
                    f"nor the batch hold (they hold {', '.join(sorted(source))})"
                )
            value = source[name]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = value.float()
            values.append(value)
        return [values[0], labels, *values[1:]]

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"the criterion takes the batch dict (at least {{'label': labels}}), got a {type(batch).__name__}"
            )
        labels = batch["label"]
        source = {**batch, **outputs}
        parts: dict[str, torch.Tensor] = {}
        total = None
        with torch.autocast(device_type=labels.device.type, enabled=False):
            if self.cls_term is not None:
                cls_loss, logits = self.cls_term(*self._arguments("cls", self.cls_term, source, labels))
                total = self.cls_weight * cls_loss
                parts["cls_loss"] = cls_loss.detach()
                parts["acc"] = (logits.argmax(1) == labels).float().mean().detach()
                for stat, stat_value in self.cls_term.stats.items():
                    parts[f"cls_{stat}"] = torch.as_tensor(stat_value, dtype=torch.float32).detach()
            for key, term in self.metric_terms.items():
                value = term(*self._arguments(key, term, source, labels))
                weighted = self.metric_weights[key] * value
                total = weighted if total is None else total + weighted
                parts[f"{key}_loss"] = value.detach()
                for stat, stat_value in term.stats.items():
                    parts[f"{key}_{stat}"] = torch.as_tensor(stat_value, dtype=torch.float32).detach()
            if self.norm_regularizer is not None:
                reg = self.norm_regularizer(source["uc_norm"].float())
                total = total + self.norm_regularizer_weight * (reg - reg.detach())
                parts["reg_loss"] = reg.detach()
        return total, parts
