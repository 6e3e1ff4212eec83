"""Evaluate a checkpoint: python test.py --config_file configs/X.yml TEST.WEIGHT path/to/best.pt [KEY VALUE ...]"""

from engine.checkpoint_testing import run_test
from engine.run.cli import run_entry_point

if __name__ == "__main__":
    run_entry_point(
        lambda cfg, args: run_test(cfg), "Evaluate a trained re-ID / metric-learning model.", with_resume=False
    )
