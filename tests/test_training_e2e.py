"""End to end on a tiny Market-1501 tree: outputs, determinism, exact resume, test.py, and user errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import ConfigError, UserError, load_config
from data.image_dataset import UnreadableImageError
from engine.checkpoint_testing import run_test
from engine.training import NonFiniteLossError, train
from modeling.weights import WeightsMismatchError

# every test trains, or tests a trained run, on a tiny Market-1501 tree
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def read_metrics(out):
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:
        r.pop("eval_seconds")
    return records


@pytest.fixture(scope="module")
def finished_run(tiny_opts, market_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    train(load_config(None, tiny_opts(market_root, out)))
    return out


def test_run_writes_every_output(finished_run):
    out = finished_run
    saved = load_config(out / "config.yaml", [])  # the merged config is a valid experiment file
    assert saved.MODEL.NAME == "resnet18" and saved.SOLVER.MAX_EPOCHS == 3
    log = (out / "log.txt").read_text()
    assert "Epoch[1] done" in log and "Validation at epoch 3" in log and "# ids" in log
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [2, 3]
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "cmc", "best_mAP"):
        assert key in records[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_2.pt", "checkpoint_3.pt"]
    checkpoint = torch.load(out / "checkpoints/checkpoint_3.pt", weights_only=True)
    assert set(checkpoint) == {"model", "loss", "solver", "scaler", "trainer", "best", "progress", "config", "checksum"}
    assert checkpoint["trainer"]["iteration"] == 3 * checkpoint["trainer"]["epoch_length"]
    best = torch.load(out / "best.pt", weights_only=False)
    best_record = max(records, key=lambda r: r["mAP"])
    assert best["epoch"] == best_record["epoch"]
    assert best["metrics"]["mAP"] == pytest.approx(best_record["mAP"])


def test_same_seed_gives_identical_metrics(tiny_opts, market_root, finished_run, tmp_path):
    train(load_config(None, tiny_opts(market_root, tmp_path / "again")))
    assert read_metrics(tmp_path / "again") == read_metrics(finished_run)
    a = torch.load(finished_run / "checkpoints/checkpoint_3.pt", weights_only=True)
    b = torch.load(tmp_path / "again/checkpoints/checkpoint_3.pt", weights_only=True)
    for part in ("model", "loss"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


@pytest.mark.parametrize("workers", ["0", "1"])
def test_resume_matches_uninterrupted_run(tiny_opts, market_root, tmp_path, workers):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, tiny_opts(market_root, full, **{"DATALOADER.NUM_WORKERS": workers})))
    train(
        load_config(
            None,
            tiny_opts(
                market_root,
                part,
                **{"DATALOADER.NUM_WORKERS": workers, "SOLVER.MAX_EPOCHS": "1", "SOLVER.CHECKPOINT_PERIOD": "1"},
            ),
        )
    )
    train(load_config(None, tiny_opts(market_root, part, **{"DATALOADER.NUM_WORKERS": workers})), resume=str(part))
    # best_* may differ: the interrupted run also evaluated after its last epoch (1)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("best")}
    assert strip(read_metrics(part)[-1]) == strip(read_metrics(full)[-1])
    a = torch.load(full / "checkpoints/checkpoint_3.pt", weights_only=True)
    b = torch.load(part / "checkpoints/checkpoint_3.pt", weights_only=True)
    for name in ("model", "loss"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert (
        a["solver"]["optimizers"]["main"]["state"][0]["step"] == b["solver"]["optimizers"]["main"]["state"][0]["step"]
    )


def test_resume_of_a_finished_run_and_reuse_of_a_folder_are_refused(tiny_opts, market_root, finished_run):
    with pytest.raises(UserError, match="already finished epoch 3"):
        train(load_config(None, tiny_opts(market_root, finished_run)), resume=str(finished_run))
    with pytest.raises(UserError, match="already holds a run"):
        train(load_config(None, tiny_opts(market_root, finished_run)))
    with pytest.raises(UserError, match="no such file"):
        train(load_config(None, tiny_opts(market_root, finished_run)), resume=str(finished_run / "nope.pt"))


def test_test_py_reproduces_the_best_evaluation(tiny_opts, market_root, finished_run, tmp_path):
    opts = tiny_opts(market_root, tmp_path / "test", **{"TEST.WEIGHT": str(finished_run / "best.pt")})
    result = run_test(load_config(None, opts))
    best = max(read_metrics(finished_run), key=lambda r: r["mAP"])
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert result[key] == pytest.approx(best[key], abs=1e-9)
    saved = json.loads((tmp_path / "test/test_metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(result["mAP"])


def test_checkpoint_that_does_not_fit_names_the_mismatch(tiny_opts, market_root, finished_run, tmp_path):
    opts = tiny_opts(
        market_root, tmp_path / "t", **{"TEST.WEIGHT": str(finished_run / "best.pt"), "MODEL.NAME": "resnet34"}
    )
    with pytest.raises(WeightsMismatchError, match="TEST.WEIGHT.*(missing|unexpected)"):
        run_test(load_config(None, opts))
    with pytest.raises(UserError, match="TEST.WEIGHT .*nope.pt"):
        run_test(
            load_config(None, tiny_opts(market_root, tmp_path / "t2", **{"TEST.WEIGHT": str(tmp_path / "nope.pt")}))
        )


def test_test_py_without_weight_evaluates_the_untrained_model(tiny_opts, market_root, tmp_path):
    result = run_test(load_config(None, tiny_opts(market_root, tmp_path / "untrained")))
    assert result["weight"] == "untrained (none)" and 0.0 < result["mAP"] <= 1.0


def test_bf16_autocast_on_cpu_trains_and_fp16_is_refused(tiny_opts, market_root, tmp_path):
    # 64x32 inputs: with 32x16 ones, layer3's first convolution sees 4x2 maps, on which the CPU's bf16
    # convolution (torch 2.14) returns NaN from finite weights and inputs in most runs
    opts = {
        "SOLVER.AMP": "bf16",
        "SOLVER.MAX_EPOCHS": "1",
        "INPUT.SIZE_TRAIN": "[64, 32]",
        "INPUT.SIZE_TEST": "[64, 32]",
    }
    result = train(load_config(None, tiny_opts(market_root, tmp_path / "bf16", **opts)))
    assert 0.0 <= result["mAP"] <= 1.0
    with pytest.raises(ConfigError, match="fp16"):
        train(load_config(None, tiny_opts(market_root, tmp_path / "fp16", **{"SOLVER.AMP": "fp16"})))


def test_nan_loss_stops_training_with_a_clear_error(tiny_opts, market_root, tmp_path, monkeypatch):
    from layers.triplet import BatchHardTripletLoss

    monkeypatch.setattr(BatchHardTripletLoss, "forward", lambda self, f, y: f.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1") as error:
        train(load_config(None, tiny_opts(market_root, tmp_path / "nan")))
    # not finite before any step: the config, not the learning rate; and no checkpoint exists yet
    assert "before any optimizer step" in str(error.value) and "no checkpoint was written yet" in str(error.value)


def test_a_later_nan_loss_points_at_the_learning_rate_and_the_latest_checkpoint(
    tiny_opts, market_root, tmp_path, monkeypatch
):
    from layers.triplet import BatchHardTripletLoss

    original = BatchHardTripletLoss.forward
    calls = []

    def nan_in_epoch_two(self, feats, labels):
        calls.append(1)
        value = original(self, feats, labels)
        return value * float("nan") if len(calls) > 3 else value  # an epoch of this tree has 3 batches

    monkeypatch.setattr(BatchHardTripletLoss, "forward", nan_in_epoch_two)
    out = tmp_path / "nan_later"
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2") as error:
        train(load_config(None, tiny_opts(market_root, out, **{"SOLVER.CHECKPOINT_PERIOD": "1"})))
    assert "lower SOLVER.BASE_LR" in str(error.value)
    assert f"the latest checkpoint is {out / 'checkpoints' / 'checkpoint_1.pt'}" in str(error.value)


def test_unreadable_image_is_named(tiny_opts, market_root, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(market_root, root)
    victim = sorted((root / "market1501/bounding_box_train").glob("0*.jpg"))[0]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match=victim.name):
        train(load_config(None, tiny_opts(root, tmp_path / "out")))


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_missing_dataset_and_unreadable_image_exit_without_traceback(tiny_opts, market_root, tmp_path):
    proc = run_cli("train.py", *tiny_opts(tmp_path / "nowhere", tmp_path / "o1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nowhere" / "market1501") in proc.stderr and "bounding_box_train" in proc.stderr

    import shutil

    root = tmp_path / "broken"
    shutil.copytree(market_root, root)
    victim = sorted((root / "market1501/query").glob("*.jpg"))[0]
    victim.write_bytes(b"garbage")
    proc = run_cli(
        "train.py", *tiny_opts(root, tmp_path / "o2", **{"DATALOADER.NUM_WORKERS": "1", "SOLVER.MAX_EPOCHS": "2"})
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and victim.name in proc.stderr
    # the DataLoader worker's traceback is not repeated on the console either
    assert "Traceback" not in proc.stdout, proc.stdout[-2000:]


def test_cli_train_then_test(tiny_opts, market_root, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli(
        "train.py",
        "--config_file",
        "configs/softmax_triplet.yml",
        *tiny_opts(market_root, out, **{"SOLVER.MAX_EPOCHS": "1"}),
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "test.py",
        "--config_file",
        str(out / "config.yaml"),
        "TEST.WEIGHT",
        str(out / "best.pt"),
        "OUTPUT_DIR",
        str(tmp_path / "cli_test"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "mAP" in proc.stdout and (tmp_path / "cli_test/test_metrics.json").is_file()


def test_test_py_with_k_reciprocal_re_ranking(tiny_opts, market_root, finished_run, tmp_path):
    from engine.evaluation.reid_metrics import reid_metrics
    from engine.evaluation.reranking import k_reciprocal_dense

    opts = tiny_opts(
        market_root,
        tmp_path / "rr",
        **{
            "TEST.WEIGHT": str(finished_run / "best.pt"),
            "TEST.RE_RANKING": "yes",
            "TEST.RE_RANKING_K1": "6",
            "TEST.RE_RANKING_K2": "3",
        },
    )
    result = run_test(load_config(None, opts))
    assert 0.0 < result["mAP"] <= 1.0
    # the same numbers as the dense algorithm applied to the same embeddings
    from data.build import build_data
    from engine.evaluation.dataset_evaluation import EmbeddingMetric, build_extractor
    from engine.evaluation.protocol import build_eval_spec
    from engine.run.precision import resolve_precision
    from modeling import build_model
    from modeling.weights import load_model_checkpoint

    cfg = load_config(None, opts)
    model = build_model(cfg, load_pretrained=False)
    load_model_checkpoint(model, cfg.TEST.WEIGHT, "TEST.WEIGHT")
    eval_set = build_data(cfg, with_train=False).eval_sets[0]
    extractor = build_extractor(model, resolve_precision("none", torch.device("cpu")), torch.device("cpu"), "after")
    metric = EmbeddingMetric(build_eval_spec(cfg, eval_set.splits), keep_embeddings=True)
    metric.attach(extractor, "eval")
    extractor.run(eval_set.loader)
    gathered = metric.last
    feats, labels, camids = gathered["feats"], gathered["labels"], gathered["camids"]
    nq = len(eval_set.splits.query)
    dense = k_reciprocal_dense(feats[:nq], feats[nq:], k1=6, k2=3, lambda_value=0.3)
    expected = reid_metrics(
        feats[:nq],
        feats[nq:],
        labels[:nq],
        labels[nq:],
        camids[:nq],
        camids[nq:],
        distance_fn=lambda q, g: dense[: len(q)] if len(q) == nq else None,
        chunk_size=nq,
    )
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["rank1"] == pytest.approx(expected["rank1"], abs=1e-6)


def test_re_ranking_is_refused_for_retrieval_protocol(tiny_opts, market_root, tmp_path):
    opts = tiny_opts(market_root, tmp_path / "x", **{"TEST.RE_RANKING": "yes", "TEST.PROTOCOL": "retrieval"})
    with pytest.raises(ConfigError, match="RE_RANKING"):
        run_test(load_config(None, opts))
