"""tools/export.py and engine/inference/onnx_export.py: ONNX parity with PyTorch (ResNet and BN-Inception, with and without
BNNeck, NAMA's uncertainty output, TEST.FLIP), the dynamic batch axis, the metadata round trip (Caffe BGR for
bn_inception) and the preprocessing it describes, the TorchScript fallback, and the user errors in one line.

One tiny run is trained for the checkpoint of the ResNet case; the other cases save a model's state in the
checkpoint format (with its checksum) after one forward pass in training mode has given their BatchNorms
non-trivial statistics. Each case is exported once per module."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from config import UserError, load_config
from data.transforms import CAFFE_BGR_MEAN, build_transforms
from engine.inference.export_metadata import (
    DATASET_PROTOCOLS,
    evaluation_pipeline,
    faiss_metric,
    input_convention,
    normalise_pixels,
    preprocess,
    read_export_metadata,
)
from engine.inference.onnx_export import ExportCheckError, default_output, export_model
from modeling import build_model
from modeling.state_checksum import with_checksum
from modeling.test_time import build_test_time_embedder
from modeling.weights import WeightsMismatchError

onnx = pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")
onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="the export extra: pip install -e '.[export]'")

ROOT = Path(__file__).resolve().parents[1]

# case -> KEY VALUE pairs, each with a checkpoint of saved_checkpoint; the trained run (resnet18 + BNNeck, exported
# with TEST.FLIP yes) is the fourth case
NAMA = {"MODEL.ARCH": "uc-bn-no", "MODEL.METRIC_LOSS_TYPE": "uc-tri-n", "MODEL.NECK": "no", "MODEL.F_BASE": "nn_128"}
CASES = {
    "resnet_nama": {"MODEL.NAME": "resnet18", **NAMA, "INPUT.SIZE_TEST": "[64, 32]", "TEST.NORM_K": "0.5"},
    "bninception_bnneck": {
        "MODEL.NAME": "bn_inception",
        "MODEL.NECK": "bnneck",
        "INPUT.SIZE_TEST": "[64, 32]",
        "TEST.NECK_FEAT": "before",
        "TEST.DIST_METRIC": "cosine",
    },
    "bninception_retrieval": {
        "MODEL.NAME": "bn_inception",
        "MODEL.NECK": "no",
        "MODEL.EMBEDDING_DIM": "32",
        "MODEL.POOLING": "avg+max",
        "DATASETS.NAMES": "cub",
        "INPUT.SIZE_TEST": "[64, 48]",
        "INPUT.RESIZE_TEST": "72",
    },
}


def case_config(name: str, weight: Path | str = "", **extra: str):
    pairs = {"MODEL.PRETRAIN_CHOICE": "none", **CASES[name], "TEST.WEIGHT": str(weight), **extra}
    return load_config(None, [x for pair in pairs.items() for x in pair])


def random_images(cfg, n: int, seed: int | None = None) -> torch.Tensor:
    """`n` images of uniform random pixels, normalised as MODEL.NAME expects (Caffe BGR 0-255 for bn_inception)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    pixels = torch.rand(n, 3, *cfg.INPUT.SIZE_TEST, generator=generator)
    return normalise_pixels(pixels, input_convention(cfg))


def saved_checkpoint(cfg, path: Path) -> Path:
    """A model of `cfg` in the format of best.pt (model state, epoch, metrics, checksum), its BatchNorm statistics
    and NAMA's offsets set by one forward pass in training mode on random images."""
    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained=False)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in batchnorms:
        bn.momentum = 1.0  # the running statistics become this batch's
    if model.uc_head is not None:
        model.uc_head.weight.data.normal_(0.0, 0.5)  # offsets well away from 0
        model.uc_head.ema_rate = 1.0
    with torch.no_grad():
        model.train()(random_images(cfg, 8))
        if model.uc_head is not None:  # standardise the norms of other images in eval mode: offsets that vary
            norms = model.eval()(random_images(cfg, 16))["uc_norm"]
            model.uc_head.standardise.running_mean.fill_(norms.mean().item())
            model.uc_head.standardise.running_var.fill_(norms.var().item())
    for bn in batchnorms:
        # channels nearly constant over 8 random images would scale fp32 rounding up far beyond a trained model's
        bn.running_var.clamp_(min=0.05)
    torch.save(with_checksum({"model": model.state_dict(), "epoch": 1, "metrics": {}}), path)
    return path


def run_onnx(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images.numpy()})))


