"""The loss-term interface (layers/term.py) and what the criterion, the solver and the model derive from it.

Every loss of the catalogue is a LossTerm that declares its inputs; the optimizer groups and own optimizers
it declares equal, parameter for parameter and hyper-parameter for hyper-parameter, what the name-based rule
gave before the interface existed (written out below as the reference), so checkpoints written before still
resume; a term reads an extra input from the batch; Solver.step / zero_grad act on named optimizers only;
and the model's has_parameters_without_gradient agrees with the config-string rule it replaces.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR

from config import ConfigError, load_config
from layers import CLS_LOSSES, METRIC_LOSSES, build_loss, metric_loss_names, term_key
from layers.composite import CompositeLoss
from layers.term import LossTerm, OwnOptimizerSpec
from modeling import build_model, parse_arch
from solver import build_solver, parameter_groups

NUM_CLASSES, FEAT_DIM = 5, 16
PML_NAMES = ["pml:TripletMarginLoss", "pml:ProxyAnchorLoss", "pml:SoftTripleLoss"]


def _cfg(*opts: str):
    return load_config(None, list(opts))


def _arch_opts(kind: str, name: str) -> list[str]:
    """NAMA's uc losses need the uncertainty head on their path (MODEL.ARCH)."""
    if name.startswith("uc-"):
        return ["MODEL.ARCH", "clsuc" if kind == "cls" else "uc"]
    return []


def _single_term_cfg(kind: str, name: str, *opts: str):
    if kind == "cls":
        return _cfg("MODEL.METRIC_LOSS_TYPE", "none", "MODEL.CLS_LOSS_TYPE", name, *_arch_opts(kind, name), *opts)
    return _cfg("MODEL.METRIC_LOSS_TYPE", name, "MODEL.CLS_LOSS_TYPE", "none", *_arch_opts(kind, name), *opts)


def _term(criterion: CompositeLoss, kind: str, name: str) -> LossTerm:
    return criterion.cls_term if kind == "cls" else criterion.metric_terms[term_key(name)]


CATALOGUE = (
    [("cls", n) for n in CLS_LOSSES] + [("metric", n) for n in METRIC_LOSSES] + [("metric", n) for n in PML_NAMES]
)


# ------------------------------------------------------------------------------------------------
# The name-based rule of solver/optimizer.py before the interface (the reference)
# ------------------------------------------------------------------------------------------------
OLD_OWN_OPTIMIZER_PARAMETERS = ("margins", "centers")


def _old_role(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in OLD_OWN_OPTIMIZER_PARAMETERS:
        return leaf
    if leaf == "proxies":
        return "proxy"
    if leaf == "beta":
        return "beta"
    return "bias" if leaf == "bias" else "loss"


def _old_loss_groups(criterion: nn.Module) -> tuple[dict[str, list], dict[str, list]]:
    """(main-optimizer groups, own-optimizer parameters) of the criterion's trainable parameters by name."""
    groups: dict[str, list] = {}
    own: dict[str, list] = {}
    for name, param in criterion.named_parameters():
        if param.requires_grad:
            role = _old_role(name)
            (own if role in OLD_OWN_OPTIMIZER_PARAMETERS else groups).setdefault(role, []).append(param)
    return groups, own


def _old_parameter_groups(cfg, model: nn.Module, criterion: nn.Module) -> list[dict]:
    """solver/optimizer.py::parameter_groups as it was (the model part is unchanged)."""
    s = cfg.SOLVER
    groups = {
        "backbone": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY},
        "bias": {"params": [], "lr": s.BASE_LR * s.BIAS_LR_FACTOR, "weight_decay": s.WEIGHT_DECAY_BIAS},
        "neck": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY_NECK},
        "loss": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY_NECK},
        "proxy": {"params": [], "lr": s.BASE_LR * s.PROXY_LR_FACTOR, "weight_decay": s.WEIGHT_DECAY},
        "beta": {"params": [], "lr": cfg.LOSS.MARGIN_LOSS.BETA_LR, "weight_decay": 0.0},
        "poly": {"params": [], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY_POLY},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("uc_head."):
            groups["poly"]["params"].append(param)
        elif name.endswith("bias"):
            groups["bias"]["params"].append(param)
        elif name.startswith("neck."):
            groups["neck"]["params"].append(param)
        else:
            groups["backbone"]["params"].append(param)
    loss_groups, _ = _old_loss_groups(criterion)
    for role, params in loss_groups.items():
        groups[role]["params"].extend(params)
    return [dict(group, name=name) for name, group in groups.items() if group["params"]]


