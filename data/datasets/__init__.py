"""Dataset registry: a name of DATASETS.NAMES -> a loader returning DatasetSplits."""

from __future__ import annotations

from collections.abc import Callable

from config.errors import check_choice
from data.datasets.cars import load_cars
from data.datasets.common import DatasetLayoutError
from data.datasets.cub import load_cub
from data.datasets.custom import load_csv, load_folder
from data.datasets.demo import load_demo
from data.datasets.dukemtmc import load_dukemtmc
from data.datasets.inshop import load_inshop
from data.datasets.market1501 import load_market1501
from data.datasets.msmt17 import load_msmt17
from data.datasets.sop import load_sop
from data.datasets.vehicleid import load_vehicleid
from data.records import DatasetSplits

# name -> loader(cfg) -> DatasetSplits; each reads the keys it needs
DATASET_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "market1501": lambda cfg: load_market1501(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "dukemtmc": lambda cfg: load_dukemtmc(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "msmt17": lambda cfg: load_msmt17(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "vehicleid": lambda cfg: load_vehicleid(
        cfg.DATASETS.ROOT_DIR,
        test_size=cfg.TEST.VEHICLEID_SIZE,
        protocol=cfg.TEST.VEHICLEID_PROTOCOL,
        trials=cfg.TEST.VEHICLEID_TRIALS,
        seed=cfg.SEED,
        combine_all=cfg.DATASETS.COMBINE_ALL,
    ),
    "folder": lambda cfg: load_folder(
        cfg.DATASETS.ROOT_DIR, split_ratio=cfg.DATASETS.SPLIT_RATIO, seed=cfg.SEED, combine_all=cfg.DATASETS.COMBINE_ALL
    ),
    "csv": lambda cfg: load_csv(
        cfg.DATASETS.CSV_FILE, split_ratio=cfg.DATASETS.SPLIT_RATIO, seed=cfg.SEED, combine_all=cfg.DATASETS.COMBINE_ALL
    ),
    "cub": lambda cfg: load_cub(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "cars": lambda cfg: load_cars(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "sop": lambda cfg: load_sop(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "inshop": lambda cfg: load_inshop(cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL),
    "demo": lambda cfg: load_demo(
        cfg.DATASETS.ROOT_DIR, combine_all=cfg.DATASETS.COMBINE_ALL, demo_seed=cfg.DATASETS.DEMO_SEED
    ),
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
