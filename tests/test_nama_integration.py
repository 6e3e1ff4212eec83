"""NAMA wired into the engine: MODEL.ARCH, the head in the model and the optimizer, the uc losses and the norm
regulariser in the composite criterion, and TEST.NORM_K's distance (against a brute-force reference)."""

from __future__ import annotations

import math

import pytest
import torch

from config import ConfigError, load_config
from engine.evaluation.protocol import EvalSpec, evaluate_embeddings, uncertainty_distance
from engine.evaluation.reid_metrics import reid_metrics
from layers import build_loss
from modeling import build_model, parse_arch
from solver import parameter_groups


def _cfg(*opts):
    return load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "none", *opts])


@pytest.mark.parametrize(
    "text,cls_only,uc,pre_bn,form",
    [
        ("baseline", False, False, False, "angle"),
        ("uc", False, True, False, "angle"),
        ("uc-bn-no", False, True, True, "angle"),
        ("clsbaseline", True, False, False, "angle"),
        ("clsuc", True, True, False, "angle"),
        ("clsuc-arc", True, True, False, "arc"),
        ("clsuc-cos", True, True, False, "cos"),
    ],
)
def test_arch_strings(text, cls_only, uc, pre_bn, form):
    arch = parse_arch(text)
    assert (arch.classification_only, arch.uncertainty, arch.pre_bn, arch.margin_form) == (cls_only, uc, pre_bn, form)
    assert arch.head_input == ("neck_feat" if cls_only else "feat")


@pytest.mark.parametrize("text", ["ucc", "uc-xx", "baseline-arc", "clsuc-arc-cos", ""])
def test_bad_arch_lists_the_valid_forms(text):
    with pytest.raises(ConfigError) as excinfo:
        build_model(_cfg("MODEL.ARCH", text))
    message = str(excinfo.value)
    assert "MODEL.ARCH" in message and "uc-bn-no" in message and "clsuc" in message


def test_model_outputs_and_head_path():
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.ARCH", "uc-bn-no", "MODEL.NECK", "no")).train()
    out = model(torch.randn(4, 3, 32, 16))
    assert set(out) == {"feat", "neck_feat", "uc", "uc_norm"}
    assert model.pre_bn is not None and model.uc_input == "feat"
    torch.testing.assert_close(out["uc_norm"], out["feat"].norm(dim=1))
    cls_model = build_model(_cfg("MODEL.ARCH", "clsuc")).train()
    out = cls_model(torch.randn(4, 3, 32, 16))
    assert cls_model.uc_input == "neck_feat"
    torch.testing.assert_close(out["uc_norm"], out["neck_feat"].norm(dim=1))
    assert "uc" not in build_model(_cfg())(torch.randn(2, 3, 32, 16))


def test_bad_f_base_names_the_key():
    with pytest.raises(ConfigError, match="MODEL.F_BASE = 'nn_x'"):
        build_model(_cfg("MODEL.ARCH", "uc", "MODEL.F_BASE", "nn_x"))


def test_head_coefficients_train_in_the_poly_group():
    cfg = _cfg("MODEL.ARCH", "uc", "SOLVER.WEIGHT_DECAY_POLY", "0.1", "MODEL.METRIC_LOSS_TYPE", "uc-tri-n")
    model = build_model(cfg)
    groups = {g["name"]: g for g in parameter_groups(cfg, model, build_loss(cfg, 5, model.feat_dim))}
    head_trainable = [p for p in model.uc_head.parameters() if p.requires_grad]
    assert groups["poly"]["params"] == head_trainable and groups["poly"]["weight_decay"] == pytest.approx(0.1)
    every = {id(p) for g in groups.values() for p in g["params"]}
    assert not any(id(p) in every for p in model.uc_head.parameters() if not p.requires_grad)  # frozen BN


