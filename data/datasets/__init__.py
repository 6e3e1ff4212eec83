"""Dataset registry: a name of DATASETS.NAMES -> a loader returning DatasetSplits."""

from __future__ import annotations

from typing import Callable

from config.errors import check_choice
from data.datasets.cars import load_cars
from data.datasets.cub import load_cub
from data.datasets.demo import load_demo
from data.datasets.inshop import load_inshop
from data.datasets.market1501 import DatasetLayoutError, load_market1501
from data.datasets.sop import load_sop
from data.records import DatasetSplits

# name -> loader(cfg) -> DatasetSplits; each reads the keys it needs
DATASET_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "market1501": lambda cfg: load_market1501(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "cub": lambda cfg: load_cub(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "cars": lambda cfg: load_cars(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "sop": lambda cfg: load_sop(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "inshop": lambda cfg: load_inshop(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "demo": lambda cfg: load_demo(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL,
                                  demo_seed=cfg.DATASETS.DEMO_SEED),
}


def load_named_dataset(cfg, name: str) -> DatasetSplits:
    """The splits of dataset `name` under DATASETS.ROOT_DIR (keys of the config pick its options)."""
    check_choice("DATASETS.NAMES", name, tuple(DATASET_LOADERS))
    return DATASET_LOADERS[name](cfg)


def load_dataset(cfg) -> DatasetSplits:
    """The splits of the single dataset named by DATASETS.NAMES."""
    names = cfg.DATASETS.NAMES
    return load_named_dataset(cfg, names if isinstance(names, str) else names[0])


__all__ = ["DATASET_LOADERS", "DatasetLayoutError", "load_dataset", "load_named_dataset"]
