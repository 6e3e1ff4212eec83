"""Divide & Conquer's learners: K masks over one embedding (seed 003, TPAMI 2021; ../specs: divide_conquer.md).

Learner k's embedding of a feature f (the Linear layer's output) is normalise(f * relu(m_k)). The masks start as
one vector (ones, or N(0.9, 0.7) per entry) and double with the clusters: mask c is cloned into its children
2c and 2c + 1. `FIXED_MASK` gives the CVPR 2019 version instead: K disjoint binary slices of the embedding,
not learned. The orthogonality regulariser pushes the learned masks apart:

    R = lambda * mean_{i != j} cos(relu(m_i), relu(m_j))      (over ordered pairs of the K masks; 0 when K = 1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config.choices import DC_MASK_INITS as MASK_INITS


def fixed_slices(k: int, dim: int) -> torch.Tensor:
    """K disjoint binary masks covering the `dim` entries in K contiguous slices (sizes differ by at most one)."""
    bounds = torch.linspace(0, dim, k + 1).round().long()
    masks = torch.zeros(k, dim)
    for c in range(k):
        masks[c, bounds[c] : bounds[c + 1]] = 1.0
    return masks


def replace_in_optimizer(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor, expand) -> None:
    """Put `new` in place of `old` in `optimizer`'s groups; the state of `old` moves to `new`, its tensors shaped
    like `old` passed through `expand` (the same change as the parameter's), the others (a step count) kept."""
    found = False
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new
                found = True
    if not found:
        raise ValueError("the masks are not a parameter of this optimizer")
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {
            key: expand(value) if torch.is_tensor(value) and value.shape == old.shape else value
            for key, value in state.items()
        }


class LearnerMasks(nn.Module):
    """The masks of the K learners: a K x dim parameter (or, fixed, a K x dim buffer of slices). `k` masks to
    start with: 1 for the top_bot hierarchy, K for a flat one (each learned one drawn by `init`)."""

    def __init__(
        self,
        dim: int,
        init: str = "ones",
        fixed: bool = False,
        generator: torch.Generator | None = None,
        k: int = 1,
    ):
        super().__init__()
        if init not in MASK_INITS:
            raise ValueError(f"mask init {init!r}; expected one of {MASK_INITS}")
        self.dim, self.fixed = dim, fixed
        if fixed:
            self.register_buffer("values", fixed_slices(k, dim))
        else:
            start = torch.ones(k, dim) if init == "ones" else 0.9 + 0.7 * torch.randn(k, dim, generator=generator)
            self.values = nn.Parameter(start)

    @property
    def k(self) -> int:
        return self.values.shape[0]

    def embed(self, embedding: torch.Tensor, cluster: int | None) -> torch.Tensor:
        """normalise(embedding * relu(mask_cluster)); `cluster` None: the full embedding, normalised."""
        if cluster is None:
            return F.normalize(embedding, dim=1)
        return F.normalize(embedding * F.relu(self.values[cluster]), dim=1)

    def orthogonality(self) -> torch.Tensor:
        """mean over ordered pairs i != j of cos(relu(m_i), relu(m_j)) (0 for one mask or fixed masks)."""
        if self.k < 2 or self.fixed:
            return self.values.new_zeros(())
        unit = F.normalize(F.relu(self.values), dim=1)
        cos = unit @ unit.T
        off_diagonal = ~torch.eye(self.k, dtype=torch.bool, device=cos.device)
        return cos[off_diagonal].mean()

    @torch.no_grad()
    def double(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """K -> 2K: learned mask c becomes children 2c and 2c + 1 (copies); fixed masks become 2K slices. The
        parameter is a new tensor; in `optimizer` it replaces the old one, and the children inherit their
        parent's optimizer state (Adam's moments, row by row; its step count), so that the first step after a
        split continues the parent's trajectory and the children part through their clusters' batches."""
        if self.fixed:
            self.values = fixed_slices(2 * self.k, self.dim).to(self.values.device)
            return
        old = self.values
        self.values = nn.Parameter(old.detach().repeat_interleave(2, dim=0).clone())
        if optimizer is not None:
            replace_in_optimizer(optimizer, old, self.values, lambda t: t.repeat_interleave(2, dim=0).clone())

    def resize_for(self, state: dict) -> None:
        """Take the K of a saved state (a checkpoint written after doublings) before loading it."""
        saved = state["values"]
        if saved.shape[0] != self.k:
            if self.fixed:
                self.values = fixed_slices(saved.shape[0], self.dim).to(self.values.device)
            else:
                self.values = nn.Parameter(torch.empty_like(saved, device=self.values.device))
