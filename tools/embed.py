#!/usr/bin/env python
"""Embed images with a trained model, as test.py embeds them, into a features file (.npz).

    python tools/embed.py --config_file configs/softmax_triplet.yml TEST.WEIGHT logs/market/best.pt \\
        --images photos/ --output feats.npz [--batch-size 64] [--workers 4]
    python tools/embed.py --config_file X TEST.WEIGHT ck.pt --images list.csv --output feats.npz
    python tools/embed.py --config_file X TEST.WEIGHT ck.pt --images market1501:gallery --output gallery.npz

--images: a folder (searched recursively for .jpg .jpeg .png .bmp .webp), a CSV file with a `path` column (relative
to its folder; optional `label`, `camid`), or DATASET:split (a dataset under DATASETS.ROOT_DIR; train, query or
gallery). The config and KEY VALUE pairs are test.py's: TEST.NECK_FEAT, TEST.FLIP and TEST.FEAT_NORM shape the
embedding, MODEL.DEVICE and SOLVER.AMP run it. Unreadable images are skipped and listed in the file. --workers
defaults to DATALOADER.NUM_WORKERS. tools/index.py builds a searchable index of the file. A user error exits with
status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import UserError, load_config  # noqa: E402
from engine.inference.embedding import ImageEmbedder, save_features  # noqa: E402
from engine.inference.image_sources import resolve_image_source  # noqa: E402
from engine.run.cli import exit_status, parse_command_line  # noqa: E402

DESCRIPTION = "Embed a folder, a CSV list or a dataset split with a trained model into a features file."


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are UserErrors: one line and exit status 2, as every other user error."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(this tool's options, test.py's --config_file and KEY VALUE pairs)."""
    parser = ToolParser(
        prog="tools/embed.py",
        description=DESCRIPTION,
        allow_abbrev=False,
        epilog="Also: --config_file FILE and KEY VALUE pairs, TEST.WEIGHT among them, as for test.py.",
    )
    parser.add_argument("--images", required=True, metavar="DIR|list.csv|DATASET:split", help="the images to embed")
    parser.add_argument("--output", required=True, metavar="feats.npz", help="the features file to write")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=None, help="image-reading processes (DATALOADER.NUM_WORKERS)")
    ours, rest = parser.parse_known_args(argv)
    return ours, parse_command_line(DESCRIPTION, with_resume=False, argv=rest)


def embed(argv: list[str] | None = None) -> Path:
    """Run the tool; returns the features file written."""
    ours, config_args = parse(argv)
    cfg = load_config(config_args.config_file, config_args.opts)
    source = resolve_image_source(ours.images, cfg)
    embedder = ImageEmbedder(cfg)
    workers = cfg.DATALOADER.NUM_WORKERS if ours.workers is None else ours.workers
    embeddings = embedder.embed(source, batch_size=ours.batch_size, workers=workers)
    output = Path(ours.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_features(output, embeddings)
    identity = embeddings.identity
    skipped = f"; {len(embeddings.skipped)} unreadable skipped (listed in the file)" if embeddings.skipped else ""
    print(
        f"embedded {len(embeddings)} images of {source.description} into {output} "
        f"({identity.dim}-d, {'L2-normalised' if identity.normalized else 'raw'}, {identity.model_name}){skipped}"
    )
    return output


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return exit_status(lambda: embed(argv))


if __name__ == "__main__":
    sys.exit(main())
