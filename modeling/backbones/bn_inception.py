"""BN-Inception as the deep-metric-learning papers use it: the Caffe-trained ImageNet model, by its own tensor names.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift", ICML 2015. The ImageNet file the DML papers start from (Proxy-NCA, Multi-Similarity, Proxy Anchor, ...)
is `bn_inception-52deb4733.pth`, a conversion of the Caffe model; this module reproduces its parameter names
and shapes exactly (416 tensors; every channel count below was read off that file's key list), so the file
loads with strict key matching. Input convention of those weights: BGR, values 0-255, mean [104, 117, 128],
std 1 (data/transforms.py applies it when MODEL.NAME is bn_inception).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class _Block(NamedTuple):
    """One inception block: output channels of each branch (0 = branch absent).

    `reduce3`/`out3`: 1x1 reduce then 3x3; `reduce_d`/`mid_d`/`out_d`: 1x1 reduce then two 3x3 ("double 3x3");
    `proj`: the 1x1 after the pooling branch (0: the pool output is concatenated as it is).
    `stride` 2 marks the reduction blocks (3c, 4e): no 1x1 branch, strided 3x3s, stride-2 max pool branch.
    """

    name: str
    in_channels: int
    out1: int
    reduce3: int
    out3: int
    reduce_d: int
    mid_d: int
    out_d: int
    pool: str  # "avg" or "max"
    proj: int
    stride: int = 1


# Read off the key list of bn_inception-52deb4733.pth (weights of shape out x in x k x k).
BLOCKS = (
    _Block("inception_3a", 192, 64, 64, 64, 64, 96, 96, "avg", 32),
    _Block("inception_3b", 256, 64, 64, 96, 64, 96, 96, "avg", 64),
    _Block("inception_3c", 320, 0, 128, 160, 64, 96, 96, "max", 0, stride=2),
    _Block("inception_4a", 576, 224, 64, 96, 96, 128, 128, "avg", 128),
    _Block("inception_4b", 576, 192, 96, 128, 96, 128, 128, "avg", 128),
    _Block("inception_4c", 576, 160, 128, 160, 128, 160, 160, "avg", 128),
    _Block("inception_4d", 608, 96, 128, 192, 160, 192, 192, "avg", 128),
    _Block("inception_4e", 608, 0, 128, 192, 192, 256, 256, "max", 0, stride=2),
    _Block("inception_5a", 1056, 352, 192, 320, 160, 224, 224, "avg", 128),
    # The Caffe model max-pools in 5b's pool branch (the paper's table says avg); the weights were trained so.
    _Block("inception_5b", 1024, 352, 192, 320, 192, 224, 224, "max", 128),
)

# eps 1e-5 as in the converted model. The file stores no momentum (it only sets how fast the running statistics
# follow the fine-tuning data); PyTorch's default 0.1 is what PyTorch ports of this model use.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _block_out_channels(block: _Block) -> int:
    pool_channels = block.proj if block.proj else block.in_channels
    return block.out1 + block.out3 + block.out_d + pool_channels


class BNInception(nn.Module):
    """BN-Inception up to inception_5b: images (N, 3, H, W) -> feature map (N, 1024, H/32, W/32), 7x7 at 224.

    Every convolution (with bias, as in the Caffe model) is followed by BatchNorm (eps 1e-5, momentum 0.1) and
    ReLU; modules are named as in the published file (`conv1_7x7_s2`, `conv1_7x7_s2_bn`, ...,
    `inception_5b_pool_proj_bn`), registered in its order. Pools use ceil_mode=True, Caffe's output-size rule.
    The ImageNet classifier `last_linear` (1000 x 1024) is held so that the file loads strictly, but forward()
    never applies it: the embedder pools the feature map itself.

    MODEL.LAST_STRIDE does not apply (the network has no residual stage to un-stride).
    """

    out_channels = 1024
    weights_file = "bn_inception-52deb4733.pth"
    input_convention = "bgr255"
    # load_imagenet_backbone drops these prefixes from an ImageNet file; none here: last_linear is part of the module.
    imagenet_dropped_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._unit("conv1_7x7_s2", 3, 64, kernel=7, stride=2)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._unit("conv2_3x3_reduce", 64, 64, kernel=1)
        self._unit("conv2_3x3", 64, 192, kernel=3)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for block in BLOCKS:
            self._block(block)
        if _block_out_channels(BLOCKS[-1]) != self.out_channels:
            raise AssertionError("BLOCKS do not end with 1024 channels")
        self.last_linear = nn.Linear(self.out_channels, 1000)

    def _unit(self, name: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        """Register conv `name` and its BatchNorm `name_bn` ('same' padding, as every conv of the model)."""
        self.add_module(name, nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM))

    def _block(self, b: _Block) -> None:
        # Registration order = the file's key order: 1x1, 3x3 reduce, 3x3, double reduce, double 1, 2, pool proj.
        if b.out1:
            self._unit(f"{b.name}_1x1", b.in_channels, b.out1, kernel=1)
        self._unit(f"{b.name}_3x3_reduce", b.in_channels, b.reduce3, kernel=1)
        self._unit(f"{b.name}_3x3", b.reduce3, b.out3, kernel=3, stride=b.stride)
        self._unit(f"{b.name}_double_3x3_reduce", b.in_channels, b.reduce_d, kernel=1)
        self._unit(f"{b.name}_double_3x3_1", b.reduce_d, b.mid_d, kernel=3)
        self._unit(f"{b.name}_double_3x3_2", b.mid_d, b.out_d, kernel=3, stride=b.stride)
        if b.stride == 2:
            pool: nn.Module = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        elif b.pool == "avg":
            # count_include_pad=True: Caffe divides border windows by the full 3x3 (padding counted).
            pool = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        else:
            pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.add_module(f"{b.name}_pool", pool)
        if b.proj:
            self._unit(f"{b.name}_pool_proj", b.in_channels, b.proj, kernel=1)

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        modules = self._modules
        return F.relu(modules[f"{name}_bn"](modules[name](x)), inplace=True)

    def _forward_block(self, b: _Block, x: torch.Tensor) -> torch.Tensor:
        branches = []
        if b.out1:
            branches.append(self._run(f"{b.name}_1x1", x))
        branches.append(self._run(f"{b.name}_3x3", self._run(f"{b.name}_3x3_reduce", x)))
        double = self._run(f"{b.name}_double_3x3_1", self._run(f"{b.name}_double_3x3_reduce", x))
        branches.append(self._run(f"{b.name}_double_3x3_2", double))
        pool_input = x
        if b.stride == 2 and (x.shape[-2] % 2 or x.shape[-1] % 2):
            # On an odd side the strided 3x3 convs give ceil(n/2) but the unpadded ceil-mode pool ceil((n-1)/2)
            # (the Caffe model cannot concatenate them either; at 224 and the usual re-ID sizes the sides are
            # even). A -inf row/column at the bottom/right gives the pool the conv's size without changing any
            # maximum, so any input size works and even sizes are untouched.
            pool_input = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), value=float("-inf"))
        pooled = self._modules[f"{b.name}_pool"](pool_input)
        branches.append(self._run(f"{b.name}_pool_proj", pooled) if b.proj else pooled)
        return torch.cat(branches, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_3x3_s2(self._run("conv1_7x7_s2", x))
        x = self.pool2_3x3_s2(self._run("conv2_3x3", self._run("conv2_3x3_reduce", x)))
        for block in BLOCKS:
            x = self._forward_block(block, x)
        return x
