"""The retrieval recipes of seed 004 (configs/proxy_anchor_*.yml, configs/amloss_*.yml): each names the seed's
flags as keys and trains one tiny epoch on generated data in the official layout (only the image sizes, the
batch, the epochs, the ImageNet file and the dataset root are overridden).

The recipes of the training methods MMSI (seed 001, configs/mmsi_*.yml) and DDTAS (seed 000, configs/ddtas_*.yml):
each quotes its seed script's variables and command in its header and sets the keys they map to, selects its
method and the loss that method needs, and gives its baseline (MMSI=0 / OTG=0) by switching one key.

The Divide & Conquer recipes (seed 003, configs/dc_*.yml): each quotes the seed's sample command, maps every one of
its flags to a key, gives the published numbers and the "learn" rows one key away; one trains two tiny epochs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from config import load_config
from engine.training import train
from layers import build_loss
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


# ---------------------------------------------------------------------------------------------------------------
# MMSI (seed 001) and DDTAS (seed 000): configs/mmsi_*.yml, configs/ddtas_*.yml
# ---------------------------------------------------------------------------------------------------------------

# recipe -> (the seed script it maps, SOLVER.METHOD, MODEL.METRIC_LOSS_TYPE)
METHOD_RECIPES = {
    "mmsi_con_cub_bninception.yml": ("Run_MMSI_Con.sh", "mmsi", "contrastive"),
    "mmsi_con_cars_bninception.yml": ("Run_MMSI_Con.sh", "mmsi", "contrastive"),
    "mmsi_ms_cub_bninception.yml": ("Run_MMSI_MS.sh", "mmsi", "ms"),
    "mmsi_ms_cars_bninception.yml": ("Run_MMSI_MS.sh", "mmsi", "ms"),
    "mmsi_ms_sop_bninception.yml": ("Run_MMSI_SOP.sh", "mmsi", "ms"),
    "ddtas_cub_bninception.yml": ("Run_DDTAS.sh", "ddtas", "soft_contrastive"),
    "ddtas_cars_bninception.yml": ("Run_DDTAS.sh", "ddtas", "soft_contrastive"),
    "ddtas_sop_bninception.yml": ("Run_DDTAS_SOP.sh", "ddtas", "soft_contrastive"),
}
# our dataset name -> the seeds' DATA value
SEED_DATA = {"cub": "cub", "cars": "car", "sop": "product"}
SEED_LOSS = {"Con": "contrastive", "MS": "ms", "SoftCon": "soft_contrastive"}


def recipe_header(name: str) -> str:
    """The leading comment block of configs/<name>."""
    lines = (ROOT / "configs" / name).read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def quoted_script(header: str) -> tuple[dict[str, str], dict[str, str]]:
    """The seed script quoted in a header: its variables (`#   NAME=value` lines) and the flags of its command
    (the `#   CUDA_VISIBLE_DEVICES=... python ...` line and its indented continuation lines)."""
    variables = dict(re.findall(r"^#   ([A-Za-z_]+)=(\S+)$", header, flags=re.M))
    command = re.search(r"^#   CUDA_VISIBLE_DEVICES=\S+ python .*(?:\n#       .*)*", header, flags=re.M)
    flags = dict(re.findall(r"--(\w+) (\S+)", command.group(0))) if command else {}
    return variables, flags


def flat(cfg, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_method_recipe_is_there():
    found = {p.name for p in (ROOT / "configs").glob("*.yml") if p.name.startswith(("mmsi_", "ddtas_"))}
    assert found == set(METHOD_RECIPES)


@pytest.mark.parametrize("name", sorted(METHOD_RECIPES))
def test_method_recipe_selects_its_method_and_loss(name):
    script, method, loss = METHOD_RECIPES[name]
    cfg = load_config(ROOT / "configs" / name, [])
    dataset = name.split("_")[-2]
    assert cfg.SOLVER.METHOD == method and cfg.MODEL.METRIC_LOSS_TYPE == loss and cfg.MODEL.CLS_LOSS_TYPE == "none"
    assert cfg.DATASETS.NAMES == dataset
    # both codebases: BN-Inception, 512-d normalised, Adam wd 5e-4 at a constant lr, BN frozen, 227 crops of scale
    # 0.16-1 (test: 256 then centre 227), PK batches of 80 = 16 classes x 5, fp32
    assert cfg.MODEL.NAME == "bn_inception" and cfg.MODEL.EMBEDDING_DIM == 512 and cfg.MODEL.EMBEDDING_NORM == "yes"
    assert cfg.MODEL.BN_FREEZE == "yes" and cfg.MODEL.NECK == "no" and cfg.TEST.NECK_FEAT == "before"
    assert cfg.SOLVER.OPTIMIZER_NAME == "Adam" and cfg.SOLVER.WEIGHT_DECAY == pytest.approx(5e-4)
    assert cfg.SOLVER.LR_SCHEDULER == "step" and cfg.SOLVER.LR_DECAY_GAMMA == 1.0
    assert list(cfg.INPUT.SIZE_TRAIN) == [227, 227] == list(cfg.INPUT.SIZE_TEST) and cfg.INPUT.RESIZE_TEST == 256
    assert list(cfg.INPUT.CROP_SCALE) == pytest.approx([0.16, 1.0]) and cfg.INPUT.TRANSFORM == "retrieval"
    assert cfg.DATALOADER.SAMPLER == "triplet" and cfg.DATALOADER.NUM_INSTANCE == 5 and cfg.SOLVER.IMS_PER_BATCH == 80
    assert cfg.SOLVER.AMP == "none"
    assert cfg.MODEL.POOLING == ("max" if method == "mmsi" and dataset != "sop" else "avg+max")
    term = build_loss(cfg, num_classes=10, feat_dim=512).metric_terms[loss]
    if method == "mmsi":
        assert cfg.METHOD.MMSI.VAL_BATCH == 10 and cfg.METHOD.MMSI.VAL_K == 1
        assert cfg.METHOD.MMSI.MIN_CLASSES == (1000 if dataset == "sop" else 98)
        if loss == "contrastive":  # MMSI's contrastive sums per anchor
            assert cfg.LOSS.CONTRASTIVE.REDUCTION == "sum" and term.reduction == "sum"
            assert term.margin == pytest.approx(cfg.LOSS.CONTRASTIVE.MARGIN)
        else:  # MS.py: beta 2, lambda 0.5, 2/beta and 2/alpha
            assert (term.pos_scale, term.thresh, term.coef) == (2.0, 0.5, 2.0)
            assert term.mining_margin == pytest.approx(cfg.LOSS.MS.MINING_MARGIN)
    else:
        assert cfg.LOSS.SOFT_CONTRASTIVE.MINING == "at_asms" and term.mining == "at_asms"
        assert (term.pos_scale, term.neg_scale, term.thresh) == (2.0, 40.0, pytest.approx(0.7))
        assert term.margin == pytest.approx(0.1) and cfg.SOLVER.BASE_LR == pytest.approx(1e-5)
        assert cfg.METHOD.DDTAS.VAL_BATCH == 10 and cfg.METHOD.DDTAS.VAL_K == 2
        assert cfg.METHOD.DDTAS.OTG_MODE == "threshold"  # OTG=1
    # fine-tuning from one of our checkpoints is the one key MODEL.PRETRAIN_PATH where the seed fine-tunes
    finetunes = loss == "ms" or name == "ddtas_sop_bninception.yml"
    assert cfg.MODEL.PRETRAIN_CHOICE == ("self" if finetunes else "imagenet")
    if finetunes:
        assert cfg.MODEL.PRETRAIN_PATH.endswith("/best.pt")
        other = load_config(ROOT / "configs" / name, ["MODEL.PRETRAIN_PATH", "/runs/ms/best.pt"])
        assert {k for k, v in flat(other).items() if flat(cfg)[k] != v} == {"MODEL.PRETRAIN_PATH"}


@pytest.mark.parametrize("name", sorted(METHOD_RECIPES))
def test_method_recipe_header_quotes_its_seed_script(name):
    script, method, loss = METHOD_RECIPES[name]
    cfg = load_config(ROOT / "configs" / name, [])
    header = recipe_header(name)
    dataset = name.split("_")[-2]
    assert script in header and f"DATA={SEED_DATA[dataset]} (--data)" in header
    assert ("MMSI" if method == "mmsi" else "OTG") in header
    variables, flags = quoted_script(header)
    if name == "ddtas_sop_bninception.yml":
        # Run_DDTAS_SOP.sh is not public: the README's variables, and Run_DDTAS.sh's values (the CUB recipe's)
        assert not flags and "CUDA_VISIBLE_DEVICES, OTG (1 on, 0 off), DATA" in header
        cub = flat(load_config(ROOT / "configs" / "ddtas_cub_bninception.yml", []))
        differ = {k for k, v in flat(cfg).items() if cub[k] != v}
        sop_only = {"DATASETS.NAMES", "MODEL.PRETRAIN_CHOICE", "MODEL.PRETRAIN_PATH", "TEST.NMI_RUNS", "OUTPUT_DIR"}
        assert differ == sop_only
        return
    # every quoted variable and flag is the value of the key it maps to
    assert SEED_LOSS[variables["LOSS"]] == cfg.MODEL.METRIC_LOSS_TYPE and variables["NET"] == "BN_Inception"
    assert int(variables["DIM"]) == cfg.MODEL.EMBEDDING_DIM
    assert float(variables["LR"]) == pytest.approx(cfg.SOLVER.BASE_LR)
    assert int(variables["BatchSize"]) == cfg.SOLVER.IMS_PER_BATCH
    assert float(variables["RATIO"]) == pytest.approx(cfg.INPUT.CROP_SCALE[0])
    assert int(flags["num_instances"]) == cfg.DATALOADER.NUM_INSTANCE
    assert int(flags["width"]) == cfg.INPUT.SIZE_TRAIN[0] == cfg.INPUT.SIZE_TEST[0]
    assert int(flags["epoch"]) == cfg.SOLVER.MAX_EPOCHS and int(flags["save_step"]) == cfg.SOLVER.EVAL_PERIOD
    node = cfg.METHOD.MMSI if method == "mmsi" else cfg.METHOD.DDTAS
    assert int(variables["ValBatchSize"]) == node.VAL_BATCH and int(flags["val_num_instances"]) == node.VAL_K
    margin = {
        "contrastive": cfg.LOSS.CONTRASTIVE.MARGIN,
        "ms": cfg.LOSS.MS.MINING_MARGIN,
        "soft_contrastive": cfg.LOSS.SOFT_CONTRASTIVE.MARGIN,
    }[loss]
    assert float(variables["MARGIN"]) == pytest.approx(margin)
    if loss == "ms":
        assert int(variables["ALPHA"]) == cfg.LOSS.MS.NEG_SCALE
    if loss == "soft_contrastive":
        assert int(variables["ALPHA"]) == cfg.LOSS.SOFT_CONTRASTIVE.NEG_SCALE
    if method == "mmsi":
        assert int(variables["DSIZE"]) == cfg.METHOD.MMSI.DSIZE
        assert flags["MMSI"] == "${MMSI}" and variables["MMSI"] in ("0", "1")
    else:
        assert variables["OTG"] in ("0", "1")


@pytest.mark.parametrize("name", sorted(METHOD_RECIPES))
def test_method_recipe_baseline_is_one_key_away(name):
    """MMSI=0 is SOLVER.METHOD standard; OTG=0 is METHOD.DDTAS.OTG_MODE none; each header says so, and the
    baseline config loads and differs from the recipe in that key only."""
    _, method, _ = METHOD_RECIPES[name]
    path = ROOT / "configs" / name
    recipe = flat(load_config(path, []))
    switches = [("SOLVER.METHOD", "standard")]
    if method == "ddtas":
        switches += [("METHOD.DDTAS.OTG_MODE", "none"), ("METHOD.DDTAS.OTG_MODE", "pair_weight")]
    header = recipe_header(name)
    baseline = "SOLVER.METHOD standard" if method == "mmsi" else "METHOD.DDTAS.OTG_MODE none"
    assert f"with {baseline}" in header
    for key, value in switches:
        switched = flat(load_config(path, [key, value]))
        assert {k for k, v in switched.items() if recipe[k] != v} == {key} and switched[key] == value


# ------------------------------------------------------------------------------------------ Divide & Conquer
DC_RECIPES = {f"dc_{d}_resnet50.yml" for d in ("cub", "cars", "sop", "inshop", "vehicleid")}
# the seed's --dataset values
DC_SEED_DATASETS = {"cub": "cub", "cars": "cars", "sop": "sop", "inshop": "inshop", "vehicleid": "vid"}
# seed 003's README: R@1 of the "fixed" and "learn" rows
DC_PUBLISHED_R1 = {"cub": ("67.39", "67.71"), "cars": ("87.22", "86.90"), "sop": ("79.50", "79.80"),
                   "inshop": ("89.84", "90.49")}  # fmt: skip


def dc_quoted_flags(header: str) -> dict[str, str]:
    """The flags of the seed command quoted in a D&C recipe's header: `--name=value` and `-seed=4` pairs."""
    command = re.search(r"^#   python train\.py --experiment .*(?:\n#       .*)*", header, flags=re.M)
    return dict(re.findall(r"(?:^|\s)-{1,2}([\w-]+)[= ](\S+)", command.group(0).split("train.py", 1)[1]))


