"""Model building and weight loading (modeling/), optimizer groups and the LR schedule (solver/)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from config.errors import ConfigError, UserError
from config.loading import load_config
from layers import build_loss
from modeling import build_model
from modeling.embedder import Embedder
from modeling.weights import WeightsMismatchError
from solver import WarmupMultiStepLR, build_optimizer, build_scheduler, parameter_groups


def _cfg(*opts):
    return load_config(None, ["MODEL.PRETRAIN_CHOICE", "none", *opts])


def _cfg_past_load_checks(key: str, value):
    """A loaded config whose `key` is then set to `value` directly, as a direct API caller may: load_config's
    choice check is bypassed, so the build-time check is what must refuse it."""
    cfg = _cfg()
    cfg.defrost()
    *groups, leaf = key.split(".")
    node = cfg
    for group in groups:
        node = node[group]
    node[leaf] = value
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def resnet18_model():
    torch.manual_seed(0)
    return build_model(_cfg("MODEL.NAME", "resnet18"))


@pytest.fixture()
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


# ------------------------------------------------------------------------------------------------
# build_model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_build_model_output_shapes(name, dim):
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.NAME", name))
    assert isinstance(model, Embedder)
    assert model.feat_dim == dim
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 32))
    assert set(out) == {"feat", "neck_feat"}
    assert out["feat"].shape == (2, dim)
    assert out["neck_feat"].shape == (2, dim)
    assert not torch.equal(out["feat"], out["neck_feat"])
    # eval-mode BNNeck with fresh running stats (mean 0, var 1), weight 1, bias 0: x / sqrt(1 + eps)
    assert torch.allclose(out["neck_feat"], out["feat"] / (1 + 1e-5) ** 0.5, atol=1e-5)
    # features are pooled ReLU maps: non-negative
    assert out["feat"].min() >= 0


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_last_stride(name):
    x = torch.randn(1, 3, 64, 32)
    sizes = {}
    for stride in (1, 2):
        model = build_model(_cfg("MODEL.NAME", name, "MODEL.LAST_STRIDE", str(stride))).eval()
        with torch.no_grad():
            sizes[stride] = tuple(model.backbone(x).shape)
    channels = 512 if name == "resnet18" else 2048
    assert sizes[1] == (1, channels, 4, 2)
    assert sizes[2] == (1, channels, 2, 1)


def test_bad_last_stride_and_name():
    with pytest.raises(ConfigError, match="MODEL.LAST_STRIDE"):
        build_model(_cfg("MODEL.LAST_STRIDE", "3"))
    with pytest.raises(ConfigError, match="MODEL.NAME"):
        build_model(_cfg("MODEL.NAME", "vgg16"))
    with pytest.raises(ConfigError, match="MODEL.NECK"):
        build_model(_cfg("MODEL.NECK", "yes"))
    with pytest.raises(ConfigError, match="MODEL.PRETRAIN_CHOICE"):
        build_model(load_config(None, ["MODEL.PRETRAIN_CHOICE", "coco"]))


def test_bnneck_bias_frozen_and_stays_zero():
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.NAME", "resnet18"))
    bias = model.neck.bn.bias
    assert bias.requires_grad is False
    assert torch.equal(bias, torch.zeros(512))
    assert torch.equal(model.neck.bn.weight, torch.ones(512))
    assert model.neck.bn.weight.requires_grad
    criterion = build_loss(_cfg(), num_classes=2, feat_dim=512)
    cfg = _cfg("SOLVER.OPTIMIZER_NAME", "SGD", "SOLVER.BASE_LR", "0.1")
    optimizer = build_optimizer(cfg, model, criterion)
    model.train()
    weight_before = model.neck.bn.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        out = model(torch.randn(4, 3, 32, 16))
        loss, _ = criterion(out, {"label": torch.tensor([0, 0, 1, 1])})
        loss.backward()
        optimizer.step()
    assert bias.grad is None
    assert torch.equal(model.neck.bn.bias, torch.zeros(512))
    assert not torch.equal(model.neck.bn.weight, weight_before)  # the neck did train


def test_no_neck():
    model = build_model(_cfg("MODEL.NAME", "resnet18", "MODEL.NECK", "no")).eval()
    assert model.neck is None
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 32))
    assert out["neck_feat"] is out["feat"]
    assert not any(name.startswith("neck.") for name, _ in model.named_parameters())


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchvision_resnet18_state():
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_imagenet_weights_load(tmp_path, torchvision_resnet18_state):
    state = torchvision_resnet18_state
    assert any(k.startswith("fc.") for k in state)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    model = build_model(
        load_config(
            None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
        )
    )
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    # the last stride change does not alter parameter shapes
    assert model.backbone.layer4[0].conv1.stride == (1, 1)


def test_imagenet_weights_with_module_prefix(tmp_path, torchvision_resnet18_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in torchvision_resnet18_state.items()}}, path)
    model = build_model(
        load_config(
            None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
        )
    )
    assert torch.equal(model.backbone.conv1.weight, torchvision_resnet18_state["conv1.weight"])


def test_imagenet_missing_tensor(tmp_path, torchvision_resnet18_state):
    state = dict(torchvision_resnet18_state)
    del state["layer3.1.conv2.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    cfg = load_config(
        None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
    )
    with pytest.raises(WeightsMismatchError) as excinfo:
        build_model(cfg)
    assert isinstance(excinfo.value, UserError)
    message = str(excinfo.value)
    assert "layer3.1.conv2.weight" in message and "missing" in message
    assert str(path) in message


def test_imagenet_wrong_shape(tmp_path, torchvision_resnet18_state):
    state = dict(torchvision_resnet18_state)
    state["layer2.0.bn1.weight"] = torch.ones(7)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    cfg = load_config(
        None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
    )
    with pytest.raises(WeightsMismatchError) as excinfo:
        build_model(cfg)
    message = str(excinfo.value)
    assert "layer2.0.bn1.weight" in message and "(7,)" in message and "(128,)" in message


def test_imagenet_resnet50_file_into_resnet18(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    cfg = load_config(
        None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
    )
    with pytest.raises(WeightsMismatchError, match="unexpected"):
        build_model(cfg)


def test_imagenet_missing_path(tmp_path):
    path = tmp_path / "does-not-exist.pth"
    cfg = load_config(
        None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
    )
    with pytest.raises(UserError) as excinfo:
        build_model(cfg)
    assert str(path) in str(excinfo.value)


def test_imagenet_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch file")
    cfg = load_config(
        None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)]
    )
    with pytest.raises(UserError) as excinfo:
        build_model(cfg)
    assert "cannot read" in str(excinfo.value) and str(path) in str(excinfo.value)


def test_imagenet_empty_path_without_cache(hub_dir):
    cfg = load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet"])
    with pytest.raises(UserError) as excinfo:
        build_model(cfg)
    message = str(excinfo.value)
    assert "MODEL.PRETRAIN_PATH" in message
    assert "resnet18-f37072fd.pth" in message
    assert str(hub_dir) in message


def test_imagenet_empty_path_uses_hub_cache(hub_dir, torchvision_resnet18_state):
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(torchvision_resnet18_state, hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model(load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "imagenet"]))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, torchvision_resnet18_state["layer4.1.conv2.weight"])


def test_pretrain_self(tmp_path):
    torch.manual_seed(5)
    source = build_model(_cfg("MODEL.NAME", "resnet18"))
    with torch.no_grad():
        source.neck.bn.weight.uniform_(0.5, 1.5)
        source.neck.bn.running_mean.uniform_(-1, 1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    torch.manual_seed(6)
    model = build_model(
        load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "self", "MODEL.PRETRAIN_PATH", str(path)])
    )
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_pretrain_self_errors(tmp_path):
    torch.save({"weights": {}}, tmp_path / "not_ours.pt")
    cfg = load_config(
        None,
        [
            "MODEL.NAME",
            "resnet18",
            "MODEL.PRETRAIN_CHOICE",
            "self",
            "MODEL.PRETRAIN_PATH",
            str(tmp_path / "not_ours.pt"),
        ],
    )
    with pytest.raises(UserError, match="'model'"):
        build_model(cfg)
    r18 = build_model(_cfg("MODEL.NAME", "resnet18", "MODEL.NECK", "no"))
    torch.save({"model": r18.state_dict()}, tmp_path / "no_neck.pt")
    cfg = load_config(
        None,
        [
            "MODEL.NAME",
            "resnet18",
            "MODEL.PRETRAIN_CHOICE",
            "self",
            "MODEL.PRETRAIN_PATH",
            str(tmp_path / "no_neck.pt"),
        ],
    )
    with pytest.raises(WeightsMismatchError, match="neck.bn.weight"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------------
# Optimizer groups
# ------------------------------------------------------------------------------------------------
SOLVER_OPTS = [
    "SOLVER.BASE_LR",
    "0.02",
    "SOLVER.BIAS_LR_FACTOR",
    "2.0",
    "SOLVER.WEIGHT_DECAY",
    "0.001",
    "SOLVER.WEIGHT_DECAY_BIAS",
    "0.0",
    "SOLVER.WEIGHT_DECAY_NECK",
    "0.0003",
]


def test_parameter_groups(resnet18_model):
    model = resnet18_model
    cfg = _cfg("MODEL.NAME", "resnet18", *SOLVER_OPTS)
    criterion = build_loss(cfg, num_classes=10, feat_dim=512)
    groups = parameter_groups(cfg, model, criterion)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "bias", "neck", "loss"}
    expected = {
        "backbone": (0.02, 0.001),
        "bias": (0.04, 0.0),
        "neck": (0.02, 0.0003),
        "loss": (0.02, 0.0003),
    }
    for name, (lr, wd) in expected.items():
        assert by_name[name]["lr"] == pytest.approx(lr)
        assert by_name[name]["weight_decay"] == pytest.approx(wd)

    ids = {name: {id(p) for p in g["params"]} for name, g in by_name.items()}
    named = dict(model.named_parameters())
    assert ids["neck"] == {id(named["neck.bn.weight"])}
    assert ids["loss"] == {id(criterion.cls_term.classifier.weight)}
    assert ids["bias"] == {id(p) for n, p in named.items() if n.endswith("bias") and p.requires_grad}
    assert id(named["backbone.conv1.weight"]) in ids["backbone"]
    assert id(named["backbone.bn1.bias"]) in ids["bias"]
    assert id(named["backbone.layer4.1.bn2.weight"]) in ids["backbone"]

    # the frozen BNNeck bias is in no group; every trainable parameter in exactly one
    frozen = id(model.neck.bn.bias)
    assert all(frozen not in s for s in ids.values())
    trainable = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
    all_ids = [i for s in ids.values() for i in s]
    assert sum(len(g["params"]) for g in groups) == len(all_ids) == len(set(all_ids))
    assert set(all_ids) == {id(p) for p in trainable}


def test_parameter_groups_without_neck_or_classifier():
    model = build_model(_cfg("MODEL.NAME", "resnet18", "MODEL.NECK", "no"))
    cfg = _cfg("MODEL.CLS_LOSS_TYPE", "none")
    groups = parameter_groups(cfg, model, build_loss(cfg, 10, 512))
    assert {g["name"] for g in groups} == {"backbone", "bias"}


@pytest.mark.parametrize(
    "name,cls", [("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)]
)
def test_build_optimizer_types(resnet18_model, name, cls):
    cfg = _cfg("MODEL.NAME", "resnet18", "SOLVER.OPTIMIZER_NAME", name, "SOLVER.MOMENTUM", "0.8", *SOLVER_OPTS)
    criterion = build_loss(cfg, 10, 512)
    optimizer = build_optimizer(cfg, resnet18_model, criterion)
    assert type(optimizer) is cls
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "bias", "neck", "loss"}
    assert groups["bias"]["lr"] == pytest.approx(0.04)
    assert groups["backbone"]["weight_decay"] == pytest.approx(0.001)
    assert groups["neck"]["weight_decay"] == pytest.approx(0.0003)
    if name == "SGD":
        assert all(g["momentum"] == pytest.approx(0.8) for g in optimizer.param_groups)


def test_build_optimizer_bad_name(resnet18_model):
    cfg = _cfg_past_load_checks("SOLVER.OPTIMIZER_NAME", "RMSprop")
    with pytest.raises(ConfigError) as excinfo:
        build_optimizer(cfg, resnet18_model, build_loss(cfg, 10, 512))
    message = str(excinfo.value)
    assert "SOLVER.OPTIMIZER_NAME" in message and "'SGD'" in message and "'Adam'" in message and "'AdamW'" in message


# ------------------------------------------------------------------------------------------------
# WarmupMultiStepLR
# ------------------------------------------------------------------------------------------------
def _toy_optimizer(lr=1.0):
    w = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [w], "lr": lr}, {"params": [b], "lr": 2 * lr}], lr=lr)


def _lrs(optimizer, scheduler, epochs):
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_multistep_linear_values():
    cfg = _cfg(
        "SOLVER.BASE_LR",
        "1.0",
        "SOLVER.WARMUP_FACTOR",
        "0.01",
        "SOLVER.WARMUP_ITERS",
        "10",
        "SOLVER.STEPS",
        "(40, 70)",
        "SOLVER.GAMMA",
        "0.1",
        "SOLVER.WARMUP_METHOD",
        "linear",
    )
    optimizer = _toy_optimizer(1.0)
    scheduler = build_scheduler(cfg, optimizer)
    assert isinstance(scheduler, WarmupMultiStepLR)
    lrs = _lrs(optimizer, scheduler, 80)
    expected = {
        0: 0.01,
        5: 0.01 * 0.5 + 0.5,
        9: 0.01 * 0.1 + 0.9,
        10: 1.0,
        39: 1.0,
        40: 0.1,
        69: 0.1,
        70: 0.01,
        79: 0.01,
    }
    for epoch, lr in expected.items():
        assert lrs[epoch] == pytest.approx(lr, rel=1e-9), epoch
    assert lrs[5] == pytest.approx(0.505)
    # the second group follows with its own base lr
    assert optimizer.param_groups[1]["lr"] == pytest.approx(2 * 0.01)


def test_warmup_constant_values():
    cfg = _cfg(
        "SOLVER.BASE_LR",
        "1.0",
        "SOLVER.WARMUP_FACTOR",
        "0.1",
        "SOLVER.WARMUP_ITERS",
        "5",
        "SOLVER.STEPS",
        "(8,)",
        "SOLVER.GAMMA",
        "0.5",
        "SOLVER.WARMUP_METHOD",
        "constant",
    )
    optimizer = _toy_optimizer(1.0)
    lrs = _lrs(optimizer, build_scheduler(cfg, optimizer), 10)
    assert lrs == pytest.approx([0.1] * 5 + [1.0] * 3 + [0.5] * 2)


def test_warmup_disabled_and_bad_method():
    optimizer = _toy_optimizer(0.3)
    scheduler = WarmupMultiStepLR(optimizer, steps=[2], gamma=0.1, warmup_factor=0.01, warmup_epochs=0)
    assert _lrs(optimizer, scheduler, 4) == pytest.approx([0.3, 0.3, 0.03, 0.03])
    cfg = _cfg_past_load_checks("SOLVER.WARMUP_METHOD", "cosine")
    with pytest.raises(ConfigError, match="SOLVER.WARMUP_METHOD"):
        build_scheduler(cfg, _toy_optimizer())


def test_scheduler_state_dict_resume():
    cfg = _cfg(
        "SOLVER.BASE_LR",
        "1.0",
        "SOLVER.WARMUP_FACTOR",
        "0.01",
        "SOLVER.WARMUP_ITERS",
        "10",
        "SOLVER.STEPS",
        "(15, 20)",
        "SOLVER.GAMMA",
        "0.1",
    )
    optimizer = _toy_optimizer(1.0)
    scheduler = build_scheduler(cfg, optimizer)
    full = _lrs(optimizer, scheduler, 25)

    optimizer = _toy_optimizer(1.0)
    scheduler = build_scheduler(cfg, optimizer)
    first = _lrs(optimizer, scheduler, 12)
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()
    assert saved_sched["last_epoch"] == 12

    # a fresh run builds optimizer and scheduler from the config, then restores both (engine order)
    optimizer2 = _toy_optimizer(1.0)
    scheduler2 = build_scheduler(cfg, optimizer2)
    optimizer2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    rest = _lrs(optimizer2, scheduler2, 13)
    assert first + rest == pytest.approx(full, rel=1e-12)
    assert scheduler2.get_last_lr()[0] == pytest.approx(0.01)
