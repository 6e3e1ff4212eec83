"""Export of the test-time embedder to ONNX, with everything a caller needs to feed it in the file itself.

`export_model(cfg)` exports `build_test_time_embedder(cfg)` (the model of MODEL.* with TEST.WEIGHT, per
TEST.NECK_FEAT / FEAT_NORM / FLIP): input ``images`` (N, 3, H, W) float32 with a dynamic batch axis, outputs
``embeddings`` (N, D) and, when the model has NAMA's uncertainty head, ``uncertainty`` (N,). It uses torch's
default exporter (torch.export, ``dynamo=True``); only when that one fails does it fall back to the TorchScript
exporter (``dynamo=False``), and the log and the metadata say which one wrote the file.

The ONNX model's ``metadata_props`` (string pairs, `METADATA_TYPES` lists them and how the reader parses them)
hold the input size and preprocessing (channel order, pixel scale, mean and std in the input's channel order,
resize policy), the output dimension, whether the embedding is L2-normalised, the distance (TEST.DIST_METRIC)
and the faiss metric that fits it, whether there is an uncertainty output, MODEL.NAME, the checkpoint's path
and SHA-256, the full merged config as YAML and a format version. `read_export_metadata(path)` reads them
back, typed; `preprocess(image, metadata)` is the reference implementation of the input they describe.

After the export the file is checked (unless `check=False`): onnxruntime (CPU) and PyTorch embed the same
random images (batches of 1 and 3, the dynamic axis) and, optionally, real images through the test transform;
the largest absolute difference per output must not exceed the tolerance (1e-4, fp32), otherwise nothing is
written and ExportCheckError says by how much they differ.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from config.errors import UserError
from engine.inference.embedding import checkpoint_file
from engine.inference.export_metadata import (
    EMBEDDINGS,
    INPUT_NAME,
    UNCERTAINTY,
    build_metadata,
    metadata_strings,
    normalise_pixels,
    require_export_packages,
)
from modeling.test_time import TestTimeEmbedder, build_test_time_embedder

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
DEFAULT_OUTPUT_NAME = "model.onnx"
DEFAULT_TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| per output, fp32
CHECK_BATCHES = (1, 3)  # random batches of the check: 1 and more than the export's example, the dynamic axis
CHECK_IMAGES = 8  # real images the check reads from --check-images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EXPORTERS = {
    "dynamo": "torch.onnx.export(dynamo=True) (torch.export)",
    "torchscript": "torch.onnx.export(dynamo=False) (TorchScript, fallback)",
}


class ExportCheckError(UserError):
    """The exported model does not compute what PyTorch computes (beyond the tolerance)."""


@dataclass
class ExportResult:
    """What export_model did: the file, the exporter used, its seconds, the check's max |diff| per output."""

    path: Path
    exporter: str
    export_seconds: float
    differences: dict[str, float] | None  # None when the check was skipped
    metadata: dict[str, str]


def check_format(fmt: str) -> None:
    """UserError unless `fmt` is an export format this module writes."""
    if fmt not in EXPORT_FORMATS:
        valid = ", ".join(repr(f) for f in EXPORT_FORMATS)
        raise UserError(f"--format {fmt!r} is not supported; expected one of: {valid}")


def default_output(weight: str | Path) -> Path:
    """<TEST.WEIGHT's folder>/model.onnx: beside the checkpoint, or inside the run folder it names."""
    path = Path(weight)
    return (path if path.is_dir() else path.parent) / DEFAULT_OUTPUT_NAME


def writable_output(output: str | Path | None, weight: str | Path) -> Path:
    """The output file (default beside TEST.WEIGHT; an existing folder gets model.onnx), its folder created and
    probed with a temporary file, so that an unwritable place fails before the export's seconds are spent."""
    path = default_output(weight) if output in (None, "") else Path(output)
    if path.is_dir():
        path = path / DEFAULT_OUTPUT_NAME
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"cannot write the export {path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write the export {path}: {err.strerror or err} ({path.parent})") from None
    return path


