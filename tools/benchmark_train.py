"""Training throughput: what the engine costs over a bare PyTorch loop, and whether the data pipeline keeps up.

For each case (a model, input size, batch and loss, as a recipe trains it), measured in this one process:
  (a) bare:    a plain loop: the same model, loss, optimizer and precision, on batches already on the device;
  (b) engine:  the engine's training step through the ignite trainer with every handler a run attaches (epoch
               seeding, the clock, progress averages and their reads, TensorBoard, schedule, checkpoint and
               evaluation filters, the signal watch) on the same in-memory batches;
  (c) full:    the same run reading the images from disk through the real training loader (the embedded demo
               dataset, generated on first use, resized to the case's input; as many batches per epoch as (b));
  (d) loader:  the training loader alone (images decoded and augmented per second), per worker count.
With `--set INPUT.AUGMENT_ON device` the batches of (a) and (b) hold uint8 images and augmentation parameters, and
(a) and (b) include the augmentation on the device; (d) is then the loaders' share alone (decode or cache read,
resize, parameter draws, collate). `--set DATALOADER.CACHE ram` caches the demo images before (c) and (d).
Columns: images/s, ratio to the bare loop, host reads of tensor values per iteration by the engine's own code
(the step's and handlers' synchronisations; on CUDA also torch's sync-debug count).

    python tools/benchmark_train.py                          # CPU presets (small sizes), 2 workers
    python tools/benchmark_train.py --device cuda --workers 8   # the recipes' sizes on a GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ignite.engine import Engine, Events  # noqa: E402

from config import load_config  # noqa: E402
from data.build import release_workers  # noqa: E402
from engine.handlers.graceful_stop import GracefulStop, SignalWatch  # noqa: E402
from engine.methods import build_method  # noqa: E402
from engine.run.seeding import seed_everything  # noqa: E402
from engine.training import attach_run_handlers, build_run  # noqa: E402

# name -> (KEY VALUE pairs, the CPU preset's overrides)
CASES = {
    "BoT ResNet-50 256x128 b64": (
        {"MODEL.NAME": "resnet50", "INPUT.SIZE_TRAIN": "[256, 128]", "SOLVER.IMS_PER_BATCH": "64",
         "DATALOADER.NUM_INSTANCE": "4", "MODEL.METRIC_LOSS_TYPE": "triplet", "MODEL.CLS_LOSS_TYPE": "softmax",
         "MODEL.IF_LABELSMOOTH": "on", "MODEL.NECK": "bnneck", "MODEL.LAST_STRIDE": "1"},
        {"MODEL.NAME": "resnet18", "INPUT.SIZE_TRAIN": "[128, 64]", "SOLVER.IMS_PER_BATCH": "32"},
    ),
    "NAMA ResNet-50 256x128 b120": (
        {"MODEL.NAME": "resnet50", "INPUT.SIZE_TRAIN": "[256, 128]", "SOLVER.IMS_PER_BATCH": "120",
         "DATALOADER.NUM_INSTANCE": "10", "MODEL.ARCH": "uc-bn-no", "MODEL.METRIC_LOSS_TYPE": "uc-tri-n",
         "MODEL.CLS_LOSS_TYPE": "softmax", "MODEL.NECK": "no", "MODEL.F_BASE": "nn_128", "SOLVER.S": "32",
         "SOLVER.MARGIN": "0.2"},
        {"MODEL.NAME": "resnet18", "INPUT.SIZE_TRAIN": "[128, 64]", "SOLVER.IMS_PER_BATCH": "40"},
    ),
    "Proxy Anchor BN-Inception 224 b180": (
        {"MODEL.NAME": "bn_inception", "INPUT.SIZE_TRAIN": "[224, 224]", "SOLVER.IMS_PER_BATCH": "180",
         "MODEL.METRIC_LOSS_TYPE": "proxy_anchor", "MODEL.CLS_LOSS_TYPE": "none", "MODEL.NECK": "no",
         "MODEL.EMBEDDING_DIM": "512", "MODEL.EMBEDDING_NORM": "yes", "MODEL.POOLING": "avg+max",
         "DATALOADER.SAMPLER": "softmax", "INPUT.TRANSFORM": "retrieval", "SOLVER.OPTIMIZER_NAME": "AdamW"},
        {"INPUT.SIZE_TRAIN": "[112, 112]", "SOLVER.IMS_PER_BATCH": "36"},
    ),
}  # fmt: skip

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")
ENGINE_PARTS = tuple(str(ROOT / part) for part in ("engine", "layers", "data", "solver", "modeling"))


class HostReads:
    """Counts host reads of tensor values made directly by the engine's code (while active)."""

    def __init__(self):
        self.count = 0
        self.active = False
        self._originals = {}

    def __enter__(self):
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original

            def counted(tensor, *args, _original=original, **kwargs):
                if self.active and sys._getframe(1).f_code.co_filename.startswith(ENGINE_PARTS):
                    self.count += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)