def _ids(groups: dict[str, list]) -> dict[str, list[int]]:
    return {name: [id(p) for p in params] for name, params in groups.items()}


# ------------------------------------------------------------------------------------------------
# Every term of the catalogue
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,name", CATALOGUE)
def test_every_loss_is_a_term_that_declares_its_inputs(kind, name):
    term = _term(build_loss(_single_term_cfg(kind, name), NUM_CLASSES, FEAT_DIM), kind, name)
    assert isinstance(term, LossTerm)
    # declared by the loss itself (or its own base), not inherited from a default
    assert any("inputs" in vars(cls) for cls in type(term).__mro__ if cls is not LossTerm), type(term)
    assert term.inputs[0] == ("neck_feat" if kind == "cls" else "feat")
    assert ("uc" in term.inputs) == name.startswith("uc-")
    assert isinstance(term.stat_names, tuple) and term.stats == {}


@pytest.mark.parametrize("kind,name", [*CATALOGUE, ("metric", "pml:MarginLoss")])
def test_groups_of_every_term_equal_the_name_rule(kind, name):
    opts = ["LOSS.PML_KWARGS", "{'learn_beta': True, 'num_classes': 5}"] if name == "pml:MarginLoss" else []
    criterion = build_loss(_single_term_cfg(kind, name, *opts), NUM_CLASSES, FEAT_DIM)
    term = _term(criterion, kind, name)
    groups, own = _old_loss_groups(term)
    assert _ids(term.parameter_groups()) == _ids(groups)
    assert _ids({n: list(spec.params) for n, spec in term.own_optimizers().items()}) == _ids(own)
    if name == "pml:MarginLoss":
        assert list(term.parameter_groups()) == ["beta"]


def test_term_without_inputs_is_refused():
    class Undeclared(LossTerm):
        def forward(self, feats, labels):
            return feats.sum()

    with pytest.raises(TypeError, match="inputs"):
        Undeclared()


# ------------------------------------------------------------------------------------------------
# The criterion's merged groups and the main optimizer: same names, order, members, rates as before
# ------------------------------------------------------------------------------------------------
GROUP_CASES = [
    ["MODEL.CLS_LOSS_TYPE", "arcface", "MODEL.METRIC_LOSS_TYPE", "amloss+center"],
    [
        "MODEL.CLS_LOSS_TYPE",
        "softmax",
        "MODEL.METRIC_LOSS_TYPE",
        "margin+proxy_nca",
        "LOSS.MARGIN_LOSS.LEARN_BETA",
        "yes",
    ],
    ["MODEL.CLS_LOSS_TYPE", "circle", "MODEL.METRIC_LOSS_TYPE", "proxy_anchor+pml:ProxyAnchorLoss"],
    ["MODEL.CLS_LOSS_TYPE", "none", "MODEL.METRIC_LOSS_TYPE", "triplet", "MODEL.IF_WITH_CENTER", "yes"],
    ["MODEL.ARCH", "clsuc", "MODEL.CLS_LOSS_TYPE", "uc-cls", "MODEL.METRIC_LOSS_TYPE", "none"],
]


@pytest.mark.parametrize("opts", GROUP_CASES, ids=lambda o: "+".join(o[1::2]))
def test_main_optimizer_groups_are_those_of_the_name_rule(opts):
    cfg = _cfg(*opts, "SOLVER.BASE_LR", "0.002", "LOSS.MARGIN_LOSS.BETA_LR", "0.07")
    torch.manual_seed(0)
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, FEAT_DIM))
    groups, own = _old_loss_groups(criterion)
    assert _ids(criterion.parameter_groups()) == _ids(groups)
    assert list(criterion.parameter_groups()) == list(groups)  # group order: first appearance, as before
    assert _ids({n: list(spec.params) for n, spec in criterion.own_optimizers().items()}) == _ids(own)
    new, old = parameter_groups(cfg, model, criterion), _old_parameter_groups(cfg, model, criterion)
    assert [g["name"] for g in new] == [g["name"] for g in old]
    for a, b in zip(new, old):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert (a["lr"], a["weight_decay"]) == (b["lr"], b["weight_decay"])


