"""Two processes through torchrun (Gloo on the CPU): the same code path, one set of outputs, and an
evaluation that gathers both ranks' embeddings into the numbers a single process computes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# both train end to end in processes started by torchrun
pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_train_and_evaluate_like_one(tmp_path, make_market_tree, free_port):
    make_market_tree(tmp_path / "data", train_ids=8, test_ids=5, images_per_id=4, cameras=3, size=(32, 16))
    out = tmp_path / "dist"
    opts = [
        "MODEL.NAME",
        "resnet18",
        "MODEL.PRETRAIN_CHOICE",
        "none",
        "DATASETS.ROOT_DIR",
        str(tmp_path / "data"),
        "INPUT.SIZE_TRAIN",
        "[32, 16]",
        "INPUT.SIZE_TEST",
        "[32, 16]",
        "SOLVER.IMS_PER_BATCH",
        "16",
        "DATALOADER.NUM_INSTANCE",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.MAX_EPOCHS",
        "2",
        "SOLVER.WARMUP_ITERS",
        "0",
        "TEST.IMS_PER_BATCH",
        "4",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port}",
            "train.py",
            *opts,
            "OUTPUT_DIR",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2]  # written once, by rank 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_2.pt"]

    proc = subprocess.run(
        [sys.executable, "test.py", *opts, "TEST.WEIGHT", str(out / "best.pt"), "OUTPUT_DIR", str(tmp_path / "single")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = json.loads((tmp_path / "single/test_metrics.json").read_text())
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert abs(single[key] - records[0][key]) < 1e-6, key


def test_torchrun_with_parameters_that_get_no_gradient(tmp_path, make_market_tree, free_port):
    """No classification loss (the BNNeck gets no gradient) and NAMA's head with a uc loss + center loss with
    its own optimizer: DDP is told about unused parameters, every optimizer steps on both ranks."""
    make_market_tree(tmp_path / "data", train_ids=8, test_ids=5, images_per_id=4, cameras=3, size=(32, 16))
    out = tmp_path / "dist"
    opts = [
        "MODEL.NAME",
        "resnet18",
        "MODEL.PRETRAIN_CHOICE",
        "none",
        "DATASETS.ROOT_DIR",
        str(tmp_path / "data"),
        "INPUT.SIZE_TRAIN",
        "[32, 16]",
        "INPUT.SIZE_TEST",
        "[32, 16]",
        "SOLVER.IMS_PER_BATCH",
        "16",
        "DATALOADER.NUM_INSTANCE",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.MAX_EPOCHS",
        "1",
        "SOLVER.WARMUP_ITERS",
        "0",
        "TEST.IMS_PER_BATCH",
        "4",
        "MODEL.ARCH",
        "uc",
        "MODEL.METRIC_LOSS_TYPE",
        "uc-tri-n+center",
        "MODEL.CLS_LOSS_TYPE",
        "none",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port}",
            "train.py",
            *opts,
            "OUTPUT_DIR",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "checkpoints" / "checkpoint_1.pt").is_file()


def test_torchrun_divide_and_conquer_clusters_once_and_trains_the_same_epochs_on_both_ranks(
    tmp_path, make_market_tree, free_port
):
    """SOLVER.METHOD dc on two processes: rank 0 clusters and broadcasts (both ranks then plan epochs of the same
    length, or DDP would wait forever), one record of the round, the masks' gradients averaged by hand."""
    make_market_tree(tmp_path / "data", train_ids=8, test_ids=5, images_per_id=4, cameras=3, size=(32, 16))
    out = tmp_path / "dist"
    opts = {
        "MODEL.NAME": "resnet18",
        "MODEL.PRETRAIN_CHOICE": "none",
        "DATASETS.ROOT_DIR": str(tmp_path / "data"),
        "INPUT.SIZE_TRAIN": "[32, 16]",
        "INPUT.SIZE_TEST": "[32, 16]",
        "SOLVER.IMS_PER_BATCH": "8",
        "DATALOADER.NUM_INSTANCE": "2",
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.MAX_EPOCHS": "2",
        "SOLVER.WARMUP_ITERS": "0",
        "TEST.IMS_PER_BATCH": "4",
        "TEST.PROTOCOL": "retrieval",
        "MODEL.METRIC_LOSS_TYPE": "margin",
        "MODEL.CLS_LOSS_TYPE": "none",
        "MODEL.NECK": "no",
        "MODEL.EMBEDDING_DIM": "16",
        "SOLVER.METHOD": "dc",
        "METHOD.DC.NB_CLUSTERS": "2",
        "METHOD.DC.MOD_EPOCH": "1",
        "METHOD.DC.MOD_EPOCH_FREEZE": "0",
        "METHOD.DC.KMEANS_NITER": "20",
        "OUTPUT_DIR": str(out),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port}",
            "train.py",
            *[item for pair in opts.items() for item in pair],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rounds = [json.loads(line) for line in (out / "clusters.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["k"]) for r in rounds] == [(1, 2)]  # written once, by rank 0
    epochs = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["clusters"] for r in epochs] == [1, 2]
