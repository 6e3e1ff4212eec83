#!/usr/bin/env python
"""Export a trained model to ONNX, with its preprocessing and distance in the file's metadata.

    python tools/export.py --config_file run/config.yaml TEST.WEIGHT run/best.pt
    python tools/export.py --config_file configs/softmax_triplet.yml TEST.WEIGHT run --output /models/bot.onnx \\
        --check-images datasets/market1501/query

The model is what test.py evaluates (MODEL.*, TEST.NECK_FEAT / FEAT_NORM / FLIP) with TEST.WEIGHT's weights
(a checkpoint, or a run folder standing for its best.pt). The default output is model.onnx in TEST.WEIGHT's
folder. After the export, onnxruntime and PyTorch embed the same random images (and, with --check-images, the
first images of a folder through the test transform); a difference above --tolerance is an error and nothing
is written. The library is engine/inference/onnx_export.py (engine/inference/export_metadata.py::
read_export_metadata reads the metadata back). A user error ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import UserError, load_config  # noqa: E402 (after the path of the repository)
from engine.inference.onnx_export import DEFAULT_TOLERANCE, export_model  # noqa: E402
from engine.run.cli import exit_status  # noqa: E402
from engine.run.output_dir import LOG_FORMAT  # noqa: E402


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """`--config_file FILE [options] KEY VALUE ...`; options may also follow the pairs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default="", help="YAML experiment file (a run's config.yaml)")
    parser.add_argument("--format", default="onnx", help="export format (onnx)")
    parser.add_argument("--output", default=None, metavar="FILE", help="default: model.onnx in TEST.WEIGHT's folder")
    parser.add_argument("--check-images", default=None, metavar="DIR", help="also check on the first images of DIR")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |onnxruntime - PyTorch| per output"
    )
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="pairs overriding the file's keys")
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("--")]
    if unknown:
        raise UserError(
            f"unknown option {unknown[0]}; expected --config_file FILE [--format onnx] [--output FILE] "
            "[--check-images DIR] [--no-check] [--tolerance T] followed by KEY VALUE pairs"
        )
    args.opts = list(args.opts) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stdout)
    for chatty in ("onnx_ir", "onnxscript"):  # the exporter's optimizer logs each of its passes at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)

    def run() -> None:
        args = parse_arguments(argv)
        cfg = load_config(args.config_file, args.opts)
        export_model(
            cfg,
            output=args.output,
            fmt=args.format,
            check=not args.no_check,
            check_images=args.check_images,
            tolerance=args.tolerance,
        )

    return exit_status(run, "interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
