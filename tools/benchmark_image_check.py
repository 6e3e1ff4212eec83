#!/usr/bin/env python
"""What the image check before the first epoch (DATALOADER.CHECK_IMAGES) costs on a CUB-sized set.

    python tools/benchmark_image_check.py                      # 11,788 JPEGs in a temporary folder
    python tools/benchmark_image_check.py --root /data/fake_cub --threads 1,4,8

Writes (or reuses, under --root) as many JPEGs as CUB-200-2011 has: 500x375 pixels, quality 90, smooth
random colour fields with a little noise so that their file sizes are those of photographs (tens of KB),
not of noise or of flat colour. Then times data.image_check.find_bad_images with each mode ('header',
'decode') and each thread count, and prints one table. The files were just written, so they are read from
the page cache: the numbers are the CPU's cost; a cold disk adds its own read time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CUB_IMAGES = 11_788
SIZE = (500, 375)  # width, height: CUB's typical image


def _write_jpeg(path: Path, seed: int) -> int:
    """A smooth random colour field (a 16x12 grid upsampled) with mild noise, as a quality-90 JPEG; its size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)).resize(SIZE, Image.BILINEAR)
    pixels = np.asarray(field, dtype=np.int16) + rng.integers(-6, 7, size=(SIZE[1], SIZE[0], 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path.stat().st_size


def make_images(root: Path, count: int) -> list[str]:
    """`count` JPEGs under root/images/<class>/ (200 classes, as CUB), written in parallel; existing ones kept."""
    paths = [root / "images" / f"{i % 200:03d}" / f"{i:05d}.jpg" for i in range(count)]
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    missing = [(p, i) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        start = time.perf_counter()
        with ProcessPoolExecutor() as pool:
            sizes = list(pool.map(_write_jpeg, *zip(*missing), chunksize=64))
        print(
            f"wrote {len(missing):,} JPEGs ({sum(sizes) / len(sizes) / 1024:.0f} KB on average) in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return [str(p) for p in paths]


def main() -> None:
    from data.image_check import default_workers, find_bad_images
    from data.records import Record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="", help="folder for the images (kept); default: a temporary folder")
    parser.add_argument("--images", type=int, default=CUB_IMAGES, help="how many images (CUB-200-2011: 11,788)")
    parser.add_argument("--threads", default="", help="comma-separated thread counts; default: 1, 2 and the default")
    parser.add_argument("--modes", default="header,decode", help="comma-separated DATALOADER.CHECK_IMAGES modes")
    args = parser.parse_args()

    default = default_workers()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, 2, default})
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="image_check_bench_"))
    try:
        records = [Record(path, 0, -1) for path in make_images(root, args.images)]
        print(f"machine: {os.cpu_count()} CPU cores; default threads of the check: {default}")
        print(f"{'images':>8} | {'mode':<6} | {'threads':<11} | {'seconds':>7} | {'images/s':>8}")
        print(f"{'-' * 8}-+-{'-' * 6}-+-{'-' * 11}-+-{'-' * 7}-+-{'-' * 8}")
        for mode in args.modes.split(","):
            for workers in threads:
                start = time.perf_counter()
                bad = find_bad_images(records, mode, workers=workers)
                seconds = time.perf_counter() - start
                if bad:
                    raise SystemExit(f"the generated set has {len(bad)} bad images, e.g. {bad[0]}")
                label = f"{workers} (default)" if workers == default else str(workers)
                print(
                    f"{len(records):>8,} | {mode:<6} | {label:<11} | {seconds:>7.2f} | {len(records) / seconds:>8,.0f}"
                )
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