def load_tool():
    """tools/export.py as a module, to call its main(argv) in this process."""
    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: on a shared 2-core machine a second OpenMP thread waiting for a busy core makes every
    forward pass of these tiny models up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_run(tiny_opts, market_root, tmp_path_factory):
    """A resnet18 + BNNeck run of one epoch on 64x32 images: its folder holds config.yaml and best.pt."""
    from engine.training import train

    out = tmp_path_factory.mktemp("export_run") / "run"
    sizes = {"INPUT.SIZE_TRAIN": "[64, 32]", "INPUT.SIZE_TEST": "[64, 32]"}
    train(load_config(None, tiny_opts(market_root, out, **{"SOLVER.MAX_EPOCHS": "1", **sizes})))
    assert (out / "best.pt").is_file()
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (cfg, ExportResult), each case exported on first use."""
    folder = tmp_path_factory.mktemp("exports")
    done = {}

    def get(name: str):
        if name not in done:
            checkpoint = saved_checkpoint(case_config(name), folder / f"{name}.pt")
            cfg = case_config(name, checkpoint)
            done[name] = (cfg, export_model(cfg, output=folder / f"{name}.onnx"))
        return done[name]

    return get


# ---------------------------------------------------------------------------------------------------------
# Parity, dynamic batch, metadata
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_cli_exports_a_trained_run_next_to_it(trained_run, market_root, caplog):
    query = market_root / "market1501" / "query"
    argv = ["--config_file", str(trained_run / "config.yaml"), "TEST.WEIGHT", str(trained_run), "TEST.FLIP", "yes"]
    with caplog.at_level("INFO", logger="engine.inference.onnx_export"):
        assert load_tool().main([*argv, "--check-images", str(query)]) == 0
    logged = caplog.text
    assert "torch.onnx.export(dynamo=True)" in logged and f"5 images of {query}" in logged
    path = trained_run / "model.onnx"  # the default output: the run folder
    meta = read_export_metadata(path)
    assert meta["exporter"] == "dynamo" and meta["flip"] is True and meta["outputs"] == ["embeddings"]
    assert meta["checkpoint"] == str((trained_run / "best.pt").resolve())
    assert meta["checkpoint_sha256"] == hashlib.sha256((trained_run / "best.pt").read_bytes()).hexdigest()
    cfg = load_config(trained_run / "config.yaml", ["TEST.WEIGHT", str(trained_run), "TEST.FLIP", "yes"])
    embedder = build_test_time_embedder(cfg)
    images = torch.stack([build_transforms(cfg, False)(Image.open(p).convert("RGB")) for p in sorted(query.iterdir())])
    with torch.no_grad():
        expected = embedder(images)
    got = run_onnx(path, images)["embeddings"]
    assert got.shape == (5, 512) and np.abs(got - expected.numpy()).max() < 1e-4


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(CASES))
def test_onnx_matches_pytorch_on_other_batch_sizes(exported, name):
    cfg, result = exported(name)
    assert result.exporter == "dynamo" and set(result.differences) == set(read_export_metadata(result.path)["outputs"])
    assert all(value < 1e-4 for value in result.differences.values())
    embedder = build_test_time_embedder(cfg)  # built again, from the checkpoint file
    graph = onnx.load(str(result.path)).graph
    batch_dims = [v.type.tensor_type.shape.dim[0] for v in [*graph.input, *graph.output]]
    assert all(d.dim_param and not d.dim_value for d in batch_dims)  # a named, dynamic batch axis everywhere
    for n in (2, 7):
        images = random_images(cfg, n, seed=n)  # the distribution saved_checkpoint's statistics were taken on
        with torch.no_grad():
            expected = embedder(images)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = run_onnx(result.path, images)
        assert list(got) == (["embeddings", "uncertainty"] if embedder.has_uc else ["embeddings"])
        assert got["embeddings"].shape == (n, embedder.model.feat_dim)
        for ours, theirs in zip(expected, got.values()):
            assert theirs.shape == tuple(ours.shape)
            np.testing.assert_allclose(theirs, ours.numpy(), rtol=0, atol=1e-4)
        if embedder.has_uc:
            assert got["uncertainty"].shape == (n,) and np.ptp(got["uncertainty"]) > 1e-3  # offsets that vary


@pytest.mark.e2e
def test_metadata_round_trip(exported):
    cfg, result = exported("bninception_bnneck")
    meta = read_export_metadata(result.path)
    assert meta["format_version"] == 1 and meta["model_name"] == "bn_inception" and meta["input_name"] == "images"
    assert (meta["input_height"], meta["input_width"]) == (64, 32)
    assert (meta["channel_order"], meta["pixel_scale"]) == ("BGR", "0-255")  # the Caffe convention
    assert meta["mean"] == list(CAFFE_BGR_MEAN) and meta["std"] == [1.0, 1.0, 1.0]
    assert (meta["resize"], meta["resize_shorter_side"], meta["test_dataset"]) == ("resize", 0, "market1501")
    assert meta["embedding_dim"] == 1024 and meta["normalized"] is True and meta["neck_feat"] == "before"
    assert (meta["distance"], meta["faiss_metric"], meta["faiss_normalize"]) == (
        "cosine",
        "METRIC_INNER_PRODUCT",
        False,
    )
    assert meta["has_uncertainty"] is False and meta["outputs"] == ["embeddings"]
    checkpoint = Path(cfg.TEST.WEIGHT)
    assert meta["checkpoint"] == str(checkpoint.resolve())
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert yaml.safe_load(meta["config_yaml"]) == yaml.safe_load(cfg.dump())
    assert "channels reversed to BGR -> x 255 -> (x - mean) / std" in meta["preprocessing"]
    assert result.metadata["normalized"] == "true" and result.metadata["mean"] == "[104.0, 117.0, 128.0]"  # as stored

    resnet = read_export_metadata(exported("resnet_nama")[1].path)
    assert (resnet["channel_order"], resnet["pixel_scale"]) == ("RGB", "0-1")
    assert resnet["mean"] == pytest.approx([0.485, 0.456, 0.406]) and resnet["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    assert resnet["has_uncertainty"] is True and resnet["outputs"] == ["embeddings", "uncertainty"]
    assert resnet["norm_k"] == 0.5 and resnet["normalized"] is True
    assert (resnet["distance"], resnet["faiss_metric"], resnet["faiss_normalize"]) == (
        "euclidean",
        "METRIC_INNER_PRODUCT",
        False,
    )

    retrieval = read_export_metadata(exported("bninception_retrieval")[1].path)
    assert (retrieval["resize"], retrieval["resize_shorter_side"]) == ("shorter_side_center_crop", 72)
    assert (retrieval["input_height"], retrieval["input_width"], retrieval["embedding_dim"]) == (64, 48, 32)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["resnet_nama", "bninception_retrieval", "bninception_bnneck"])
def test_metadata_preprocessing_is_the_test_transform(exported, name):
    cfg, result = exported(name)
    meta = read_export_metadata(result.path)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(90, 57, 3), dtype=np.uint8), "RGB")
    pipeline, _ = evaluation_pipeline(cfg)
    expected = build_transforms(cfg, is_train=False, protocol=pipeline)(image)
    torch.testing.assert_close(preprocess(image, meta), expected, rtol=0, atol=1e-4)


def test_reader_refuses_missing_foreign_and_newer_files(tmp_path):
    with pytest.raises(UserError, match="nope.onnx does not exist"):
        read_export_metadata(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="cannot read the ONNX model .*junk.onnx"):
        read_export_metadata(tmp_path / "junk.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [x],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(UserError, match="holds no export metadata"):
        read_export_metadata(tmp_path / "foreign.onnx")
    onnx.helper.set_model_props(model, {"format_version": "99"})
    onnx.save(model, tmp_path / "newer.onnx")
    with pytest.raises(UserError, match="metadata version 99; this code reads up to 1"):
        read_export_metadata(tmp_path / "newer.onnx")


def test_faiss_metric_follows_normalisation_and_distance():
    assert faiss_metric(True, "euclidean") == ("METRIC_INNER_PRODUCT", False)
    assert faiss_metric(True, "cosine") == ("METRIC_INNER_PRODUCT", False)
    assert faiss_metric(False, "euclidean") == ("METRIC_L2", False)
    assert faiss_metric(False, "cosine") == ("METRIC_INNER_PRODUCT", True)


def test_protocol_table_matches_the_loaders(market_root, make_cub_tree, make_split_folders, tmp_path):
    from data.datasets import load_named_dataset

    make_cub_tree(tmp_path)
    for name, root in (("market1501", market_root), ("cub", tmp_path)):
        cfg = load_config(None, ["DATASETS.NAMES", name, "DATASETS.ROOT_DIR", str(root)])
        assert load_named_dataset(cfg, name).protocol == DATASET_PROTOCOLS[name] == evaluation_pipeline(cfg)[0]
    make_split_folders(tmp_path / "user")  # a folder dataset is read to know its protocol
    cfg = load_config(None, ["DATASETS.NAMES", "folder", "DATASETS.ROOT_DIR", str(tmp_path / "user")])
    assert evaluation_pipeline(cfg) == ("reid", "folder")
    cfg = load_config(None, ["DATASETS.NAMES", "folder", "DATASETS.ROOT_DIR", str(tmp_path / "none")])
    with pytest.raises(UserError, match="INPUT.TRANSFORM"):
        evaluation_pipeline(cfg)
    explicit = load_config(None, ["DATASETS.NAMES", "cub", "INPUT.TRANSFORM", "reid"])
    assert evaluation_pipeline(explicit) == ("reid", "")


@pytest.mark.e2e
def test_fallback_to_the_torchscript_exporter_is_logged(exported, tmp_path, monkeypatch, caplog):
    original = torch.onnx.export

    def dynamo_fails(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("unsupported operator in this test")
        return original(*args, **kwargs)

    checkpoint = exported("resnet_nama")[0].TEST.WEIGHT
    cfg = case_config("resnet_nama", checkpoint, **{"TEST.FEAT_NORM": "no", "TEST.DIST_METRIC": "cosine"})
    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    with caplog.at_level("INFO", logger="engine.inference.onnx_export"):
        result = export_model(cfg, output=tmp_path / "ts.onnx")
    meta = read_export_metadata(result.path)
    assert result.exporter == meta["exporter"] == "torchscript"
    assert (meta["normalized"], meta["faiss_metric"], meta["faiss_normalize"]) == (False, "METRIC_INNER_PRODUCT", True)
    assert "unsupported operator in this test" in caplog.text and "dynamo=False" in caplog.text
    assert all(value < 1e-4 for value in result.differences.values())
    images = random_images(cfg, 5, seed=5)  # a batch size the export did not see: the batch axis is dynamic there too
    with torch.no_grad():
        embeddings, offsets = build_test_time_embedder(cfg)(images)
    got = run_onnx(result.path, images)
    np.testing.assert_allclose(got["embeddings"], embeddings.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["uncertainty"], offsets.numpy(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# User errors: one line, nothing written
# ---------------------------------------------------------------------------------------------------------


def test_missing_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    with pytest.raises(UserError, match=r"missing: onnxscript\. Install them with: pip install -e '\.\[export\]'"):
        export_model(case_config("resnet_nama", tmp_path / "ck.pt"))


def test_weight_errors(tmp_path):
    with pytest.raises(UserError, match="TEST.WEIGHT is empty"):
        export_model(case_config("resnet_nama"))
    with pytest.raises(UserError, match=r"TEST.WEIGHT .*nope.pt does not exist"):
        export_model(case_config("resnet_nama", tmp_path / "nope.pt"))
    checkpoint = saved_checkpoint(case_config("resnet_nama"), tmp_path / "nama.pt")
    with pytest.raises(WeightsMismatchError, match="uncertainty head.*MODEL.F_BASE"):
        export_model(case_config("resnet_nama", checkpoint, **{"MODEL.F_BASE": "nn_64"}))
    assert not list(tmp_path.glob("*.onnx"))


def test_unwritable_output_bad_format_and_image_folder_fail_before_exporting(tmp_path, monkeypatch):
    import engine.inference.onnx_export as export_module

    monkeypatch.setattr(export_module, "export_onnx", lambda *a: pytest.fail("exported despite the error"))
    cfg = case_config("resnet_nama", saved_checkpoint(case_config("resnet_nama"), tmp_path / "ck.pt"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=f"cannot write the export {blocker / 'model.onnx'}: {blocker} is a file"):
        export_model(cfg, output=blocker / "model.onnx")
    with pytest.raises(UserError, match="--format 'tflite' is not supported; expected one of: 'onnx'"):
        export_model(cfg, fmt="tflite")
    with pytest.raises(UserError, match="--check-images .*nowhere is not a folder"):
        export_model(cfg, output=tmp_path / "out.onnx", check_images=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--check-images .*empty holds no images"):
        export_model(cfg, output=tmp_path / "out.onnx", check_images=tmp_path / "empty")
    assert default_output(tmp_path / "ck.pt") == tmp_path / "model.onnx" == default_output(tmp_path)


@pytest.mark.e2e
def test_a_model_that_differs_from_pytorch_is_refused_and_not_written(exported, tmp_path, monkeypatch):
    import engine.inference.onnx_export as export_module

    cfg, other = exported("resnet_nama")
    # the same model with other offsets: the exported file of "resnet_nama" is a wrong export of this checkpoint
    state = torch.load(cfg.TEST.WEIGHT, weights_only=True)
    state["model"]["uc_head.weight"] = state["model"]["uc_head.weight"] * 3
    checkpoint = tmp_path / "ck.pt"
    torch.save(with_checksum(state), checkpoint)
    monkeypatch.setattr(export_module, "export_onnx", lambda *a: (onnx.load(str(other.path)), "dynamo"))
    output = tmp_path / "refused.onnx"
    with pytest.raises(ExportCheckError, match=r"differs from PyTorch .*uncertainty .* > tolerance 1e-04"):
        export_model(case_config("resnet_nama", checkpoint), output=output)
    assert not output.exists() and not list(tmp_path.glob(".refused*"))


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["TEST.WEIGHT", str(tmp_path / "nope.pt"), "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown option --bogus") and err.count("\n") == 1
    assert tool.main(["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_CHOICE", "none", "TEST.WEIGHT", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder without best.pt" in err and err.count("\n") == 1
    proc = subprocess.run(
        [sys.executable, "tools/export.py", "TEST.WEIGHT", str(tmp_path / "ck.pt"), "--format", "tflite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == "error: --format 'tflite' is not supported; expected one of: 'onnx'\n"
