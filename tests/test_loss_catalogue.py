"""The loss catalogue as a whole: every config name builds through build_loss, stays finite and fp32 under bf16
autocast, decreases on a toy problem, and trains one tiny epoch through train.py's path; 'pml:' losses and
miners equal the PML objects they name; bad names and arguments fail with one ConfigError listing the choices;
learnable loss parameters land in their optimizer groups and survive a checkpoint.

Per-loss references (PML or loop-by-definition, gradcheck) are in test_pair_losses.py, test_reid_losses.py,
test_margin_loss.py, test_proxy_losses.py and test_margin_heads.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from config import ConfigError, load_config
from engine.run.cli import parse_command_line
from engine.training import train
from layers import CLS_LOSSES, METRIC_LOSSES, build_loss, metric_loss_names
from layers.pml_catalogue import available_losses, available_miners, parse_kwargs
from solver import build_solver, parameter_groups

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES, FEAT_DIM = 5, 16
METRIC_NAMES = [n for n in METRIC_LOSSES]
CLS_NAMES = [n for n in CLS_LOSSES]


def _cfg(*opts: str):
    return load_config(None, list(opts))


def _arch_opts(kind: str, name: str) -> list[str]:
    """NAMA's uc losses need the uncertainty head on their path (MODEL.ARCH)."""
    if name.startswith("uc-"):
        return ["MODEL.ARCH", "clsuc" if kind == "cls" else "uc"]
    return []


def _metric_cfg(name: str, *opts: str):
    return _cfg("MODEL.METRIC_LOSS_TYPE", name, "MODEL.CLS_LOSS_TYPE", "none", *_arch_opts("metric", name), *opts)


def _cls_cfg(name: str, *opts: str):
    return _cfg("MODEL.METRIC_LOSS_TYPE", "none", "MODEL.CLS_LOSS_TYPE", name, *_arch_opts("cls", name), *opts)


def _batch(seed: int = 0, p: int = NUM_CLASSES, k: int = 4, d: int = FEAT_DIM, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    centres = torch.randn(p, d, generator=g)
    feats = centres[labels] + 0.8 * torch.randn(len(labels), d, generator=g)
    uc = 0.05 * torch.randn(len(labels), generator=g)  # the uncertainty head's offsets, for the uc losses
    return {
        "feat": feats.to(dtype),
        "neck_feat": feats.to(dtype),
        "uc": uc.to(dtype),
        "uc_norm": feats.norm(dim=1).to(dtype),
    }, labels


ALL_CASES = (
    [("metric", n) for n in METRIC_NAMES]
    + [("cls", n) for n in CLS_NAMES]
    + [("metric", "pml:TripletMarginLoss"), ("metric", "ms+center")]
)


def _build(kind: str, name: str):
    cfg = _metric_cfg(name) if kind == "metric" else _cls_cfg(name)
    torch.manual_seed(0)
    return build_loss(cfg, NUM_CLASSES, FEAT_DIM)


# ------------------------------------------------------------------------------------------------
# Every name: parts, finiteness, bf16 autocast in fp32, toy decrease
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,name", ALL_CASES)
def test_every_loss_is_finite_with_its_parts(kind, name):
    criterion = _build(kind, name)
    outputs, labels = _batch()
    feats = outputs["feat"].requires_grad_(True)
    torch.manual_seed(1)
    total, parts = criterion({**outputs, "feat": feats, "neck_feat": feats}, {"label": labels})
    assert total.dim() == 0 and torch.isfinite(total)
    assert set(parts) | {"loss"} == set(criterion.part_names)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in parts.values())
    total.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    for param in criterion.parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all()


@pytest.mark.parametrize("kind,name", ALL_CASES)
def test_every_loss_under_bf16_autocast_computes_in_fp32(kind, name):
    criterion = _build(kind, name)
    outputs, labels = _batch(dtype=torch.bfloat16)
    torch.manual_seed(1)  # the margin loss samples: same draws in both calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = criterion(outputs, {"label": labels})
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(v.dtype == torch.float32 for v in parts.values())
    torch.manual_seed(1)
    reference, _ = criterion({k: v.float() for k, v in outputs.items()}, {"label": labels})
    torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,name", ALL_CASES)
