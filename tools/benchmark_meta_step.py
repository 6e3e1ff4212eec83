"""Time and peak memory of MMSI's meta step in both GRAD_MODEs against the standard step, on the same batch.

    python tools/benchmark_meta_step.py                       # CPU: ResNet-18 at 128x64, batch 32
    python tools/benchmark_meta_step.py --model bn_inception --size 227 227 --batch 80 --device cuda

Each case runs in a fresh process (peak memory: the process's maximum resident set on the CPU,
torch.cuda.max_memory_allocated on CUDA). 'standard' is forward + loss + backward + step; 'mmsi <mode>' is
MMSI's whole iteration: the same plus the meta step (weighted loss, virtual step, validation batch of 10
against a memory, weights) and the weighted loss's backward. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(args) -> dict:
    import torch

    from config import load_config
    from engine.methods.meta_step import pair_weights, raw_weight_gradient
    from layers.weighted_pair_losses import (
        contrastive_on_pairs,
        label_masks,
        mined_pairs,
        normalized_similarities,
        weighted_contrastive,
    )
    from modeling import build_model

    device = torch.device(args.device)
    cfg = load_config(
        None,
        [
            "MODEL.NAME",
            args.model,
            "MODEL.PRETRAIN_CHOICE",
            "none",
            "MODEL.EMBEDDING_DIM",
            "512",
            "MODEL.NECK",
            "no",
            "MODEL.BN_FREEZE",
            "yes",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=5e-4)
    classes = args.batch // 5
    images = torch.randn(args.batch, 3, *args.size, device=device)
    labels = torch.arange(args.batch, device=device) % classes
    val_images = torch.randn(10, 3, *args.size, device=device)
    val_labels = torch.arange(10, device=device) % classes
    memory = torch.nn.functional.normalize(torch.randn(classes * 100, 512, device=device), dim=1)
    memory_labels = torch.arange(classes * 100, device=device) % classes
    lrs = {name: 1e-5 for name, p in model.named_parameters() if p.requires_grad}

    def standard():
        feats = model(images)["feat"]
        sim = normalized_similarities(feats)
        loss = contrastive_on_pairs(sim, *mined_pairs("contrastive", sim, *label_masks(labels), 0.5))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def mmsi(mode):
        feats = model(images)["feat"]
        sim = normalized_similarities(feats)
        pos, neg = mined_pairs("contrastive", sim, *label_masks(labels), 0.5)

        def validation(val_feats):
            s = normalized_similarities(val_feats, memory)
            return contrastive_on_pairs(s, *mined_pairs("contrastive", s, *label_masks(val_labels, memory_labels), 0.5))

        result = raw_weight_gradient(
            model,
            images,
            lambda s, w: weighted_contrastive(s, pos, neg, w),
            val_images,
            validation,
            lrs,
            mode,
            feats=feats if mode == "double_backward" else None,
        )
        weights = pair_weights(result.weight_gradient, pos | neg)
        loss = weighted_contrastive(sim, pos, neg, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step = standard if args.case == "standard" else (lambda: mmsi(args.case.split()[1]))
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds": (time.perf_counter() - start) / args.iterations, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, nargs=2, default=[128, 64])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args)))
        return
    rows = []
    for case in ("standard", "mmsi double_backward", "mmsi jvp"):
        command = [sys.executable, __file__, "--case", case, "--model", args.model, "--size", *map(str, args.size)]
        command += ["--batch", str(args.batch), "--device", args.device, "--iterations", str(args.iterations)]
        command += ["--warmup", str(args.warmup)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append((case, json.loads(done.stdout.strip().splitlines()[-1])))
    base = rows[0][1]["seconds"]
    memory = "peak GPU memory (GiB)" if args.device.startswith("cuda") else "peak RSS (GiB)"
    print(f"{args.model} {args.size[0]}x{args.size[1]}, batch {args.batch}, {args.device}")
    print(f"| step | seconds / iteration | vs standard | {memory} |")
    print("|---|---|---|---|")
    for case, result in rows:
        print(f"| {case} | {result['seconds']:.3f} | {result['seconds'] / base:.2f}x | {result['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
