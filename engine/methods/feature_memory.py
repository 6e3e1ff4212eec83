"""MMSI's semi-global memory: the latest features of every class, one tensor on the training device."""

from __future__ import annotations

import torch


class FeatureMemory:
    """A FIFO of at most `size` detached features per class: `feats` (classes x size x dim), `filled` (classes x
    size) and `next_slot` (classes), all on `device`. A push writes each feature of class c to slot
    (next_slot[c] + its rank among the batch's class-c features) mod size, so the oldest entries of a class are
    replaced first, and within one batch the later of too many features of a class win (as appending them one
    by one would leave). Its state_dict holds the three tensors (checkpointed: a resumed run is exact)."""

    def __init__(self, num_classes: int, size: int, dim: int, device: torch.device | str = "cpu"):
        self.size = size
        self.feats = torch.zeros(num_classes, size, dim, device=device)
        self.filled = torch.zeros(num_classes, size, dtype=torch.bool, device=device)
        self.next_slot = torch.zeros(num_classes, dtype=torch.long, device=device)

    @property
    def nbytes(self) -> int:
        return self.feats.numel() * self.feats.element_size()

    @torch.no_grad()
    def push(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.to(self.feats.device)
        classes = len(self.next_slot)
        counts = torch.bincount(labels, minlength=classes)
        order = torch.argsort(labels, stable=True)
        firsts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(len(labels), device=labels.device) - firsts[labels[order]]
        kept = rank >= counts[labels] - self.size  # the last `size` features of each class in the batch
        slot = (self.next_slot[labels] + rank) % self.size
        self.feats[labels[kept], slot[kept]] = feats.detach()[kept].to(self.feats.dtype)
        self.filled[labels[kept], slot[kept]] = True
        self.next_slot = (self.next_slot + counts) % self.size

    def classes_seen(self) -> int:
        """How many classes hold at least one feature (one host synchronisation)."""
        return int(self.filled.any(1).sum())

    def keys(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, labels, filled) flattened over classes and slots: the keys of the semi-global loss."""
        classes, size, dim = self.feats.shape
        labels = torch.arange(classes, device=self.feats.device).repeat_interleave(size)
        return self.feats.view(-1, dim), labels, self.filled.view(-1)

    def state_dict(self) -> dict:
        return {"feats": self.feats, "filled": self.filled, "next_slot": self.next_slot}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["feats"].shape) != tuple(self.feats.shape):
            raise ValueError(
                f"the checkpoint's feature memory is {tuple(state['feats'].shape)} (classes x DSIZE x dim); this run "
                f"builds {tuple(self.feats.shape)}"
            )
        self.feats.copy_(state["feats"])
        self.filled.copy_(state["filled"])
        self.next_slot.copy_(state["next_slot"])
