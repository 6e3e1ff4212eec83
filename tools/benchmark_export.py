#!/usr/bin/env python
"""Export time and onnxruntime vs PyTorch throughput on the CPU, for the models the recipes export.

    python tools/benchmark_export.py                         # both cases, batch 32, 2 threads
    python tools/benchmark_export.py --cases resnet50 --repeats 5

Each case builds its model with random weights (MODEL.PRETRAIN_CHOICE none), saves them as a checkpoint and runs
engine/inference/onnx_export.py's export_model on it (the exporter, the metadata, the onnxruntime check, the write).
It prints the seconds of the conversion alone and of the whole export, the file's size, the images/s of
PyTorch (the test-time embedder in eval mode, no_grad) and of onnxruntime (CPUExecutionProvider) on the same
random batch, their ratio and the largest difference of their embeddings. Both run with the same number of
threads (torch.set_num_threads, intra_op_num_threads); the fastest of --repeats timed runs after one warm-up
counts. Each case runs in a fresh process, so that the exporter's one-time start-up is in every export time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_eval import in_child  # noqa: E402  (a sibling script: fresh processes per measurement)

# name: (title, KEY VALUE pairs as the recipes export)
CASES = {
    "resnet50": (
        "re-ID ResNet-50 + BNNeck",
        {"MODEL.NAME": "resnet50", "MODEL.NECK": "bnneck", "MODEL.LAST_STRIDE": "1", "INPUT.SIZE_TEST": "[256, 128]"},
    ),
    "bn_inception": (
        "retrieval BN-Inception 512-d",
        {"MODEL.NAME": "bn_inception", "MODEL.NECK": "no", "MODEL.EMBEDDING_DIM": "512", "MODEL.POOLING": "avg+max",
         "DATASETS.NAMES": "cub", "INPUT.SIZE_TEST": "[224, 224]", "INPUT.RESIZE_TEST": "256"},
    ),
}  # fmt: skip


def _best_rate(run, images: int, repeats: int) -> float:
    """Images/s of the fastest of `repeats` timed calls of `run`, after one warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return images / best


def _measure(name: str, batch: int, repeats: int, threads: int, out) -> None:
    import numpy as np
    import onnxruntime
    import torch

    from config import load_config
    from engine.inference.export_metadata import input_convention, normalise_pixels
    from engine.inference.onnx_export import export_model
    from modeling import build_model
    from modeling.state_checksum import with_checksum
    from modeling.test_time import build_test_time_embedder

    torch.set_num_threads(threads)
    keys = {"MODEL.PRETRAIN_CHOICE": "none", **CASES[name][1]}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "random.pt"
        torch.manual_seed(0)
        model = build_model(load_config(None, [x for kv in keys.items() for x in kv]), load_pretrained=False)
        torch.save(with_checksum({"model": model.state_dict()}), checkpoint)
        cfg = load_config(None, [x for kv in {**keys, "TEST.WEIGHT": str(checkpoint)}.items() for x in kv])
        start = time.perf_counter()
        result = export_model(cfg, output=Path(folder) / "model.onnx")
        total = time.perf_counter() - start
        size_mb = result.path.stat().st_size / 1e6

        embedder = build_test_time_embedder(cfg)
        pixels = torch.rand(batch, 3, *cfg.INPUT.SIZE_TEST, generator=torch.Generator().manual_seed(0))
        images = normalise_pixels(pixels, input_convention(cfg))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy()}

        def torch_run():
            with torch.no_grad():
                return embedder(images)

        torch_rate = _best_rate(torch_run, batch, repeats)
        ort_rate = _best_rate(lambda: session.run(["embeddings"], feed), batch, repeats)
        diff = float(np.abs(session.run(["embeddings"], feed)[0] - torch_run().numpy()).max())
    size = "x".join(str(v) for v in cfg.INPUT.SIZE_TEST)
    out.put((CASES[name][0], f"{cfg.MODEL.NAME} {size}", result.exporter, result.export_seconds, total, size_mb,
             torch_rate, ort_rate, diff))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--batch", type=int, default=32, help="images per timed batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    logging.basicConfig(level=logging.WARNING)
    print(f"batch {args.batch}, {args.threads} threads, best of {args.repeats} runs after one warm-up")
    print(
        "| case | model, input | exporter | conversion s | export + check + write s | file MB | PyTorch images/s | "
        "onnxruntime images/s | onnxruntime / PyTorch | max abs diff |"
    )
    print("|" + "---|" * 10)
    for name in cases:
        title, model, exporter, seconds, total, size_mb, torch_rate, ort_rate, diff = in_child(
            _measure, name, args.batch, args.repeats, args.threads
        )
        print(
            f"| {title} | {model} | {exporter} | {seconds:.1f} | {total:.1f} | {size_mb:.1f} | {torch_rate:.1f} | "
            f"{ort_rate:.1f} | {ort_rate / torch_rate:.2f} | {diff:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