def test_every_loss_decreases_on_a_toy_problem(kind, name):
    criterion = _build(kind, name)
    outputs, labels = _batch(seed=3)
    feats = torch.nn.Parameter(outputs["feat"].clone())
    optimizer = torch.optim.Adam([feats, *criterion.parameters()], lr=0.05)
    values = []
    torch.manual_seed(2)
    for _ in range(40):
        optimizer.zero_grad()
        loss, _ = criterion({**outputs, "feat": feats, "neck_feat": feats}, {"label": labels})
        values.append(loss.item())
        loss.backward()
        optimizer.step()
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < first, f"{name}: {values[:5]} ... {values[-5:]}"


# ------------------------------------------------------------------------------------------------
# METRIC_LOSS_TYPE grammar
# ------------------------------------------------------------------------------------------------
def test_metric_names_join_alias_and_center_switch():
    assert metric_loss_names(_cfg("MODEL.METRIC_LOSS_TYPE", "ms+center")) == ["ms", "center"]
    assert metric_loss_names(_cfg("MODEL.METRIC_LOSS_TYPE", "triplet_center")) == ["triplet", "center"]
    assert metric_loss_names(_cfg("MODEL.METRIC_LOSS_TYPE", "tri")) == ["triplet"]
    assert metric_loss_names(_cfg("MODEL.IF_WITH_CENTER", "yes")) == ["triplet", "center"]
    assert metric_loss_names(_cfg("MODEL.METRIC_LOSS_TYPE", "none")) == []
    assert metric_loss_names(_cfg("MODEL.METRIC_LOSS_TYPE", "none", "MODEL.IF_WITH_CENTER", "yes")) == ["center"]
    for bad in ("ms+ms", "none+center", "ms+nope"):
        with pytest.raises(ConfigError, match="MODEL.METRIC_LOSS_TYPE"):
            metric_loss_names(_cfg("MODEL.METRIC_LOSS_TYPE", bad))


def test_center_term_has_its_own_weight():
    criterion = build_loss(
        _metric_cfg("triplet_center", "SOLVER.CENTER_LOSS_WEIGHT", "0.25", "SOLVER.TRI_LOSS_WEIGHT", "2.0"),
        NUM_CLASSES,
        FEAT_DIM,
    )
    outputs, labels = _batch()
    total, parts = criterion(outputs, {"label": labels})
    expected = 2.0 * parts["triplet_loss"] + 0.25 * parts["center_loss"]
    torch.testing.assert_close(total.detach(), expected)


def test_bad_hyper_parameter_names_the_loss():
    with pytest.raises(ConfigError, match="LOSS.SOFT_CONTRASTIVE.MINING"):
        build_loss(_metric_cfg("soft_contrastive", "LOSS.SOFT_CONTRASTIVE.MINING", "greedy"), 4, 8)
    with pytest.raises(ConfigError, match="LOSS.MARGIN_LOSS.LEARN_BETA"):
        build_loss(_metric_cfg("margin", "LOSS.MARGIN_LOSS.LEARN_BETA", "maybe"), 4, 8)


# ------------------------------------------------------------------------------------------------
# pml: catalogue
# ------------------------------------------------------------------------------------------------
def test_pml_loss_with_kwargs_and_miner_equals_pml():
    cfg = _metric_cfg(
        "pml:TripletMarginLoss",
        "LOSS.PML_KWARGS",
        "{'margin': 0.15, 'distance': 'pml:CosineSimilarity'}",
        "LOSS.MINER",
        "pml:MultiSimilarityMiner",
        "LOSS.MINER_KWARGS",
        "{'epsilon': 0.2}",
    )
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    outputs, labels = _batch()
    total, parts = criterion(outputs, {"label": labels})
    loss = pml_losses.TripletMarginLoss(margin=0.15, distance=pml_distances.CosineSimilarity())
    miner = pml_miners.MultiSimilarityMiner(epsilon=0.2)
    expected = loss(outputs["feat"], labels, miner(outputs["feat"], labels))
    torch.testing.assert_close(total, expected)
    assert "pml_TripletMarginLoss_loss" in parts


