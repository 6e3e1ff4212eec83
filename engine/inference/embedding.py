"""Embedding images with a trained model, as test.py embeds them, and the features file that carries the result.

The model is modeling/test_time.py's embedder (TEST.NECK_FEAT, TEST.FLIP, TEST.FEAT_NORM, NAMA's offset), the
images go through data/image_dataset.py::read_image and the test transform of data/transforms.py (the CPU pipeline,
also under INPUT.AUGMENT_ON device, whose normalisation on the device computes the same), and the forward pass runs
under SOLVER.AMP as test.py's extractor does. An unreadable image (truncated, not an image, a decompression bomb,
missing) is skipped and listed with its reason; every other image is embedded.

A features file (``.npz``, read back by load_features) holds ``features`` float32 (N, D), ``paths``, optional
``uncertainty`` (N,), ``labels``, ``camids`` and ``label_names``, the skipped ``skipped_paths`` and
``skipped_reasons``, and ``model``: the ModelIdentity as JSON, by which a gallery index refuses foreign features.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config import load_config
from config.errors import UserError
from data.build import ignore_stop_signals
from data.image_dataset import UnreadableImageError, read_image
from data.transforms import build_transforms
from engine.inference.image_sources import ImageSource
from engine.reporting.run_files import atomic_write
from engine.run.device import resolve_device
from engine.run.precision import resolve_precision
from modeling.test_time import build_test_time_embedder

logger = logging.getLogger(__name__)

FEATURES_FORMAT = 1  # the layout of a features file; load_features refuses others
SKIPPED_KEYS = ("skipped_paths", "skipped_reasons")


def checkpoint_file(weight: str | Path) -> Path:
    """The file TEST.WEIGHT names: a checkpoint, or a run folder standing for its best.pt."""
    path = Path(weight).resolve()
    return path / "best.pt" if path.is_dir() else path


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a set of features, and how: two sets are comparable only when these agree (the
    checkpoint by its bytes' SHA-256, not its path, and the test-time choices that change the embedding)."""

    model_name: str
    dim: int
    normalized: bool  # TEST.FEAT_NORM yes: every row has norm 1
    dist_metric: str  # TEST.DIST_METRIC: euclidean or cosine
    neck_feat: str  # TEST.NECK_FEAT
    flip: bool  # TEST.FLIP
    checkpoint: str
    checkpoint_sha256: str

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelIdentity:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def mismatch(self, other: ModelIdentity) -> str | None:
        """Why features of `other` cannot be compared with features of this identity, or None when they can."""
        if other.checkpoint_sha256 != self.checkpoint_sha256:
            return (
                f"they come from another checkpoint ({other.checkpoint}, sha256 {other.checkpoint_sha256[:12]}) than "
                f"the index ({self.checkpoint}, sha256 {self.checkpoint_sha256[:12]}); embed both with the same model"
            )
        for name, key in (("neck_feat", "TEST.NECK_FEAT"), ("flip", "TEST.FLIP"), ("normalized", "TEST.FEAT_NORM")):
            theirs, ours = (_config_value(getattr(identity, name)) for identity in (other, self))
            if theirs != ours:
                return f"they were embedded with {key} {theirs!r}, the index with {ours!r}"
        return None


def _config_value(value) -> str:
    """A ModelIdentity field as the config spells it ('yes' / 'no' for the booleans)."""
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


@dataclass
class Embeddings:
    """Features of the images that could be read (rows in the order of `paths`), what was skipped and why, and
    the identity of the model that embedded them. labels / camids when the image source knew them."""

    features: np.ndarray
    paths: list[str]
    identity: ModelIdentity
    uncertainty: np.ndarray | None = None
    labels: np.ndarray | None = None
    camids: np.ndarray | None = None
    label_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


