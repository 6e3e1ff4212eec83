"""Seeding: SEED fixes Python, NumPy and torch; each epoch reseeds from (SEED, epoch) so resume is exact."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for epoch `epoch` of a run seeded with `seed`, independent of what ran before it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
