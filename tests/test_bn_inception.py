"""BN-Inception backbone: the published file's exact keys, the Caffe wiring, strict ImageNet loading, the input convention.

References, independent of modeling/backbones/bn_inception.py:
- tests/data/bn_inception_keys.json: names and shapes of the 416 tensors of bn_inception-52deb4733.pth, the
  Caffe-converted ImageNet BN-Inception of the DML papers (data the project was given);
- `reference_forward` below: the Caffe model's forward written out from those names alone (which branch feeds
  which, concatenation order 1x1 / 3x3 / double 3x3 / pool, strided reduction blocks 3c and 4e, avg pool
  projection in 3a-5a and max in 5b, ceil-mode pools, eval-mode BatchNorm) with torch.nn.functional ops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image

from config.errors import UserError
from config.loading import load_config
from data.transforms import CaffeBGRNormalize, build_transforms
from modeling import build_model
from modeling.backbones import BACKBONES, input_convention
from modeling.backbones.bn_inception import BNInception
from modeling.weights import WeightsMismatchError

ROOT = Path(__file__).resolve().parents[1]
KEYS_FILE = Path(__file__).resolve().parent / "data" / "bn_inception_keys.json"
BLOCK_NAMES = ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b")


def published_keys() -> list[tuple[str, tuple[int, ...]]]:
    content = json.loads(KEYS_FILE.read_text())
    keys = [(name, tuple(shape)) for name, shape in content["keys"]]
    assert len(keys) == content["num_tensors"] == 416
    return keys


def _cfg(*opts):
    return load_config(None, ["MODEL.NAME", "bn_inception", *opts])


@pytest.fixture(scope="module")
def net() -> BNInception:
    torch.manual_seed(0)
    return BNInception()


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory) -> tuple[Path, dict]:
    """Random tensors with the published names and shapes, saved as the real file is (a plain dict)."""
    gen = torch.Generator().manual_seed(7)
    state = {name: torch.rand(shape, generator=gen) + 0.1 for name, shape in published_keys()}
    path = tmp_path_factory.mktemp("weights") / "bn_inception-52deb4733.pth"
    torch.save(state, path)
    return path, state


# ------------------------------------------------------------------------------------------------
# Architecture
# ------------------------------------------------------------------------------------------------
def test_state_dict_has_exactly_the_published_names_and_shapes(net):
    state = net.state_dict()
    ours = [(k, tuple(v.shape)) for k, v in state.items() if not k.endswith(".num_batches_tracked")]
    assert ours == published_keys()  # same names, shapes and order
    tracked = [k for k in state if k.endswith(".num_batches_tracked")]
    bn_names = {k.rsplit(".", 1)[0] for k, _ in published_keys() if k.endswith(".running_mean")}
    assert {k.rsplit(".", 1)[0] for k in tracked} == bn_names and len(tracked) == 69


def test_attributes_and_layer_settings(net):
    assert net.out_channels == 1024
    assert net.weights_file == "bn_inception-52deb4733.pth"
    assert net.input_convention == "bgr255"
    assert tuple(net.last_linear.weight.shape) == (1000, 1024)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 69 and all(m.eps == 1e-5 and m.momentum == 0.1 and m.affine for m in bns)
    pools = [m for m in net.modules() if isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))]
    assert len(pools) == 2 + len(BLOCK_NAMES) and all(m.ceil_mode for m in pools)
    assert isinstance(net.inception_3a_pool, torch.nn.AvgPool2d) and isinstance(
        net.inception_5a_pool, torch.nn.AvgPool2d
    )
    assert isinstance(net.inception_5b_pool, torch.nn.MaxPool2d) and net.inception_5b_pool.stride == 1
    assert isinstance(net.inception_3c_pool, torch.nn.MaxPool2d) and net.inception_3c_pool.stride == 2


def test_forward_224_gives_the_1024x7x7_map_not_logits(net):
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1024, 7, 7)
    assert out.min() >= 0  # a ReLU map, not the classifier's logits


@pytest.mark.parametrize("size,expected", [((64, 32), (2, 1)), ((100, 50), (3, 2))])
def test_forward_shapes_small_and_odd_sizes(net, size, expected):
    # 100x50 reaches block 4e with an odd width (3): the conv and pool branches must still agree.
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 1024, *expected) and torch.isfinite(out).all()


def _conv_bn_relu(state: dict, name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    weight = state[f"{name}.weight"]
    x = F.conv2d(x, weight, state[f"{name}.bias"], stride=stride, padding=weight.shape[-1] // 2)
    bn = f"{name}_bn"
    x = F.batch_norm(
        x,
        state[f"{bn}.running_mean"],
        state[f"{bn}.running_var"],
        state[f"{bn}.weight"],
        state[f"{bn}.bias"],
        training=False,
        eps=1e-5,
    )
    return F.relu(x)


def reference_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The Caffe BN-Inception (eval mode) from the published tensor names, for sides where Caffe's shapes agree."""
    x = _conv_bn_relu(state, "conv1_7x7_s2", x, stride=2)
    x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
    x = _conv_bn_relu(state, "conv2_3x3", _conv_bn_relu(state, "conv2_3x3_reduce", x))
    x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
    for block in BLOCK_NAMES:
        p = f"inception_{block}"
        reduction = f"{p}_1x1.weight" not in state
        stride = 2 if reduction else 1
        outs = [] if reduction else [_conv_bn_relu(state, f"{p}_1x1", x)]
        outs.append(_conv_bn_relu(state, f"{p}_3x3", _conv_bn_relu(state, f"{p}_3x3_reduce", x), stride))
        d = _conv_bn_relu(state, f"{p}_double_3x3_1", _conv_bn_relu(state, f"{p}_double_3x3_reduce", x))
        outs.append(_conv_bn_relu(state, f"{p}_double_3x3_2", d, stride))
        if reduction:
            outs.append(F.max_pool2d(x, 3, stride=2, ceil_mode=True))
        elif block == "5b":
            outs.append(_conv_bn_relu(state, f"{p}_pool_proj", F.max_pool2d(x, 3, 1, 1, ceil_mode=True)))
        else:
            pooled = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
            outs.append(_conv_bn_relu(state, f"{p}_pool_proj", pooled))
        x = torch.cat(outs, 1)
    return x


