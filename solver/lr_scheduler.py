"""Warm-up multi-step learning-rate schedule, counted in epochs (reid-strong-baseline's schedule)."""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch.optim.lr_scheduler import LRScheduler

from config.choices import WARMUP_METHODS
from config.errors import check_choice


class WarmupMultiStepLR(LRScheduler):
    """lr(e) = base_lr * w(e) * gamma ** #{s in steps : s <= e}, for the 0-based epoch e.

    Warm-up over the first `warmup_epochs` epochs: 'linear' w(e) = f (1 - e/W) + e/W, 'constant' w(e) = f,
    and w(e) = 1 from epoch W on (f = warmup_factor). Step it once at the end of every epoch.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        steps,
        gamma: float = 0.1,
        warmup_factor: float = 0.01,
        warmup_epochs: int = 10,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        check_choice("SOLVER.WARMUP_METHOD", warmup_method, WARMUP_METHODS)
        self.steps = list(steps)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_epochs = warmup_epochs
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """The multiplier of the base learning rates during 0-based epoch `epoch`."""
        warmup = 1.0
        if epoch < self.warmup_epochs:
            if self.warmup_method == "constant":
                warmup = self.warmup_factor
            else:
                alpha = epoch / self.warmup_epochs
                warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * self.gamma ** bisect_right(self.steps, epoch)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
