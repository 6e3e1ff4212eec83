"""The one criterion of a run: a classification term and weighted metric terms, computed in fp32."""

from __future__ import annotations

import torch
from torch import nn


class CompositeLoss(nn.Module):
    """total = cls_weight * cls(neck_feat) + sum_k metric_weight_k * metric_k(feat).

    Called with the model's output dict and the labels; returns (total, parts) where parts holds, as detached
    scalars, the classification loss and the batch accuracy (when there is a classification term), each
    metric term as '<key>_loss', and the statistics a term reports as '<key>_<stat>' (e.g. AT-ASMS's
    tolerances). Autocast is switched off inside: losses compute in fp32 whatever precision the forward pass
    ran in. The terms own their learnable parameters (classifier weights, proxies, margins, betas, centers).

    With NAMA's uncertainty head the outputs also hold 'uc' (per-sample margin offsets), passed to the terms
    that declare `needs_uc`, and 'uc_norm' (the norms the head read), on which `norm_regularizer` adds
    norm_regularizer_weight * (g - g.detach()): a gradient pulling norms toward u_a, no value (NAMA's
    form); g itself is logged as 'reg_loss'.
    """

    def __init__(
        self,
        cls_term: nn.Module | None,
        metric_terms: dict[str, nn.Module] | nn.Module | None = None,
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
            names += [f"{key}_{stat}" for stat in getattr(term, "stat_names", ())]
        if cls_term is not None:
            names += [f"cls_{stat}" for stat in getattr(cls_term, "stat_names", ())]
        if norm_regularizer is not None:
            names.append("reg_loss")
        self.part_names = tuple(names)  # keys of the training step's output, for running averages

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        parts: dict[str, torch.Tensor] = {}
        total = None
        with torch.autocast(device_type=labels.device.type, enabled=False):
            uc = outputs["uc"].float() if "uc" in outputs else None
            if self.cls_term is not None:
                extra = (uc,) if getattr(self.cls_term, "needs_uc", False) else ()
                cls_loss, logits = self.cls_term(outputs["neck_feat"].float(), labels, *extra)
                total = self.cls_weight * cls_loss
                parts["cls_loss"] = cls_loss.detach()
                parts["acc"] = (logits.argmax(1) == labels).float().mean().detach()
                for stat, stat_value in getattr(self.cls_term, "stats", {}).items():
                    parts[f"cls_{stat}"] = torch.as_tensor(stat_value, dtype=torch.float32).detach()
            for key, term in self.metric_terms.items():
                extra = (uc,) if getattr(term, "needs_uc", False) else ()
                value = term(outputs["feat"].float(), labels, *extra)
                weighted = self.metric_weights[key] * value
                total = weighted if total is None else total + weighted
                parts[f"{key}_loss"] = value.detach()
                for stat, stat_value in getattr(term, "stats", {}).items():
                    parts[f"{key}_{stat}"] = torch.as_tensor(stat_value, dtype=torch.float32).detach()
            if self.norm_regularizer is not None:
                reg = self.norm_regularizer(outputs["uc_norm"].float())
                total = total + self.norm_regularizer_weight * (reg - reg.detach())
                parts["reg_loss"] = reg.detach()
        return total, parts
