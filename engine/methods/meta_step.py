"""The meta step of MMSI (and DDTAS's pair-weight generator): how the validation loss after a virtual step
depends on per-pair weights of the training loss.

With theta the trainable parameters, L_tr(theta, w) the weighted training loss over the batch's kept pairs,
g(w) = d L_tr / d theta and the virtual step theta'(w) = theta - lr * g(w) (each parameter with its optimizer
group's learning rate), the raw weight gradient is

    G = d L_val(theta'(w)) / d w   at w = 0.

MMSI sets w = relu(-G) / max relu(-G). Two exact ways to compute G (GRAD_MODE):
- double_backward: the faithful one: g with create_graph, the validation batch through the virtual
  parameters (torch.func.functional_call), then d L_val / d w through the second-order graph;
- jvp: at w = 0 the virtual step is zero (every weighted loss here is flat in theta at w = 0), so theta' =
  theta and G_j = - sum_k H_kj <lr * u, d s_k / d theta>, with u = d L_val(theta) / d theta (one backward),
  s the batch's similarities and H_kj = d^2 L_tr / (d s_k d w_j) at w = 0. The directional derivative of s
  along lr * u is one torch.func.jvp through the model; the contraction with H is a double backward through
  the loss on the n x n similarities only, never through the network.
The forwards of the meta step leave the model's BatchNorm statistics alone (they run on copies of the
buffers), and run in fp32 whatever the training precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp

from config.choices import META_GRAD_MODES
from layers.loss_inputs import compute_dtype
from layers.weighted_pair_losses import normalized_similarities

# (similarities, weights) -> the weighted training loss over the kept pairs (masks bound in the closure)
WeightedLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# validation features -> the validation loss (semi-global: against a memory, or the batch against itself)
ValidationLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MetaResult:
    """G (n x n, zero outside kept pairs) and the validation loss it came from (0-d, detached)."""

    weight_gradient: torch.Tensor
    validation_loss: torch.Tensor


def virtual_step_rates(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    """Each trainable parameter's learning rate in `optimizer` (the run's main one): the virtual step's."""
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: rate_of.get(id(p), 0.0) for name, p in model.named_parameters() if p.requires_grad}


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def buffer_copies(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's buffers, copied: a forward of the meta step may update BatchNorm statistics in them."""
    return {name: b.clone() for name, b in model.named_buffers()}


def _features(model: nn.Module, tensors: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The 'feat' output of `model` run with `tensors` outside autocast (fp32, or float64 in tests)."""
    with torch.autocast(images.device.type, enabled=False):
        return compute_dtype(functional_call(model, tensors, (images,))["feat"])


def raw_weight_gradient(
    model: nn.Module,
    images: torch.Tensor,
    weighted_loss: WeightedLoss,
    val_images: torch.Tensor,
    val_loss: ValidationLoss,
    lrs: dict[str, float],
    mode: str = "double_backward",
    feats: torch.Tensor | None = None,
) -> MetaResult:
    """G = d L_val(theta - lr * d L_tr(theta, w) / d theta) / d w at w = 0 (see the module docstring).

    `lrs`: the learning rate of each trainable parameter by name; `feats`: the batch's features already
    computed by `model` in fp32 with their graph (double_backward reuses them; computed here when None).
    """
    params = trainable_parameters(model)
    buffers = buffer_copies(model)
    if mode == "double_backward":
        if feats is None:
            feats = _features(model, {**params, **buffer_copies(model)}, images)
        sim = normalized_similarities(feats)
        weights = torch.zeros_like(sim, requires_grad=True)
        grads = torch.autograd.grad(
            weighted_loss(sim, weights), list(params.values()), create_graph=True, allow_unused=True
        )
        virtual = {name: p if g is None else p - lrs[name] * g for (name, p), g in zip(params.items(), grads)}
        loss = val_loss(_features(model, {**virtual, **buffers}, val_images))
        if not loss.requires_grad:  # nothing to learn from (no pair of the validation batch)
            return MetaResult(torch.zeros_like(sim), loss.detach())
        (gradient,) = torch.autograd.grad(loss, weights, allow_unused=True)
        gradient = torch.zeros_like(sim) if gradient is None else gradient
        return MetaResult(gradient.detach(), loss.detach())
    if mode == "jvp":
        loss = val_loss(_features(model, {**params, **buffers}, val_images))
        if not loss.requires_grad:
            n = len(images)
            return MetaResult(images.new_zeros(n, n, dtype=torch.float32), loss.detach())
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        tangent = {
            name: torch.zeros_like(p) if g is None else lrs[name] * g.detach()
            for (name, p), g in zip(params.items(), grads)
        }
        primal = {name: p.detach() for name, p in params.items()}
        sims = lambda tensors: normalized_similarities(_features(model, {**tensors, **buffer_copies(model)}, images))
        sim, sim_dot = jvp(sims, (primal,), (tangent,))
        sim = sim.detach().requires_grad_(True)
        weights = torch.zeros_like(sim, requires_grad=True)
        (loss_by_sim,) = torch.autograd.grad(weighted_loss(sim, weights), sim, create_graph=True)
        directional = (loss_by_sim * sim_dot.detach()).sum()
        if not directional.requires_grad:
            return MetaResult(torch.zeros_like(sim), loss.detach())
        (gradient,) = torch.autograd.grad(directional, weights, allow_unused=True)
        gradient = torch.zeros_like(sim) if gradient is None else gradient
        return MetaResult(-gradient.detach(), loss.detach())
    raise ValueError(f"unknown meta gradient mode {mode!r}; expected one of {META_GRAD_MODES}")


def pair_weights(weight_gradient: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """MMSI's weights: w~ = relu(-G) on the kept pairs, w = w~ / max(w~); all zero (never NaN) when max is 0."""
    raw = torch.where(kept, torch.relu(-weight_gradient), torch.zeros((), device=weight_gradient.device))
    top = raw.max()
    return torch.where(top > 0, raw / top.clamp_min(torch.finfo(raw.dtype).tiny), torch.zeros_like(raw))
