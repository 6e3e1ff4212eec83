"""Mixed precision through torch.amp: which dtype autocast uses and whether a GradScaler is needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from config.choices import AMP_MODES
from config.errors import ConfigError, check_choice


@dataclass(frozen=True)
class Precision:
    """autocast on/off and its dtype; fp16 also scales the loss (GradScaler)."""

    enabled: bool
    dtype: torch.dtype
    device_type: str

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """SOLVER.AMP on `device`: 'auto' = fp16 on CUDA and off on CPU; fp16 on CPU is refused."""
    check_choice("SOLVER.AMP", amp, AMP_MODES)
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "none"
    if amp == "none":
        return Precision(False, torch.float32, device.type)
    if amp == "fp16" and device.type == "cpu":
        raise ConfigError("SOLVER.AMP = 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'none'")
    return Precision(True, torch.float16 if amp == "fp16" else torch.bfloat16, device.type)