def case_config(keys: dict, args, output_dir: Path):
    pairs = {
        "MODEL.PRETRAIN_CHOICE": "none",
        "DATASETS.NAMES": "demo",
        "DATASETS.ROOT_DIR": args.data_root,
        "DATALOADER.NUM_WORKERS": str(args.workers),
        "MODEL.DEVICE": args.device,
        "SOLVER.AMP": args.amp,
        "SOLVER.MAX_EPOCHS": "1000",  # stopped after the timed epochs: no evaluation, no checkpoint
        "SOLVER.EVAL_PERIOD": "1000",
        "SOLVER.CHECKPOINT_PERIOD": "1000",
        "SOLVER.WARMUP_ITERS": "0",
        "SOLVER.LOG_PERIOD": "20",
        "LOG.PLOTS": "no",
        "DATALOADER.CHECK_IMAGES": "off",
        "OUTPUT_DIR": str(output_dir),
        **keys,
    }
    pairs["INPUT.SIZE_TEST"] = pairs["INPUT.SIZE_TRAIN"]
    return load_config(None, [x for kv in pairs.items() for x in kv])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class InMemoryBatches:
    """`count` batches on the device, as the training loader would give them (the same tensors each epoch)."""

    def __init__(self, loader, count: int, device: torch.device):
        batches = []
        for batch in loader:
            batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
            if len(batches) == count:
                break
        self.batches = [batches[i % len(batches)] for i in range(count)]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class FirstBatches:
    """The first `count` batches of each pass over `loader` (the training loader, read from disk as in a run), so
    that (c) times as many iterations per epoch as (a) and (b)."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, min(count, len(loader))
        self.batch_sampler, self.generator = loader.batch_sampler, loader.generator  # reseeded as the loader is

    def __len__(self):
        return self.count

    def __iter__(self):
        iterator = iter(self.loader)
        for _ in range(self.count):
            yield next(iterator)


def bare_loop(run, batches: InMemoryBatches, epochs: int) -> float:
    """Images/s of a plain loop over the batches (after one warm-up epoch): forward, loss, backward, step."""
    model, criterion, solver, scaler, precision = run.model, run.criterion, run.solver, run.scaler, run.precision
    model.train()
    criterion.train()

    def one_epoch():
        for batch in batches:
            if run.augment is not None:  # INPUT.AUGMENT_ON device: the batch holds uint8 images and parameters
                batch = run.augment(batch)
            solver.zero_grad()
            with precision.autocast():
                outputs = model(batch["image"])
            loss, _ = criterion(outputs, batch)
            scaler.scale(loss).backward()
            solver.step(scaler)
            scaler.update()

    one_epoch()
    synchronize(run.device)
    start = time.perf_counter()
    for _ in range(epochs):
        one_epoch()
    synchronize(run.device)
    return epochs * len(batches) * batches.batches[0]["image"].shape[0] / (time.perf_counter() - start)


def engine_run(run, loader, epochs: int, reads: HostReads) -> tuple[float, float, int]:
    """Images/s of the engine over `loader` for `epochs` epochs after a warm-up epoch, host reads per
    iteration, and torch's CUDA synchronisations per iteration (sync debug mode; 0 on the CPU)."""
    run.data.train_loader = loader
    method = build_method(run.cfg, run)
    trainer = Engine(method.process_function())
    stop = GracefulStop(SignalWatch(), method.at_step_boundary)
    attach_run_handlers(trainer, run, method, stop)
    marks = {}

    @trainer.on(Events.EPOCH_STARTED(once=2))
    def _start(engine):
        synchronize(run.device)
        marks["start"], marks["iteration"] = time.perf_counter(), engine.state.iteration
        reads.count, reads.active = 0, True
        if run.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")

    @trainer.on(Events.EPOCH_COMPLETED(once=epochs + 1))
    def _stop(engine):
        synchronize(run.device)
        marks["seconds"] = time.perf_counter() - marks["start"]
        reads.active = False
        if run.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        engine.terminate()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run(loader, max_epochs=1000)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    iterations = trainer.state.iteration - marks["iteration"]
    images = iterations * run.cfg.SOLVER.IMS_PER_BATCH
    return images / marks["seconds"], reads.count / iterations, syncs / iterations


