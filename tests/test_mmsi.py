"""MMSI (SOLVER.METHOD mmsi): the meta gradient in both modes against finite differences, the weights, the
feature memory against a list-of-lists reference, the weighted losses, and training end to end with an exact
resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from config import ConfigError, load_config
from engine.methods.feature_memory import FeatureMemory
from engine.methods.meta_step import pair_weights, raw_weight_gradient, trainable_parameters
from engine.training import train
from layers.contrastive import ContrastiveLoss
from layers.multi_similarity import MultiSimilarityLoss
from layers.weighted_pair_losses import (
    contrastive_on_pairs,
    label_masks,
    mined_pairs,
    ms_on_pairs,
    normalized_similarities,
    weighted_contrastive,
    weighted_ms,
)


class TinyEmbedder(nn.Module):
    """A network with BatchNorm in training mode (its statistics must not move in the meta step)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 5))

    def forward(self, x):
        return {"feat": self.net(x)}


MS_ARGS = (2.0, 40.0, 0.5, 2.0)  # pos scale, neg scale, threshold, coef


def meta_case(kind: str, placement: str = "in_exponent"):
    """A tiny float64 problem: model, batch, the weighted training loss on the mined pairs, a validation batch
    and its semi-global loss against a memory of 20 features, per-parameter learning rates."""
    torch.manual_seed(0)
    model = TinyEmbedder().double().train()
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.arange(12) % 4
    x_val, y_val = torch.randn(6, 6, dtype=torch.float64), torch.arange(6) % 4
    memory, memory_labels = torch.randn(20, 5, dtype=torch.float64), torch.arange(20) % 4
    margin = 0.2 if kind == "contrastive" else 0.1
    with torch.no_grad():
        sim0 = normalized_similarities(model(x)["feat"])
    pos_keep, neg_keep = mined_pairs(kind, sim0, *label_masks(y), margin)
    if kind == "contrastive":
        weighted = lambda s, w: weighted_contrastive(s, pos_keep, neg_keep, w)
        plain = contrastive_on_pairs
    else:
        weighted = lambda s, w: weighted_ms(s, pos_keep, neg_keep, w, *MS_ARGS, placement)
        plain = lambda s, p, n: ms_on_pairs(s, p, n, *MS_ARGS)

    def validation(feats):
        sim = normalized_similarities(feats, memory)
        return plain(sim, *mined_pairs(kind, sim, *label_masks(y_val, memory_labels), margin))

    lrs = {name: 0.05 if "weight" in name else 0.02 for name, _ in model.named_parameters()}
    return model, x, weighted, x_val, validation, lrs, pos_keep | neg_keep


def finite_difference(model, x, weighted, x_val, validation, lrs, i, j, eps):
    """d/dw_ij of L_val(theta - lr * d L_tr(theta, w) / d theta) at w = 0, by central differences."""
    params = trainable_parameters(model)

    def after_virtual_step(value):
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        weights = torch.zeros(len(x), len(x), dtype=torch.float64)
        weights[i, j] = value
        feats = functional_call(model, {**params, **buffers}, (x,))["feat"]
        grads = torch.autograd.grad(weighted(normalized_similarities(feats), weights), list(params.values()))
        virtual = {n: p - lrs[n] * g for (n, p), g in zip(params.items(), grads)}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return validation(functional_call(model, {**virtual, **buffers}, (x_val,))["feat"]).item()

    return (after_virtual_step(eps) - after_virtual_step(-eps)) / (2 * eps)


