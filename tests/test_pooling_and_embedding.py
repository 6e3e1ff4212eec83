"""Pooling (MODEL.POOLING), the embedding layer, L2-normalised output, BN freeze, warm switching, StepLR and
gradient value clipping, each against a hand-computed reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from config import ConfigError, load_config
from layers import build_loss
from modeling import build_model
from modeling.pooling import build_pooling
from solver import build_scheduler, build_solver


def test_poolings_against_their_definitions():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 5) + 0.1
    torch.testing.assert_close(build_pooling("avg")(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(build_pooling("max")(x), x.amax(dim=(2, 3)))
    torch.testing.assert_close(build_pooling("avg+max")(x), x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))
    gem = build_pooling("gem", 3.0)
    torch.testing.assert_close(gem(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3))
    assert gem.p.requires_grad
    with pytest.raises(ConfigError, match="MODEL.POOLING"):
        build_pooling("median")


def _cfg(*opts):
    return load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "none", *opts])


def test_embedding_layer_and_normalised_output():
    model = build_model(_cfg("MODEL.EMBEDDING_DIM", "32", "MODEL.EMBEDDING_NORM", "yes", "MODEL.NECK", "no"))
    assert model.feat_dim == 32 and model.embedding.weight.shape == (32, 512)
    assert torch.all(model.embedding.bias == 0)
    out = model.eval()(torch.randn(3, 3, 64, 32))
    torch.testing.assert_close(out["feat"].norm(dim=1), torch.ones(3))
    with pytest.raises(ConfigError, match="MODEL.EMBEDDING_DIM"):
        build_model(_cfg("MODEL.EMBEDDING_DIM", "-1"))


def test_bn_freeze_keeps_backbone_batchnorms_in_eval_with_frozen_affine():
    model = build_model(_cfg("MODEL.BN_FREEZE", "yes", "MODEL.EMBEDDING_DIM", "16"))
    model.train()
    batchnorms = model._backbone_batchnorms()
    assert batchnorms and all(not m.training for m in batchnorms)
    assert all(not p.requires_grad for m in batchnorms for p in m.parameters())
    assert model.neck.bn.training  # the BNNeck is not part of the backbone
    model.set_warm(True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["embedding.weight", "embedding.bias"]
    model.set_warm(False)
    assert all(not p.requires_grad for m in batchnorms for p in m.parameters())
    assert any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone") and "conv" in n)


def test_step_lr_by_epoch():
    cfg = _cfg(
        "SOLVER.LR_SCHEDULER",
        "step",
        "SOLVER.LR_DECAY_STEP",
        "2",
        "SOLVER.LR_DECAY_GAMMA",
        "0.25",
        "SOLVER.BASE_LR",
        "0.1",
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(cfg, optimizer)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1, 0.025, 0.025, 0.00625])


def test_gradient_value_clipping_applies_to_true_gradients():
    cfg = _cfg(
        "SOLVER.GRAD_CLIP",
        "0.5",
        "SOLVER.OPTIMIZER_NAME",
        "SGD",
        "SOLVER.MOMENTUM",
        "0",
        "SOLVER.WEIGHT_DECAY",
        "0",
        "SOLVER.WEIGHT_DECAY_BIAS",
        "0",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.BASE_LR",
        "1.0",
        "MODEL.METRIC_LOSS_TYPE",
        "none",
        "SOLVER.WEIGHT_DECAY_NECK",
        "0",
    )
    model = torch.nn.Linear(2, 2, bias=False)
    criterion = build_loss(cfg, 2, 2)
    solver = build_solver(cfg, model, criterion)
    before = model.weight.detach().clone()
    model.weight.grad = torch.tensor([[3.0, -0.2], [-7.0, 0.4]])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    solver.step(scaler)
    torch.testing.assert_close(model.weight.detach(), before - torch.tensor([[0.5, -0.2], [-0.5, 0.4]]))
    with pytest.raises(ConfigError, match="SOLVER.GRAD_CLIP"):
        build_solver(_cfg("SOLVER.GRAD_CLIP", "-1"), model, criterion)


def test_unknown_scheduler_is_named():
    with pytest.raises(ConfigError, match="SOLVER.LR_SCHEDULER"):
        build_scheduler(
            _cfg("SOLVER.LR_SCHEDULER", "cosine"), torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
        )


def test_feature_is_normalised_for_the_loss_too():
    model = build_model(_cfg("MODEL.EMBEDDING_DIM", "8", "MODEL.EMBEDDING_NORM", "yes"))
    out = model.train()(torch.randn(4, 3, 32, 16))
    torch.testing.assert_close(out["feat"], F.normalize(out["feat"], dim=1))