class _PathImages(Dataset):
    """Items: {'index', 'image'} for an image that reads, {'index', 'error'} for one that does not."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            image = read_image(path)
        except UnreadableImageError as err:
            reason = str(err).removeprefix(f"cannot read image {path}: ")
            return {"index": index, "error": reason}
        return {"index": index, "image": self.transform(image)}


def _collate(items: list[dict]) -> dict:
    read = [item for item in items if "image" in item]
    return {
        "index": [item["index"] for item in read],
        "image": torch.stack([item["image"] for item in read]) if read else None,
        "errors": [(item["index"], item["error"]) for item in items if "error" in item],
    }


def embedding_protocol(cfg, source_protocol: str | None = None) -> str:
    """The protocol whose test transform the images get: the image source's dataset's, else the rule of the
    exported file's metadata (export_metadata.py::evaluation_pipeline: INPUT.TRANSFORM, or when it is 'auto' the
    protocol of the first evaluated dataset), so that tools/embed.py and an exported model see the same input."""
    if source_protocol is not None:
        return source_protocol
    from engine.inference.export_metadata import evaluation_pipeline  # it imports this module: not at the top

    return evaluation_pipeline(cfg)[0]


class ImageEmbedder:
    """The trained model of a config (TEST.WEIGHT, or `weight`) as evaluation runs it, over image files."""

    def __init__(self, cfg, weight: str | None = None):
        self.cfg = cfg
        self.weight = str(cfg.TEST.WEIGHT if weight is None else weight)
        self.module = build_test_time_embedder(cfg, self.weight)  # checks TEST.WEIGHT, builds and loads
        self.checkpoint = checkpoint_file(self.weight)
        self.checkpoint_sha256 = file_sha256(self.checkpoint)
        self._transforms: dict[str, object] = {}

    def identity(self, dim: int) -> ModelIdentity:
        """The identity of this model's features of `dim` dimensions."""
        test = self.cfg.TEST
        return ModelIdentity(
            model_name=self.cfg.MODEL.NAME,
            dim=int(dim),
            normalized=test.FEAT_NORM == "yes",
            dist_metric=test.DIST_METRIC,
            neck_feat=test.NECK_FEAT,
            flip=test.FLIP == "yes",
            checkpoint=str(self.checkpoint),
            checkpoint_sha256=self.checkpoint_sha256,
        )

    def transform(self, protocol: str | None = None):
        """The test transform of `protocol` (see embedding_protocol), built once."""
        protocol = embedding_protocol(self.cfg, protocol)
        if protocol not in self._transforms:
            self._transforms[protocol] = build_transforms(self.cfg, is_train=False, protocol=protocol)
        return self._transforms[protocol]

    def embed_paths(
        self,
        paths: Sequence[str],
        batch_size: int = 64,
        device: str | torch.device | None = None,
        workers: int = 0,
        protocol: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, list[str], list[tuple[str, str]]]:
        """(features float32 (N, D), NAMA offsets (N,) or None, the N paths embedded, [(skipped path, reason)]).

        `device`: default MODEL.DEVICE; `workers`: DataLoader processes reading the images; `protocol`: whose test
        transform (default: see embedding_protocol). A progress bar shows on a terminal only."""
        feats, uncertainty, rows, skipped = self._embed_rows(
            [str(p) for p in paths], batch_size, device, workers, protocol
        )
        return feats, uncertainty, [str(paths[i]) for i in rows], skipped

    def _embed_rows(
        self, paths: list[str], batch_size: int, device, workers: int, protocol: str | None
    ) -> tuple[np.ndarray, np.ndarray | None, list[int], list[tuple[str, str]]]:
        """embed_paths with the positions in `paths` of the embedded images instead of their paths."""
        if not paths:
            raise UserError("no images to embed")
        if batch_size < 1 or workers < 0:
            raise UserError(f"batch size {batch_size} and workers {workers}; expected a batch size >= 1, workers >= 0")
        device = resolve_device(self.cfg.MODEL.DEVICE) if device is None else torch.device(device)
        precision = resolve_precision(self.cfg.SOLVER.AMP, device)
        loader = DataLoader(
            _PathImages(paths, self.transform(protocol)),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
        )
        module = self.module.to(device).eval()
        feats, offsets, kept, skipped = [], [], [], []
        bar = tqdm(loader, desc="embedding", unit="batch", disable=not sys.stderr.isatty(), file=sys.stderr)
        with torch.no_grad():
            for batch in bar:
                skipped.extend((paths[i], reason) for i, reason in batch["errors"])
                if batch["image"] is None:
                    continue
                with precision.autocast():
                    out = module(batch["image"].to(device, non_blocking=True))
                batch_feats, batch_uc = out if isinstance(out, tuple) else (out, None)
                feats.append(batch_feats.float().cpu().numpy())
                if batch_uc is not None:
                    offsets.append(batch_uc.float().reshape(-1).cpu().numpy())
                kept.extend(batch["index"])
        if skipped:
            first_path, first_reason = skipped[0]
            logger.warning(
                "skipped %d unreadable image(s) of %d (listed with their reasons in the output); first: %s: %s",
                len(skipped),
                len(paths),
                first_path,
                first_reason,
            )
        if not kept:
            raise UserError(f"none of the {len(paths)} images could be read (first: {skipped[0][0]}: {skipped[0][1]})")
        uncertainty = np.concatenate(offsets).astype(np.float32) if offsets else None
        return np.concatenate(feats).astype(np.float32, copy=False), uncertainty, kept, skipped

    def embed(
        self,
        images: Sequence[str] | ImageSource,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        workers: int = 0,
    ) -> Embeddings:
        """Embeddings of image paths or of an ImageSource (whose labels, cameras and protocol come along)."""
        source = images if isinstance(images, ImageSource) else ImageSource("paths", [str(p) for p in images])
        feats, uncertainty, rows, skipped = self._embed_rows(
            [str(p) for p in source.paths], batch_size, device, workers, source.protocol
        )
        labels = None if source.labels is None else np.asarray(source.labels, dtype=np.int64)[rows]
        camids = None if source.camids is None else np.asarray(source.camids, dtype=np.int64)[rows]
        return Embeddings(
            features=feats,
            paths=[str(source.paths[i]) for i in rows],
            identity=self.identity(feats.shape[1]),
            uncertainty=uncertainty,
            labels=labels,
            camids=camids,
            label_names=source.label_names,
            skipped=skipped,
        )