@pytest.mark.parametrize(
    ("kind", "placement"), [("contrastive", "in_exponent"), ("ms", "in_exponent"), ("ms", "outside")]
)
def test_both_grad_modes_give_the_same_weight_gradient_and_match_finite_differences(kind, placement):
    model, x, weighted, x_val, validation, lrs, kept = meta_case(kind, placement)
    statistics = {n: b.clone() for n, b in model.named_buffers()}
    double = raw_weight_gradient(model, x, weighted, x_val, validation, lrs, "double_backward")
    forward = raw_weight_gradient(model, x, weighted, x_val, validation, lrs, "jvp")
    for name, value in model.named_buffers():  # the meta step left BatchNorm's statistics alone
        assert torch.equal(value, statistics[name]), name
    g1, g2 = double.weight_gradient, forward.weight_gradient
    assert g1.abs().max() > 0 and not g1[~kept].any()
    assert (g1 - g2).abs().max() <= 1e-8 * g1.abs().max()
    torch.testing.assert_close(double.validation_loss, forward.validation_loss, rtol=1e-12, atol=0)
    for i, j in kept.nonzero()[:8].tolist():
        # small steps: with the negative scale 40 inside an exponent the function curves fast
        eps = 1e-7 / max(1.0, g1[i, j].abs().item())
        fd = finite_difference(model, x, weighted, x_val, validation, lrs, i, j, eps)
        assert fd == pytest.approx(g1[i, j].item(), rel=1e-4, abs=1e-8), (i, j)


def test_the_weights_are_the_positive_part_of_minus_the_gradient_over_its_max():
    gradient = torch.tensor([[0.0, -2.0, 1.0], [-4.0, 0.0, -1.0], [3.0, -8.0, 0.0]])
    kept = torch.tensor([[False, True, True], [True, False, True], [True, False, False]])
    expected = torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.0, 0.25], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(pair_weights(gradient, kept), expected)
    nothing = pair_weights(torch.ones(3, 3), kept)  # every kept pair would raise the validation loss
    assert torch.equal(nothing, torch.zeros(3, 3))


def test_the_memory_is_a_per_class_fifo():
    torch.manual_seed(1)
    memory = FeatureMemory(num_classes=4, size=3, dim=2)
    reference: dict[int, list] = {c: [] for c in range(4)}
    for _ in range(6):
        labels = torch.randint(0, 4, (7,))  # a class may come 5 times in one batch: more than the memory holds
        feats = torch.randn(7, 2)
        memory.push(feats, labels)
        for f, c in zip(feats, labels.tolist()):
            reference[c] = (reference[c] + [f])[-3:]
        for c in range(4):
            stored = memory.feats[c][memory.filled[c]]
            assert len(stored) == len(reference[c])
            # the same features, whatever the slots: compare as sorted rows
            if reference[c]:
                expected = torch.stack(reference[c])
                assert torch.equal(stored[stored[:, 0].argsort()], expected[expected[:, 0].argsort()])
    assert memory.classes_seen() == sum(1 for c in reference if reference[c])
    copy = FeatureMemory(4, 3, 2)
    copy.load_state_dict(memory.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), memory.state_dict().values()))
    with pytest.raises(ValueError, match="DSIZE"):
        FeatureMemory(4, 5, 2).load_state_dict(memory.state_dict())


def test_the_weighted_losses_with_unit_weights_are_the_plain_losses():
    torch.manual_seed(2)
    feats, labels = torch.randn(16, 8, dtype=torch.float64), torch.arange(16) % 4
    sim = normalized_similarities(feats)
    ones = torch.ones_like(sim)
    pos, neg = mined_pairs("ms", sim, *label_masks(labels), 0.1)
    reference = MultiSimilarityLoss(pos_scale=2.0, neg_scale=40.0, thresh=0.5, mining_margin=0.1, coef=2.0)
    expected = reference(feats, labels)
    for placement in ("in_exponent", "outside"):
        torch.testing.assert_close(weighted_ms(sim, pos, neg, ones, *MS_ARGS, placement), expected)
    pos, neg = mined_pairs("contrastive", sim, *label_masks(labels), 0.3)
    plain = ContrastiveLoss(margin=0.3)(feats, labels)
    torch.testing.assert_close(contrastive_on_pairs(sim, pos, neg), plain)
    # WCon = the contrastive loss - 2 |P| / n: the same gradient
    torch.testing.assert_close(weighted_contrastive(sim, pos, neg, ones), plain - 2 * pos.sum() / 16)
    # a zero weight removes its pair: the outside placement at w = 0 stays finite, with a finite gradient
    weights = torch.zeros_like(sim, requires_grad=True)
    loss = weighted_ms(sim, pos, neg, weights, *MS_ARGS, "outside")
    (gradient,) = torch.autograd.grad(loss, weights)
    assert abs(loss.item()) < 1e-12 and torch.isfinite(gradient).all()


