"""Train an embedding model: python train.py --config_file configs/X.yml [--resume PATH] [KEY VALUE ...]"""

from engine.run.cli import run_entry_point
from engine.training import train

if __name__ == "__main__":
    run_entry_point(
        lambda cfg, args: train(cfg, resume=args.resume, config_file=args.config_file),
        "Train a re-ID / metric-learning model.",
        with_resume=True,
    )