def test_every_dc_recipe_is_there():
    assert {p.name for p in (ROOT / "configs").glob("dc_*.yml")} == DC_RECIPES


@pytest.mark.parametrize("name", sorted(DC_RECIPES))
def test_dc_recipe_sets_every_flag_of_the_seed_command(name):
    cfg = load_config(ROOT / "configs" / name, [])
    dataset = name.split("_")[1]
    header = recipe_header(name)
    flags = dc_quoted_flags(header)
    dc = cfg.METHOD.DC
    # every flag of the command, and the key value it maps to (None: no key, said in the header)
    expected = {
        "experiment": ("margin_loss_resnet50", cfg.MODEL.NAME == "resnet50" and cfg.SOLVER.METHOD == "dc"),
        "dataset": (DC_SEED_DATASETS[dataset], cfg.DATASETS.NAMES == dataset),
        "i": ("$NAME", cfg.OUTPUT_DIR == f"./logs/dc_{dataset}_resnet50"),
        "seed": ("4", cfg.SEED == 4),
        "sz-embedding": ("512", cfg.MODEL.EMBEDDING_DIM == 512),
        "mod-epoch": ("2", dc.MOD_EPOCH == 2),
        "nb-clusters": ("32", dc.NB_CLUSTERS == (4 if dataset in ("cub", "cars") else 32)),
        "nb-epochs": ("180", cfg.SOLVER.MAX_EPOCHS == 180),
        "batch-size": ("80", cfg.SOLVER.IMS_PER_BATCH == 80),
        "num-samples-per-class": ("2", cfg.DATALOADER.NUM_INSTANCE == 2),
        "backend": ("faiss-gpu", True),
        "lr-gamma": ("0.3", cfg.SOLVER.LR_SCHEDULER == "step" and cfg.SOLVER.LR_DECAY_GAMMA == 1.0),
        "mod-epoch-freeze": ("1", dc.MOD_EPOCH_FREEZE == 1),
        "sampler": ("distanceweighted", cfg.MODEL.METRIC_LOSS_TYPE == "margin"),
        "weight-decay": ("1e-4", cfg.SOLVER.WEIGHT_DECAY == pytest.approx(1e-4)),
        "batch-sampler": ("adaptbalanced", cfg.SOLVER.METHOD == "dc"),
        "force-full-embedding-epoch": ("80", dc.FORCE_FULL_EMBEDDING_EPOCH == 80),
        "mask-lr-mult": ("100", dc.MASK_LR_MULT == 100),
        "masking-lambda": ("0.01", dc.MASKING_LAMBDA == pytest.approx(0.01)),
        "mask-wd-mult": ("1", dc.MASK_WD_MULT == 1),
        "dataset-dir": ("$datadir", cfg.DATASETS.ROOT_DIR == "./datasets"),
    }
    assert set(flags) == set(expected)
    for flag, (value, holds) in expected.items():
        assert flags[flag] == value, flag
        assert holds, flag
        assert f"--{flag}" in header.split("Flag by flag", 1)[1] or flag in ("i", "seed"), flag  # mapped below
    # the seed's defaults it keeps
    assert cfg.SOLVER.OPTIMIZER_NAME == "Adam" and cfg.SOLVER.BASE_LR == pytest.approx(1e-5)
    assert cfg.LOSS.MARGIN_LOSS.ALPHA == pytest.approx(0.2) and cfg.LOSS.MARGIN_LOSS.LEARN_BETA == "no"
    assert dc.HIERARCHY == "top_bot" and dc.FIXED_MASK == "no" and dc.MASKING_INIT == "ones"
    assert cfg.MODEL.BN_FREEZE == "yes" and cfg.SOLVER.EVAL_PERIOD == 1 and cfg.TEST.NMI_RUNS >= 1
    assert list(cfg.INPUT.SIZE_TRAIN) == [224, 224] and cfg.INPUT.RESIZE_TEST == 256
    if dataset in DC_PUBLISHED_R1:
        fixed, learn = DC_PUBLISHED_R1[dataset]
        assert f"R@1 {fixed}" in header and f"R@1 {learn}" in header
    # the "learn" rows are one key away
    learn = flat(load_config(ROOT / "configs" / name, ["LOSS.MARGIN_LOSS.LEARN_BETA", "yes"]))
    assert {k for k, v in learn.items() if flat(cfg)[k] != v} == {"LOSS.MARGIN_LOSS.LEARN_BETA"}