def loader_alone(loader, batches: int) -> float:
    """Images/s of the training loader (decode + augment + collate), after its first batch."""
    iterator = iter(loader)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images += next(iterator)["image"].shape[0]
        except StopIteration:
            break
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of (c)")
    parser.add_argument("--loader-workers", default="0,2", help="worker counts for (d)")
    parser.add_argument("--iterations", type=int, default=10, help="batches per timed epoch of (a) and (b)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-3) or 'all'")
    parser.add_argument("--data-root", default=str(ROOT / "datasets"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY VALUE", help="pairs for every case")
    parser.add_argument("--loader-only", action="store_true", help="measure (d) alone")
    args = parser.parse_args()
    if len(args.set) % 2:
        parser.error("--set takes KEY VALUE pairs")
    extra = dict(zip(args.set[::2], args.set[1::2]))
    device = torch.device(args.device)
    cpu_preset = device.type == "cpu"
    chosen = list(CASES) if args.cases == "all" else [list(CASES)[int(i) - 1] for i in args.cases.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder, HostReads() as reads:
        for number, name in enumerate(chosen):
            keys, cpu_keys = CASES[name]
            keys = {**keys, **(cpu_keys if cpu_preset else {}), **extra}
            cfg = case_config(keys, args, Path(folder) / f"case{number}")
            seed_everything(cfg.SEED)
            size = "x".join(str(v) for v in cfg.INPUT.SIZE_TRAIN)
            label = f"{name}: {cfg.MODEL.NAME} {size} b{cfg.SOLVER.IMS_PER_BATCH}"
            bare = None
            if not args.loader_only:
                run = build_run(cfg, Path(folder) / f"case{number}")
                real_loader = run.data.train_loader
                batches = InMemoryBatches(real_loader, args.iterations, device)
                bare = bare_loop(run, batches, args.epochs)
                step, step_reads, step_syncs = engine_run(build_run(cfg, Path(folder) / f"b{number}"), batches,
                                                          args.epochs, reads)  # fmt: skip
                full_run = build_run(cfg, Path(folder) / f"c{number}")
                disk = FirstBatches(full_run.data.train_loader, args.iterations)
                full, full_reads, full_syncs = engine_run(full_run, disk, args.epochs, reads)
                rows.append((label, "(a) bare loop", bare, 1.0, "-", "-"))
                rows.append(("", "(b) engine step", step, step / bare, f"{step_reads:.2f}", f"{step_syncs:.2f}"))
                rows.append(("", f"(c) full engine, {args.workers} workers", full, full / bare, f"{full_reads:.2f}",
                             f"{full_syncs:.2f}"))  # fmt: skip
            for workers in (int(w) for w in args.loader_workers.split(",")):
                loader_cfg = case_config({**keys, "DATALOADER.NUM_WORKERS": str(workers)}, args, Path(folder) / "d")
                loader_run = build_run(loader_cfg, Path(folder) / f"d{number}_{workers}")
                speed = loader_alone(loader_run.data.train_loader, args.iterations * args.epochs)
                release_workers(loader_run.data.train_loader)
                rows.append(("" if bare else label, f"(d) loader alone, {workers} workers", speed,
                             speed / bare if bare else None, "-", "-"))  # fmt: skip
    precision = "fp16" if args.amp == "auto" and device.type == "cuda" else args.amp
    print(f"\n{device}, precision {precision}, torch {torch.__version__}; {args.iterations} batches per timed epoch "
          f"of (a)/(b), {args.epochs} timed epochs after a warm-up one; {extra or 'default switches'}\n")  # fmt: skip
    print("| case | measured | images/s | vs bare loop | host reads / iteration | CUDA syncs / iteration |")
    print("|---|---|---|---|---|---|")
    for case, what, speed, ratio, host, syncs in rows:
        print(f"| {case} | {what} | {speed:.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} | {host} | {syncs} |")


if __name__ == "__main__":
    main()
