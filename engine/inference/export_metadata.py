"""The metadata an exported embedder carries (tools/export.py): what a caller needs to feed it and compare its
outputs, as string pairs in the ONNX model's ``metadata_props`` (`METADATA_TYPES` lists them and how
read_export_metadata parses them), and preprocess(), the reference implementation of the input they describe.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from config.errors import UserError
from data.transforms import CAFFE_BGR_MEAN, CAFFE_INPUT_MODELS, pipeline_for
from engine.inference.embedding import file_sha256
from modeling.test_time import TestTimeEmbedder

logger = logging.getLogger(__name__)


FORMAT_VERSION = 1  # the layout of the metadata; read_export_metadata refuses newer ones
INPUT_NAME = "images"
EMBEDDINGS, UNCERTAINTY = "embeddings", "uncertainty"  # the outputs' names
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the export extra

# Protocol of each dataset with a fixed one: it picks the test transform when INPUT.TRANSFORM is 'auto'
# (vehicleid follows TEST.VEHICLEID_PROTOCOL; folder and csv depend on their content and are loaded).
DATASET_PROTOCOLS = {
    "market1501": "reid",
    "dukemtmc": "reid",
    "msmt17": "reid",
    "demo": "reid",
    "cub": "retrieval",
    "cars": "retrieval",
    "sop": "retrieval",
    "inshop": "retrieval",
}

# metadata key -> its type for read_export_metadata ('str', 'int', 'float', 'bool', 'json'); written as strings:
# decimal numbers, 'true' / 'false', JSON lists
METADATA_TYPES = {
    "format_version": "int",  # FORMAT_VERSION of the writer
    "producer": "str",
    "exporter": "str",  # EXPORTERS' key: 'dynamo' or 'torchscript'
    "torch_version": "str",
    "model_name": "str",  # MODEL.NAME
    "input_name": "str",
    "input_height": "int",
    "input_width": "int",
    "channel_order": "str",  # 'RGB' or 'BGR': the order of the input's 3 channels
    "pixel_scale": "str",  # '0-1' or '0-255': the pixel values before the mean is subtracted
    "mean": "json",  # per channel, in the input's channel order, on the pixel scale
    "std": "json",
    "resize": "str",  # 'resize' (re-ID: to input_height x input_width) or 'shorter_side_center_crop' (retrieval)
    "resize_shorter_side": "int",  # retrieval: the shorter side before the centre crop (INPUT.RESIZE_TEST); else 0
    "interpolation": "str",  # as torchvision's Resize on a PIL image
    "preprocessing": "str",  # the steps above in words
    "test_dataset": "str",  # the evaluated dataset whose protocol picked the resize ('' with INPUT.TRANSFORM set)
    "outputs": "json",  # output names in order
    "embedding_dim": "int",
    "normalized": "bool",  # the embeddings are L2-normalised (TEST.FEAT_NORM)
    "neck_feat": "str",  # TEST.NECK_FEAT
    "flip": "bool",  # TEST.FLIP: the mean of the image's and its mirror's features
    "distance": "str",  # TEST.DIST_METRIC: 'euclidean' or 'cosine'
    "faiss_metric": "str",  # 'METRIC_INNER_PRODUCT' or 'METRIC_L2'
    "faiss_normalize": "bool",  # faiss.normalize_L2 the embeddings before indexing / searching
    "has_uncertainty": "bool",
    "norm_k": "float",  # TEST.NORM_K: NAMA's distance 2 asin(d / 2) - K u_gallery when not 0
    "checkpoint": "str",  # the checkpoint file read (a run folder's best.pt)
    "checkpoint_sha256": "str",
    "config_yaml": "str",  # the full merged config (cfg.dump())
}


def evaluation_pipeline(cfg) -> tuple[str, str]:
    """(pipeline, dataset): the test transform ('reid' or 'retrieval') of the first evaluated dataset (TEST.DATASETS,
    else DATASETS.NAMES), or INPUT.TRANSFORM when it is not 'auto' (dataset '')."""
    if cfg.INPUT.TRANSFORM != "auto":
        return pipeline_for(cfg, "reid"), ""
    from data.build import evaluated_names

    name = evaluated_names(cfg)[0]
    if name == "vehicleid":
        return cfg.TEST.VEHICLEID_PROTOCOL, name
    if name in DATASET_PROTOCOLS:
        return DATASET_PROTOCOLS[name], name
    from data.datasets import load_named_dataset

    try:
        return load_named_dataset(cfg, name).protocol, name
    except UserError as err:
        raise UserError(
            f"the test transform of dataset {name!r} depends on its content, which cannot be read ({err}); "
            "set INPUT.TRANSFORM to 'reid' or 'retrieval'"
        ) from None


def input_convention(cfg) -> dict:
    """Channel order, pixel scale, mean and std of the input MODEL.NAME expects (data/transforms.py)."""
    if cfg.MODEL.NAME in CAFFE_INPUT_MODELS:
        return {"channel_order": "BGR", "pixel_scale": "0-255", "mean": list(CAFFE_BGR_MEAN), "std": [1.0, 1.0, 1.0]}
    return {
        "channel_order": "RGB",
        "pixel_scale": "0-1",
        "mean": [float(v) for v in cfg.INPUT.PIXEL_MEAN],
        "std": [float(v) for v in cfg.INPUT.PIXEL_STD],
    }


def _preprocessing_words(meta: dict) -> str:
    height, width = meta["input_height"], meta["input_width"]
    if meta["resize"] == "resize":
        size = f"resize to {height}x{width} (height x width, {meta['interpolation']})"
    else:
        size = (
            f"resize the shorter side to {meta['resize_shorter_side']} ({meta['interpolation']}), "
            f"centre-crop {height}x{width}"
        )
    steps = ["RGB image", size, "float in [0, 1]"]
    steps += ["channels reversed to BGR"] if meta["channel_order"] == "BGR" else []
    steps += ["x 255"] if meta["pixel_scale"] == "0-255" else []
    return " -> ".join([*steps, "(x - mean) / std per channel", "NCHW float32"])


def faiss_metric(normalized: bool, distance: str) -> tuple[str, bool]:
    """(faiss metric, normalise first): inner product on L2-normalised embeddings (it ranks as euclidean and
    cosine distances do); on raw ones L2 for 'euclidean', inner product after faiss.normalize_L2 for 'cosine'."""
    if normalized:
        return "METRIC_INNER_PRODUCT", False
    if distance == "cosine":
        return "METRIC_INNER_PRODUCT", True
    return "METRIC_L2", False


def build_metadata(cfg, embedder: TestTimeEmbedder, checkpoint: Path, exporter: str) -> dict:
    """The typed metadata of an export of `embedder` (see METADATA_TYPES)."""
    pipeline, dataset = evaluation_pipeline(cfg)
    height, width = (int(v) for v in cfg.INPUT.SIZE_TEST)
    normalized = embedder.feat_norm
    metric, normalize_first = faiss_metric(normalized, cfg.TEST.DIST_METRIC)
    meta = {
        "format_version": FORMAT_VERSION,
        "producer": "reid-dml-engine tools/export.py",
        "exporter": exporter,
        "torch_version": torch.__version__,
        "model_name": cfg.MODEL.NAME,
        "input_name": INPUT_NAME,
        "input_height": height,
        "input_width": width,
        **input_convention(cfg),
        "resize": "shorter_side_center_crop" if pipeline == "retrieval" else "resize",
        "resize_shorter_side": int(cfg.INPUT.RESIZE_TEST) if pipeline == "retrieval" else 0,
        "interpolation": "bilinear, antialiased",
        "test_dataset": dataset,
        "outputs": [EMBEDDINGS, UNCERTAINTY] if embedder.has_uc else [EMBEDDINGS],
        "embedding_dim": int(embedder.model.feat_dim),
        "normalized": normalized,
        "neck_feat": cfg.TEST.NECK_FEAT,
        "flip": embedder.flip,
        "distance": cfg.TEST.DIST_METRIC,
        "faiss_metric": metric,
        "faiss_normalize": normalize_first,
        "has_uncertainty": embedder.has_uc,
        "norm_k": float(cfg.TEST.NORM_K),
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": file_sha256(checkpoint),
        "config_yaml": cfg.dump(),
    }
    meta["preprocessing"] = _preprocessing_words(meta)
    return meta


def metadata_strings(meta: dict) -> dict[str, str]:
    """The typed metadata as the string pairs of ONNX metadata_props."""

    def text(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list | tuple):
            return json.dumps(list(value))
        return str(value)

    return {key: text(value) for key, value in meta.items()}


def _parse(key: str, value: str, kind: str):
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "json":
            return json.loads(value)
        if kind == "bool":
            return {"true": True, "false": False}[value]
    except (ValueError, KeyError) as err:
        raise UserError(f"export metadata {key} = {value!r} is not a valid {kind}: {err}") from None
    return value


def read_export_metadata(path: str | Path) -> dict:
    """The metadata of a model written by export_model, typed (ints, floats, bools, lists; other keys as strings).
    UserError when the file is missing, not ONNX, or was not written by this exporter (or a newer one)."""
    require_export_packages(("onnx",))
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"exported model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # a truncated or foreign file: say which, keep the reason
        raise UserError(f"cannot read the ONNX model {path}: {err}") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    if "format_version" not in props:
        raise UserError(f"{path} holds no export metadata (format_version); expected a model of tools/export.py")
    meta = {key: _parse(key, value, METADATA_TYPES.get(key, "str")) for key, value in props.items()}
    if meta["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"{path} has export metadata version {meta['format_version']}; this code reads up to {FORMAT_VERSION}"
        )
    return meta


def normalise_pixels(pixels: torch.Tensor, meta: dict) -> torch.Tensor:
    """RGB pixels in [0, 1], (..., 3, H, W) -> the model's input per the metadata (order, scale, mean, std)."""
    if meta["channel_order"] == "BGR":
        pixels = pixels.flip(-3)
    if meta["pixel_scale"] == "0-255":
        pixels = pixels * 255.0
    mean = torch.tensor(meta["mean"], dtype=pixels.dtype).view(-1, 1, 1)
    std = torch.tensor(meta["std"], dtype=pixels.dtype).view(-1, 1, 1)
    return (pixels - mean) / std


def preprocess(image, meta: dict) -> torch.Tensor:
    """A PIL RGB image -> the (3, H, W) input the metadata describe: what a caller of the exported model does
    (and what the test transform of data/transforms.py does)."""
    height, width = meta["input_height"], meta["input_width"]
    if meta["resize"] == "resize":
        image = TF.resize(image, [height, width])
    else:
        image = TF.center_crop(TF.resize(image, meta["resize_shorter_side"]), [height, width])
    return normalise_pixels(TF.to_tensor(image), meta)


def require_export_packages(names: tuple[str, ...] = EXPORT_PACKAGES) -> None:
    """Raise UserError naming the missing ones of `names`, packages of the export extra (default: all of them)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"ONNX export needs {', '.join(EXPORT_PACKAGES)}; missing: {', '.join(missing)}. "
            "Install them with: pip install -e '.[export]'"
        )
