"""What the losses share about their inputs: the compute dtype, cosine similarities, pair masks, argument checks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def loss_dtype(feats: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck); everything else (fp16/bf16/fp32) is computed in float32."""
    return torch.float64 if feats.dtype == torch.float64 else torch.float32


def compute_dtype(feats: torch.Tensor) -> torch.Tensor:
    """feats in the dtype losses compute in (see `loss_dtype`)."""
    return feats if feats.dtype == torch.float64 else feats.float()


class _SelfGram(torch.autograd.Function):
    """G = f f^T whose backward is the single product (dG + dG^T) f.

    Autograd's generic matmul backward runs two n x n x d products (one per operand); both operands being
    the same tensor lets one product do, and that product is most of a pair loss's cost at d = 512.
    The backward uses differentiable operations, so double backward still works.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(f)
        return f @ f.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (f,) = ctx.saved_tensors
        return (grad + grad.t()) @ f


def cosine_similarities(feats: torch.Tensor) -> torch.Tensor:
    """S = f f^T for the L2-normalised rows f of feats (n x n), in the losses' compute dtype."""
    return _SelfGram.apply(F.normalize(compute_dtype(feats), dim=1))


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_mask, neg_mask), boolean n x n: same label with the self pair removed by index, different label.

    Removing the self pair by index rather than by value (s_ii = 1) keeps a duplicated image of the same
    identity as a genuine positive.
    """
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """A finite real > 0 (>= 0 with allow_zero), else ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value}")
    return float(value)


def check_sizes(num_classes: int, feat_dim: int) -> None:
    """Positive integer class count and feature width, else ValueError."""
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if int(feat_dim) != feat_dim or feat_dim < 1:
        raise ValueError(f"feat_dim must be a positive integer, got {feat_dim!r}")