def load_embedder(config_file: str | Path | None, weight: str | Path, opts: Sequence[str] = ()) -> ImageEmbedder:
    """The ImageEmbedder of a config file (plus KEY VALUE `opts`) with the weights of `weight` (a .pt, a run folder)."""
    cfg = load_config(str(config_file) if config_file else None, [*opts, "TEST.WEIGHT", str(weight)])
    return ImageEmbedder(cfg)


def save_features(npz_path: str | Path, embeddings: Embeddings) -> Path:
    """Write `embeddings` as a features file (see the module docstring), atomically."""
    arrays = {
        "format": np.asarray(FEATURES_FORMAT),
        "features": np.ascontiguousarray(embeddings.features, dtype=np.float32),
        "paths": np.asarray(embeddings.paths, dtype=str),
        "skipped_paths": np.asarray([path for path, _ in embeddings.skipped], dtype=str),
        "skipped_reasons": np.asarray([reason for _, reason in embeddings.skipped], dtype=str),
        "model": np.asarray(json.dumps(embeddings.identity.as_dict())),
    }
    for name in ("uncertainty", "labels", "camids"):
        value = getattr(embeddings, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    if embeddings.label_names is not None:
        arrays["label_names"] = np.asarray(embeddings.label_names, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    npz_path = Path(npz_path)
    atomic_write(npz_path, lambda handle: handle.write(buffer.getvalue()))
    return npz_path


def load_features(npz_path: str | Path) -> Embeddings:
    """A features file written by save_features, or a one-line UserError naming what is wrong with it."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise UserError(f"features file {npz_path} does not exist")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            content = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read features file {npz_path}: {err}") from None
    missing = [name for name in ("format", "features", "paths", "model") if name not in content]
    if missing or int(content.get("format", -1)) != FEATURES_FORMAT:
        what = f"lacks {', '.join(missing)}" if missing else f"has format {int(content['format'])}"
        raise UserError(f"{npz_path} {what}; expected a features file of tools/embed.py (format {FEATURES_FORMAT})")
    try:
        identity = ModelIdentity.from_dict(json.loads(str(content["model"])))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{npz_path}: its model identity does not read ({err!r}); write it again with tools/embed.py"
        ) from None
    features = content["features"]
    if features.ndim != 2 or len(features) != len(content["paths"]) or features.shape[1] != identity.dim:
        raise UserError(
            f"{npz_path}: features of shape {features.shape} for {len(content['paths'])} paths and {identity.dim} "
            "dimensions; the file is damaged, write it again with tools/embed.py"
        )
    optional = {name: content.get(name) for name in ("uncertainty", "labels", "camids")}
    label_names = content.get("label_names")
    skipped_paths, skipped_reasons = (content.get(name, np.asarray([], dtype=str)) for name in SKIPPED_KEYS)
    return Embeddings(
        features=features.astype(np.float32, copy=False),
        paths=content["paths"].tolist(),
        identity=identity,
        label_names=None if label_names is None else label_names.tolist(),
        skipped=list(zip(skipped_paths.tolist(), skipped_reasons.tolist())),
        **optional,
    )
