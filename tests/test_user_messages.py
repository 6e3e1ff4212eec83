"""One-line messages for user mistakes that used to lose their details: a YAML syntax error keeps its line
and column; a run folder given as a weights file stands for its best.pt, or the message says what it holds."""

import pytest
import torch

from config import ConfigError, UserError, load_config
from modeling.weights import read_weights_file


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("MODEL:\n  NAME: resnet18\n  NECK: [bnneck\nSOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yml is not valid YAML at line 4, column 7: expected ','"):
        load_config(path)
    path.write_text("MODEL:\n  NAME: resnet18\n   NECK: bnneck\n")
    with pytest.raises(ConfigError, match=r"at line 3, column \d+: mapping values are not allowed here"):
        load_config(path)


def test_a_run_folder_stands_for_its_best_pt(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"TEST.WEIGHT .*run is a folder without best.pt \(it holds checkpoints/\)"):
        read_weights_file(run, "TEST.WEIGHT")
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "metrics": {}}, run / "best.pt")
    assert read_weights_file(run, "TEST.WEIGHT")["epoch"] == 3
    with pytest.raises(UserError, match="does not exist"):
        read_weights_file(tmp_path / "missing.pt", "TEST.WEIGHT")