def test_pml_proxy_loss_gets_class_count_and_proxy_group():
    cfg = _metric_cfg("pml:ProxyAnchorLoss", "LOSS.PML_KWARGS", "{'alpha': 16}", "SOLVER.BASE_LR", "0.001")
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    pml_loss = criterion.metric_terms["pml_ProxyAnchorLoss"].loss
    assert pml_loss.proxies.shape == (NUM_CLASSES, FEAT_DIM) and pml_loss.alpha == 16
    groups = {g["name"]: g for g in parameter_groups(cfg, torch.nn.Linear(2, 2), criterion)}
    assert groups["proxy"]["params"][0] is pml_loss.proxies
    assert groups["proxy"]["lr"] == pytest.approx(0.001 * 100)


def test_pml_kwargs_from_a_yaml_mapping(tmp_path):
    path = tmp_path / "x.yml"
    path.write_text(
        "MODEL:\n  METRIC_LOSS_TYPE: pml:ContrastiveLoss\nLOSS:\n  PML_KWARGS: {pos_margin: 0.1, neg_margin: 0.7}\n"
    )
    cfg = load_config(path, [])
    assert parse_kwargs("LOSS.PML_KWARGS", cfg.LOSS.PML_KWARGS) == {"pos_margin": 0.1, "neg_margin": 0.7}
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    assert criterion.metric_terms["pml_ContrastiveLoss"].loss.neg_margin == pytest.approx(0.7)


@pytest.mark.parametrize(
    "opts,fragments",
    [
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLos"],
            ["no pytorch-metric-learning loss", "pml:TripletMarginLoss"],
        ),
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLoss", "LOSS.MINER", "pml:Nope"],
            ["LOSS.MINER", "pml:BatchHardMiner"],
        ),
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLoss", "LOSS.MINER", "BatchHardMiner"],
            ["LOSS.MINER", "pml:<MinerClass>"],
        ),
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLoss", "LOSS.PML_KWARGS", "margin=0.1"],
            ["LOSS.PML_KWARGS", "dict literal"],
        ),
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLoss", "LOSS.PML_KWARGS", "{'margn': 0.1}"],
            ["TripletMarginLoss", "margin"],
        ),
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLoss", "LOSS.PML_KWARGS", "{'distance': 'pml:Cosine'}"],
            ["distance", "CosineSimilarity"],
        ),
        (["MODEL.METRIC_LOSS_TYPE", "triplet", "LOSS.MINER", "pml:BatchHardMiner"], ["LOSS.MINER", "pml:"]),
        (["MODEL.METRIC_LOSS_TYPE", "ms", "LOSS.PML_KWARGS", "{'margin': 0.1}"], ["LOSS.PML_KWARGS", "'ms'"]),
        (
            ["MODEL.METRIC_LOSS_TYPE", "pml:TripletMarginLoss", "LOSS.MINER_KWARGS", "{'epsilon': 0.1}"],
            ["LOSS.MINER_KWARGS", "LOSS.MINER is empty"],
        ),
    ],
)
def test_pml_mistakes_fail_with_one_clear_message(opts, fragments):
    with pytest.raises(ConfigError) as excinfo:
        build_loss(_cfg("MODEL.CLS_LOSS_TYPE", "none", *opts), NUM_CLASSES, FEAT_DIM)
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, message


def test_pml_listing_covers_the_installed_library():
    assert {"TripletMarginLoss", "ProxyAnchorLoss", "SoftTripleLoss", "MultiSimilarityLoss"} <= set(available_losses())
    assert "BaseMetricLossFunction" not in available_losses()
    assert {"MultiSimilarityMiner", "BatchHardMiner", "DistanceWeightedMiner"} <= set(available_miners())