def export_onnx(embedder: TestTimeEmbedder, height: int, width: int):
    """(onnx.ModelProto, exporter key): torch's default exporter with a dynamic batch axis, or the TorchScript
    one when that fails (logged with the reason)."""
    import onnx

    example = torch.randn(2, 3, height, width)  # batch 2: a batch of 1 could be specialised as a constant
    outputs = [EMBEDDINGS, UNCERTAINTY] if embedder.has_uc else [EMBEDDINGS]
    try:
        program = torch.onnx.export(
            embedder,
            (example,),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return program.model_proto, "dynamo"
    except Exception as err:  # the exporter's own failure: fall back, keep the reason in the log
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.warning("the torch.export-based exporter failed (%s); falling back to dynamo=False", reason)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings on shape checks
        target = Path(folder) / DEFAULT_OUTPUT_NAME
        torch.onnx.export(
            embedder,
            (example,),
            str(target),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            dynamo=False,
        )
        return onnx.load(str(target)), "torchscript"


def list_check_images(folder: str | Path, limit: int = CHECK_IMAGES) -> list[Path]:
    """The first `limit` image files under `folder` (recursively, in sorted order, hidden files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--check-images {root} is not a folder")
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = [f for f in sorted(files) if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
        found += [Path(current) / f for f in images]
        if len(found) >= limit:
            break
    if not found:
        raise UserError(f"--check-images {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found[:limit]


def load_check_images(cfg, folder: str | Path, pipeline: str) -> tuple[torch.Tensor, int]:
    """(batch, count): the first images under `folder` through the test transform of `pipeline`."""
    from data.image_dataset import read_image
    from data.transforms import build_transforms

    transform = build_transforms(cfg, is_train=False, protocol=pipeline)
    paths = list_check_images(folder)
    return torch.stack([transform(read_image(str(p))) for p in paths]), len(paths)


def max_differences(
    model_bytes: bytes, embedder: TestTimeEmbedder, batches: list[torch.Tensor]
) -> tuple[dict[str, float], dict[str, float]]:
    """(max |onnxruntime - PyTorch|, max |PyTorch|) per output over `batches` (onnxruntime on the CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst, largest = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for batch in batches:
        with torch.no_grad():
            expected = embedder(batch)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(names, {INPUT_NAME: batch.numpy()})
        for name, ours, theirs in zip(names, expected, got):
            diff = (ours - torch.from_numpy(theirs)).abs().max().item()
            if math.isnan(diff) or diff > worst[name]:  # a NaN is kept: it fails the tolerance
                worst[name] = diff
            largest[name] = max(largest[name], ours.abs().max().item())
    return worst, largest


def check_export(
    cfg,
    model_bytes: bytes,
    embedder: TestTimeEmbedder,
    meta: dict,
    check_images: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, float]:
    """Compare onnxruntime with PyTorch on random images (batches CHECK_BATCHES, in the metadata's input range) and
    on the images of `check_images` through the test transform; log one line, raise ExportCheckError above
    `tolerance`. Returns the max |diff| per output."""
    generator = torch.Generator().manual_seed(0)
    size = (meta["input_height"], meta["input_width"])
    batches = [normalise_pixels(torch.rand(n, 3, *size, generator=generator), meta) for n in CHECK_BATCHES]
    what = f"random batches of {' and '.join(str(n) for n in CHECK_BATCHES)}"
    if check_images:
        pipeline = "retrieval" if meta["resize"] == "shorter_side_center_crop" else "reid"
        images, count = load_check_images(cfg, check_images, pipeline)
        batches.append(images)
        what += f", and {count} images of {check_images}"
    differences, largest = max_differences(model_bytes, embedder, batches)
    shown = ", ".join(f"{name} {value:.2e} (|values| up to {largest[name]:.2g})" for name, value in differences.items())
    logger.info("check, onnxruntime vs PyTorch on %s: max |diff| %s, tolerance %.0e", what, shown, tolerance)
    too_far = [name for name, value in differences.items() if not value <= tolerance]
    if too_far:
        worst = ", ".join(f"{name} {differences[name]:.3e} (|values| up to {largest[name]:.3g})" for name in too_far)
        raise ExportCheckError(
            f"the ONNX model differs from PyTorch on {what}: max |diff| {worst} > tolerance {tolerance:.0e}; "
            "nothing was written (--no-check writes it anyway, --tolerance sets another bound)"
        )
    return differences


def write_atomically(path: Path, data: bytes) -> None:
    """`data` into `path` through a temporary file in its folder, so that a reader never sees half a model."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write the export {path}: {err.strerror or err}") from None


def export_model(
    cfg,
    output: str | Path | None = None,
    fmt: str = "onnx",
    check: bool = True,
    check_images: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export the test-time embedder of `cfg` (TEST.WEIGHT's weights) to `output` (default: model.onnx beside
    TEST.WEIGHT) with its metadata, checked against PyTorch unless `check` is False. See the module docstring."""
    check_format(fmt)
    require_export_packages()
    import onnx

    embedder = build_test_time_embedder(cfg)
    path = writable_output(output, cfg.TEST.WEIGHT)
    if check and check_images:
        list_check_images(check_images)  # a wrong folder fails before the export's seconds are spent
    meta = build_metadata(cfg, embedder, checkpoint_file(cfg.TEST.WEIGHT), exporter="")
    height, width = meta["input_height"], meta["input_width"]
    start = time.perf_counter()
    proto, meta["exporter"] = export_onnx(embedder, height, width)
    seconds = time.perf_counter() - start
    logger.info("exported %s with %s in %.1f s", cfg.MODEL.NAME, EXPORTERS[meta["exporter"]], seconds)
    strings = metadata_strings(meta)
    onnx.helper.set_model_props(proto, strings)
    proto.doc_string = f"{cfg.MODEL.NAME} test-time embedder: {meta['preprocessing']}"
    onnx.checker.check_model(proto)
    model_bytes = proto.SerializeToString()
    differences = check_export(cfg, model_bytes, embedder, meta, check_images, tolerance) if check else None
    write_atomically(path, model_bytes)
    logger.info(
        "wrote %s (%.1f MB): input %s (N, 3, %d, %d) %s %s, outputs %s, embedding dim %d%s",
        path,
        len(model_bytes) / 1e6,
        INPUT_NAME,
        height,
        width,
        meta["channel_order"],
        meta["pixel_scale"],
        ", ".join(meta["outputs"]),
        meta["embedding_dim"],
        ", L2-normalised" if meta["normalized"] else "",
    )
    return ExportResult(path, meta["exporter"], seconds, differences, strings)
