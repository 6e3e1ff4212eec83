"""The GPU path's switches (engine/run/speed.py, solver/optimizer.py, data/build.py): each key reaches the object it
sets, 'auto' means on CUDA, and a torch.compile failure is one line. Their effect on speed is measured by
tools/benchmark_train.py, not here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from config import UserError, load_config
from data.build import training_loader
from data.image_dataset import ImageDataset
from data.records import Record
from data.samplers import RandomBatchSampler, SeededBatches
from engine.methods.base import Run
from engine.run.speed import CompiledModel, enabled, set_cudnn_benchmark, use_channels_last
from solver.optimizer import build_optimizer


class TinyCriterion(nn.Module):
    def parameter_groups(self):
        return {}

    def own_optimizers(self):
        return {}


@pytest.mark.parametrize(
    ("impl", "expected"),
    [("auto", {}), ("fused", {"fused": True}), ("foreach", {"foreach": True}), ("for_loop", {"foreach": False})],
)
def test_the_optimizer_implementation_follows_the_key(impl, expected):
    cfg = load_config(None, ["SOLVER.OPTIMIZER_IMPL", impl, "SOLVER.OPTIMIZER_NAME", "AdamW"])
    optimizer = build_optimizer(cfg, nn.Linear(4, 2), TinyCriterion())
    for key, value in expected.items():
        assert optimizer.defaults[key] is value
    if impl == "auto":  # parameters on the CPU: torch's own choice
        assert not optimizer.defaults.get("fused")


def test_auto_switches_mean_on_cuda_and_cudnn_benchmark_is_set():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert enabled("auto", cuda) and not enabled("auto", cpu) and enabled("yes", cpu) and not enabled("no", cuda)
    before = torch.backends.cudnn.benchmark
    try:
        set_cudnn_benchmark(load_config(None, ["SOLVER.CUDNN_BENCHMARK", "yes"]), cpu)
        assert torch.backends.cudnn.benchmark
        set_cudnn_benchmark(load_config(None, []), cpu)
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
    assert use_channels_last(load_config(None, ["MODEL.CHANNELS_LAST", "yes"]), cpu)
    assert not use_channels_last(load_config(None, []), cpu)


def test_channels_last_batches_reach_the_device_in_that_format():
    run = Run.__new__(Run)
    run.device, run.channels_last = torch.device("cpu"), True
    batch = run.to_device({"image": torch.randn(2, 3, 8, 4), "label": torch.tensor([0, 1]), "path": ["a", "b"]})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["label"].tolist() == [0, 1] and batch["path"] == ["a", "b"]


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, True)])
def test_persistent_workers_and_prefetch_reach_the_training_loader(workers, persistent, tmp_path):
    cfg = load_config(
        None,
        [
            "DATALOADER.NUM_WORKERS",
            str(workers),
            "DATALOADER.PREFETCH_FACTOR",
            "3",
            "DATALOADER.PERSISTENT_WORKERS",
            "yes",
        ],
    )
    dataset = ImageDataset([Record(str(tmp_path / "x.jpg"), 0, 0)], transform=None)
    loader = training_loader(cfg, dataset, SeededBatches(RandomBatchSampler(4, 2, 0)))
    assert loader.persistent_workers is persistent
    assert loader.prefetch_factor == (3 if workers else None)


def test_a_compile_failure_is_one_line(monkeypatch):
    class BackendCompilerFailed(RuntimeError):
        pass

    BackendCompilerFailed.__module__ = "torch._dynamo.exc"

    def failing_compile(module):
        def run(*args, **kwargs):
            raise BackendCompilerFailed("backend='inductor' raised:\nCompilationError: no C compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = CompiledModel(nn.Linear(3, 2))
    with pytest.raises(UserError, match=r"torch.compile failed \(backend='inductor' raised:\); set MODEL.COMPILE no"):
        model(torch.randn(1, 3))
    assert [p.shape for p in model.parameters()] == [torch.Size([2, 3]), torch.Size([2])]  # the module's own


def test_persistent_workers_are_ended_when_released(make_market_tree, tmp_path):
    # they ignore SIGTERM, which Python's exit would send them: the run ends them itself (train()'s finally)
    from data.build import build_train_loader, release_workers
    from data.datasets.market1501 import load_market_layout

    make_market_tree(tmp_path, train_ids=4, test_ids=2, images_per_id=4, cameras=2, size=(32, 16))
    cfg = load_config(
        None,
        [
            "DATALOADER.NUM_WORKERS", "2", "DATALOADER.PERSISTENT_WORKERS", "yes", "SOLVER.IMS_PER_BATCH", "4",
            "DATALOADER.NUM_INSTANCE", "2", "INPUT.SIZE_TRAIN", "[32, 16]",
        ],
    )  # fmt: skip
    splits = load_market_layout(tmp_path / "market1501", "market1501")
    loader = build_train_loader(cfg, splits.train)
    for _ in range(2):  # two epochs: the same workers
        assert sum(batch["image"].shape[0] for batch in loader) == len(loader) * 4
    workers = list(loader._iterator._workers)
    assert all(w.is_alive() for w in workers)
    release_workers(loader)
    assert not any(w.is_alive() for w in workers) and loader._iterator is None
    release_workers(loader)  # nothing left: a no-op
