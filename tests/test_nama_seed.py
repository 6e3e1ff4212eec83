"""Seed 002's three shell blocks (NAMA's README) run as written on a Market-1501-layout tree.

The blocks below are the README's, character for character, except for what a user sets: the shell
variables (EPOCHS=12, the smallest for which the seed's $(($EPOCHS/12)) periods are not 0: nine tiny
epochs; FBASE, which the second block uses without setting), the datasets of the first block's loop (a
Market-1501 tree only; its `#` invites the edit),
the checkpoint path of the test block, and the keys appended to every command (dataset root, small image
sizes, no ImageNet file, no worker processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

# every test runs the NAMA command blocks (train.py, test.py) end to end
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]

TRAIN_UC_TRI_N = r"""
{
LOSS=uc-tri-n # pairwise loss : cosface tri-n
LOSS_CLS=softmax # classification loss 
EPOCHS=12 # 120
S=32  # pairwise loss Scale
MARGIN=0.2  # 0.15
SEED=42
NECK=no # neck type： bnneck 
NAME=resnet50 # backbone arch
ARCH='uc-bn-no' # network arch
FBASE=nn_128 # MAM function type
for DATASET in market1501 #
do
  python3 train.py --config_file='configs/softmax_triplet.yml' MODEL.NAME $NAME  \
  MODEL.NECK $NECK  SOLVER.WEIGHT_DECAY_POLY 1e-1 DATASETS.COMBINE_ALL "False" \
  DATASETS.NAMES "$DATASET" SOLVER.IMS_PER_BATCH "(120)" SOLVER.WARMUP_ITERS "$(($EPOCHS / 12))" MODEL.ARCH $ARCH \
  SOLVER.MARGIN $MARGIN SOLVER.TRI_LOSS_WEIGHT 1 \
  SOLVER.WEIGHT_DECAY_NECK 5e-4 SOLVER.WEIGHT_DECAY 5e-4 \
  DATALOADER.NUM_INSTANCE "(10)"  SOLVER.CHECKPOINT_PERIOD "10" SOLVER.STEPS "$(($EPOCHS/4)), $(($EPOCHS*2/4))" \
  SOLVER.MAX_EPOCHS "$(($EPOCHS*3/4))" SOLVER.EVAL_PERIOD "$(($EPOCHS / 4))" SOLVER.S $S \
  MODEL.METRIC_LOSS_TYPE "$LOSS" MODEL.CLS_LOSS_TYPE $LOSS_CLS SEED $SEED MODEL.F_BASE $FBASE \
  OUTPUT_DIR "./logs/cls+tri/$DATASET/Exp-$ARCH-$FBASE-d$P_DECAY-$LOSS-s$S-$LOSS_CLS-10*12-m$MARGIN-g$G" \
  $APPEND

  
done
}
"""

TRAIN_UC_CLS = r"""
{
EPOCHS=12 # 120
SEED=42
S=16  # classification loss Scale
NECK=bnneck # bnneck
MARGIN=0.0
LOSS_CLS=uc-cls #arcface #
CTYPE=no
DATASET=market1501
NECK_DECAY=0.0
FBASE=nn_128
for DATASET in market1501 # dukemtmc  msmt17 #
do
      {
      if [ $DATASET = msmt17 ]
      then
        EPOCHS=$(($EPOCHS / 2))
      fi
      python3 train.py --config_file='configs/softmax_triplet.yml' MODEL.NAME "resnet50" \
      SOLVER.MARGIN $MARGIN SOLVER.WEIGHT_DECAY_POLY 1e-2 \
      SOLVER.WEIGHT_DECAY_NECK $NECK_DECAY  SOLVER.NORM_LU "[10, 110]" \
      DATASETS.NAMES "$DATASET" SOLVER.IMS_PER_BATCH "(120)" SOLVER.WARMUP_ITERS "$(($EPOCHS / 12))" MODEL.ARCH "clsuc" \
      DATALOADER.NUM_INSTANCE "(10)"  SOLVER.CHECKPOINT_PERIOD "10" SOLVER.STEPS "$(($EPOCHS/4)), $(($EPOCHS*2/4))" \
      SOLVER.MAX_EPOCHS "$(($EPOCHS*3/4))"  SOLVER.EVAL_PERIOD "$(($EPOCHS/12))" SOLVER.CS $S MODEL.NECK $NECK \
      MODEL.METRIC_LOSS_TYPE "none" MODEL.CLS_LOSS_TYPE $LOSS_CLS SEED $SEED MODEL.F_BASE $FBASE \
      OUTPUT_DIR "./logs/cls+/$DATASET/Exp-log-$FBASE-d$P_DECAY-$NECK-$LOSS_CLS-10*12-s$S-m$MARGIN-g$G" \
      $APPEND
      }
done
}
"""

TEST_VISRANK = r"""
K=0.0   # 测试期间距离计算时加入不确定度的强度，一般用0
# TEST.VISRANK： 测试时可视化排序结果数量
for DATASET in market1501 # msmt17  # market1501
do
    {
      CUDA_VISIBLE_DEVICES=0 \
      python test.py --config_file='configs/softmax_triplet.yml' DATASETS.NAMES $DATASET \
      TEST.IMS_PER_BATCH 8 TEST.VISRANK 10 TEST.NECK_FEAT 'after' MODEL.ARCH "clsuc" MODEL.NAME 'resnet50' \
      TEST.WEIGHT "$CHECKPOINT" \
      OUTPUT_DIR "./logs/test/" \
      $APPEND
    }
