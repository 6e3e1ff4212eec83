"""Data building: records -> datasets -> loaders, for one process or one rank of many."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ignite.distributed as idist
import torch
from torch.utils.data import DataLoader, Subset

from config.errors import ConfigError, check_choice
from data.datasets import load_named_dataset
from data.image_dataset import ImageDataset
from data.records import DatasetSplits, Record
from data.samplers import PKBatchSampler, RandomBatchSampler
from data.transforms import build_transforms

logger = logging.getLogger(__name__)

SAMPLERS = ("softmax_triplet", "triplet", "softmax")


@dataclass
class EvalSet:
    """One dataset's test side: its splits and the loader of its evaluation records (query, then gallery)."""

    splits: DatasetSplits
    loader: DataLoader


@dataclass
class DataBundle:
    """What training and evaluation need from the data side."""

    train_records: list[Record]
    train_loader: DataLoader | None
    eval_sets: list[EvalSet]
    num_classes: int


def dataset_names(cfg) -> list[str]:
    """DATASETS.NAMES as a list (a single name or a tuple)."""
    names = cfg.DATASETS.NAMES
    return [names] if isinstance(names, str) else list(names)


def merge_train_splits(all_splits: list[DatasetSplits]) -> list[Record]:
    """Concatenate train splits, offsetting each dataset's labels past the previous ones."""
    merged, offset = [], 0
    for splits in all_splits:
        merged.extend(Record(r.path, r.label + offset, r.camid) for r in splits.train)
        offset += splits.num_train_classes
    return merged


def build_train_loader(cfg, records: list[Record], protocol: str = "reid") -> DataLoader:
    """The training loader: PK or random batches, seeded by SEED and the epoch (see set_epoch)."""
    check_choice("DATALOADER.SAMPLER", cfg.DATALOADER.SAMPLER, SAMPLERS)
    rank, world = idist.get_rank(), idist.get_world_size()
    labels = [r.label for r in records]
    if cfg.DATALOADER.SAMPLER == "softmax":
        sampler = RandomBatchSampler(len(labels), cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, rank, world)
    else:
        sampler = PKBatchSampler(labels, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, cfg.SEED, rank, world)
    dataset = ImageDataset(records, build_transforms(cfg, is_train=True, protocol=protocol))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator(),  # reseeded each epoch: worker seeds follow (SEED, epoch)
    )


def build_eval_loader(cfg, records: list[Record], protocol: str = "reid") -> DataLoader:
    """The records in order; with several processes each takes every world_size-th item."""
    dataset = ImageDataset(records, build_transforms(cfg, is_train=False, protocol=protocol))
    rank, world = idist.get_rank(), idist.get_world_size()
    if world > 1:
        dataset = Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(
        dataset,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
    )


def build_data(cfg, with_train: bool = True) -> DataBundle:
    """Load every dataset of DATASETS.NAMES, log their tables, build the train loader and one eval loader each."""
    names = dataset_names(cfg)
    all_splits = []
    for name in names:
        splits = load_named_dataset(cfg, name)
        logger.info("\n%s", splits.summary_table())
        all_splits.append(splits)
    evaluated = list(cfg.TEST.DATASETS) or names
    unknown = [n for n in evaluated if n not in names]
    if unknown:
        raise ConfigError(f"TEST.DATASETS names {unknown} that are not in DATASETS.NAMES {names}")
    train_records = merge_train_splits(all_splits)
    eval_sets = [
        EvalSet(s, build_eval_loader(cfg, s.eval_records(), s.protocol)) for s in all_splits if s.name in evaluated
    ]
    return DataBundle(
        train_records=train_records,
        # the first dataset's protocol picks the training augmentation (INPUT.TRANSFORM 'auto')
        train_loader=build_train_loader(cfg, train_records, all_splits[0].protocol) if with_train else None,
        eval_sets=eval_sets,
        num_classes=len({r.label for r in train_records}),
    )
