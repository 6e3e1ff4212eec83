"""The run's solver: the main optimizer and schedule plus the loss parameters that train on their own.

- main: SOLVER.OPTIMIZER_NAME over the named groups of solver/optimizer.py, WarmupMultiStepLR by epoch.
- margins (AMLoss, seed 004): AdamW(LOSS.AMLOSS.MARGIN_LR, weight decay MARGIN_WEIGHT_DECAY) with a StepLR of
  MARGIN_DECAY_STEP epochs and MARGIN_DECAY_GAMMA, as the AMLoss code trains its margins.
- centers (center loss, reid-strong-baseline): SGD(SOLVER.CENTER_LR), no schedule; before each step the
  centers' gradient is divided by SOLVER.CENTER_LOSS_WEIGHT, so they move as if the loss were unweighted.
The Solver steps all of them through one GradScaler and is saved/restored as one object in checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, StepLR

from config.errors import ConfigError, check_choice
from solver.lr_scheduler import WarmupMultiStepLR
from solver.optimizer import build_optimizer, loss_parameter_role


class Solver:
    """Optimizers and their epoch schedulers by name; 'main' always exists."""

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, LRScheduler],
        grad_factors: dict[str, float] | None = None,
        grad_clip: float = 0.0,
    ):
        if "main" not in optimizers:
            raise ValueError("a solver needs a 'main' optimizer")
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.grad_factors = grad_factors or {}
        self.grad_clip = grad_clip  # value clipping of the main optimizer's gradients (0 = off)

    @property
    def main(self) -> torch.optim.Optimizer:
        return self.optimizers["main"]

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def step(self, scaler: torch.amp.GradScaler) -> None:
        """One step of every optimizer through `scaler` (the caller runs scaler.update() after)."""
        for name, optimizer in self.optimizers.items():
            if not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
                continue  # nothing reached these parameters this step (GradScaler refuses such a step)
            factor = self.grad_factors.get(name, 1.0)
            clip = self.grad_clip if name == "main" else 0.0
            if factor != 1.0 or clip > 0:
                scaler.unscale_(optimizer)  # true gradients before they are rescaled or clipped
                grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                if factor != 1.0:
                    torch._foreach_mul_(grads, factor)
                if clip > 0:
                    for grad in grads:
                        grad.clamp_(-clip, clip)
            scaler.step(optimizer)

    def epoch_completed(self) -> None:
        """Advance every schedule by one epoch."""
        for scheduler in self.schedulers.values():
            scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of each named parameter group ('<optimizer>/<group>' outside main)."""
        rates = {}
        for name, optimizer in self.optimizers.items():
            for i, group in enumerate(optimizer.param_groups):
                label = group.get("name", str(i))
                rates[label if name == "main" else f"{name}/{label}"] = group["lr"]
        return rates

    def state_dict(self) -> dict:
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for kind, objects in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            saved = state.get(kind, {})
            if set(saved) != set(objects):
                raise ValueError(f"saved {kind} {sorted(saved)} but this config builds {sorted(objects)}")
            for name, obj in objects.items():
                obj.load_state_dict(saved[name])


def build_scheduler(cfg, optimizer) -> LRScheduler:
    """The epoch-wise schedule of SOLVER.LR_SCHEDULER: 'warmup_multistep' (STEPS / GAMMA / WARMUP_*) or
    'step' (StepLR every LR_DECAY_STEP epochs by LR_DECAY_GAMMA)."""
    s = cfg.SOLVER
    check_choice("SOLVER.LR_SCHEDULER", s.LR_SCHEDULER, ("warmup_multistep", "step"))
    if s.LR_SCHEDULER == "step":
        if s.LR_DECAY_STEP <= 0:
            raise ConfigError(f"SOLVER.LR_DECAY_STEP = {s.LR_DECAY_STEP}; expected a positive number of epochs")
        return StepLR(optimizer, step_size=s.LR_DECAY_STEP, gamma=s.LR_DECAY_GAMMA)
    return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD)


def _own_parameters(criterion: nn.Module, role: str) -> list[nn.Parameter]:
    return [p for n, p in criterion.named_parameters() if p.requires_grad and loss_parameter_role(n) == role]


def build_solver(cfg, model: nn.Module, criterion: nn.Module) -> Solver:
    """The main optimizer + schedule, and the AMLoss-margin and center-loss optimizers when those exist."""
    main = build_optimizer(cfg, model, criterion)
    optimizers = {"main": main}
    schedulers: dict[str, LRScheduler] = {"main": build_scheduler(cfg, main)}
    factors: dict[str, float] = {}
    margins = _own_parameters(criterion, "margins")
    if margins:
        a = cfg.LOSS.AMLOSS
        if a.MARGIN_DECAY_STEP <= 0:
            raise ConfigError(
                f"LOSS.AMLOSS.MARGIN_DECAY_STEP = {a.MARGIN_DECAY_STEP}; expected a positive number of epochs"
            )
        optimizers["margins"] = torch.optim.AdamW(
            [{"params": margins, "name": "margins"}], lr=a.MARGIN_LR, weight_decay=a.MARGIN_WEIGHT_DECAY
        )
        schedulers["margins"] = StepLR(optimizers["margins"], step_size=a.MARGIN_DECAY_STEP, gamma=a.MARGIN_DECAY_GAMMA)
    centers = _own_parameters(criterion, "centers")
    if centers:
        weight = cfg.SOLVER.CENTER_LOSS_WEIGHT
        if weight <= 0:
            raise ConfigError(f"SOLVER.CENTER_LOSS_WEIGHT = {weight}; expected a positive weight with the center loss")
        optimizers["centers"] = torch.optim.SGD([{"params": centers, "name": "centers"}], lr=cfg.SOLVER.CENTER_LR)
        factors["centers"] = 1.0 / weight
    if cfg.SOLVER.GRAD_CLIP < 0:
        raise ConfigError(f"SOLVER.GRAD_CLIP = {cfg.SOLVER.GRAD_CLIP}; expected 0 (off) or a positive clipping value")
    return Solver(optimizers, schedulers, factors, grad_clip=cfg.SOLVER.GRAD_CLIP)
