"""SOLVER.METHOD dc: Divide & Conquer (seed 003; Sanakoyeu, Ma, Tschernezki, Büchler, Ommer: "Improving Deep
Metric Learning by Divide and Conquer", TPAMI 2021, after "Divide and Conquer the Embedding Space for Metric
Learning", CVPR 2019), as ../specs: divide_conquer.md states it.

K learners share one embedding through K masks (masks.py): learner k embeds a batch as
normalise(Linear(feat) * relu(m_k)). The training set is re-clustered every METHOD.DC.MOD_EPOCH epochs on its
pooled backbone features (features.py, clustering.py; rank 0 clusters and broadcasts), K doubling by splits
('top_bot') or fixed ('flat'); batches are drawn within one cluster at a time, the clusters in turn
(sampler.py), and the batch's cluster picks the mask. Per batch:

    L = loss(normalise(f * relu(m_c)), labels) + lambda * mean_{i != j} cos(relu(m_i), relu(m_j))

with c the batch's cluster (the run's criterion: the margin loss with distance-weighted sampling in the
recipes). In epochs e with e % MOD_EPOCH < MOD_EPOCH_FREEZE the backbone's learning rate is 0 (its parameters
are put back after each step; the optimizer's moments still see their gradients, as with a zero rate); from
FORCE_FULL_EMBEDDING_EPOCH on every batch trains the full embedding normalise(f), the masks stop training and
the regulariser is dropped. Evaluation always uses the full embedding (the model's own output).

An epoch is K x the most batches of any cluster, so its length changes with the clustering: the run's
EpochClock (engine/handlers/epoch_clock.py) follows it. Checkpointed under 'dc': the assignment of every
training image, the masks and their optimizer (Adam state kept across splits), so that a resumed run repeats
the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events

from config.errors import ConfigError
from data.build import build_eval_loader, training_loader
from data.device_augment import build_eval_preprocess
from engine.handlers.epoch_clock import batches_done_in_epoch
from engine.methods.base import Run, TrainingMethod
from engine.methods.dc.clustering import (
    Clustering,
    cluster_summary,
    clusters_at_epoch,
    is_recluster_epoch,
    recluster,
    trainable_images,
)
from engine.methods.dc.features import pooled_features
from engine.methods.dc.masks import LearnerMasks
from engine.methods.dc.sampler import ClusterBatches
from engine.reporting.run_files import append_record, atomic_write
from engine.run.seeding import epoch_seed

logger = logging.getLogger("train")

CLUSTERS_FILE = "clusters.jsonl"  # one record per re-clustering
ASSIGNMENT_DIR = "clusters"  # assignment_epoch<e>.npy: each training image's cluster (-1: sits out the round)


def backbone_frozen(epoch: int, mod_epoch: int, freeze: int) -> bool:
    """Whether the backbone's learning rate is 0 in 0-based `epoch` (MOD_EPOCH_FREEZE epochs after each
    re-clustering)."""
    return epoch % mod_epoch < freeze


def full_embedding(epoch: int, force_epoch: int) -> bool:
    """Whether 0-based `epoch` trains the full embedding (FORCE_FULL_EMBEDDING_EPOCH reached; -1 = never)."""
    return 0 <= force_epoch <= epoch


def check_dc_keys(cfg, num_classes: int) -> None:
    """Every METHOD.DC key in its range, in one line naming the key and what it expects."""
    dc = cfg.METHOD.DC
    k = dc.NB_CLUSTERS
    if k < 1:
        raise ConfigError(f"METHOD.DC.NB_CLUSTERS = {k}; expected a positive number of clusters")
    if dc.HIERARCHY == "top_bot" and k & (k - 1):
        raise ConfigError(
            f"METHOD.DC.NB_CLUSTERS = {k}; the 'top_bot' hierarchy doubles K from 1, so expected a power of two "
            "(or METHOD.DC.HIERARCHY flat)"
        )
    if 2 * k > num_classes:
        raise ConfigError(
            f"METHOD.DC.NB_CLUSTERS = {k} for {num_classes} training classes; every cluster needs 2 classes, so "
            f"expected at most {num_classes // 2}"
        )
    if dc.MOD_EPOCH < 1:
        raise ConfigError(f"METHOD.DC.MOD_EPOCH = {dc.MOD_EPOCH}; expected a positive number of epochs")
    if not 0 <= dc.MOD_EPOCH_FREEZE <= dc.MOD_EPOCH:
        raise ConfigError(
            f"METHOD.DC.MOD_EPOCH_FREEZE = {dc.MOD_EPOCH_FREEZE}; expected 0 to MOD_EPOCH ({dc.MOD_EPOCH}) epochs"
        )
    if dc.FORCE_FULL_EMBEDDING_EPOCH < -1:
        raise ConfigError(
            f"METHOD.DC.FORCE_FULL_EMBEDDING_EPOCH = {dc.FORCE_FULL_EMBEDDING_EPOCH}; expected an epoch >= 0 or -1 "
            "(never)"
        )
    for key in ("MASK_LR_MULT", "MASK_WD_MULT", "MASKING_LAMBDA"):
        if dc[key] < 0:
            raise ConfigError(f"METHOD.DC.{key} = {dc[key]}; expected a value >= 0")
    for key in ("KMEANS_NITER", "KMEANS_TRIES"):
        if dc[key] < 1:
            raise ConfigError(f"METHOD.DC.{key} = {dc[key]}; expected a positive number")
    batch, per_class, world = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, idist.get_world_size()
    if per_class < 1 or batch % world or (batch // world) % per_class:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {batch} with DATALOADER.NUM_INSTANCE = {per_class} on {world} process(es); "
            "Divide & Conquer's batches take NUM_INSTANCE images per class, so expected a batch per process that "
            "is a multiple of it"
        )


class DivideAndConquer(TrainingMethod):
    """SOLVER.METHOD dc (see the module docstring). Logged per epoch: `clusters` (K), `orthogonality` (the
    masks' mean pairwise cosine, before lambda), `backbone_frozen` and `full_embedding` (0/1)."""

    name = "dc"
    supports_device_augment = True
    stat_names = ("clusters", "orthogonality", "backbone_frozen", "full_embedding")

    def __init__(self, run: Run):
        super().__init__(run)
        cfg = run.cfg
        check_dc_keys(cfg, run.data.num_classes)
        self.keys = cfg.METHOD.DC
        self.flat = self.keys.HIERARCHY == "flat"
        records = run.data.train_records
        self.classes = np.asarray([r.label for r in records], dtype=np.int64)
        self.sampler = ClusterBatches(
            self.classes.tolist(),
            cfg.SOLVER.IMS_PER_BATCH,
            cfg.DATALOADER.NUM_INSTANCE,
            cfg.SEED,
            idist.get_rank(),
            idist.get_world_size(),
        )
        run.replace_train_loader(training_loader(cfg, run.data.train_loader.dataset, self.sampler))
        # rank 0 embeds the whole training set (then clusters it and broadcasts the assignment)
        self.feature_loader = build_eval_loader(
            cfg,
            records,
            run.data.train_protocol,
            shard=False,
            name="training set (test transform, to cluster)",
            cache=run.data.train_loader.dataset.cache,  # the same images, when it holds what the test transform reads
        )
        self.preprocess = build_eval_preprocess(cfg)
        first_k = self.keys.NB_CLUSTERS if self.flat else 1
        self.masks = LearnerMasks(
            run.model.feat_dim,
            self.keys.MASKING_INIT,
            fixed=self.keys.FIXED_MASK == "yes",
            generator=torch.Generator().manual_seed(cfg.SEED),
            k=first_k,
        ).to(run.device)
        self.optimizer = self._build_optimizer()
        self.assignment = np.zeros(len(records), dtype=np.int64)  # every image in cluster 0 until clustered
        self.clustered = False  # whether the assignment came from a clustering (else: all in one, K = 1)
        self.frozen = self.full = False
        self._use_assignment()

    # ----------------------------------------------------------------------------------------------- masks
    def _build_optimizer(self) -> torch.optim.Optimizer | None:
        """The masks' optimizer: the main optimizer's kind with lr BASE_LR x MASK_LR_MULT and weight decay
        WEIGHT_DECAY x MASK_WD_MULT (none for fixed masks)."""
        if self.masks.fixed:
            return None
        s, keys = self.run.cfg.SOLVER, self.keys
        group = [{"params": [self.masks.values], "name": "masks", "initial_lr": s.BASE_LR * keys.MASK_LR_MULT}]
        lr, weight_decay = s.BASE_LR * keys.MASK_LR_MULT, s.WEIGHT_DECAY * keys.MASK_WD_MULT
        kind = type(self.run.solver.main)
        if kind is torch.optim.SGD:
            return torch.optim.SGD(group, lr=lr, weight_decay=weight_decay, momentum=s.MOMENTUM)
        return kind(group, lr=lr, weight_decay=weight_decay)

    def _follow_schedule(self) -> None:
        """The masks' learning rate follows the main schedule: BASE_LR x MASK_LR_MULT x (the main optimizer's
        first group's lr / its initial lr)."""
        if self.optimizer is None:
            return
        first = self.run.solver.main.param_groups[0]
        factor = first["lr"] / first["initial_lr"] if first.get("initial_lr") else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def trains_masks(self) -> bool:
        return self.optimizer is not None and not self.full

    # ---------------------------------------------------------------------------------------- clustering
    def _kmeans_seed(self, epoch: int) -> int:
        if self.keys.KMEANS_SEED >= 0:
            return self.keys.KMEANS_SEED + epoch
        return epoch_seed(self.run.cfg.SEED, epoch) % 2**30  # room for the retries' and splits' offsets

    def _recluster(self, epoch: int) -> None:
        """Before 0-based `epoch`: the new assignment (rank 0 clusters, every rank receives it), the masks
        doubled with K, the round's record in the log and the run folder."""
        keys = self.keys
        k_now = keys.NB_CLUSTERS if self.flat else clusters_at_epoch(epoch, keys.MOD_EPOCH, keys.NB_CLUSTERS)
        k_before = k_now if self.flat else self.masks.k
        if k_now == 1:  # nothing to cluster: one learner over the whole training set
            return
        found, seconds = None, {}
        assignment = torch.zeros(len(self.classes), dtype=torch.int64)
        if idist.get_rank() == 0:
            started = time.perf_counter()
            features = pooled_features(
                self.run.model, self.feature_loader, self.run.precision, self.run.device, self.preprocess
            )
            seconds["features"] = time.perf_counter() - started
            started = time.perf_counter()
            found = recluster(
                features,
                self.classes,
                self.assignment if self.clustered else None,
                k_before,
                k_now,
                self._kmeans_seed(epoch),
                self.keys.KMEANS_TRIES,
                self.keys.KMEANS_NITER,
            )
            seconds["kmeans"] = time.perf_counter() - started
            assignment = torch.from_numpy(found.assignment)
        if idist.get_world_size() > 1:
            assignment = idist.broadcast(assignment.to(idist.device()), src=0).cpu()
        self.assignment = assignment.numpy().astype(np.int64)
        self.clustered = True
        while self.masks.k < k_now:
            self.masks.double(self.optimizer)
        if idist.get_rank() == 0:
            self._report(epoch, found, seconds)

    def _report(self, epoch: int, found: Clustering, seconds: dict) -> None:
        """The round in log.txt (sizes, classes per cluster, what sits out) and the run folder (clusters.jsonl,
        clusters/assignment_epoch<e>.npy)."""
        round_assignment = self._round_assignment()
        summary = cluster_summary(self.assignment, self.classes, found.k)
        out = int((round_assignment < 0).sum())
        logger.info(
            "Re-clustered before epoch %d: K = %d by k-means (%s, %d tr%s%s) in %.1f s features + %.1f s k-means; "
            "images per cluster %s; classes per cluster %s; %d image(s) sit out this round (their class has one "
            "image in their cluster)",
            epoch,
            found.k,
            found.backend,
            found.tries,
            "y" if found.tries == 1 else "ies",
            "" if found.well_formed else ", some cluster has fewer than 2 classes with 2 images",
            seconds["features"],
            seconds["kmeans"],
            [c["images"] for c in summary],
            [c["classes"] for c in summary],
            out,
        )
        output_dir = self.run.output_dir
        (output_dir / ASSIGNMENT_DIR).mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, round_assignment.astype(np.int32))
        atomic_write(output_dir / ASSIGNMENT_DIR / f"assignment_epoch{epoch}.npy", lambda f: f.write(buffer.getvalue()))
        append_record(
            output_dir / CLUSTERS_FILE,
            {
                "epoch": epoch,
                "k": found.k,
                "backend": found.backend,
                "tries": found.tries,
                "well_formed": found.well_formed,
                "seconds_features": round(seconds["features"], 3),
                "seconds_kmeans": round(seconds["kmeans"], 3),
                "sitting_out": out,
                "clusters": summary,
            },
        )

    def _round_assignment(self) -> np.ndarray:
        """The assignment the sampler draws from: -1 for an image whose class has one image in its cluster."""
        keep = trainable_images(self.assignment, self.classes)
        return np.where(keep, self.assignment, -1)

    def _use_assignment(self) -> None:
        self.sampler.set_assignment(self._round_assignment())

    # --------------------------------------------------------------------------------------------- epochs
    def _epoch_started(self, engine: Engine) -> None:
        epoch = engine.state.epoch - 1  # the seed's 0-based epochs
        if batches_done_in_epoch(engine) == 0 and is_recluster_epoch(epoch, self.keys.MOD_EPOCH):
            self._recluster(epoch)  # an epoch resumed after its k-th batch keeps its checkpointed clusters
        self._use_assignment()
        self.frozen = backbone_frozen(epoch, self.keys.MOD_EPOCH, self.keys.MOD_EPOCH_FREEZE)
        self.full = full_embedding(epoch, self.keys.FORCE_FULL_EMBEDDING_EPOCH)
        self._follow_schedule()

    def _epoch_completed(self, engine: Engine) -> None:
        with torch.no_grad():
            engine.state.metrics["orthogonality"] = float(self.masks.orthogonality())
        engine.state.metrics["clusters"] = self.sampler.k
        engine.state.metrics["backbone_frozen"] = int(self.frozen)
        engine.state.metrics["full_embedding"] = int(self.full)

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    # ----------------------------------------------------------------------------------------------- step
    @contextlib.contextmanager
    def _backbone_held(self):
        """In a freeze epoch: the backbone's parameters are put back after the step (a learning rate of 0 for
        them alone; the embedding layer, in the same optimizer groups, trains)."""
        if not self.frozen:
            yield
            return
        params = [p for p in self.run.model.backbone.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in params]
        yield
        with torch.no_grad():
            for param, value in zip(params, saved):
                param.copy_(value)

    def process_function(self) -> Callable[[Engine, dict], dict]:
        run = self.run
        world = idist.get_world_size()

        def step(engine: Engine, batch: dict) -> dict:
            cluster = int(batch["cluster"][0])  # on the host: no device synchronisation
            batch = run.to_device(batch)
            run.trained_model.train()
            run.trained_criterion.train()
            with run.precision.autocast():
                outputs = run.trained_model(batch["image"])
            learner = None if self.full else cluster
            outputs = {**outputs, "feat": self.masks.embed(outputs["feat"].float(), learner)}
            loss, parts = run.trained_criterion(outputs, batch)
            masks_train = self.trains_masks()
            if masks_train and self.keys.MASKING_LAMBDA > 0 and self.masks.k > 1:
                loss = loss + self.keys.MASKING_LAMBDA * self.masks.orthogonality()
            run.solver.zero_grad()
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            if masks_train and world > 1:  # the masks are outside DistributedDataParallel: average by hand
                grad = self.masks.values.grad
                grad.copy_(idist.all_reduce(grad) / world)
            with self._backbone_held():
                run.solver.step(run.scaler)
            if masks_train and self.masks.values.grad is not None:
                run.scaler.step(self.optimizer)
            run.scaler.update()
            return {"loss": loss.detach(), **parts}

        return step

    # ------------------------------------------------------------------------------------------ checkpoint
    def checkpoint_state(self) -> dict:
        return {"dc": self}

    def state_dict(self) -> dict:
        return {
            "assignment": torch.from_numpy(self.assignment.copy()),
            "clustered": self.clustered,
            "masks": self.masks.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        assignment = state["assignment"].numpy().astype(np.int64)
        if len(assignment) != len(self.classes):
            raise ValueError(
                f"the checkpoint assigns {len(assignment)} training images to clusters; this config trains on "
                f"{len(self.classes)}"
            )
        self.assignment, self.clustered = assignment, bool(state["clustered"])
        self.masks.resize_for(state["masks"])
        self.masks.load_state_dict(state["masks"])
        self.optimizer = self._build_optimizer()  # over the (possibly resized) parameter
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self._use_assignment()