# ------------------------------------------------------------------------------------------------
# Solver: groups, own optimizers, checkpoint state
# ------------------------------------------------------------------------------------------------
def test_loss_parameters_land_in_their_groups():
    model = torch.nn.Linear(3, FEAT_DIM)
    cfg = _cfg(
        "MODEL.METRIC_LOSS_TYPE",
        "amloss+center",
        "MODEL.CLS_LOSS_TYPE",
        "arcface",
        "SOLVER.BASE_LR",
        "0.001",
        "LOSS.AMLOSS.MARGIN_LR",
        "0.01",
        "SOLVER.CENTER_LR",
        "0.3",
    )
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    solver = build_solver(cfg, model, criterion)
    main_groups = {g["name"]: g for g in solver.main.param_groups}
    assert main_groups["proxy"]["params"] == [criterion.metric_terms["amloss"].proxies]
    assert main_groups["proxy"]["initial_lr"] == pytest.approx(0.1)  # before the warm-up factor
    assert main_groups["loss"]["params"] == [criterion.cls_term.weight]
    margins = solver.optimizers["margins"]
    assert isinstance(margins, torch.optim.AdamW)
    assert margins.param_groups[0]["params"] == [criterion.metric_terms["amloss"].margins]
    assert margins.param_groups[0]["lr"] == pytest.approx(0.01)
    assert isinstance(solver.schedulers["margins"], torch.optim.lr_scheduler.StepLR)
    centers = solver.optimizers["centers"]
    assert isinstance(centers, torch.optim.SGD) and centers.param_groups[0]["lr"] == pytest.approx(0.3)
    main_params = {id(p) for g in solver.main.param_groups for p in g["params"]}
    assert id(criterion.metric_terms["amloss"].margins) not in main_params
    assert id(criterion.metric_terms["center"].centers) not in main_params
    rates = solver.learning_rates()
    assert rates["margins/margins"] == pytest.approx(0.01) and rates["centers/centers"] == pytest.approx(0.3)


def test_learnable_betas_get_their_group():
    cfg = _metric_cfg("margin", "LOSS.MARGIN_LOSS.LEARN_BETA", "yes", "LOSS.MARGIN_LOSS.BETA_LR", "0.05")
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    groups = {g["name"]: g for g in parameter_groups(cfg, torch.nn.Linear(2, 2), criterion)}
    assert groups["beta"]["params"] == [criterion.metric_terms["margin"].beta]
    assert groups["beta"]["lr"] == pytest.approx(0.05) and groups["beta"]["weight_decay"] == 0.0


def test_center_update_ignores_the_loss_weight():
    """reid-strong-baseline: centers move by CENTER_LR * d(center loss)/d(centers), whatever the weight."""
    cfg = _metric_cfg("center", "SOLVER.CENTER_LOSS_WEIGHT", "0.01", "SOLVER.CENTER_LR", "0.5")
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    centers = criterion.metric_terms["center"].centers
    before = centers.detach().clone()
    outputs, labels = _batch()
    solver = build_solver(cfg, torch.nn.Linear(2, 2), criterion)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    solver.zero_grad()
    total, _ = criterion(outputs, {"label": labels})
    total.backward()
    unweighted = torch.autograd.grad(criterion.metric_terms["center"](outputs["feat"], labels), centers)[0]
    solver.step(scaler)
    torch.testing.assert_close(centers.detach(), before - 0.5 * unweighted)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_solver_state_round_trip_and_mismatch():
    model = torch.nn.Linear(3, FEAT_DIM)
    cfg = _metric_cfg("amloss")
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    solver = build_solver(cfg, model, criterion)
    for _ in range(3):
        solver.epoch_completed()
    state = solver.state_dict()
    fresh = build_solver(cfg, model, criterion)
    fresh.load_state_dict(state)
    assert fresh.schedulers["margins"].last_epoch == 3 and fresh.schedulers["main"].last_epoch == 3
    plain = build_solver(_metric_cfg("triplet"), model, build_loss(_metric_cfg("triplet"), NUM_CLASSES, FEAT_DIM))
    with pytest.raises(ValueError, match="margins"):
        plain.load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# One tiny epoch through train.py's path (command line + configs/softmax_triplet.yml) with every name
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def market_root(tmp_path_factory, make_market_tree):
    root = tmp_path_factory.mktemp("datasets")
    make_market_tree(root, train_ids=6, test_ids=4, images_per_id=4, cameras=2, size=(32, 16), seed=1)
    return root