@pytest.mark.e2e
def test_dc_recipe_trains_two_tiny_epochs_with_a_split(tmp_path, make_cub_tree, fill_images):
    data_root = tmp_path / "data"
    make_cub_tree(data_root, num_classes=16, per_class=4)
    fill_images(data_root)
    out = tmp_path / "out"
    opts = {
        "MODEL.PRETRAIN_CHOICE": "none",
        "DATASETS.ROOT_DIR": str(data_root),
        "INPUT.SIZE_TRAIN": "[64, 64]",
        "INPUT.SIZE_TEST": "[64, 64]",
        "INPUT.RESIZE_TEST": "72",
        "SOLVER.IMS_PER_BATCH": "8",
        "SOLVER.MAX_EPOCHS": "2",
        "METHOD.DC.NB_CLUSTERS": "2",
        "METHOD.DC.MOD_EPOCH": "1",
        "TEST.NMI_RUNS": "1",
        "DATALOADER.NUM_WORKERS": "0",
        "TEST.IMS_PER_BATCH": "16",
        "OUTPUT_DIR": str(out),
        "LOG.PLOTS": "no",
        "LOG.TENSORBOARD": "no",
    }
    result = train(load_config(ROOT / "configs" / "dc_cub_resnet50.yml", [x for kv in opts.items() for x in kv]))
    assert 0.0 <= result["R@1"] <= 1.0 and "NMI" in result
    epochs = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["clusters"] for r in epochs] == [1, 2] and [r["backbone_frozen"] for r in epochs] == [1, 1]
