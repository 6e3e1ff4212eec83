#!/usr/bin/env python
"""Write the embedded demo re-ID dataset (Market-1501 layout) to a folder.

    python tools/make_demo_data.py --root datasets/demo-market-seed0 --seed 0

By default this is the cached path the engine uses (``ensure_demo_market``):
an existing finished tree with the same parameters is reused, a missing one
is generated into a temporary sibling folder and renamed into place.  Sizes
default to ``data.demo_generator.DEFAULT_DEMO_PARAMS``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.demo_generator import (  # noqa: E402
    DEFAULT_DEMO_PARAMS,
    SPLIT_DIRS,
    ensure_demo_market,
    generate_demo_market,
    read_demo_marker,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--root", required=True, help="output folder (gets bounding_box_train/, query/, bounding_box_test/)")
    p.add_argument("--seed", type=int, default=0, help="master seed; the same seed gives byte-identical files")
    for name, default in DEFAULT_DEMO_PARAMS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default, dest=name)
    p.add_argument(
        "--workers", type=int, default=None, help="rendering processes for --no-cache (default: available CPUs)"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="write straight into --root (must be missing or empty) instead of the cached/atomic path",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = {k: getattr(args, k) for k in DEFAULT_DEMO_PARAMS}
    root = Path(args.root)
    t0 = time.perf_counter()
    try:
        if args.no_cache:
            generate_demo_market(root, seed=args.seed, workers=args.workers, **sizes)
        else:
            was_done = read_demo_marker(root) is not None
            root = ensure_demo_market(root, seed=args.seed, **sizes)
            if was_done:
                print(f"already complete, reused: {root}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    marker = read_demo_marker(root) or {}
    counts = marker.get("counts", {})
    print(f"demo Market-1501 tree (seed {args.seed}) at {root.resolve()}  [{time.perf_counter() - t0:.1f}s]")
    for split, folder in SPLIT_DIRS.items():
        c = counts.get(split, {})
        extra = ""
        if split == "gallery":
            extra = f", distractors (0000) {c.get('distractors', 0)}, junk (-1) {c.get('junk', 0)}"
        print(
            f"  {folder + '/':<21} {c.get('images', 0):>5} images, {c.get('ids', 0):>4} ids, "
            f"{c.get('cameras', 0)} cameras{extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
