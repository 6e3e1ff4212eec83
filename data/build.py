"""Data building: records -> datasets -> loaders, for one process or one rank of many."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import ignite.distributed as idist
import torch
from torch.utils.data import DataLoader, Subset

from config.errors import ConfigError, check_choice
from data.bad_images import check_dataset_images
from data.datasets import DATASET_LOADERS, load_named_dataset
from data.device_augment import build_loader_transform, loader_collate, preparation_of
from data.image_cache import ImageCache, build_image_cache
from data.image_dataset import ImageDataset
from data.records import DatasetSplits, Record
from data.samplers import PKBatchSampler, RandomBatchSampler, SeededBatches

logger = logging.getLogger(__name__)

SAMPLERS = ("softmax_triplet", "triplet", "softmax")


@dataclass
class EvalSet:
    """One dataset's test side: its splits and the loader of its evaluation records (query, then gallery)."""

    splits: DatasetSplits
    loader: DataLoader


@dataclass
class DataBundle:
    """What training and evaluation need from the data side (no train records or loader, 0 classes, when built
    without training: test.py)."""

    train_records: list[Record]
    train_loader: DataLoader | None
    eval_sets: list[EvalSet]
    num_classes: int
    train_protocol: str = "reid"  # the first training dataset's protocol: it picks the transforms


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


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's init: SIGINT and SIGTERM are the main process's to handle. A terminal's Ctrl-C and a
    scheduler's SIGTERM reach every process of the job; a worker they ended would take the batches the main
    process still needs while it finishes its iteration and writes its checkpoint (engine/handlers/
    graceful_stop.py). Workers end with the main process as always."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def release_workers(loader: DataLoader | None) -> None:
    """End the persistent workers of `loader` (DATALOADER.PERSISTENT_WORKERS yes) now. They ignore SIGTERM (see
    ignore_stop_signals), which is how Python's exit ends the daemonic processes left running: left alive, they
    would keep the finished process waiting for them. The DataLoader keeps its persistent iterator in a private
    attribute; a loader without one has nothing to end."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def build_train_loader(cfg, records: list[Record], protocol: str = "reid") -> DataLoader:
    """The training loader: PK or random batches, seeded by SEED and the epoch (see set_epoch)."""
    check_choice("DATALOADER.SAMPLER", cfg.DATALOADER.SAMPLER, SAMPLERS)
    rank, world = idist.get_rank(), idist.get_world_size()
    labels = [r.label for r in records]
    if cfg.DATALOADER.SAMPLER == "softmax":
        sampler = RandomBatchSampler(len(labels), cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, rank, world)
    else:
        sampler = PKBatchSampler(labels, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, cfg.SEED, rank, world)
    dataset = build_image_dataset(cfg, records, is_train=True, protocol=protocol, label="training set")
    return training_loader(cfg, dataset, SeededBatches(sampler))  # each sample's augmentation seeded by position


def build_image_dataset(
    cfg, records: list[Record], is_train: bool, protocol: str, label: str, cache: ImageCache | None = None, rows=None
) -> ImageDataset:
    """`records` with the loader's share of the train or test pipeline (INPUT.AUGMENT_ON), read from `cache` when it
    holds the images that share reads, else from the cache of DATALOADER.CACHE ram built here (of `rows` only, when
    given: a process's share of an evaluation set), else from the files."""
    transform = build_loader_transform(cfg, is_train, protocol)
    preparation = preparation_of(transform)
    if cache is None or not cache.serves(preparation.name):
        cache = build_image_cache(cfg, records, preparation, label, rows)
    return ImageDataset(records, transform, cache)


def training_loader(cfg, dataset: ImageDataset, batch_sampler) -> DataLoader:
    """A training loader over `dataset` drawing `batch_sampler`'s batches of (index, augmentation seed[,
    cluster]) items; a training method that batches otherwise (Divide & Conquer) builds its own with it.
    With workers, DATALOADER.PERSISTENT_WORKERS keeps them between epochs (the augmentation follows each
    sample's seed, not the worker's state) and each loads DATALOADER.PREFETCH_FACTOR batches ahead."""
    workers = cfg.DATALOADER.NUM_WORKERS
    if workers and cfg.DATALOADER.PREFETCH_FACTOR < 1:
        raise ConfigError(f"DATALOADER.PREFETCH_FACTOR = {cfg.DATALOADER.PREFETCH_FACTOR}; expected 1 or more")
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=loader_collate(dataset.transform),
        generator=torch.Generator(),  # reseeded each epoch: worker seeds follow (SEED, epoch)
        worker_init_fn=ignore_stop_signals,
        persistent_workers=workers > 0 and cfg.DATALOADER.PERSISTENT_WORKERS == "yes",
        prefetch_factor=cfg.DATALOADER.PREFETCH_FACTOR if workers else None,
    )


