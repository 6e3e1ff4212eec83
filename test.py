"""Evaluate a checkpoint: python test.py --config_file configs/X.yml TEST.WEIGHT path/to/best.pt [KEY VALUE ...]

TEST.WEIGHT may also name a folder above run folders: every run under it is evaluated with its own config.yaml
(the KEY VALUE pairs on top) and one table sums them up."""

from engine.run.cli import run_entry_point
from engine.runs_testing import run_test_command

if __name__ == "__main__":
    run_entry_point(
        lambda cfg, args: run_test_command(cfg, list(args.opts)),
        "Evaluate a trained re-ID / metric-learning model.",
        with_resume=False,
    )
