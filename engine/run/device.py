"""Which device a process uses, and wrapping modules for several processes."""

from __future__ import annotations

import ignite.distributed as idist
import torch
from torch import nn

from config.choices import DEVICES
from config.errors import ConfigError, check_choice


def resolve_device(choice: str) -> torch.device:
    """MODEL.DEVICE: 'auto' = this process's CUDA device when there is one, else the CPU."""
    check_choice("MODEL.DEVICE", choice, DEVICES)
    if choice == "cpu":
        if idist.get_world_size() > 1 and idist.backend() == "nccl":
            raise ConfigError("MODEL.DEVICE 'cpu' cannot run under the NCCL backend")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("MODEL.DEVICE = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return idist.device() if torch.cuda.is_available() else torch.device("cpu")


def distribute(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """Move to `device`; with several processes wrap in DistributedDataParallel (if it has parameters).

    `find_unused_parameters`: some trainable parameters get no gradient by construction (e.g. the BNNeck when
    no classification loss trains), which DDP must be told about."""
    module = module.to(device)
    if idist.get_world_size() > 1 and any(p.requires_grad for p in module.parameters()):
        device_ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    return module


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank.

    DistributedDataParallel broadcasts them at the start of each forward, so after the last training step
    each rank holds statistics updated by its own batch; evaluation must use the ones rank 0 saves.
    """
    if idist.get_world_size() == 1:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            buffer.copy_(idist.broadcast(buffer, src=0))
