"""The retrieval recipes of seed 004 (configs/proxy_anchor_*.yml, configs/amloss_*.yml): each names the seed's
flags as keys and trains one tiny epoch on generated data in the official layout (only the image sizes, the
batch, the epochs, the ImageNet file and the dataset root are overridden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from config import load_config
from engine.training import train
from modeling import build_model

ROOT = Path(__file__).resolve().parents[1]
# dataset -> the tree fixture of tests/conftest.py that builds it
TREES = {"cub": "make_cub_tree", "cars": "make_cars_tree", "sop": "make_sop_tree", "inshop": "make_inshop_tree"}
RECIPES = sorted(p.name for p in (ROOT / "configs").glob("*.yml") if p.name.startswith(("proxy_anchor_", "amloss_")))


def test_every_dataset_and_backbone_has_both_recipes():
    expected = {
        f"{loss}_{dataset}_{backbone}.yml"
        for loss in ("proxy_anchor", "amloss")
        for dataset in TREES
        for backbone in ("bninception", "resnet50")
    }
    assert set(RECIPES) == expected


@pytest.mark.parametrize(
    "name", ["amloss_cub_bninception.yml", "amloss_sop_resnet50.yml", "proxy_anchor_inshop_resnet50.yml"]
)
def test_recipe_keys_follow_the_seed_flags(name):
    cfg = load_config(ROOT / "configs" / name, [])
    text = (ROOT / "configs" / name).read_text()
    assert cfg.MODEL.EMBEDDING_DIM == 512 and cfg.MODEL.EMBEDDING_NORM == "yes" and cfg.MODEL.POOLING == "avg+max"
    assert cfg.SOLVER.OPTIMIZER_NAME == "AdamW" and cfg.SOLVER.LR_SCHEDULER == "step" and cfg.SOLVER.GRAD_CLIP == 10
    assert f"--batch-size {cfg.SOLVER.IMS_PER_BATCH}" in text and f"--warm {cfg.SOLVER.WARM_EPOCHS}" in text
    assert f"--lr-decay-step {cfg.SOLVER.LR_DECAY_STEP}" in text
    assert ("--bn-freeze 1" in text) == (cfg.MODEL.BN_FREEZE == "yes")
    if name == "amloss_cub_bninception.yml":
        assert cfg.MODEL.NAME == "bn_inception" and cfg.SOLVER.BASE_LR == pytest.approx(1e-4)
        assert cfg.LOSS.AMLOSS.ALPHA_POS == 48 and cfg.LOSS.AMLOSS.ALPHA_NEG == 48
    if name == "amloss_sop_resnet50.yml":
        assert cfg.SOLVER.MAX_EPOCHS == 60 and cfg.SOLVER.LR_DECAY_GAMMA == pytest.approx(0.5)
        assert cfg.SOLVER.BASE_LR == pytest.approx(6e-4) and cfg.SOLVER.IMS_PER_BATCH == 180


@pytest.mark.e2e
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_one_tiny_epoch(name, tmp_path, request, fill_images):
    dataset = name.split("_")[-2]
    data_root = tmp_path / "data"
    request.getfixturevalue(TREES[dataset])(data_root)
    fill_images(data_root)
    out = tmp_path / "out"
    opts = {
        "MODEL.PRETRAIN_CHOICE": "none",
        "DATASETS.ROOT_DIR": str(data_root),
        "INPUT.SIZE_TRAIN": "[64, 64]",
        "INPUT.SIZE_TEST": "[64, 64]",
        "INPUT.RESIZE_TEST": "72",
        "SOLVER.IMS_PER_BATCH": "6",
        "SOLVER.MAX_EPOCHS": "1",
        "SOLVER.EVAL_PERIOD": "1",
        "DATALOADER.NUM_WORKERS": "0",
        "TEST.IMS_PER_BATCH": "16",
        "OUTPUT_DIR": str(out),
        "LOG.PLOTS": "no",
        "LOG.TENSORBOARD": "no",
    }
    result = train(load_config(ROOT / "configs" / name, [x for kv in opts.items() for x in kv]))
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["protocol"] == "retrieval" and 0.0 <= result["R@1"] <= 1.0
    assert (out / "checkpoints" / "checkpoint_1.pt").is_file()


@pytest.mark.e2e
def test_warm_epochs_train_only_the_embedding_and_loss_then_everything(tmp_path, make_cub_tree, fill_images):
    """--warm 1 with --bn-freeze 1: epoch 1 moves the embedding layer and the proxies only; epoch 2 moves the
    backbone too, except its frozen BatchNorm affines; BatchNorm running statistics never move."""
    data_root = tmp_path / "data"
    make_cub_tree(data_root)
    fill_images(data_root)
    opts = {
        "MODEL.PRETRAIN_CHOICE": "none",
        "MODEL.NAME": "resnet18",
        "DATASETS.ROOT_DIR": str(data_root),
        "INPUT.SIZE_TRAIN": "[64, 64]",
        "INPUT.SIZE_TEST": "[64, 64]",
        "INPUT.RESIZE_TEST": "72",
        "SOLVER.IMS_PER_BATCH": "6",
        "SOLVER.EVAL_PERIOD": "5",
        "DATALOADER.NUM_WORKERS": "0",
        "TEST.IMS_PER_BATCH": "16",
        "LOG.PLOTS": "no",
        "LOG.TENSORBOARD": "no",
        "SOLVER.CHECKPOINT_PERIOD": "1",
    }
    cfg_opts = [x for kv in {**opts, "SOLVER.MAX_EPOCHS": "2", "OUTPUT_DIR": str(tmp_path / "out")}.items() for x in kv]
    cfg = load_config(ROOT / "configs" / "proxy_anchor_cub_resnet50.yml", [*cfg_opts, "SOLVER.WARM_EPOCHS", "1"])
    torch.manual_seed(cfg.SEED)
    initial = build_model(cfg).state_dict()
    train(cfg)
    after = [torch.load(tmp_path / "out" / "checkpoints" / f"checkpoint_{e}.pt", weights_only=False) for e in (1, 2)]
    conv = (
        "backbone.body.conv1.weight"
        if "backbone.body.conv1.weight" in initial
        else next(k for k in initial if k.endswith("conv1.weight"))
    )
    bn_weight = next(k for k in initial if k.startswith("backbone") and k.endswith("bn1.weight"))
    bn_mean = bn_weight.replace("weight", "running_mean")
    assert torch.equal(after[0]["model"][conv], initial[conv])  # warm epoch: backbone frozen
    assert not torch.equal(after[0]["model"]["embedding.weight"], initial["embedding.weight"])
    assert not torch.equal(after[1]["model"][conv], initial[conv])  # then it trains
    for state in after:
        assert torch.equal(state["model"][bn_weight], initial[bn_weight])  # frozen affine
        assert torch.equal(state["model"][bn_mean], initial[bn_mean])  # eval-mode BN: statistics kept
