"""The interface every loss term of layers/ shares: what it reads, what it reports, how its parameters train.

A term declares everything the criterion and the solver need to know about it, so that neither has to guess
from attribute names (pytorch-metric-learning's BaseMetricLossFunction is the model of that explicitness; the
kernels stay ours, one fused module per loss):

- `inputs`: the keys it reads from the model outputs merged with the batch;
- `stat_names` / `stats`: the detached statistics a forward pass leaves for logging;
- `parameter_groups()`: the main optimizer's group of each trainable parameter;
- `own_optimizers()`: parameters that train in an optimizer of their own, described by `OwnOptimizerSpec`
  (layers/ never builds optimizers: the solver does, from these descriptions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OWN_OPTIMIZER_KINDS = ("AdamW", "SGD")


@dataclass(frozen=True)
class StepLRSpec:
    """torch.optim.lr_scheduler.StepLR: the learning rate times `gamma` every `step_size` epochs."""

    step_size: int
    gamma: float


# eq=False: the generated __eq__ would compare the parameter tensors element-wise (an error, not a bool)
@dataclass(frozen=True, eq=False)
class OwnOptimizerSpec:
    """An optimizer of its own for some parameters of a term, described for the solver to build.

    kind: 'AdamW' or 'SGD' (SGD without momentum); lr and weight_decay its hyper-parameters; schedule an
    optional StepLR stepped once per epoch; grad_factor multiplies the parameters' (unscaled) gradient right
    before each step (e.g. 1 / the term's weight in the total, so that the weight only scales what the
    features receive).
    """

    params: tuple[nn.Parameter, ...]
    kind: str
    lr: float
    weight_decay: float = 0.0
    schedule: StepLRSpec | None = None
    grad_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in OWN_OPTIMIZER_KINDS:
            raise ValueError(f"own optimizer kind {self.kind!r}; expected one of {', '.join(OWN_OPTIMIZER_KINDS)}")
        if self.schedule is not None and self.schedule.step_size <= 0:
            raise ValueError(f"own optimizer StepLR step_size {self.schedule.step_size}; expected a positive number")


class LossTerm(nn.Module):
    """Base class of every loss term (classification heads, metric losses, the 'pml:' wrapper).

    Calling convention: with `source` the model outputs merged with the batch ({**batch, **outputs}; the
    batch holds at least 'label'), the criterion calls

        term(source[inputs[0]], labels, *[source[k] for k in inputs[1:]])

    so every kernel keeps its (feats, labels, ...) signature and can be called directly, e.g. loss(feats,
    labels) or uc_loss(feats, labels, uc). A metric term returns the scalar loss, a classification term
    (loss, logits) (the logits for the batch accuracy).

    Class attributes a subclass sets:
    - inputs: the keys it reads, e.g. ("feat",) for metric losses, ("neck_feat",) for classification heads,
      ("feat", "uc") for NAMA's uncertainty losses; a batch key (e.g. "cluster") works the same way;
    - stat_names: the statistics a forward pass leaves in `self.stats` (detached scalar tensors by name,
      logged as '<term key>_<stat>').

    Methods a subclass overrides when its parameters do not train as plain loss parameters:
    - parameter_groups(): the main optimizer's group of each trainable parameter (solver/optimizer.py names
      the groups and their learning rates);
    - own_optimizers(): the parameters that train in an optimizer of their own, by optimizer name.
    """

    inputs: tuple[str, ...]  # no default: what a term reads is part of its definition, never a guess
    stat_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        inputs = getattr(self, "inputs", None)
        if not isinstance(inputs, tuple) or not inputs or not all(isinstance(k, str) for k in inputs):
            raise TypeError(f"{type(self).__name__} must declare `inputs`, a non-empty tuple of keys, got {inputs!r}")
        self.stats: dict[str, torch.Tensor] = {}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Group name -> the term's trainable parameters in that group of the main optimizer.

        Default: parameters named 'bias' -> 'bias', the others -> 'loss' (classifier weights). Parameters of
        `own_optimizers()` and frozen ones are left out. Subclasses declare other groups through
        `_groups_with`.
        """
        return self._groups_with({})

    def own_optimizers(self) -> dict[str, OwnOptimizerSpec]:
        """Optimizer name -> the parameters that train in it, described; default: none."""
        return {}

    def _groups_with(self, declared: dict[str, list[nn.Parameter]]) -> dict[str, list[nn.Parameter]]:
        """The default grouping, except for the parameters `declared` in a group of their own.

        Within a group the parameters keep the order of `named_parameters()`, the order the optimizer's
        state (and so a checkpoint) lists them in.
        """
        group_of = {id(p): group for group, params in declared.items() for p in params}
        own = {id(p) for spec in self.own_optimizers().values() for p in spec.params}
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad or id(param) in own:
                continue
            default = "bias" if name.rsplit(".", 1)[-1] == "bias" else "loss"
            groups.setdefault(group_of.get(id(param), default), []).append(param)
        return groups


__all__ = ["OWN_OPTIMIZER_KINDS", "LossTerm", "OwnOptimizerSpec", "StepLRSpec"]