def test_forward_matches_the_caffe_wiring_reference(net):
    torch.manual_seed(3)
    model = BNInception().eval()
    with torch.no_grad():
        # non-trivial BatchNorm statistics and affine terms, so that a swapped BN or branch shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.8, 1.5)
                module.bias.uniform_(-0.1, 0.3)
        x = torch.randn(2, 3, 64, 32)
        expected = reference_forward(model.state_dict(), x)
        got = model(x)
    assert got.shape == (2, 1024, 2, 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_registry_and_embedder_last_stride_ignored():
    assert "bn_inception" in BACKBONES and input_convention("bn_inception") == "bgr255"
    assert input_convention("resnet50") == "rgb"
    x = torch.randn(2, 3, 64, 32)
    feats = []
    for stride in ("1", "2"):
        torch.manual_seed(0)
        model = build_model(_cfg("MODEL.PRETRAIN_CHOICE", "none", "MODEL.LAST_STRIDE", stride)).eval()
        assert model.feat_dim == 1024
        with torch.no_grad():
            feats.append(model(x)["feat"])
    assert feats[0].shape == (2, 1024)
    assert torch.equal(feats[0], feats[1])  # same seed, same network: the stride key changed nothing


# ------------------------------------------------------------------------------------------------
# ImageNet weights
# ------------------------------------------------------------------------------------------------
def test_synthetic_file_loads_strictly_through_build_model(synthetic_file):
    path, state = synthetic_file
    cfg = _cfg("MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path))
    model = build_model(cfg)
    loaded = model.backbone.state_dict()
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name
    assert {k for k in loaded if k not in state} == {k for k in loaded if k.endswith(".num_batches_tracked")}
    assert torch.equal(model.backbone.last_linear.weight, state["last_linear.weight"])  # held, loaded, not dropped


def test_hub_cache_name_and_missing_path_message(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(UserError) as excinfo:
            build_model(_cfg("MODEL.PRETRAIN_CHOICE", "imagenet"))
    finally:
        torch.hub.set_dir(old)
    assert "bn_inception-52deb4733.pth" in str(excinfo.value) and str(tmp_path / "hub") in str(excinfo.value)


def _broken_file(state: dict, path: Path) -> Path:
    broken = dict(state)
    del broken["inception_4b_double_3x3_1.bias"]
    broken["inception_9z_1x1.weight"] = torch.zeros(3)
    broken["inception_4c_3x3.weight"] = torch.zeros(160, 128, 1, 1)
    torch.save(broken, path)
    return path


def _assert_names_the_three(message: str) -> None:
    assert "missing: inception_4b_double_3x3_1.bias" in message
    assert "unexpected: inception_9z_1x1.weight" in message
    assert "wrong shape: inception_4c_3x3.weight (160, 128, 1, 1) vs (160, 128, 3, 3) expected" in message


def test_mismatching_file_raises_one_error_naming_each_misfit(synthetic_file, tmp_path):
    path = _broken_file(synthetic_file[1], tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError) as excinfo:
        build_model(_cfg("MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path)))
    _assert_names_the_three(str(excinfo.value))
    assert str(path) in str(excinfo.value)


def test_resnet_file_in_torchvision_format(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    # files written before num_batches_tracked existed load as well (the module keeps its own counters)
    old_style = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    torch.save(old_style, tmp_path / "old.pth")
    model = build_model(
        load_config(
            None,
            [
                "MODEL.NAME",
                "resnet18",
                "MODEL.PRETRAIN_CHOICE",
                "imagenet",
                "MODEL.PRETRAIN_PATH",
                str(tmp_path / "old.pth"),
            ],
        )
    )
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert not any(k.startswith("fc.") for k in model.backbone.state_dict())  # fc.* dropped from the file
    broken = dict(state)
    broken["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    del broken["layer2.1.bn1.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError) as excinfo:
        build_model(
            load_config(
                None,
                [
                    "MODEL.NAME",
                    "resnet18",
                    "MODEL.PRETRAIN_CHOICE",
                    "imagenet",
                    "MODEL.PRETRAIN_PATH",
                    str(tmp_path / "broken.pth"),
                ],
            )
        )
    message = str(excinfo.value)
    assert "missing: layer2.1.bn1.bias" in message
    assert "wrong shape: layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3) expected" in message


def test_cli_exits_2_with_one_line_for_a_mismatching_file(synthetic_file, tmp_path, make_market_tree):
    make_market_tree(tmp_path / "data", train_ids=4, test_ids=3, images_per_id=2, cameras=2, size=(32, 16))
    bn_file = _broken_file(synthetic_file[1], tmp_path / "broken.pth")
    resnet_state = torchvision.models.resnet18(weights=None).state_dict()
    resnet_state["layer3.0.bn2.running_mean"] = torch.zeros(5)
    torch.save(resnet_state, tmp_path / "resnet_broken.pth")
    runs = {"bn_inception": bn_file, "resnet18": tmp_path / "resnet_broken.pth"}
    procs = {}
    for name, path in runs.items():  # both at once: each is mostly the interpreter's start-up
        opts = [
            "MODEL.NAME",
            name,
            "MODEL.PRETRAIN_CHOICE",
            "imagenet",
            "MODEL.PRETRAIN_PATH",
            str(path),
            "DATASETS.ROOT_DIR",
            str(tmp_path / "data"),
            "INPUT.SIZE_TRAIN",
            "[32, 16]",
            "INPUT.SIZE_TEST",
            "[32, 16]",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path / name),
        ]
        procs[name] = subprocess.Popen(
            [sys.executable, "train.py", *opts], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr
        assert stderr.startswith("error: MODEL.PRETRAIN_PATH") and str(runs[name]) in stderr
        if name == "bn_inception":
            _assert_names_the_three(stderr)
        else:
            assert "layer3.0.bn2.running_mean (5,) vs (256,) expected" in stderr


# ------------------------------------------------------------------------------------------------
# Input convention
# ------------------------------------------------------------------------------------------------
RGB = (10, 200, 50)
EXPECTED_BGR = (50 - 104, 200 - 117, 10 - 128)  # B, G, R on 0-255 minus the Caffe mean


def _solid(colour, size=(40, 24)) -> Image.Image:
    return Image.new("RGB", (size[1], size[0]), colour)


@pytest.mark.parametrize("transform", ["reid", "retrieval"])
@pytest.mark.parametrize("is_train", [True, False])
def test_known_pixel_goes_to_bgr_255_minus_mean(transform, is_train):
    # PIXEL_MEAN / STD set to odd values: the BN-Inception convention must ignore them
    cfg = _cfg(
        "INPUT.TRANSFORM",
        transform,
        "INPUT.PADDING",
        "0",
        "INPUT.RE_PROB",
        "0",
        "INPUT.SIZE_TRAIN",
        "[32, 16]",
        "INPUT.SIZE_TEST",
        "[32, 16]",
        "INPUT.RESIZE_TEST",
        "36",
        "INPUT.PIXEL_MEAN",
        "[0.1, 0.2, 0.3]",
        "INPUT.PIXEL_STD",
        "[0.5, 0.5, 0.5]",
    )
    out = build_transforms(cfg, is_train=is_train)(_solid(RGB))
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    expected = torch.tensor(EXPECTED_BGR, dtype=torch.float32).view(3, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_resnet_convention_unchanged():
    cfg = load_config(None, ["MODEL.NAME", "resnet18", "INPUT.SIZE_TEST", "[32, 16]"])
    pipeline = build_transforms(cfg, is_train=False)
    assert not any(isinstance(t, CaffeBGRNormalize) for t in pipeline.transforms)
    out = pipeline(_solid(RGB))
    mean, std = torch.tensor(cfg.INPUT.PIXEL_MEAN), torch.tensor(cfg.INPUT.PIXEL_STD)
    expected = (torch.tensor(RGB) / 255.0 - mean) / std
    torch.testing.assert_close(out[:, 0, 0], expected, rtol=0, atol=1e-5)


def test_mean_colour_is_zero_and_random_erasing_fills_the_mean():
    mean_rgb = (128, 117, 104)
    at_mean = CaffeBGRNormalize()(T.functional.to_tensor(_solid(mean_rgb)))
    torch.testing.assert_close(at_mean, torch.zeros_like(at_mean), rtol=0, atol=1e-4)
    cfg = _cfg("INPUT.RE_PROB", "1.0", "INPUT.PADDING", "0", "INPUT.SIZE_TRAIN", "[32, 16]")
    pipeline = build_transforms(cfg, is_train=True)
    erasing = [t for t in pipeline.transforms if isinstance(t, T.RandomErasing)]
    assert len(erasing) == 1 and erasing[0].value == 0
    torch.manual_seed(0)
    out = pipeline(_solid(RGB))
    erased = (out == 0).all(dim=0)
    assert erased.any() and not erased.all()  # the erased patch is exactly the mean (0)
    untouched = out[:, ~erased]
    torch.testing.assert_close(
        untouched, torch.tensor(EXPECTED_BGR, dtype=torch.float32)[:, None].expand_as(untouched), rtol=0, atol=1e-4
    )


def test_real_image_round_trip():
    # a non-constant image: channel order is flipped and the scale is 0-255, pixel by pixel
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    out = CaffeBGRNormalize()(T.functional.to_tensor(Image.fromarray(pixels, "RGB")))
    expected = torch.from_numpy(pixels[..., ::-1].astype(np.float32).copy()).permute(2, 0, 1)
    expected = expected - torch.tensor([104.0, 117.0, 128.0]).view(3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_data_knows_which_backbones_take_the_caffe_input():
    from data.transforms import CAFFE_INPUT_MODELS
    from modeling.backbones import BACKBONES, input_convention

    assert set(CAFFE_INPUT_MODELS) == {name for name in BACKBONES if input_convention(name) == "bgr255"}