# ------------------------------------------------------------------------------------------------ end to end


def mmsi_opts(tiny_opts, root: Path, out: Path, **overrides) -> list[str]:
    return tiny_opts(
        root,
        out,
        **{
            "SOLVER.METHOD": "mmsi",
            "MODEL.METRIC_LOSS_TYPE": "contrastive",
            "MODEL.CLS_LOSS_TYPE": "none",
            "METHOD.MMSI.MIN_CLASSES": "6",  # the first PK batch (4 classes) only fills the memory
            "METHOD.MMSI.DSIZE": "2",
            "METHOD.MMSI.VAL_BATCH": "4",
            "METHOD.MMSI.VAL_K": "2",
            "METHOD.MMSI.GRAD_MODE": "jvp",
            "SOLVER.MAX_EPOCHS": "2",
            "SOLVER.EVAL_PERIOD": "2",
            "LOG.PLOTS": "no",
            **overrides,
        },
    )


@pytest.mark.e2e
def test_mmsi_trains_counts_its_steps_and_resumes_exactly(tiny_opts, market_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, mmsi_opts(tiny_opts, market_root, full)))
    records = [json.loads(line) for line in (full / "train_metrics.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["mmsi_skipped_warmup"] >= 1 and first["mmsi_steps"] >= 1
    assert (
        first["mmsi_steps"]
        + first["mmsi_skipped_warmup"]
        + first["mmsi_skipped_zero_val"]
        + first["mmsi_skipped_zero_weight"]
        == first["iteration"]
    )
    assert 0 < first["mmsi_pos_weight"] <= 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)

    train(load_config(None, mmsi_opts(tiny_opts, market_root, part, **{"SOLVER.MAX_EPOCHS": "1"})))
    train(load_config(None, mmsi_opts(tiny_opts, market_root, part)), resume=str(part))
    a = torch.load(full / "checkpoints/checkpoint_2.pt", weights_only=True)
    b = torch.load(part / "checkpoints/checkpoint_2.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("feats", "filled", "next_slot"):
        assert torch.equal(a["mmsi"]["memory"][key], b["mmsi"]["memory"][key])
    # best_* may differ: the interrupted run also evaluated after its last epoch (1)
    last = lambda out: json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    same = lambda record: {k: v for k, v in record.items() if k != "eval_seconds" and not k.startswith("best")}
    assert same(last(part)) == same(last(full))


def test_mmsi_refuses_a_loss_it_cannot_weight(tiny_opts, market_root, tmp_path):
    opts = mmsi_opts(tiny_opts, market_root, tmp_path / "run", **{"MODEL.METRIC_LOSS_TYPE": "triplet"})
    with pytest.raises(ConfigError, match="MODEL.METRIC_LOSS_TYPE must be one of contrastive, ms"):
        train(load_config(None, opts))


def test_mmsi_and_the_ddtas_generators_refuse_torchrun_in_one_line(monkeypatch):
    from types import SimpleNamespace

    from engine.methods.ddtas import DDTASMethod
    from engine.methods.mmsi import MMSIMethod
    from layers.soft_contrastive import SoftContrastiveLoss

    monkeypatch.setattr("ignite.distributed.get_world_size", lambda: 2)
    cfg = load_config(
        None, ["SOLVER.METHOD", "mmsi", "MODEL.METRIC_LOSS_TYPE", "contrastive", "MODEL.CLS_LOSS_TYPE", "none"]
    )
    with pytest.raises(ConfigError, match="mmsi runs in one process.*without torchrun"):
        MMSIMethod(SimpleNamespace(cfg=cfg))
    cfg = load_config(
        None,
        [
            "SOLVER.METHOD",
            "ddtas",
            "MODEL.METRIC_LOSS_TYPE",
            "soft_contrastive",
            "MODEL.CLS_LOSS_TYPE",
            "none",
            "METHOD.DDTAS.OTG_MODE",
            "threshold",
        ],
    )
    criterion = SimpleNamespace(terms=lambda: [SoftContrastiveLoss()])
    with pytest.raises(ConfigError, match="OTG_MODE threshold runs in one process"):
        DDTASMethod(SimpleNamespace(cfg=cfg, criterion=criterion))
