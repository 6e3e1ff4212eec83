"""What a Divide & Conquer re-clustering costs (engine/methods/dc): embedding the training set with the test
transform, then k-means, against the training epoch it precedes.

Writes N generated JPEGs (CUB size by default: 5,864 training images of 500x375), then times, with the engine's
own code:
  - features: the clustering loader (test transform) and the model's pooled backbone features (eval mode);
  - k-means at each kind of round of the top_bot hierarchy: a split (K/2 clusters -> K, one 2-means per cluster)
    and a flat round at K (k-means with K + the Hungarian re-assignment), for K = 2, 4, ..., NB_CLUSTERS;
  - an epoch's model steps: forward + backward + Adam step on batches of --batch random images (no data loading),
    times N / batch, the figure the re-clustering is compared with.
Prints one table (markdown). Example (CPU, CUB size, a ResNet-18):
    python tools/benchmark_recluster.py --backbone resnet18 --size 224 --device cpu
and on a GPU at SOP size (59,551 training images):
    python tools/benchmark_recluster.py --images 59551 --backbone resnet50 --device cuda --workers 8 --clusters 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_config  # noqa: E402
from data.build import build_eval_loader  # noqa: E402
from data.records import Record  # noqa: E402
from engine.evaluation.kmeans import kmeans  # noqa: E402
from engine.methods.dc.clustering import hungarian_reassignment, kmeans_with_retries, split_in_two  # noqa: E402
from engine.methods.dc.features import pooled_features  # noqa: E402
from engine.run.precision import resolve_precision  # noqa: E402
from modeling import build_model  # noqa: E402


def write_images(folder: Path, start: int, count: int, width: int, height: int) -> None:
    """`count` JPEGs of smooth random colour fields with noise (JPEG sizes close to photographs')."""
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-20, 20, size=(height, width, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def make_dataset(folder: Path, count: int, classes: int, width: int, height: int, workers: int) -> list[Record]:
    chunks = np.array_split(np.arange(count), max(1, workers * 4))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = [pool.submit(write_images, folder, int(c[0]), len(c), width, height) for c in chunks if len(c)]
        for job in jobs:
            job.result()
    return [Record(str(folder / f"{i:06d}.jpg"), i % classes, 0) for i in range(count)]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def epoch_steps_seconds(cfg, device: torch.device, batch: int, images: int, repeats: int = 3) -> float:
    """Seconds of one epoch's model steps: forward + backward + Adam on `batch` random images, x images / batch."""
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    precision = resolve_precision(cfg.SOLVER.AMP, device)
    x = torch.randn(batch, 3, *cfg.INPUT.SIZE_TRAIN, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            feat = model(x)["feat"]
        feat.float().square().mean().backward()
        optimizer.step()

    step()  # warm-up (cudnn autotuning, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * (images / batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5864, help="training images (CUB: 5,864; SOP: 59,551)")
    parser.add_argument("--classes", type=int, default=100, help="training classes (CUB: 100; SOP: 11,318)")
    parser.add_argument("--image-size", default="500x375", help="generated JPEGs, WIDTHxHEIGHT")
    parser.add_argument("--size", type=int, default=224, help="the test transform's crop (resize to size x 8/7)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=80, help="training batch (the D&C recipes: 80)")
    parser.add_argument("--test-batch", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=32, help="NB_CLUSTERS: rounds timed for K = 2, 4, ..., this")
    parser.add_argument("--niter", type=int, default=100)
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args()

    width, height = (int(v) for v in args.image_size.split("x"))
    device = torch.device(args.device)
    resize = round(args.size * 8 / 7)
    cfg = load_config(
        None,
        [
            "MODEL.NAME", args.backbone, "MODEL.PRETRAIN_CHOICE", "none", "MODEL.EMBEDDING_DIM", "512",
            "MODEL.NECK", "no", "MODEL.BN_FREEZE", "yes", "INPUT.TRANSFORM", "retrieval",
            "INPUT.SIZE_TRAIN", f"[{args.size}, {args.size}]", "INPUT.SIZE_TEST", f"[{args.size}, {args.size}]",
            "INPUT.RESIZE_TEST", str(resize), "TEST.IMS_PER_BATCH", str(args.test_batch),
            "DATALOADER.NUM_WORKERS", str(args.workers), "SOLVER.AMP", args.amp, "MODEL.DEVICE", args.device,
        ],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        records, made = timed(
            lambda: make_dataset(Path(folder), args.images, args.classes, width, height, max(args.workers, 1))
        )
        print(f"wrote {args.images} JPEGs of {width}x{height} in {made:.1f} s", file=sys.stderr)
        model = build_model(cfg).to(device)
        precision = resolve_precision(cfg.SOLVER.AMP, device)
        loader = build_eval_loader(cfg, records, "retrieval", shard=False)
        pooled_features(model, [next(iter(loader))], precision, device)  # warm-up
        features, feature_seconds = timed(lambda: pooled_features(model, loader, precision, device))
    classes = np.asarray([r.label for r in records])
    epoch = epoch_steps_seconds(cfg, device, args.batch, args.images)
    backend = kmeans(features[:64], 2, 1, 0)[1]  # the backend, and its first-call cost out of the timings
    rows = []
    k = 2
    while k <= args.clusters:
        previous = kmeans(features, k // 2, args.niter, 0)[0] if k > 2 else np.zeros(len(features), np.int64)
        split, split_seconds = timed(
            lambda k=k, previous=previous: split_in_two(features, classes, previous, k // 2, 0, 30, args.niter)
        )
        flat, flat_seconds = timed(
            lambda k=k, named=split.assignment: hungarian_reassignment(
                kmeans_with_retries(features, classes, k, 0, 30, args.niter).assignment, named, k
            )
        )
        rows.append((k, split_seconds, flat_seconds, split.tries))
        k *= 2
    dtype = str(precision.dtype).replace("torch.", "") if precision.enabled else "fp32"
    print(
        f"\n{args.images} images ({width}x{height} JPEG), {args.backbone} at {args.size}x{args.size}, {device}, "
        f"{args.workers} workers, precision {dtype}, k-means: {backend}, {args.niter} iterations\n"
    )
    print(f"features (clustering loader + pooled backbone features): {feature_seconds:.1f} s, "
          f"{args.images / feature_seconds:.0f} images/s, {features.shape[1]}-d")  # fmt: skip
    print(f"an epoch's model steps (batch {args.batch}, no data loading): {epoch:.1f} s\n")
    print("| K | split round (K/2 -> K) s | flat round at K s | features + split s | share of an epoch |")
    print("|---|---|---|---|---|")
    for k, split_seconds, flat_seconds, _ in rows:
        total = feature_seconds + split_seconds
        print(f"| {k} | {split_seconds:.2f} | {flat_seconds:.2f} | {total:.1f} | {100 * total / epoch:.0f} % |")


if __name__ == "__main__":
    main()
