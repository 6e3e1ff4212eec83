"""SOLVER.METHOD dc end to end on a tiny Market-1501 tree (engine/methods/dc/method.py): the hierarchy's K, the
freeze and full-embedding epochs, the clusters recorded in the run folder, and exact resume across a
re-clustering, between epochs and within an epoch whose length came from the clustering."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from config import load_config
from config.errors import ConfigError
from engine.methods.dc.method import DivideAndConquer, backbone_frozen, check_dc_keys, full_embedding
from engine.training import RunInterrupted, train

# 4 epochs, 0-based e = 0..3: K = 1, 1, 2, 2 (a split before e = 2); the backbone frozen in e = 0 and 2; the
# full embedding from e = 3
DC_RUN = {
    "MODEL.METRIC_LOSS_TYPE": "margin",
    "MODEL.CLS_LOSS_TYPE": "none",
    "MODEL.NECK": "no",
    "MODEL.EMBEDDING_DIM": "16",
    "TEST.PROTOCOL": "retrieval",
    "TEST.NMI_RUNS": "1",
    "SOLVER.METHOD": "dc",
    "SOLVER.MAX_EPOCHS": "4",
    "SOLVER.EVAL_PERIOD": "2",
    "SOLVER.CHECKPOINT_PERIOD": "1",
    "METHOD.DC.NB_CLUSTERS": "2",
    "METHOD.DC.MOD_EPOCH": "2",
    "METHOD.DC.MOD_EPOCH_FREEZE": "1",
    "METHOD.DC.FORCE_FULL_EMBEDDING_EPOCH": "3",
    "METHOD.DC.KMEANS_NITER": "20",
    "LOG.PLOTS": "no",
    "LOG.TENSORBOARD": "no",
}


def dc_cfg(tiny_opts, root: Path, out: Path, **overrides: str):
    return load_config(None, tiny_opts(root, out, **{**DC_RUN, **overrides}))


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def last_per_epoch(path: Path) -> dict[int, dict]:
    drop = ("eval_seconds", "seconds_per_batch", "images_per_second")
    return {r["epoch"]: {k: v for k, v in r.items() if k not in drop} for r in records(path)}


def checkpoint(out: Path, epoch: int) -> dict:
    return torch.load(out / "checkpoints" / f"checkpoint_{epoch}.pt", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    for entry in ("model", "loss"):
        for key in a[entry]:
            assert torch.equal(a[entry][key], b[entry][key]), f"{entry}.{key} differs"
    assert torch.equal(a["dc"]["masks"]["values"], b["dc"]["masks"]["values"])
    assert torch.equal(a["dc"]["assignment"], b["dc"]["assignment"])


@pytest.fixture(scope="module")
def full_run(tiny_opts, market_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dc_full")
    train(dc_cfg(tiny_opts, market_root, out))
    return out


@pytest.mark.e2e
def test_the_schedule_the_clusters_and_the_epoch_lengths_follow_the_keys(full_run):
    epochs = records(full_run / "train_metrics.jsonl")
    assert [r["clusters"] for r in epochs] == [1, 1, 2, 2]
    assert [r["backbone_frozen"] for r in epochs] == [1, 0, 1, 0]
    assert [r["full_embedding"] for r in epochs] == [0, 0, 0, 1]
    rounds = records(full_run / "clusters.jsonl")
    assert [(r["epoch"], r["k"]) for r in rounds] == [(2, 2)]  # K = 1 needs no clustering
    assert sum(c["images"] for c in rounds[0]["clusters"]) == 24  # 6 identities x 4 images
    assignment = np.load(full_run / "clusters" / "assignment_epoch2.npy")
    assert set(assignment.tolist()) <= {-1, 0, 1} and len(assignment) == 24
    # epochs of K = 1 take 24 // 8 = 3 batches; with K = 2 the length is 2 x the most batches of a cluster
    saved = checkpoint(full_run, 4)
    sizes = np.bincount(saved["dc"]["assignment"].numpy(), minlength=2)
    assert saved["trainer"]["clock"]["epoch_length"] == 2 * max(1, int(sizes.max()) // 8)
    assert checkpoint(full_run, 1)["trainer"]["clock"]["epoch_length"] == 3
    metrics = records(full_run / "metrics.jsonl")
    assert [r["epoch"] for r in metrics] == [2, 4] and all("NMI" in r for r in metrics)


@pytest.mark.e2e
def test_freeze_epochs_keep_the_backbone_and_full_embedding_epochs_keep_the_masks(full_run):
    before, frozen = checkpoint(full_run, 2)["model"], checkpoint(full_run, 3)["model"]  # epoch 3 is e = 2
    # the backbone's parameters (BatchNorm's running statistics follow the batches unless MODEL.BN_FREEZE)
    backbone = [k for k in before if k.startswith("backbone.") and "running_" not in k and "num_batches" not in k]
    assert backbone and all(torch.equal(before[k], frozen[k]) for k in backbone)
    assert not torch.equal(before["embedding.weight"], frozen["embedding.weight"])  # the embedding trains
    trained = checkpoint(full_run, 4)["model"]  # e = 3: not frozen
    assert any(not torch.equal(frozen[k], trained[k]) for k in backbone)
    masks_before, masks_after = (checkpoint(full_run, e)["dc"]["masks"]["values"] for e in (3, 4))
    assert masks_before.shape == (2, 16) and torch.equal(masks_before, masks_after)  # full embedding: not trained
    assert not torch.equal(checkpoint(full_run, 2)["dc"]["masks"]["values"].expand(2, 16), masks_before)


@pytest.mark.e2e
def test_a_run_resumed_between_epochs_across_a_re_clustering_ends_as_the_uninterrupted_one(
    tiny_opts, market_root, tmp_path, full_run
):
    out = tmp_path / "between"
    train(dc_cfg(tiny_opts, market_root, out, **{"SOLVER.MAX_EPOCHS": "2"}))
    train(dc_cfg(tiny_opts, market_root, out), resume=str(out))  # re-clusters before e = 2 in the resumed run
    assert_same_state(checkpoint(full_run, 4), checkpoint(out, 4))
    assert last_per_epoch(out / "metrics.jsonl") == last_per_epoch(full_run / "metrics.jsonl")
    assert last_per_epoch(out / "train_metrics.jsonl") == last_per_epoch(full_run / "train_metrics.jsonl")


@pytest.mark.e2e
def test_a_run_stopped_within_an_epoch_after_a_re_clustering_resumes_exactly(
    tiny_opts, market_root, tmp_path, full_run, monkeypatch
):
    # SIGTERM during the first batch of epoch 4 (e = 3, K = 2): the checkpoint holds 1 of its batches
    real = DivideAndConquer.process_function

    def signalling(self):
        step = real(self)

        def wrapped(engine, batch):
            output = step(engine, batch)
            if engine.state.epoch == 4 and engine.state.iteration == engine.state.epoch_start + 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return output

        return wrapped

    out = tmp_path / "within"
    monkeypatch.setattr(DivideAndConquer, "process_function", signalling)
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at epoch 4"):
        train(dc_cfg(tiny_opts, market_root, out))
    monkeypatch.setattr(DivideAndConquer, "process_function", real)
    assert [p.name for p in (out / "checkpoints").glob("checkpoint_4_iter*.pt")] == ["checkpoint_4_iter1.pt"]
    train(dc_cfg(tiny_opts, market_root, out), resume=str(out))
    assert_same_state(checkpoint(full_run, 4), checkpoint(out, 4))
    assert last_per_epoch(out / "metrics.jsonl") == last_per_epoch(full_run / "metrics.jsonl")
    assert last_per_epoch(out / "train_metrics.jsonl") == last_per_epoch(full_run / "train_metrics.jsonl")


def test_the_freeze_and_full_embedding_epochs_follow_the_seed_arithmetic():
    # MOD_EPOCH 2, MOD_EPOCH_FREEZE 1 (the seed's SOP command): frozen right after every re-clustering
    assert [backbone_frozen(e, 2, 1) for e in range(6)] == [True, False] * 3
    assert not any(backbone_frozen(e, 2, 0) for e in range(6))
    assert [full_embedding(e, 80) for e in (0, 79, 80, 179)] == [False, False, True, True]
    assert not any(full_embedding(e, -1) for e in (0, 80, 1000))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"METHOD.DC.NB_CLUSTERS": "3"}, "METHOD.DC.NB_CLUSTERS = 3; the 'top_bot' hierarchy doubles K from 1"),
        ({"METHOD.DC.NB_CLUSTERS": "64"}, "METHOD.DC.NB_CLUSTERS = 64 for 100 training classes"),
        ({"METHOD.DC.MOD_EPOCH": "0"}, "METHOD.DC.MOD_EPOCH = 0; expected a positive number of epochs"),
        ({"METHOD.DC.MOD_EPOCH_FREEZE": "3"}, "METHOD.DC.MOD_EPOCH_FREEZE = 3; expected 0 to MOD_EPOCH"),
        ({"METHOD.DC.FORCE_FULL_EMBEDDING_EPOCH": "-2"}, "FORCE_FULL_EMBEDDING_EPOCH = -2"),
        ({"METHOD.DC.MASKING_LAMBDA": "-0.1"}, "METHOD.DC.MASKING_LAMBDA = -0.1; expected a value >= 0"),
        # (the config loader checks PK samplers' batches already; D&C draws its own batches whatever the sampler)
        (
            {"SOLVER.IMS_PER_BATCH": "9", "DATALOADER.SAMPLER": "softmax"},
            "SOLVER.IMS_PER_BATCH = 9 with DATALOADER.NUM_INSTANCE = 2",
        ),
    ],
)
def test_bad_dc_keys_are_one_line_errors(overrides, message):
    opts = {"DATALOADER.NUM_INSTANCE": "2", "SOLVER.IMS_PER_BATCH": "80", **overrides}
    cfg = load_config(None, [item for pair in opts.items() for item in pair])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_dc_keys(cfg, num_classes=100)
    flat = load_config(None, ["METHOD.DC.HIERARCHY", "flat", "METHOD.DC.NB_CLUSTERS", "3"])
    check_dc_keys(flat, num_classes=100)  # a flat hierarchy takes any K