@pytest.mark.parametrize(
    "opts,fragment",
    [
        (["MODEL.METRIC_LOSS_TYPE", "uc-tri-n"], "MODEL.ARCH 'uc'"),
        (["MODEL.ARCH", "clsuc", "MODEL.METRIC_LOSS_TYPE", "triplet", "MODEL.CLS_LOSS_TYPE", "uc-cls"], "alone"),
        (["MODEL.ARCH", "uc", "MODEL.CLS_LOSS_TYPE", "uc-cls"], "'clsuc'"),
        (["MODEL.ARCH", "uc", "SOLVER.NORM_LU", "[110, 10]"], "SOLVER.NORM_LU"),
        (["MODEL.ARCH", "uc", "SOLVER.REG_TYPE", "cubic"], "SOLVER.REG_TYPE"),
    ],
)
def test_loss_and_arch_mismatches(opts, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_loss(_cfg(*opts), 5, 16)


def test_composite_passes_uc_and_adds_the_regulariser_as_gradient_only():
    cfg = _cfg(
        "MODEL.ARCH", "uc", "MODEL.METRIC_LOSS_TYPE", "uc-tri-n", "MODEL.CLS_LOSS_TYPE", "none", "SOLVER.MAG_G", "2.0"
    )
    criterion = build_loss(cfg, 4, 8)
    assert criterion.part_names == ("loss", "uc_tri_n_loss", "uc_tri_n_avg_margin", "reg_loss")
    torch.manual_seed(0)
    feat = torch.randn(12, 8, requires_grad=True)
    uc = (0.05 * torch.randn(12)).requires_grad_(True)
    norms = (feat.norm(dim=1) * 10).detach().requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(3)
    total, parts = criterion({"feat": feat, "neck_feat": feat, "uc": uc, "uc_norm": norms}, {"label": labels})
    term = criterion.metric_terms["uc_tri_n"]
    expected = term(feat, labels, uc)
    torch.testing.assert_close(total, expected)  # the regulariser adds no value ...
    total.backward()
    assert uc.grad.abs().sum() > 0
    reg_grad = torch.autograd.grad(criterion.norm_regularizer(norms), norms)[0]
    torch.testing.assert_close(norms.grad, 2.0 * reg_grad)  # ... only MAG_G times its gradient
    assert parts["reg_loss"] > 0


def test_regulariser_off_without_head_or_weight():
    assert "reg_loss" not in build_loss(_cfg(), 4, 8).part_names
    assert "reg_loss" not in build_loss(_cfg("MODEL.ARCH", "uc", "SOLVER.MAG_G", "0"), 4, 8).part_names


# ------------------------------------------------------------------------------------------------
# TEST.NORM_K
# ------------------------------------------------------------------------------------------------
def _embeddings(seed=0, nq=6, ng=20, d=8):
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(nq + ng, d, generator=g), dim=1)
    labels = torch.cat([torch.arange(nq) % 3, torch.arange(ng) % 4])
    camids = torch.cat([torch.zeros(nq, dtype=torch.long), torch.arange(ng) % 3 + 1])
    uc = 0.3 * torch.randn(nq + ng, generator=g)
    return feats, labels, camids, uc, nq, ng


def _spec(nq, ng, norm_k):
    import numpy as np

    return EvalSpec(
        name="x",
        protocol="reid",
        query_is_gallery=False,
        trials=[(np.arange(nq), np.arange(nq, nq + ng))],
        recall_ks=(1,),
        max_rank=5,
        norm_k=norm_k,
    )


def test_norm_k_distance_matches_brute_force():
    feats, labels, camids, uc, nq, ng = _embeddings()
    k = 0.7
    q, gal = feats[:nq], feats[nq:]
    brute = torch.empty(nq, ng)
    for i in range(nq):
        for j in range(ng):
            d = torch.sqrt(((q[i] - gal[j]) ** 2).sum())
            brute[i, j] = 2 * math.asin(min(d.item() / 2, 1.0)) - k * uc[nq + j].item()
    torch.testing.assert_close(uncertainty_distance(uc[nq:], k)(q, gal), brute, rtol=1e-5, atol=1e-5)
    result = evaluate_embeddings(_spec(nq, ng, k), feats, labels, camids, uc=uc)
    expected = reid_metrics(
        q,
        gal,
        labels[:nq],
        labels[nq:],
        camids[:nq],
        camids[nq:],
        max_rank=5,
        distance_fn=lambda qq, gg: brute[: len(qq)],
        chunk_size=nq,
    )
    assert result["mAP"] == pytest.approx(expected["mAP"]) and result["rank1"] == pytest.approx(expected["rank1"])
    plain = evaluate_embeddings(_spec(nq, ng, 0.0), feats, labels, camids, uc=uc)
    assert result["mAP"] != pytest.approx(plain["mAP"])  # K changes the ranking ...
    tiny = evaluate_embeddings(_spec(nq, ng, 1e-9), feats, labels, camids, uc=uc)
    assert tiny["mAP"] == pytest.approx(plain["mAP"])  # ... and K -> 0 is the plain angle (monotone in d)


@pytest.mark.parametrize(
    "opts,fragment",
    [
        (["MODEL.ARCH", "clsuc", "TEST.FEAT_NORM", "no"], "TEST.FEAT_NORM"),
        (["MODEL.ARCH", "baseline"], "uncertainty head"),
        (["MODEL.ARCH", "clsuc", "TEST.RE_RANKING", "yes"], "RE_RANKING"),
    ],
)
def test_norm_k_config_errors(opts, fragment):
    from data.records import DatasetSplits, Record
    from engine.evaluation.protocol import build_eval_spec

    splits = DatasetSplits(name="x", train=[], query=[Record("q.jpg", 0, 0)], gallery=[Record("g.jpg", 0, 1)])
    with pytest.raises(ConfigError, match=fragment):
        build_eval_spec(_cfg("TEST.NORM_K", "0.5", *opts), splits)
