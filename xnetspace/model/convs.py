"""The small layers several TransXNet operators are built from: conv + BN, dense 1x1 and depthwise
convolutions with a fast training form, and the layer scale.

Each is an ``nn.Module`` with the release's keys; its fast training form (``fast = True``) runs the
same function with the shared kernels of :mod:`.kernels`; modules with an inference form have
``fuse()``; each has a static ``cost(hw, ...)`` beside its construction (:mod:`.complexity`).
Paper: arXiv 2310.19380, section III (the release's ``ConvModule``) and eq. 1 (LS).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import Tensor, nn

from . import complexity
from .complexity import Cost
from .folds import FastForm, Fusable, fold_bn
from .kernels import depthwise, depthwise_same, pointwise

torch.fx.wrap("depthwise_same")  # leaves for torchvision's FX tracer too (timm's knows them already)
torch.fx.wrap("depthwise")

__all__ = ["ConvBN", "conv_bn", "fused_conv_bn", "PointwiseConv2d", "DepthwiseConv2d", "LayerScale"]


class ConvBN(ConvNormAct, FastForm, Fusable):
    """timm's ConvNormAct (keys ``conv``, ``bn``) whose ``fuse()`` folds the BN into the conv.

    Its fast form runs a dense 1x1 conv as a matmul (:func:`.kernels.pointwise`) and a depthwise
    conv with a square kernel, stride and padding the fastest exact way for its map
    (:func:`.kernels.depthwise`: OSRA's spatial reduction)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        conv = self.conv
        square = (
            isinstance(conv.padding, tuple)
            and len(set(conv.kernel_size)) == len(set(conv.stride)) == len(set(conv.padding)) == 1
            and conv.dilation == (1, 1)
        )
        self.dense_1x1 = square and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
        self.dense_1x1 = self.dense_1x1 and conv.padding == (0, 0)
        self.depthwise = square and conv.groups == conv.in_channels == conv.out_channels
        self.stride_padding = (conv.stride[0], conv.padding[0]) if square else (1, 0)  # ints: TorchScript
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and self.dense_1x1:
            return self.bn(pointwise(x, self.conv.weight, self.conv.bias))
        if self.fast and self.depthwise:
            stride, padding = self.stride_padding
            return self.bn(depthwise(x, self.conv.weight, self.conv.bias, stride, padding))
        return self.bn(self.conv(x))  # no anti-aliasing layer here (timm's ``aa``)

    def fuse(self) -> nn.Module:
        """Eval-mode equivalent: the conv with BN folded in, then the activation if any."""
        conv = fold_bn(self.conv, self.bn)
        act = self.bn.act
        return (conv if isinstance(act, nn.Identity) else nn.Sequential(conv, act)).eval()

    @staticmethod
    def cost(hw: tuple[int, int], in_chs: int, out_chs: int, kernel_size: int = 1, groups: int = 1) -> Cost:
        """Cost at the (H, W) output map ``hw`` (the stride and padding only set that size)."""
        n = hw[0] * hw[1]
        return complexity.conv(in_chs, out_chs, kernel_size, n, groups, bias=False) + complexity.batch_norm(out_chs, n)

    @staticmethod
    def fused_cost(hw: tuple[int, int], in_chs: int, out_chs: int, kernel_size: int = 1, groups: int = 1) -> Cost:
        """Cost of the inference form (:func:`fused_conv_bn`) at the (H, W) output map ``hw``."""
        return complexity.conv(in_chs, out_chs, kernel_size, hw[0] * hw[1], groups)


def conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, act: bool = False, **kwargs) -> ConvBN:
    """Conv (no bias) -> BN (-> GELU when ``act``): the release's ``ConvModule``; keys ``conv``, ``bn``.

    Shapes: (B, in_chs, H, W) -> (B, out_chs, H', W'); ``kwargs`` (stride, padding, groups) go to
    timm's ``ConvNormAct``. Used for the stem, the downsamples, IDConv's proj, OSR and fc2.
    """
    return ConvBN(in_chs, out_chs, kernel_size, bias=False, apply_act=act, act_layer=nn.GELU, **kwargs)


def fused_conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, act: bool = False, **kwargs) -> nn.Module:
    """The inference form of :func:`conv_bn` (what its ``fuse()`` returns), built directly: the conv
    with a bias (the BN folded in), then GELU when ``act``. ``kwargs``: stride, padding (an int;
    default 0, :func:`conv_bn`'s for 1x1 convs), groups. Shapes as :func:`conv_bn`'s."""
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, **kwargs)
    return nn.Sequential(conv, nn.GELU()) if act else conv


class PointwiseConv2d(nn.Conv2d, FastForm):
    """Dense 1x1 conv: an ``nn.Conv2d`` (same keys, same initialisation); its fast form is one
    matmul (:func:`.kernels.pointwise`). Shapes: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool = True):
        super().__init__(in_chs, out_chs, 1, bias=bias)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return pointwise(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, self.bias)

    @staticmethod
    def cost(hw: tuple[int, int], in_chs: int, out_chs: int, bias: bool = True) -> Cost:
        return complexity.conv(in_chs, out_chs, 1, hw[0] * hw[1], bias=bias)


class DepthwiseConv2d(nn.Conv2d, FastForm):
    """Depthwise K x K conv, stride 1, padding K // 2, with a bias: an ``nn.Conv2d`` (same keys).

    Its fast form runs it the fastest exact way for the map's size (a batched matmul on small
    maps; :func:`.kernels.depthwise_same`). Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, kernel_size: int):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return depthwise_same(x, self.weight, self.bias, self.groups)
        return self._conv_forward(x, self.weight, self.bias)

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, kernel_size: int) -> Cost:
        return complexity.conv(dim, dim, kernel_size, hw[0] * hw[1], groups=dim)


class LayerScale(nn.Module, FastForm):
    """Per-channel affine map ``w * x + b`` as a depthwise 1x1 conv (paper eq. 1, LS).

    Shapes: (B, C, H, W) -> (B, C, H, W). ``weight`` (C, 1, 1, 1) starts at ``init_value``,
    ``bias`` (C,) at 0 (release ``LayerScale``). FLOPs: B*C*H*W (one per element, as a conv).
    """

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:  # one elementwise multiply-add, in either memory format
            return torch.addcmul(self.bias.reshape(-1, 1, 1), x, self.weight.reshape(-1, 1, 1))
        return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """The map as ``scale * x + shift``, each (C,), for folding into a neighbouring conv."""
        return self.weight.flatten(), self.bias

    @staticmethod
    def cost(hw: tuple[int, int], dim: int) -> Cost:
        """As fvcore counts the reference form's depthwise 1x1 conv: one flop per element."""
        return complexity.conv(dim, dim, 1, hw[0] * hw[1], groups=dim)
