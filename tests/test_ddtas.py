"""DDTAS (SOLVER.METHOD ddtas): the threshold generator's meta gradient against finite differences, the soft
contrastive loss with per-anchor thresholds and pair weights, and training end to end in the three modes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from config import ConfigError, load_config
from engine.methods.ddtas import threshold_gradient
from engine.methods.meta_step import trainable_parameters
from engine.training import train
from layers.soft_contrastive import SoftContrastiveLoss, soft_contrastive_on_pairs
from layers.weighted_pair_losses import label_masks, normalized_similarities


class TinyEmbedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 5))

    def forward(self, x):
        return {"feat": self.net(x)}


def test_per_anchor_thresholds_and_unit_weights_give_the_loss():
    torch.manual_seed(3)
    feats, labels = torch.randn(16, 8, dtype=torch.float64), torch.arange(16) % 4
    loss = SoftContrastiveLoss(thresh=0.3, margin=0.3)
    sim = normalized_similarities(feats)
    pos, neg, _ = loss.mine(sim, *label_masks(labels))
    expected = loss(feats, labels)
    column = torch.full((16, 1), 0.3, dtype=torch.float64)
    for thresholds, weights in ((0.3, None), (column, None), (0.3, torch.ones_like(sim))):
        got = soft_contrastive_on_pairs(sim, pos, neg, loss.pos_scale, loss.neg_scale, thresholds, weights)
        torch.testing.assert_close(got, expected)
    # anchor i's threshold acts on anchor i's pairs only
    moved = column.clone()
    moved[5] = 0.5
    by_anchor = lambda t: soft_contrastive_on_pairs(sim, pos, neg, 2.0, 40.0, t)
    assert by_anchor(moved) != by_anchor(column)
    keep_five = torch.zeros_like(pos)
    keep_five[5] = True
    assert by_anchor(moved) - by_anchor(column) == pytest.approx(
        (
            soft_contrastive_on_pairs(sim, pos & keep_five, neg & keep_five, 2.0, 40.0, 0.5)
            - soft_contrastive_on_pairs(sim, pos & keep_five, neg & keep_five, 2.0, 40.0, 0.3)
        ).item(),
        rel=1e-12,
    )


def test_the_threshold_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = TinyEmbedder().double().train()
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.arange(12) % 4
    x_val, y_val = torch.randn(8, 6, dtype=torch.float64), torch.arange(8) % 4
    loss = SoftContrastiveLoss(thresh=0.2, margin=0.5, mining="asms")
    with torch.no_grad():
        kept = loss.mine(normalized_similarities(model(x)["feat"]), *label_masks(y))[:2]

    def validation(feats):
        sim = normalized_similarities(feats)
        pos, neg, _ = loss.mine(sim, *label_masks(y_val))
        return soft_contrastive_on_pairs(sim, pos, neg, loss.pos_scale, loss.neg_scale, loss.thresh)

    lrs = {name: 0.1 for name, _ in model.named_parameters()}
    statistics = {n: b.clone() for n, b in model.named_buffers()}
    gradient, validation_loss = threshold_gradient(model, x, kept, loss, x_val, validation, lrs)
    assert all(torch.equal(b, statistics[n]) for n, b in model.named_buffers())
    assert gradient.shape == (12, 1) and gradient.abs().max() > 0 and validation_loss > 0
    params = trainable_parameters(model)

    def after_virtual_step(delta):
        feats = functional_call(model, {**params, **{n: b.clone() for n, b in model.named_buffers()}}, (x,))["feat"]
        train_loss = soft_contrastive_on_pairs(
            normalized_similarities(feats), *kept, loss.pos_scale, loss.neg_scale, loss.thresh + delta
        )
        grads = torch.autograd.grad(train_loss, list(params.values()))
        virtual = {n: p - lrs[n] * g for (n, p), g in zip(params.items(), grads)}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return validation(functional_call(model, {**virtual, **buffers}, (x_val,))["feat"]).item()

    for i in range(12):
        delta = torch.zeros(12, 1, dtype=torch.float64)
        delta[i] = 1e-6
        fd = (after_virtual_step(delta) - after_virtual_step(-delta)) / 2e-6
        assert fd == pytest.approx(gradient[i].item(), rel=1e-5, abs=1e-10), i


# ------------------------------------------------------------------------------------------------ end to end


def ddtas_opts(tiny_opts, root, out, **overrides):
    return tiny_opts(
        root,
        out,
        **{
            "SOLVER.METHOD": "ddtas",
            "MODEL.METRIC_LOSS_TYPE": "soft_contrastive",
            "MODEL.CLS_LOSS_TYPE": "none",
            "METHOD.DDTAS.VAL_BATCH": "4",
            "METHOD.DDTAS.VAL_K": "2",
            "SOLVER.MAX_EPOCHS": "1",
            "SOLVER.EVAL_PERIOD": "1",
            "LOG.PLOTS": "no",
            **overrides,
        },
    )


def epoch_records(out):
    return [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_ddtas_without_the_generator_is_the_standard_step(tiny_opts, market_root, tmp_path):
    train(load_config(None, ddtas_opts(tiny_opts, market_root, tmp_path / "ddtas")))
    train(load_config(None, ddtas_opts(tiny_opts, market_root, tmp_path / "standard", **{"SOLVER.METHOD": "standard"})))
    a = torch.load(tmp_path / "ddtas/checkpoints/checkpoint_1.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "standard/checkpoints/checkpoint_1.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert epoch_records(tmp_path / "ddtas")[0]["ddtas_steps"] == 3


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["threshold", "pair_weight"])
def test_ddtas_generators_train_and_log(tiny_opts, market_root, tmp_path, mode):
    out = tmp_path / mode
    # a large step so that the generated thresholds leave the loss's own within one tiny run
    train(
        load_config(
            None,
            ddtas_opts(
                tiny_opts, market_root, out, **{"METHOD.DDTAS.OTG_MODE": mode, "METHOD.DDTAS.THRESHOLD_STEP": "1e6"}
            ),
        )
    )
    (record,) = epoch_records(out)
    assert record["ddtas_steps"] + record["ddtas_skipped"] == record["iteration"] == 3
    if mode == "threshold":
        assert record["ddtas_steps"] == 3
        assert (
            0.5
            <= record["ddtas_threshold_min"]
            <= record["ddtas_threshold_mean"]
            <= record["ddtas_threshold_max"]
            <= 0.9
        )
        assert record["ddtas_threshold_min"] < record["ddtas_threshold_max"]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["mAP"] > 0


def test_ddtas_refuses_another_loss(tiny_opts, market_root, tmp_path):
    opts = ddtas_opts(tiny_opts, market_root, tmp_path / "run", **{"MODEL.METRIC_LOSS_TYPE": "ms"})
    with pytest.raises(ConfigError, match="MODEL.METRIC_LOSS_TYPE must be 'soft_contrastive'"):
        train(load_config(None, opts))


@pytest.mark.e2e
def test_ddtas_threshold_mode_resumes_exactly(tiny_opts, market_root, tmp_path):
    settings = {"METHOD.DDTAS.OTG_MODE": "threshold", "METHOD.DDTAS.THRESHOLD_STEP": "1e6", "SOLVER.MAX_EPOCHS": "2"}
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, ddtas_opts(tiny_opts, market_root, full, **settings)))
    train(load_config(None, ddtas_opts(tiny_opts, market_root, part, **{**settings, "SOLVER.MAX_EPOCHS": "1"})))
    train(load_config(None, ddtas_opts(tiny_opts, market_root, part, **settings)), resume=str(part))
    a = torch.load(full / "checkpoints/checkpoint_2.pt", weights_only=True)
    b = torch.load(part / "checkpoints/checkpoint_2.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["ddtas"] == b["ddtas"]
    assert epoch_records(part)[-1] == {
        **epoch_records(full)[-1],
        "seconds_per_batch": epoch_records(part)[-1]["seconds_per_batch"],
    }
