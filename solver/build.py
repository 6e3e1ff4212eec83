"""The run's solver: the main optimizer and schedule plus the loss parameters that train on their own.

- main: SOLVER.OPTIMIZER_NAME over the named groups of solver/optimizer.py, WarmupMultiStepLR by epoch.
- one optimizer per `criterion.own_optimizers()` entry, built from the term's description (layers/term.py):
  AdamW or SGD with its lr and weight decay, an optional StepLR by epoch, and a factor applied to the
  gradient before each step. Today: 'margins' (AMLoss, seed 004: AdamW(LOSS.AMLOSS.MARGIN_LR,
  MARGIN_WEIGHT_DECAY), StepLR of MARGIN_DECAY_STEP epochs and MARGIN_DECAY_GAMMA) and 'centers' (center
  loss, reid-strong-baseline: SGD(SOLVER.CENTER_LR), gradient divided by SOLVER.CENTER_LOSS_WEIGHT, so they
  move as if the loss were unweighted).
The Solver steps all of them through one GradScaler and is saved/restored as one object in checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, StepLR

from config.choices import LR_SCHEDULERS
from config.errors import ConfigError, check_choice
from solver.lr_scheduler import WarmupMultiStepLR
from solver.optimizer import build_optimizer

if TYPE_CHECKING:
    from layers.composite import CompositeLoss
    from layers.term import OwnOptimizerSpec


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

    def _selected(self, names: Iterable[str] | None) -> dict[str, torch.optim.Optimizer]:
        """The optimizers called `names` (all when None), in the solver's order; ValueError on an unknown name."""
        if names is None:
            return self.optimizers
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.optimizers]
        if unknown:
            raise ValueError(
                f"unknown optimizer(s) {', '.join(map(repr, unknown))}; this solver has {', '.join(self.optimizers)}"
            )
        return {n: o for n, o in self.optimizers.items() if n in names}

    def zero_grad(self, names: Iterable[str] | None = None) -> None:
        """Clear the gradients of every optimizer's parameters, or only of the optimizers called `names`."""
        for optimizer in self._selected(names).values():
            optimizer.zero_grad(set_to_none=True)

    def step(self, scaler: torch.amp.GradScaler, names: Iterable[str] | None = None) -> None:
        """One step of every optimizer, or only of those called `names` (e.g. a method that updates one
        optimizer alone), through `scaler` (the caller runs scaler.update() after)."""
        for name, optimizer in self._selected(names).items():
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

    def configured_state(self) -> dict:
        """The settings this solver was built with: every optimizer group's hyper-parameters (all but its
        parameters) and every scheduler's state. `adopt_configuration` re-applies them after a checkpoint's
        state was loaded (a resume that changes learning rates or the schedule)."""
        return {
            "groups": {
                name: [copy.deepcopy({k: v for k, v in g.items() if k != "params"}) for g in o.param_groups]
                for name, o in self.optimizers.items()
            },
            "schedulers": {name: copy.deepcopy(s.state_dict()) for name, s in self.schedulers.items()},
        }

    def adopt_configuration(self, configured: dict) -> None:
        """Keep the loaded optimizer moments and schedule position (the epoch), take every hyper-parameter and
        schedule setting from `configured` (configured_state() of the solver built from the new config), and
        set each group's learning rate to what the new schedule gives at that epoch."""
        for name, optimizer in self.optimizers.items():
            scheduled = name in self.schedulers  # its scheduler sets the learning rate below
            for group, fresh in zip(optimizer.param_groups, configured["groups"][name]):
                group.update({k: copy.deepcopy(v) for k, v in fresh.items() if k != "lr" or not scheduled})
        for name, scheduler in self.schedulers.items():
            state = copy.deepcopy(configured["schedulers"][name])
            state["last_epoch"], state["_step_count"] = scheduler.last_epoch, scheduler._step_count
            scheduler.load_state_dict(state)
            closed_form = getattr(scheduler, "_get_closed_form_lr", None)  # torch's chainable schedulers
            rates = closed_form() if closed_form is not None else scheduler.get_lr()
            for group, rate in zip(scheduler.optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

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
    check_choice("SOLVER.LR_SCHEDULER", s.LR_SCHEDULER, LR_SCHEDULERS)
    if s.LR_SCHEDULER == "step":
        if s.LR_DECAY_STEP <= 0:
            raise ConfigError(f"SOLVER.LR_DECAY_STEP = {s.LR_DECAY_STEP}; expected a positive number of epochs")
        return StepLR(optimizer, step_size=s.LR_DECAY_STEP, gamma=s.LR_DECAY_GAMMA)
    return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD)


def build_own_optimizer(name: str, spec: OwnOptimizerSpec) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
    """The optimizer (one group, called `name`) and optional StepLR a term describes for its `spec.params`."""
    groups = [{"params": [p for p in spec.params if p.requires_grad], "name": name}]
    if spec.kind == "AdamW":
        optimizer = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    elif spec.kind == "SGD":
        optimizer = torch.optim.SGD(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        raise ValueError(f"own optimizer {name!r}: unknown kind {spec.kind!r}; expected 'AdamW' or 'SGD'")
    scheduler = None
    if spec.schedule is not None:
        scheduler = StepLR(optimizer, step_size=spec.schedule.step_size, gamma=spec.schedule.gamma)
    return optimizer, scheduler


def build_solver(cfg, model: nn.Module, criterion: CompositeLoss) -> Solver:
    """The main optimizer + schedule, and the optimizers the loss terms train some parameters in
    (`criterion.own_optimizers()`, in the criterion's term order), each with its schedule and gradient factor."""
    main = build_optimizer(cfg, model, criterion)
    optimizers = {"main": main}
    schedulers: dict[str, LRScheduler] = {"main": build_scheduler(cfg, main)}
    factors: dict[str, float] = {}
    for name, spec in criterion.own_optimizers().items():
        if name == "main":
            raise ValueError("a loss term's own optimizer cannot be called 'main'")
        if not any(p.requires_grad for p in spec.params):
            continue  # nothing of it trains (frozen): no optimizer, as for an empty group of the main one
        optimizers[name], scheduler = build_own_optimizer(name, spec)
        if scheduler is not None:
            schedulers[name] = scheduler
        if spec.grad_factor != 1.0:
            factors[name] = spec.grad_factor
    if cfg.SOLVER.GRAD_CLIP < 0:
        raise ConfigError(f"SOLVER.GRAD_CLIP = {cfg.SOLVER.GRAD_CLIP}; expected 0 (off) or a positive clipping value")
    return Solver(optimizers, schedulers, factors, grad_clip=cfg.SOLVER.GRAD_CLIP)
