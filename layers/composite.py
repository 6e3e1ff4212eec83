"""The one criterion of a run: a classification term and a metric term, weighted, computed in fp32."""

from __future__ import annotations

import torch
from torch import nn


class CompositeLoss(nn.Module):
    """total = CLS_LOSS_WEIGHT * cls(neck_feat) + TRI_LOSS_WEIGHT * metric(feat).

    Called with the model's output dict and the labels; returns (total, parts) where parts holds each term
    and the classification accuracy of the batch (when there is a classifier), as detached scalars.
    Autocast is switched off inside: losses compute in fp32 whatever precision the forward pass ran in.
    """

    def __init__(self, cls_term: nn.Module | None, metric_term: nn.Module | None,
                 cls_weight: float = 1.0, metric_weight: float = 1.0):
        super().__init__()
        if cls_term is None and metric_term is None:
            raise ValueError("at least one loss term is needed")
        self.cls_term, self.metric_term = cls_term, metric_term
        self.cls_weight, self.metric_weight = cls_weight, metric_weight
        names = ["loss"]
        if cls_term is not None:
            names += ["cls_loss", "acc"]
        if metric_term is not None:
            names.append("metric_loss")
        self.part_names = tuple(names)  # keys of the training step's output, for running averages

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        device_type = labels.device.type
        parts: dict[str, float] = {}
        total = None
        with torch.autocast(device_type=device_type, enabled=False):
            if self.cls_term is not None:
                cls_loss, logits = self.cls_term(outputs["neck_feat"].float(), labels)
                total = self.cls_weight * cls_loss
                parts["cls_loss"] = cls_loss.detach()
                parts["acc"] = (logits.argmax(1) == labels).float().mean().detach()
            if self.metric_term is not None:
                metric_loss = self.metric_term(outputs["feat"].float(), labels)
                term = self.metric_weight * metric_loss
                total = term if total is None else total + term
                parts["metric_loss"] = metric_loss.detach()
        return total, parts