def _tiny_argv(root: Path, out: Path, *opts: str) -> list[str]:
    pairs = {
        "MODEL.NAME": "resnet18",
        "MODEL.PRETRAIN_CHOICE": "none",
        "DATASETS.ROOT_DIR": str(root),
        "INPUT.SIZE_TRAIN": "[32, 16]",
        "INPUT.SIZE_TEST": "[32, 16]",
        "SOLVER.IMS_PER_BATCH": "12",
        "DATALOADER.NUM_INSTANCE": "3",
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.MAX_EPOCHS": "1",
        "SOLVER.EVAL_PERIOD": "1",
        "SOLVER.CHECKPOINT_PERIOD": "1",
        "SOLVER.WARMUP_ITERS": "0",
        "OUTPUT_DIR": str(out),
        "TEST.IMS_PER_BATCH": "32",
    }
    return [
        "--config_file",
        str(ROOT / "configs/softmax_triplet.yml"),
        *[x for pair in pairs.items() for x in pair],
        *opts,
    ]


SMOKE_CASES = (
    [["MODEL.METRIC_LOSS_TYPE", n, *_arch_opts("metric", n)] for n in METRIC_NAMES]
    + [
        [
            "MODEL.CLS_LOSS_TYPE",
            n,
            *_arch_opts("cls", n),
            *(["MODEL.METRIC_LOSS_TYPE", "none"] if n.startswith("uc-") else []),
        ]
        for n in CLS_NAMES
    ]
    + [
        ["MODEL.METRIC_LOSS_TYPE", "pml:MultiSimilarityLoss", "LOSS.MINER", "pml:MultiSimilarityMiner"],
        ["MODEL.METRIC_LOSS_TYPE", "ms+center", "MODEL.CLS_LOSS_TYPE", "none"],
        ["MODEL.METRIC_LOSS_TYPE", "margin", "LOSS.MARGIN_LOSS.LEARN_BETA", "yes"],
    ]
)


@pytest.mark.e2e
@pytest.mark.parametrize("opts", SMOKE_CASES, ids=lambda o: "+".join(o[1::2]))
def test_one_tiny_epoch_with_every_loss(opts, market_root, tmp_path):
    args = parse_command_line("test", with_resume=True, argv=_tiny_argv(market_root, tmp_path / "out", *opts))
    result = train(load_config(args.config_file, args.opts))
    assert result["epoch"] == 1 and 0.0 <= result["mAP"] <= 1.0
    checkpoint = torch.load(tmp_path / "out/checkpoints/checkpoint_1.pt", weights_only=False)
    assert set(checkpoint["solver"]["optimizers"]) >= {"main"}


@pytest.mark.e2e
def test_resume_restores_margins_and_centers(market_root, tmp_path):
    """AMLoss margins (own AdamW + StepLR) and centers (own SGD) continue exactly after --resume."""
    opts = [
        "MODEL.METRIC_LOSS_TYPE",
        "amloss+center",
        "SOLVER.MAX_EPOCHS",
        "2",
        "LOSS.AMLOSS.MARGIN_DECAY_STEP",
        "1",
        "LOSS.AMLOSS.MARGIN_LR",
        "0.01",
        "SOLVER.EVAL_PERIOD",
        "2",
    ]
    full = tmp_path / "full"
    train(load_config(None, _tiny_argv(market_root, full, *opts)[2:]))
    half = tmp_path / "half"
    train(load_config(None, _tiny_argv(market_root, half, *opts, "SOLVER.MAX_EPOCHS", "1")[2:]))
    train(load_config(None, _tiny_argv(market_root, half, *opts)[2:]), resume=str(half))
    a = torch.load(full / "checkpoints/checkpoint_2.pt", weights_only=False)
    b = torch.load(half / "checkpoints/checkpoint_2.pt", weights_only=False)
    for key in ("metric_terms.amloss.margins", "metric_terms.amloss.proxies", "metric_terms.center.centers"):
        torch.testing.assert_close(a["loss"][key], b["loss"][key], rtol=0, atol=0)
    assert not torch.equal(a["loss"]["metric_terms.amloss.margins"], torch.full((6,), 0.1))
    assert b["solver"]["schedulers"]["margins"]["last_epoch"] == 2
    assert b["solver"]["optimizers"]["margins"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.25)


def test_train_py_reports_a_bad_pml_name_in_one_line(market_root, tmp_path):
    argv = _tiny_argv(market_root, tmp_path / "out", "MODEL.METRIC_LOSS_TYPE", "pml:Nope")
    proc = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "pml:TripletMarginLoss" in proc.stderr