# ------------------------------------------------------------------------------------------------
# Own optimizers: AMLoss margins and center-loss centers, built as before
# ------------------------------------------------------------------------------------------------
OWN_OPTS = [
    "MODEL.METRIC_LOSS_TYPE",
    "amloss+center",
    "LOSS.AMLOSS.MARGIN_LR",
    "0.003",
    "LOSS.AMLOSS.MARGIN_WEIGHT_DECAY",
    "0.02",
    "LOSS.AMLOSS.MARGIN_DECAY_STEP",
    "7",
    "LOSS.AMLOSS.MARGIN_DECAY_GAMMA",
    "0.3",
    "SOLVER.CENTER_LR",
    "0.4",
    "SOLVER.CENTER_LOSS_WEIGHT",
    "0.002",
]


def test_own_optimizers_have_the_former_hyper_parameters():
    cfg = _cfg(*OWN_OPTS)
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    specs = criterion.own_optimizers()
    assert list(specs) == ["margins", "centers"]
    margins, centers = specs["margins"], specs["centers"]
    assert isinstance(margins, OwnOptimizerSpec)
    assert margins.params == (criterion.metric_terms["amloss"].margins,)
    assert (margins.kind, margins.lr, margins.weight_decay, margins.grad_factor) == ("AdamW", 0.003, 0.02, 1.0)
    assert (margins.schedule.step_size, margins.schedule.gamma) == (7, 0.3)
    assert centers.params == (criterion.metric_terms["center"].centers,)
    assert (centers.kind, centers.lr, centers.weight_decay, centers.schedule) == ("SGD", 0.4, 0.0, None)
    assert centers.grad_factor == 1.0 / 0.002

    model = nn.Linear(3, FEAT_DIM)
    solver = build_solver(cfg, model, criterion)
    assert list(solver.optimizers) == ["main", "margins", "centers"]
    assert list(solver.schedulers) == ["main", "margins"]
    assert solver.grad_factors == {"centers": 1.0 / 0.002}
    # what solver/build.py built before, from the config keys directly: equal states, so old checkpoints load
    a = cfg.LOSS.AMLOSS
    old_margins = torch.optim.AdamW(
        [{"params": [criterion.metric_terms["amloss"].margins], "name": "margins"}],
        lr=a.MARGIN_LR,
        weight_decay=a.MARGIN_WEIGHT_DECAY,
    )
    old_schedule = StepLR(old_margins, step_size=a.MARGIN_DECAY_STEP, gamma=a.MARGIN_DECAY_GAMMA)
    old_centers = torch.optim.SGD(
        [{"params": [criterion.metric_terms["center"].centers], "name": "centers"}], lr=cfg.SOLVER.CENTER_LR
    )
    assert type(solver.optimizers["margins"]) is torch.optim.AdamW
    assert type(solver.optimizers["centers"]) is torch.optim.SGD
    assert solver.optimizers["margins"].state_dict() == old_margins.state_dict()
    assert solver.optimizers["centers"].state_dict() == old_centers.state_dict()
    assert solver.schedulers["margins"].state_dict() == old_schedule.state_dict()


def test_config_checks_moved_to_the_loss_builders():
    with pytest.raises(ConfigError, match=r"LOSS.AMLOSS.MARGIN_DECAY_STEP = 0; expected a positive number of epochs"):
        build_loss(_cfg("MODEL.METRIC_LOSS_TYPE", "amloss", "LOSS.AMLOSS.MARGIN_DECAY_STEP", "0"), 4, 8)
    with pytest.raises(ConfigError, match=r"SOLVER.CENTER_LOSS_WEIGHT = 0.0; expected a positive weight"):
        build_loss(_cfg("MODEL.METRIC_LOSS_TYPE", "ms+center", "SOLVER.CENTER_LOSS_WEIGHT", "0.0"), 4, 8)
    build_loss(_cfg("MODEL.METRIC_LOSS_TYPE", "ms", "SOLVER.CENTER_LOSS_WEIGHT", "0.0"), 4, 8)  # no center loss


