#!/usr/bin/env python
"""Evaluation cost against its compute floor, on random features.

    python tools/benchmark_eval.py                       # market, msmt17, sop on the CPU
    python tools/benchmark_eval.py --cases market --device cuda --repeats 3
    python tools/benchmark_eval.py --cases msmt17 --busy 1     # while one other process keeps a core busy

For each case it prints the seconds of the bare distance-matrix product (computed chunk by chunk, the
floor every exact evaluator pays), the seconds of the full evaluation (`reid_metrics` or
`retrieval_metrics`), their ratio, and the peak resident memory of the evaluation above the memory the
features themselves take. Each measurement runs in a fresh process so peaks do not mix. The re-ID ranking's
compiled CPU kernel is loaded before the timer starts (its load, shown in its own column, happens while a run
extracts the features).

A second table gives the feature extraction's images/s for the models the recipes evaluate with: a bare loop
(the model's forward pass in eval mode on batches already on the device, under the run's precision) and the
engine's extractor (the ignite evaluator with its metric's per-batch updates and the final gather, on the same
batches), with their ratio and the extractor's host reads of tensor values in the whole run (the metric's
reads when it ranks, whatever the number of batches). On the CPU the models run
at preset sizes (ResNet-18 at 128x64, BN-Inception at 112x112) unless --full-size is given.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name: (queries, gallery or None for query = gallery, dim, number of ids/classes, cameras, protocol, Ks)
CASES = {
    "market": (3368, 15913, 2048, 751, 6, "reid", None),
    "msmt17": (11659, 82161, 2048, 3060, 15, "reid", None),
    "sop": (60502, None, 512, 11316, 0, "retrieval", (1, 10, 100, 1000)),
}


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _make(case: str, device: str, seed: int = 0):
    import torch

    q, g, d, ids, cams, _, _ = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    qf = torch.nn.functional.normalize(torch.randn(q, d, generator=gen), dim=1).to(device)
    gf = None if g is None else torch.nn.functional.normalize(torch.randn(g, d, generator=gen), dim=1).to(device)
    ql = torch.randint(0, ids, (q,), generator=gen).to(device)
    gl = None if g is None else torch.randint(0, ids, (g,), generator=gen).to(device)
    qc = torch.randint(0, max(cams, 1), (q,), generator=gen).to(device)
    gc = None if g is None else torch.randint(0, max(cams, 1), (g,), generator=gen).to(device)
    return qf, gf, ql, gl, qc, gc


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _floor(case: str, device: str, chunk: int, threads: int, out) -> None:
    import torch

    torch.set_num_threads(threads)
    qf, gf, *_ = _make(case, device)
    gallery = qf if gf is None else gf
    buffer = torch.empty(chunk, gallery.shape[0], device=device)
    _sync(device)
    start = time.perf_counter()
    for s in range(0, qf.shape[0], chunk):
        block = qf[s : s + chunk]
        torch.mm(block, gallery.t(), out=buffer[: block.shape[0]])
    _sync(device)
    out.put(time.perf_counter() - start)


def _evaluate(case: str, device: str, chunk: int, threads: int, out) -> None:
    import torch

    from engine.evaluation.match_count_kernel import load_kernel
    from engine.evaluation.reid_metrics import reid_metrics, uses_compiled_kernel
    from engine.evaluation.retrieval_metrics import retrieval_metrics

    torch.set_num_threads(threads)
    qf, gf, ql, gl, qc, gc = _make(case, device)
    _sync(device)
    load_seconds = 0.0
    if CASES[case][5] == "reid" and uses_compiled_kernel(qf.shape[0], gf.shape[0], qf.device, chunk):
        # a run loads the ranking kernel while it extracts the features (engine/evaluation/dataset_evaluation.py)
        start = time.perf_counter()
        load_kernel()
        load_seconds = time.perf_counter() - start
    base = _vm_kib("VmRSS")
    try:  # reset the high-water mark so that making the features does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    gpu_base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if CASES[case][5] == "reid":
        result = reid_metrics(qf, gf, ql, gl, qc, gc, chunk_size=chunk)
        summary = f"rank1 {result['rank1']:.4f} mAP {result['mAP']:.4f}"
    else:
        result = retrieval_metrics(qf, ql, ks=CASES[case][6], chunk_size=chunk)
        summary = f"R@1 {result['R@1']:.4f} MAP@R {result['MAP@R']:.4f}"
    _sync(device)
    seconds = time.perf_counter() - start
    peak = max(_vm_kib("VmHWM") - base, 0) / 1024**2  # GiB
    gpu_peak = (torch.cuda.max_memory_allocated() - gpu_base) / 1024**3 if device.startswith("cuda") else 0.0
    out.put((seconds, peak, gpu_peak, summary, load_seconds))


# name -> (KEY VALUE pairs as the recipes evaluate, the CPU preset's overrides)
EXTRACTION_CASES = {
    "re-ID ResNet-50 256x128 b256": (
        {"MODEL.NAME": "resnet50", "INPUT.SIZE_TEST": "[256, 128]", "TEST.IMS_PER_BATCH": "256",
         "MODEL.NECK": "bnneck", "MODEL.LAST_STRIDE": "1"},
        {"MODEL.NAME": "resnet18", "INPUT.SIZE_TEST": "[128, 64]", "TEST.IMS_PER_BATCH": "64"},
    ),
    "retrieval BN-Inception 224 b180": (
        {"MODEL.NAME": "bn_inception", "INPUT.SIZE_TEST": "[224, 224]", "TEST.IMS_PER_BATCH": "180",
         "MODEL.NECK": "no", "MODEL.EMBEDDING_DIM": "512", "MODEL.POOLING": "avg+max"},
        {"INPUT.SIZE_TEST": "[112, 112]", "TEST.IMS_PER_BATCH": "60"},
    ),
}  # fmt: skip


def _extract(name: str, device: str, batches: int, threads: int, full_size: bool, out) -> None:
    """Images/s of a bare forward loop and of the engine's extractor on the same in-memory batches, and the
    extractor's host reads in the whole run (counted around the tensor reads made by the engine's own files)."""
    import numpy as np
    import torch
    from benchmark_train import HostReads  # a sibling script: tools/ is on the path of a script run from it

    from config import load_config
    from engine.evaluation.dataset_evaluation import build_evaluator
    from engine.evaluation.protocol import EvalSpec
    from engine.run.precision import resolve_precision
    from engine.run.speed import use_channels_last
    from modeling import build_model

    torch.set_num_threads(threads)
    keys, preset = EXTRACTION_CASES[name]
    if device == "cpu" and not full_size:
        keys = {**keys, **preset}
    cfg = load_config(
        None, [x for kv in {"MODEL.DEVICE": device, "MODEL.PRETRAIN_CHOICE": "none", **keys}.items() for x in kv]
    )
    dev = torch.device(device)
    model = build_model(cfg, load_pretrained=False).to(dev).eval()
    memory_format = torch.channels_last if use_channels_last(cfg, dev) else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    precision = resolve_precision(cfg.SOLVER.AMP, dev)
    size, per_batch = list(cfg.INPUT.SIZE_TEST), cfg.TEST.IMS_PER_BATCH
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(per_batch, 3, *size, generator=gen).to(dev, memory_format=memory_format)
    items = batches * per_batch
    data = [
        {"image": images, "label": torch.arange(per_batch) % 8, "camid": torch.full((per_batch,), b % 2),
         "index": torch.arange(b * per_batch, (b + 1) * per_batch)}
        for b in range(batches)
    ]  # fmt: skip
    half = batches // 2 * per_batch  # first half queries (camera 0 and 1 alternate by batch), second half gallery
    spec = EvalSpec("bench", "reid", False, [(np.arange(half), np.arange(half, items))], ())

    @torch.no_grad()
    def bare() -> None:
        for batch in data:
            with precision.autocast():
                model(batch["image"])

    evaluator, _ = build_evaluator(cfg, model, precision, dev, spec)
    bare()  # warm-up (cuDNN, allocator)
    evaluator.run(data)
    _sync(device)
    start = time.perf_counter()
    bare()
    _sync(device)
    bare_seconds = time.perf_counter() - start
    with HostReads() as reads:  # tools/benchmark_train.py's counter of the engine's host reads
        reads.active = True
        start = time.perf_counter()
        evaluator.run(data)
        _sync(device)
        engine_seconds = time.perf_counter() - start
    out.put((items / bare_seconds, items / engine_seconds, reads.count, f"{cfg.MODEL.NAME} {size}"))


def _spin() -> None:
    """A competing process: keeps one core busy until it is terminated."""
    value = 1.0
    while True:
        value = value * 1.0000001 % 1e6


def in_child(target, *args):
    """target(*args, queue) in a fresh spawned process; what it puts in the queue (peaks and timings do not mix)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="market,msmt17,sop", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="queries per chunk (TEST.EVAL_CHUNK); 0 = the metrics' defaults (re-ID 256, retrieval 1024)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the fastest is shown")
    parser.add_argument("--busy", type=int, default=0, help="competing processes, each keeping one core busy")
    parser.add_argument("--extract-batches", type=int, default=4, help="batches per extraction run; 0: no table")
    parser.add_argument("--full-size", action="store_true", help="the recipes' models and sizes on the CPU too")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")

    spinners = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    if spinners:
        print(f"{len(spinners)} competing process(es) keep a core busy each")
    try:
        _measure(args, cases)
        if args.extract_batches > 0:
            _measure_extraction(args)
    finally:
        for spinner in spinners:
            spinner.terminate()


