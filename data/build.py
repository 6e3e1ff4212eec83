"""Data building: records -> datasets -> loaders, for one process or one rank of many."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ignite.distributed as idist
import torch
from torch.utils.data import DataLoader, Subset

from config.errors import check_choice
from data.datasets import load_dataset
from data.image_dataset import ImageDataset
from data.records import DatasetSplits
from data.samplers import PKBatchSampler, RandomBatchSampler
from data.transforms import build_transforms

logger = logging.getLogger(__name__)

SAMPLERS = ("softmax_triplet", "triplet", "softmax")


@dataclass
class DataBundle:
    """What training and evaluation need from the data side."""

    splits: DatasetSplits
    train_loader: DataLoader | None
    eval_loader: DataLoader
    num_query: int
    num_classes: int


def build_train_loader(cfg, splits: DatasetSplits) -> DataLoader:
    """The training loader: PK or random batches, seeded by SEED and the epoch (see set_epoch)."""
    check_choice("DATALOADER.SAMPLER", cfg.DATALOADER.SAMPLER, SAMPLERS)
    rank, world = idist.get_rank(), idist.get_world_size()
    labels = [r.label for r in splits.train]
    if cfg.DATALOADER.SAMPLER == "softmax":
        sampler = RandomBatchSampler(len(labels), cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, rank, world)
    else:
        sampler = PKBatchSampler(labels, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, cfg.SEED, rank, world)
    dataset = ImageDataset(splits.train, build_transforms(cfg, is_train=True))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator(),  # reseeded each epoch: worker seeds follow (SEED, epoch)
    )


def build_eval_loader(cfg, splits: DatasetSplits) -> DataLoader:
    """Query then gallery, in order; with several processes each takes every world_size-th item."""
    dataset = ImageDataset(splits.query + splits.gallery, build_transforms(cfg, is_train=False))
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
    """Load the dataset named by the config, log its table, and build the loaders."""
    splits = load_dataset(cfg)
    logger.info("\n%s", splits.summary_table())
    train_loader = build_train_loader(cfg, splits) if with_train else None
    return DataBundle(
        splits=splits,
        train_loader=train_loader,
        eval_loader=build_eval_loader(cfg, splits),
        num_query=len(splits.query),
        num_classes=splits.num_train_classes,
    )