# ------------------------------------------------------------------------------------------------
# Inputs from the batch, consumed outputs
# ------------------------------------------------------------------------------------------------
class ClusterPull(LossTerm):
    """A toy term reading a batch key: mean squared distance of each feature to its cluster's mean."""

    inputs = ("feat", "cluster")
    stat_names = ("clusters",)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        assert cluster.dtype == torch.long  # integer batch keys are not cast
        sums = torch.zeros(int(cluster.max()) + 1, feats.shape[1]).index_add(0, cluster, feats)
        counts = torch.bincount(cluster).clamp_min(1).to(feats.dtype)
        self.stats = {"clusters": torch.tensor(float(cluster.unique().numel()))}
        return (feats - (sums / counts[:, None])[cluster]).pow(2).sum(1).mean()


def test_a_term_reads_an_extra_input_from_the_batch():
    torch.manual_seed(0)
    criterion = CompositeLoss(None, {"pull": ClusterPull()}, metric_weights=2.0)
    assert criterion.part_names == ("loss", "pull_loss", "pull_clusters")
    assert criterion.consumed_outputs() == {"feat", "cluster"}
    feat = torch.randn(8, 4, dtype=torch.bfloat16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cluster = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    total, parts = criterion({"feat": feat}, {"label": labels, "cluster": cluster, "image": torch.zeros(8, 3, 2, 2)})
    expected = ClusterPull()(feat.float(), labels, cluster)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, 2.0 * expected)
    torch.testing.assert_close(parts["pull_loss"], expected)
    assert parts["pull_clusters"].item() == 2.0
    with pytest.raises(ValueError, match="'cluster'"):
        criterion({"feat": feat}, {"label": labels})
    with pytest.raises(TypeError, match="batch"):
        criterion({"feat": feat}, labels)


@pytest.mark.parametrize(
    "opts,consumed",
    [
        ([], {"feat", "neck_feat"}),
        (["MODEL.CLS_LOSS_TYPE", "none"], {"feat"}),
        (["MODEL.METRIC_LOSS_TYPE", "none"], {"neck_feat"}),
        (["MODEL.ARCH", "uc", "MODEL.METRIC_LOSS_TYPE", "uc-tri-n"], {"feat", "neck_feat", "uc", "uc_norm"}),
        (["MODEL.ARCH", "uc", "MODEL.CLS_LOSS_TYPE", "none", "SOLVER.MAG_G", "0"], {"feat"}),
        (
            ["MODEL.ARCH", "clsuc", "MODEL.METRIC_LOSS_TYPE", "none", "MODEL.CLS_LOSS_TYPE", "uc-cls"],
            {"neck_feat", "uc", "uc_norm"},
        ),
    ],
)
def test_consumed_outputs(opts, consumed):
    assert build_loss(_cfg(*opts), 4, 8).consumed_outputs() == consumed


