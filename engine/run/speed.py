"""The GPU path's switches, resolved for the run's device: cuDNN's autotuner (SOLVER.CUDNN_BENCHMARK), the
channels-last memory format (MODEL.CHANNELS_LAST) and torch.compile (MODEL.COMPILE). The optimizer's
implementation (SOLVER.OPTIMIZER_IMPL) is chosen where it is built (solver/optimizer.py)."""

from __future__ import annotations

import torch
from torch import nn

from config import UserError


def enabled(value: str, device: torch.device) -> bool:
    """An 'auto' / 'yes' / 'no' key: 'auto' means on CUDA."""
    return device.type == "cuda" if value == "auto" else value == "yes"


def set_cudnn_benchmark(cfg, device: torch.device) -> None:
    """SOLVER.CUDNN_BENCHMARK: cuDNN times its convolution kernels on the first batch of each shape and keeps
    the fastest (the kernels chosen may differ between runs, and so may the last digits of the results)."""
    torch.backends.cudnn.benchmark = enabled(cfg.SOLVER.CUDNN_BENCHMARK, device)


def use_channels_last(cfg, device: torch.device) -> bool:
    """MODEL.CHANNELS_LAST: NHWC tensors, the layout tensor cores read without a transpose."""
    return enabled(cfg.MODEL.CHANNELS_LAST, device)


class CompiledModel(nn.Module):
    """torch.compile of `module` for the training step; a compilation failure (at the first batch, where
    torch compiles) stops the run in one line instead of torch's traceback."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module)

    def forward(self, *args, **kwargs):
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # torch._dynamo / inductor errors have no common public base class
            if type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"MODEL.COMPILE yes: torch.compile failed ({first}); set MODEL.COMPILE no") from None
            raise


def maybe_compile(cfg, module: nn.Module) -> nn.Module:
    """MODEL.COMPILE yes: the module the training step calls, compiled (its parameters are the module's own)."""
    return CompiledModel(module) if cfg.MODEL.COMPILE == "yes" else module
