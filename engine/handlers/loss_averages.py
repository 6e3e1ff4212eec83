"""Running averages of the training step's outputs, kept on the device and read to the host only when shown.

Each iteration updates, without any host synchronisation, avg <- alpha * avg + (1 - alpha) * value for every
loss part (ignite's RunningAverage rule, alpha 0.98, the first value taken as it is; computed in float64 so the
numbers are those of a Python float), and records whether the loss was finite. `read` copies them to the host
in one transfer (averaged over the processes under torchrun) and raises NonFiniteLossError when a loss since
the previous read was NaN or infinite: the run reads every SOLVER.LOG_PERIOD iterations and at the end of each
epoch, before the epoch's checkpoint, so a non-finite step never reaches a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import ignite.distributed as idist
import torch

from config import UserError

ALPHA = 0.98


class NonFiniteLossError(UserError):
    """Training stopped because the loss became NaN or infinite."""


def non_finite_loss_error(
    value: float, epoch: int, iteration: int, latest_checkpoint: Path | None
) -> NonFiniteLossError:
    """The one-line error for a loss that became `value` at `iteration` of `epoch`, with advice: before any
    optimizer step (iteration 1) the config is at fault rather than the learning rate."""
    if iteration == 1:
        advice = (
            "it was not finite before any optimizer step, so look at the config rather than the learning "
            "rate: the loss's keys (scales, margins), the input normalisation, MODEL.PRETRAIN_PATH, SOLVER.AMP"
        )
    else:
        advice = "lower SOLVER.BASE_LR, lengthen the warm-up, or set SOLVER.AMP none"
    kept = (
        f"the latest checkpoint is {latest_checkpoint}"
        if latest_checkpoint is not None
        else ("no checkpoint was written yet")
    )
    return NonFiniteLossError(
        f"training stopped: the loss became {value} at epoch {epoch}, iteration {iteration}; {advice}; {kept}"
    )


class DeviceRunningAverages:
    """Running averages of `names` (keys of the step's output, detached scalar tensors) on the outputs' device,
    and the first non-finite 'loss' since the last read."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.values: torch.Tensor | None = None  # float64, one per name
        # on the device: [updates since the run started, seen a non-finite loss (0/1), its value, its update number]
        self._watch: torch.Tensor | None = None
        self._restored: dict[str, float] | None = None

    def update(self, output: dict) -> None:
        """One iteration's outputs in, no host synchronisation."""
        current = torch.stack([output[n].detach().reshape(()).to(torch.float64) for n in self.names])
        if self.values is None:
            self.values = current
            if self._restored is not None:  # a resumed run continues the saved averages
                saved = [self._restored.get(n) for n in self.names]
                if all(v is not None for v in saved):
                    self.values = torch.tensor(saved, dtype=torch.float64).to(current.device)
                    self.values.mul_(ALPHA).add_(current * (1.0 - ALPHA))
                self._restored = None
        else:
            self.values.mul_(ALPHA).add_(current * (1.0 - ALPHA))
        loss = current[self.names.index("loss")] if "loss" in self.names else current[0]
        if self._watch is None:
            self._watch = torch.zeros(4, dtype=torch.float64, device=current.device)
        self._watch[0] += 1
        first = (~torch.isfinite(loss)) & (self._watch[1] == 0)
        seen = torch.stack([self._watch[0], torch.ones_like(loss), loss, self._watch[0]])
        self._watch = torch.where(first, seen, self._watch)

    def read(self) -> tuple[dict[str, float], tuple[float, int] | None]:
        """The averages on the host ({} before any update) and, when a loss since the last read was not finite,
        (its value, how many iterations before this read it came). One device-to-host transfer; under torchrun
        every process reads at the same iterations: the averages are averaged over them, and a non-finite loss
        of any of them counts."""
        if self.values is None:
            return {}, None
        packed = torch.cat([self.values, self._watch[1:]])
        if idist.get_world_size() > 1:
            averages = idist.all_reduce(self.values.clone()) / idist.get_world_size()
            packed = torch.cat([averages, idist.all_reduce(self._watch[1:].clone(), op="MAX")])
        numbers = packed.tolist()
        averages = dict(zip(self.names, numbers[: len(self.names)]))
        seen, value, update = numbers[len(self.names) :]
        if not seen:
            return averages, None
        updates = int(self._watch[0].item())
        self._watch[1:] = 0
        return averages, (value, updates - int(update))

    def state_dict(self) -> dict:
        """This process's averages (no collective: only rank 0 writes checkpoints)."""
        if self.values is None:
            return {"averages": dict(self._restored or {})}
        return {"averages": dict(zip(self.names, self.values.tolist()))}

    def load_state_dict(self, state: dict) -> None:
        if "averages" in state:
            self._restored = {k: float(v) for k, v in state["averages"].items() if v is not None}
            return
        # checkpoints of older versions: one ignite RunningAverage state per 'avg_<name>'
        restored = {}
        for key, metric_state in state.items():
            per_rank = metric_state.get("__metric_state_per_rank") if isinstance(metric_state, dict) else None
            value = per_rank[0].get("_value") if per_rank else None
            if key.startswith("avg_") and value is not None:
                restored[key[4:]] = float(value)
        self._restored = restored or None