# ------------------------------------------------------------------------------------------------
# Solver.step / zero_grad with names
# ------------------------------------------------------------------------------------------------
def test_solver_steps_and_clears_only_the_named_optimizers():
    cfg = _cfg(*OWN_OPTS, "SOLVER.OPTIMIZER_NAME", "SGD", "SOLVER.WARMUP_ITERS", "0")
    criterion = build_loss(cfg, NUM_CLASSES, FEAT_DIM)
    model = nn.Linear(3, FEAT_DIM)
    solver = build_solver(cfg, model, criterion)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    params = {
        "main": [model.weight, model.bias, criterion.metric_terms["amloss"].proxies],
        "margins": [criterion.metric_terms["amloss"].margins],
        "centers": [criterion.metric_terms["center"].centers],
    }

    def fill_grads():
        for group in params.values():
            for p in group:
                p.grad = torch.ones_like(p)

    fill_grads()
    before = {n: [p.detach().clone() for p in group] for n, group in params.items()}
    solver.step(scaler, names=["centers"])
    for name, group in params.items():
        moved = [not torch.equal(p.detach(), b) for p, b in zip(group, before[name])]
        assert all(moved) if name == "centers" else not any(moved), name
    # the centers' gradient is divided by the center-loss weight before their SGD step
    torch.testing.assert_close(params["centers"][0].detach(), before["centers"][0] - 0.4 / 0.002)

    solver.zero_grad(names=("margins",))
    assert params["margins"][0].grad is None
    assert all(p.grad is not None for n in ("main", "centers") for p in params[n])
    solver.step(scaler, names=["main", "margins"])  # margins have no gradient now: skipped
    assert torch.equal(params["margins"][0].detach(), before["margins"][0])
    assert not torch.equal(model.weight.detach(), before["main"][0])
    solver.zero_grad()
    assert all(p.grad is None for group in params.values() for p in group)

    with pytest.raises(ValueError, match="'nope'.*main, margins, centers"):
        solver.step(scaler, names=["nope"])
    with pytest.raises(ValueError, match="'nope'"):
        solver.zero_grad(names=["centers", "nope"])


# ------------------------------------------------------------------------------------------------
# The model's parameters without a gradient, against the config-string rule it replaces
# ------------------------------------------------------------------------------------------------
def _old_unused_rule(cfg) -> bool:
    """engine/training.py::model_has_unused_parameters before the interface, without its warm-epochs clause."""
    neck_unused = cfg.MODEL.CLS_LOSS_TYPE == "none" and cfg.MODEL.NECK == "bnneck"
    uses_uc = cfg.MODEL.CLS_LOSS_TYPE == "uc-cls" or any(n.startswith("uc-") for n in metric_loss_names(cfg))
    return neck_unused or (parse_arch(cfg.MODEL.ARCH).uncertainty and not uses_uc)


class _TinyBackbone(nn.Module):
    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(3, out_channels, 3, stride=4)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(images)))


def _unused_cases():
    for arch in ("baseline", "uc", "uc-bn-no", "clsuc"):
        for neck in ("bnneck", "no"):
            for cls in ("none", "softmax", "uc-cls"):
                for metric in ("none", "triplet", "uc-tri-n"):
                    for mag_g in ("1.0", "0.0"):
                        yield arch, neck, cls, metric, mag_g


def test_parameters_without_gradient_match_the_config_rule_and_the_backward_pass():
    models: dict[tuple[str, str], nn.Module] = {}
    checked = 0
    for arch, neck, cls, metric, mag_g in _unused_cases():
        cfg = _cfg(
            "MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "none", "MODEL.ARCH", arch, "MODEL.NECK", neck,
            "MODEL.CLS_LOSS_TYPE", cls, "MODEL.METRIC_LOSS_TYPE", metric, "SOLVER.MAG_G", mag_g,
        )  # fmt: skip
        try:
            criterion = build_loss(cfg, 2, 512)
        except ConfigError:
            continue  # a combination the loss/arch checks refuse
        if (arch, neck) not in models:
            torch.manual_seed(0)
            models[arch, neck] = build_model(cfg).train()
            # the backbone is one block for the question (all of it feeds 'feat'): a small one keeps the
            # backward passes below cheap
            models[arch, neck].backbone = _TinyBackbone(models[arch, neck].backbone.out_channels)
        model = models[arch, neck]
        case = f"{arch} neck={neck} cls={cls} metric={metric} MAG_G={mag_g}"
        answer = model.has_parameters_without_gradient(criterion.consumed_outputs())
        assert answer == _old_unused_rule(cfg), case
        # ground truth: which trainable parameters the backward pass of the criterion reaches
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        outputs = model(torch.randn(4, 3, 8, 8))
        total, _ = criterion(outputs, {"label": torch.tensor([0, 0, 1, 1])})
        total.backward()
        missed = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert answer == bool(missed), (case, missed)
        checked += 1
    assert checked >= 40  # the valid combinations (60 of the 144 tried)