def _measure(args, cases: list[str]) -> None:
    print(
        "| case | Q x G x D | floor s | eval s | eval / floor | peak RAM above features GB | GPU peak GB | "
        "kernel load s | result |"
    )
    print("|" + "---|" * 9)
    for case in cases:
        q, g, d = CASES[case][:3]
        chunk = args.chunk or (256 if CASES[case][5] == "reid" else 1024)
        floor = min(in_child(_floor, case, args.device, chunk, args.threads) for _ in range(args.repeats))
        runs = [in_child(_evaluate, case, args.device, chunk, args.threads) for _ in range(args.repeats)]
        seconds, peak, gpu_peak, summary, load_seconds = min(runs)
        size = f"{q} x {g if g else q} x {d}" + ("" if g else " (q = g)")
        print(
            f"| {case} | {size} | {floor:.2f} | {seconds:.2f} | {seconds / floor:.2f} | {peak:.2f} | "
            f"{gpu_peak:.2f} | {load_seconds:.2f} | {summary} |",
            flush=True,
        )


def _measure_extraction(args) -> None:
    print()
    print(
        "| extraction | model, input | bare images/s | extractor images/s | extractor / bare | extractor host reads |"
    )
    print("|" + "---|" * 6)
    for name in EXTRACTION_CASES:
        runs = [
            in_child(_extract, name, args.device, args.extract_batches, args.threads, args.full_size)
            for _ in range(args.repeats)
        ]
        bare, engine, reads, model = max(runs, key=lambda run: run[1])
        print(f"| {name} | {model} | {bare:.1f} | {engine:.1f} | {engine / bare:.2f} | {reads} |", flush=True)


if __name__ == "__main__":
    main()