done
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, make_market_tree):
    """A copy of the command's working directory: configs/ and the entry points, plus a Market tree."""
    work = tmp_path_factory.mktemp("nama")
    (work / "configs").mkdir()
    (work / "configs" / "softmax_triplet.yml").write_text((ROOT / "configs" / "softmax_triplet.yml").read_text())
    make_market_tree(work / "datasets", train_ids=12, test_ids=4, images_per_id=4, cameras=3, size=(32, 16), seed=2)
    return work


def _run_block(script: str, workdir: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["APPEND"] = (
        "DATASETS.ROOT_DIR ./datasets INPUT.SIZE_TRAIN [32,16] INPUT.SIZE_TEST [32,16] "
        "MODEL.PRETRAIN_CHOICE none DATALOADER.NUM_WORKERS 0"
    )
    env.update(env_vars)
    # train.py / test.py are run from the work folder, as the README's relative paths expect
    for entry in ("train.py", "test.py"):
        target = workdir / entry
        if not target.exists():
            target.write_text(f"import runpy\nrunpy.run_path({str(ROOT / entry)!r}, run_name='__main__')\n")
    return subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_uc_tri_n_block_trains(workdir):
    proc = _run_block(TRAIN_UC_TRI_N, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = workdir / "logs/cls+tri/market1501/Exp-uc-bn-no-nn_128-d-uc-tri-n-s32-softmax-10*12-m0.2-g"
    assert (out / "checkpoints" / "checkpoint_9.pt").is_file()  # the last epoch, whatever CHECKPOINT_PERIOD
    log = (out / "log.txt").read_text()
    assert "uc_tri_n_avg_margin" in log and "reg_loss" in log
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [3, 6, 9]


@pytest.fixture(scope="module")
def uc_cls_run(workdir) -> Path:
    """The output folder of the uc-cls training block, run once for the tests that use it."""
    proc = _run_block(TRAIN_UC_CLS, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "logs/cls+/market1501/Exp-log-nn_128-d-bnneck-uc-cls-10*12-s16-m0.0-g"


def test_uc_cls_block_trains_and_test_block_draws_rank_pictures(workdir, uc_cls_run):
    out = uc_cls_run
    checkpoint = out / "checkpoints" / "checkpoint_9.pt"
    assert checkpoint.is_file() and (out / "best.pt").is_file()
    assert "cls_avg_margin" in (out / "log.txt").read_text()

    proc = _run_block(TEST_VISRANK, workdir, CHECKPOINT=str(out / "best.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    test_dir = workdir / "logs/test"
    metrics = json.loads((test_dir / "test_metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    pictures = sorted((test_dir / "visrank" / "market1501").glob("*.jpg"))
    assert len(pictures) == metrics["num_query"]
    with Image.open(pictures[0]) as picture:
        assert picture.width > 10 * picture.height // 2  # a row of 11 tiles (query + 10)
    assert (test_dir / "visrank" / "market1501" / "index.csv").is_file()


def test_test_block_with_another_f_base_names_both(workdir, uc_cls_run):
    out = uc_cls_run
    proc = _run_block(
        TEST_VISRANK.replace("TEST.VISRANK 10", "TEST.VISRANK 0 MODEL.F_BASE nn_64"),
        workdir,
        CHECKPOINT=str(out / "best.pt"),
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "MODEL.F_BASE 'nn_64'" in proc.stderr and "uc_head" in proc.stderr
