#!/usr/bin/env python
"""Evaluation cost against its compute floor, on random features.

    python tools/benchmark_eval.py                       # market, msmt17, sop on the CPU
    python tools/benchmark_eval.py --cases market --device cuda --repeats 3
    python tools/benchmark_eval.py --cases msmt17 --busy 1     # while one other process keeps a core busy

For each case it prints the seconds of the bare distance-matrix product (computed chunk by chunk, the
floor every exact evaluator pays), the seconds of the full evaluation (`reid_metrics` or
`retrieval_metrics`), their ratio, and the peak resident memory of the evaluation above the memory the
features themselves take. Each measurement runs in a fresh process so peaks do not mix.
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

    from engine.evaluation.reid_metrics import reid_metrics
    from engine.evaluation.retrieval_metrics import retrieval_metrics

    torch.set_num_threads(threads)
    qf, gf, ql, gl, qc, gc = _make(case, device)
    _sync(device)
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
    out.put((seconds, peak, gpu_peak, summary))


def _spin() -> None:
    """A competing process: keeps one core busy until it is terminated."""
    value = 1.0
    while True:
        value = value * 1.0000001 % 1e6


def _in_child(target, *args):
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
    finally:
        for spinner in spinners:
            spinner.terminate()


def _measure(args, cases: list[str]) -> None:
    header = (
        "| case | Q x G x D | floor s | eval s | eval / floor | peak RAM above features GB | GPU peak GB | result |"
    )
    print(header)
    print("|" + "---|" * 8)
    for case in cases:
        q, g, d = CASES[case][:3]
        chunk = args.chunk or (256 if CASES[case][5] == "reid" else 1024)
        floor = min(_in_child(_floor, case, args.device, chunk, args.threads) for _ in range(args.repeats))
        runs = [_in_child(_evaluate, case, args.device, chunk, args.threads) for _ in range(args.repeats)]
        seconds, peak, gpu_peak, summary = min(runs)
        size = f"{q} x {g if g else q} x {d}" + ("" if g else " (q = g)")
        print(
            f"| {case} | {size} | {floor:.2f} | {seconds:.2f} | {seconds / floor:.2f} | {peak:.2f} | "
            f"{gpu_peak:.2f} | {summary} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