def build_eval_loader(
    cfg,
    records: list[Record],
    protocol: str = "reid",
    shard: bool = True,
    name: str = "evaluation set",
    cache: ImageCache | None = None,
) -> DataLoader:
    """The records in order with the test transform; with several processes and `shard`, each takes every
    world_size-th item (shard=False: this process reads them all, e.g. rank 0 embedding a set alone). `cache`: images
    already cached (see build_image_dataset); `name` names the set in the cache's log line."""
    rank, world = idist.get_rank(), idist.get_world_size()
    mine = list(range(rank, len(records), world)) if shard and world > 1 else None
    dataset = build_image_dataset(cfg, records, is_train=False, protocol=protocol, label=name, cache=cache, rows=mine)
    collate = loader_collate(dataset.transform)
    if mine is not None:
        dataset = Subset(dataset, mine)
    return DataLoader(
        dataset,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
    )


def evaluated_names(cfg) -> list[str]:
    """The datasets to evaluate, in evaluation order: TEST.DATASETS, or DATASETS.NAMES when it is empty.

    TEST.DATASETS may name datasets that do not train (cross-domain evaluation, as fast-reid's DATASETS.TESTS);
    every name must be a registered dataset, each named once.
    """
    evaluated = list(cfg.TEST.DATASETS)
    for name in evaluated:
        check_choice("TEST.DATASETS", name, tuple(DATASET_LOADERS))
    repeated = sorted({name for name in evaluated if evaluated.count(name) > 1})
    if repeated:
        raise ConfigError(f"TEST.DATASETS = {evaluated} names {repeated} more than once; expected each dataset once")
    return evaluated or dataset_names(cfg)


def build_data(cfg, with_train: bool = True) -> DataBundle:
    """Load the datasets of DATASETS.NAMES (they train) and of TEST.DATASETS (they are evaluated, in that order),
    log their tables, check the images the run will read (DATALOADER.CHECK_IMAGES, DATALOADER.BAD_IMAGES), build
    the train loader and one eval loader per evaluated dataset.

    A dataset that is only evaluated contributes its query/gallery alone: its training records never reach the
    train loader or the class count. Without training (test.py) only the evaluated datasets are loaded, so a
    dataset that only trains need not be present.
    """
    train_names = dataset_names(cfg)
    for name in train_names:
        check_choice("DATASETS.NAMES", name, tuple(DATASET_LOADERS))
    evaluated = evaluated_names(cfg)  # checked before any dataset is read: a typo costs no loading time
    to_load = list(dict.fromkeys(train_names + evaluated)) if with_train else evaluated
    loaded: dict[str, DatasetSplits] = {}
    for name in to_load:
        splits = load_named_dataset(cfg, name)
        logger.info("\n%s", splits.summary_table())
        for note in splits.notes:  # what the loader found unusual (a partial copy, skipped folders, ...)
            logger.warning("Dataset %s: %s", name, note)
        loaded[name] = splits
    # every image the run reads, checked before any loader exists: a bad file stops (or is dropped) now,
    # not at the epoch or evaluation that first reads it
    loaded = check_dataset_images(cfg, loaded, train_names if with_train else [], evaluated)
    eval_sets = [
        EvalSet(
            loaded[name],
            build_eval_loader(cfg, loaded[name].eval_records(), loaded[name].protocol, name=f"{name} query + gallery"),
        )
        for name in evaluated
    ]
    if not with_train:
        logger.info("Datasets: evaluating on %s, in this order", ", ".join(evaluated))
        return DataBundle(train_records=[], train_loader=None, eval_sets=eval_sets, num_classes=0)
    train_records = merge_train_splits([loaded[name] for name in train_names])
    num_classes = len({r.label for r in train_records})
    evaluated_only = [name for name in evaluated if name not in train_names]
    logger.info(
        "Datasets: training on %s (%d classes); evaluating on %s, in this order (%s picks the best model)%s",
        ", ".join(train_names),
        num_classes,
        ", ".join(evaluated),
        evaluated[0],
        f"; evaluated only (cross-domain): {', '.join(evaluated_only)}" if evaluated_only else "",
    )
    return DataBundle(
        train_records=train_records,
        # the first dataset's protocol picks the training augmentation (INPUT.TRANSFORM 'auto')
        train_loader=build_train_loader(cfg, train_records, loaded[train_names[0]].protocol),
        eval_sets=eval_sets,
        num_classes=num_classes,
        train_protocol=loaded[train_names[0]].protocol,
    )
