"""Config loading: the seeds' value spellings, YAML files, and one-line errors naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, changed_keys, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_seed_command_line_values_parse_as_the_seed_expects():
    cfg = load_config(
        ROOT / "configs/softmax_triplet.yml",
        [
            "SOLVER.IMS_PER_BATCH",
            "(120)",
            "DATALOADER.NUM_INSTANCE",
            "(10)",
            "SOLVER.STEPS",
            "60, 120",
            "SOLVER.TRI_LOSS_WEIGHT",
            "1",
            "DATASETS.COMBINE_ALL",
            "False",
            "SOLVER.WARMUP_ITERS",
            "20",
            "TEST.NECK_FEAT",
            "after",
            "SOLVER.WEIGHT_DECAY",
            "5e-4",
            "SOLVER.MARGIN",
            "0.2",
            "SEED",
            "42",
            "INPUT.SIZE_TRAIN",
            "[384, 192]",
            "MODEL.NAME",
            "resnet50",
            "DATASETS.NAMES",
            "market1501",
        ],
    )
    assert cfg.SOLVER.IMS_PER_BATCH == 120 and cfg.DATALOADER.NUM_INSTANCE == 10
    assert cfg.SOLVER.STEPS == (60, 120)
    assert cfg.SOLVER.TRI_LOSS_WEIGHT == 1.0 and isinstance(cfg.SOLVER.TRI_LOSS_WEIGHT, float)
    assert cfg.DATASETS.COMBINE_ALL is False
    assert cfg.SOLVER.WEIGHT_DECAY == 5e-4 and cfg.SOLVER.MARGIN == 0.2
    assert cfg.INPUT.SIZE_TRAIN == [384, 192]
    assert cfg.is_frozen()


def test_single_value_for_a_list_key_and_yaml_words():
    cfg = load_config(None, ["SOLVER.STEPS", "(40)", "TEST.FEAT_NORM", "no"])
    assert cfg.SOLVER.STEPS == (40,)
    assert cfg.TEST.FEAT_NORM == "no"


def test_yaml_file_merges_and_unquoted_yes_on_become_words(tmp_path):
    path = tmp_path / "x.yml"
    path.write_text("MODEL:\n  IF_LABELSMOOTH: on\nTEST:\n  FEAT_NORM: no\nSOLVER:\n  STEPS: [5, 9]\n  BASE_LR: 1\n")
    cfg = load_config(path, ["SOLVER.BASE_LR", "0.5"])
    assert cfg.MODEL.IF_LABELSMOOTH == "on" and cfg.TEST.FEAT_NORM == "no"
    assert cfg.SOLVER.STEPS == (5, 9) and cfg.SOLVER.BASE_LR == 0.5  # pairs win over the file


@pytest.mark.parametrize(
    "opts, words",
    [
        (["SOLVER.BASE_LRR", "0.1"], ["SOLVER.BASE_LRR", "SOLVER.BASE_LR"]),
        (["NOPE.KEY", "1"], ["NOPE.KEY"]),
        (["SOLVER.MAX_EPOCHS", "ten"], ["SOLVER.MAX_EPOCHS", "integer"]),
        (["SOLVER.MAX_EPOCHS", "1.5"], ["SOLVER.MAX_EPOCHS"]),
        (["DATASETS.COMBINE_ALL", "maybe"], ["DATASETS.COMBINE_ALL", "True or False"]),
        (["INPUT.SIZE_TRAIN", "[256]"], ["INPUT.SIZE_TRAIN", "height, width"]),
        (["SOLVER.IMS_PER_BATCH", "30", "DATALOADER.NUM_INSTANCE", "4"], ["SOLVER.IMS_PER_BATCH", "NUM_INSTANCE"]),
        (["SOLVER.STEPS"], ["SOLVER.STEPS", "no value"]),
    ],
)
def test_bad_keys_and_values_name_the_key(opts, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    for word in words:
        assert word in str(err.value)


def test_bad_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("SOLVER:\n  NOT_A_KEY: 1\n")
    with pytest.raises(ConfigError, match="SOLVER.NOT_A_KEY.*bad.yml"):
        load_config(path, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yml", [])


def test_changed_keys_lists_only_differences():
    cfg = load_config(None, ["SOLVER.MAX_EPOCHS", "7", "SEED", "42"])
    assert changed_keys(cfg) == {"SOLVER.MAX_EPOCHS": (120, 7)}


@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_entry_points_exit_with_one_line_naming_the_key(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, script, "SOLVER.BASE_LRR", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "SOLVER.BASE_LRR" in proc.stderr and "Traceback" not in proc.stderr


def test_every_default_key_has_a_comment():
    source = (ROOT / "config/defaults.py").read_text().splitlines()
    for i, line in enumerate(source):
        if line.startswith("_C.") and "= CN()" not in line:
            previous = source[i - 1].strip()
            assert previous.startswith("#") or source[i - 2].strip().startswith("#"), f"no comment above: {line}"


def test_apex_opt_level_maps_onto_torch_amp():
    # NAMA's YAML files carry apex's SOLVER.OPT_LEVEL: they load, and it picks SOLVER.AMP
    assert load_config(None, ["SOLVER.OPT_LEVEL", "O0"]).SOLVER.AMP == "none"
    assert load_config(None, ["SOLVER.OPT_LEVEL", "O1"]).SOLVER.AMP == "fp16"
    assert load_config(None, ["SOLVER.OPT_LEVEL", "O2", "SOLVER.AMP", "fp16"]).SOLVER.AMP == "fp16"
    assert load_config(None, []).SOLVER.AMP == "auto"  # not given: SOLVER.AMP alone decides
    with pytest.raises(ConfigError, match=r"SOLVER.OPT_LEVEL = 'O3' \(apex's pure fp16"):
        load_config(None, ["SOLVER.OPT_LEVEL", "O3"])
    with pytest.raises(ConfigError, match="means SOLVER.AMP 'fp16', but SOLVER.AMP = 'bf16'"):
        load_config(None, ["SOLVER.OPT_LEVEL", "O1", "SOLVER.AMP", "bf16"])
    with pytest.raises(ConfigError, match="SOLVER.OPT_LEVEL = 'O4'; expected one of 'O0', 'O1', 'O2'"):
        load_config(None, ["SOLVER.OPT_LEVEL", "O4"])
