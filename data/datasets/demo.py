"""The embedded default dataset: generated on first use in the Market-1501 layout, read by its loader."""

from __future__ import annotations

from pathlib import Path

from data.datasets.common import DatasetLayoutError
from data.datasets.market1501 import load_market_layout
from data.demo_generator import ensure_demo_market
from data.records import DatasetSplits


def demo_folder(root_dir: str | Path, seed: int) -> Path:
    """Where the demo tree of `seed` lives under DATASETS.ROOT_DIR."""
    return Path(root_dir) / f"demo-market-seed{seed}"


def load_demo(root_dir: str | Path, combine_all: bool = False, demo_seed: int = 0, **_) -> DatasetSplits:
    """Generate (once, cached) and read the demo dataset under `root_dir`."""
    try:
        folder = ensure_demo_market(demo_folder(root_dir, demo_seed), seed=demo_seed)
    except ValueError as err:  # a foreign or differently generated folder: never overwritten
        raise DatasetLayoutError(str(err)) from None
    return load_market_layout(Path(folder), "demo", combine_all)
