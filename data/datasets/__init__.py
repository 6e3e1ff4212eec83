"""Dataset registry: `DATASETS.NAMES` -> a loader returning DatasetSplits."""

from __future__ import annotations

from typing import Callable

from config.errors import check_choice
from data.datasets.demo import load_demo
from data.datasets.market1501 import DatasetLayoutError, load_market1501
from data.records import DatasetSplits

DATASET_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "market1501": load_market1501,
    "demo": load_demo,
}


def load_dataset(cfg) -> DatasetSplits:
    """The splits of the dataset named by DATASETS.NAMES under DATASETS.ROOT_DIR."""
    name = cfg.DATASETS.NAMES
    check_choice("DATASETS.NAMES", name, tuple(DATASET_LOADERS))
    return DATASET_LOADERS[name](
        cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL, demo_seed=cfg.DATASETS.DEMO_SEED
    )


__all__ = ["DATASET_LOADERS", "DatasetLayoutError", "load_dataset"]
