"""Input-dependent depthwise convolution, IDConv (paper section III-B1, eq. 3): the D-Mixer's local
branch.

Reference form: the pooled context through proj, a softmax over G kernel banks, and one grouped
conv applying each sample's own kernel. Fast training form: the same, with the kernels cropped to
the taps that reach the map (computed only for those after proj's BN), a multiply-add on 1x1 maps
and a backward of two forward convs on the CPU
(:func:`~xnetspace.model.kernels.per_sample_depthwise`), and the pooling to K x K a matmul on
small maps (:func:`~xnetspace.model.kernels.adaptive_avg_pool`). Inference form:
:class:`FusedIDConv` (proj's BN folded, proj run once on both contexts). With one group the softmax
is 1 and IDConv is a static depthwise conv (:class:`~xnetspace.model.convs.DepthwiseConv2d`, which
the D-Mixer uses then).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import cast

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from ..spec import StageSpec
from . import complexity
from .complexity import Cost
from .convs import ConvBN, DepthwiseConv2d, PointwiseConv2d, conv_bn, fused_conv_bn
from .folds import FastForm, Fusable, InferenceOnly
from .kernels import adaptive_avg_pool, crop_to_map, per_sample_depthwise

torch.fx.wrap("per_sample_depthwise")  # a leaf for torchvision's FX tracer too (timm's knows it already)

__all__ = [
    "IDConv",
    "FusedIDConv",
    "local_branch",
    "local_branch_cost",
    "fused_local_branch",
    "fused_local_branch_cost",
]


def _cost_around(first: Cost, hw: tuple[int, int], dim: int, kernel_size: int, num_groups: int, reduction: int) -> Cost:
    """IDConv's cost in either form around ``first``, proj's first conv: the banks, proj's second
    conv (on the K*K + 1 pixels of the pooled map and the mean), the pooling (the mean counts 0)
    and the per-sample depthwise conv (no parameters of its own)."""
    n, maps = hw[0] * hw[1], kernel_size * kernel_size + 1
    banks = Cost(params=num_groups * dim * kernel_size * kernel_size + num_groups * dim)
    proj = first + PointwiseConv2d.cost((maps, 1), dim // reduction, dim * num_groups)
    dynamic = Cost(Counter(conv=dim * kernel_size * kernel_size * n))  # weight (B*C, 1, K, K)
    return banks + complexity.adaptive_avg_pool(dim, n) + proj + dynamic


class IDConv(nn.Module, FastForm, Fusable):
    """Input-dependent depthwise convolution (paper section III-B1, eq. 3).

    G static kernel banks ``weight`` (G, C, K, K) and bias banks ``bias`` (G, C) are mixed per
    sample by attention weights, softmax over G, that ``proj`` (1x1 conv C -> C//4 -> BN -> GELU
    -> 1x1 conv C//4 -> G*C) computes from the input pooled to K x K (for the kernel) and to 1 x 1
    (for the bias). Each sample is then convolved with its own depthwise kernel, padding K // 2.

    Shapes: (B, C, H, W) -> (B, C, H, W). Requires ``num_groups >= 2`` (with one group the softmax
    is 1: use a static depthwise conv, as :class:`~xnetspace.model.mixer.DMixer` does).
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_groups: int = 2, reduction: int = 4):
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"IDConv needs num_groups >= 2, got {num_groups}")
        self.num_groups, self.kernel_size, self.reduction = num_groups, kernel_size, reduction
        self.weight = nn.Parameter(torch.empty(num_groups, dim, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_groups, dim))
        self.pool = nn.AdaptiveAvgPool2d(kernel_size)
        self.proj = nn.Sequential(
            conv_bn(dim, dim // reduction, act=True),
            PointwiseConv2d(dim // reduction, dim * num_groups),
        )
        trunc_normal_(self.weight, std=0.02)
        trunc_normal_(self.bias, std=0.02)
        self.fast = False

    def dynamic_weight_bias(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample kernel (B, C, K, K) and bias (B, C) for input ``x`` (B, C, H, W); in the fast
        form the kernel only has the taps that reach the map, (B, C, kh, kw) (:func:`crop_to_map`)."""
        B, C, H, W = x.shape
        G, K = self.num_groups, self.kernel_size
        if self.fast:
            # proj[0]'s train-mode BN needs every pooled pixel; from proj[1] on all is per pixel, so
            # only the taps that reach the map are computed (on a 1x1 map, 1 of K*K)
            hidden = crop_to_map(self.proj[0](adaptive_avg_pool(x, K)), H, W)
            banks = crop_to_map(self.weight, H, W)
            kh, kw = banks.shape[-2], banks.shape[-1]
            scale = self.proj[1](hidden).reshape(B, G, C, kh, kw).softmax(dim=1)
            weight = (scale * banks.unsqueeze(0)).sum(dim=1)  # (B, C, kh, kw)
        else:
            scale = self.proj(self.pool(x)).reshape(B, G, C, K, K).softmax(dim=1)
            weight = (scale * self.weight.unsqueeze(0)).sum(dim=1)  # (B, C, K, K)
        scale = self.proj(x.mean(dim=(-2, -1), keepdim=True)).reshape(B, G, C).softmax(dim=1)
        bias = (scale * self.bias.unsqueeze(0)).sum(dim=1)  # (B, C)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        K = self.kernel_size
        weight, bias = self.dynamic_weight_bias(x)
        if self.fast:  # cropped kernels, no slow CPU paths (exact)
            return per_sample_depthwise(x, weight, bias)
        # The batch folds into the channels so one grouped conv applies B*C different kernels.
        x = F.conv2d(
            x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, K, K), bias.flatten(), padding=K // 2, groups=B * C
        )
        return x.reshape(B, C, H, W)

    def fuse(self) -> nn.Module:
        """Inference form (:class:`FusedIDConv`): proj's BN folded, proj run once."""
        proj = nn.Sequential(cast(ConvBN, self.proj[0]).fuse(), copy.deepcopy(self.proj[1]))
        dim = self.weight.shape[1]
        return FusedIDConv(dim, self.kernel_size, self.num_groups, self.reduction).take(
            weight=nn.Parameter(self.weight.detach().flatten(2).clone()),
            bias=nn.Parameter(self.bias.detach().clone()),
            proj=proj,
        )

    @staticmethod
    def knobs(stage: StageSpec) -> dict[str, int]:
        """IDConv's constructor arguments (other than ``dim``) from a stage spec: what the D-Mixer
        passes through to it unread, so that a new IDConv knob changes the spec and this module only."""
        return dict(kernel_size=stage.idconv_kernel_size, num_groups=stage.idconv_groups)

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, kernel_size: int = 7, num_groups: int = 2, reduction: int = 4) -> Cost:
        """The banks, proj (run on the K x K pooled map and on the 1 x 1 mean: K*K + 1 pixels), the
        pooling (the mean counts 0) and the per-sample depthwise conv (no parameters of its own)."""
        first = ConvBN.cost((kernel_size * kernel_size + 1, 1), dim, dim // reduction)
        return _cost_around(first, hw, dim, kernel_size, num_groups, reduction)


class FusedIDConv(InferenceOnly):
    """Input-dependent depthwise conv (paper eq. 3) with proj's BN folded and proj run once.

    proj is pointwise, so the K x K pooled map and the global mean go through it together as one
    (B, C, K*K + 1, 1) map. Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_groups: int = 2, reduction: int = 4):
        super().__init__()
        self.num_groups, self.kernel_size = num_groups, kernel_size
        self.weight = nn.Parameter(torch.zeros(num_groups, dim, kernel_size * kernel_size))  # (G, C, K*K)
        self.bias = nn.Parameter(torch.zeros(num_groups, dim))  # (G, C)
        self.proj = nn.Sequential(
            fused_conv_bn(dim, dim // reduction, act=True), PointwiseConv2d(dim // reduction, dim * num_groups)
        )
        self.eval()

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, kernel_size: int = 7, num_groups: int = 2, reduction: int = 4) -> Cost:
        """As :meth:`IDConv.cost`, with proj's BN folded into its first conv (run once on both maps)."""
        first = ConvBN.fused_cost((kernel_size * kernel_size + 1, 1), dim, dim // reduction)
        return _cost_around(first, hw, dim, kernel_size, num_groups, reduction)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        G, K = self.num_groups, self.kernel_size
        context = torch.cat([F.adaptive_avg_pool2d(x, K).flatten(2), x.mean(dim=(-2, -1)).unsqueeze(-1)], dim=2)
        scale = self.proj(context.unsqueeze(-1)).reshape(B, G, C, K * K + 1).softmax(dim=1)
        weight = (scale[..., :-1] * self.weight).sum(dim=1)  # (B, C, K*K)
        bias = (scale[..., -1] * self.bias).sum(dim=1)  # (B, C)
        x = F.conv2d(
            x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, K, K), bias.flatten(), padding=K // 2, groups=B * C
        )
        return x.reshape(B, C, H, W)


def local_branch(dim: int, num_groups: int = 2, **knobs: int) -> nn.Module:
    """The D-Mixer's local branch on ``dim`` channels from :meth:`IDConv.knobs`: IDConv, or with one
    group its static case, a depthwise conv (the softmax over one group is 1). (B, C, H, W) -> same."""
    if num_groups > 1:
        return IDConv(dim, num_groups=num_groups, **knobs)
    return DepthwiseConv2d(dim, knobs["kernel_size"])


def local_branch_cost(hw: tuple[int, int], dim: int, num_groups: int = 2, **knobs: int) -> Cost:
    """The cost of :func:`local_branch` (fvcore's count)."""
    if num_groups > 1:
        return IDConv.cost(hw, dim, num_groups=num_groups, **knobs)
    return DepthwiseConv2d.cost(hw, dim, knobs["kernel_size"])


def fused_local_branch_cost(hw: tuple[int, int], dim: int, num_groups: int = 2, **knobs: int) -> Cost:
    """The cost of :func:`fused_local_branch` (fvcore's count)."""
    if num_groups > 1:
        return FusedIDConv.cost(hw, dim, num_groups=num_groups, **knobs)
    return DepthwiseConv2d.cost(hw, dim, knobs["kernel_size"])


def fused_local_branch(dim: int, num_groups: int = 2, **knobs: int) -> nn.Module:
    """The inference form of :func:`local_branch`, built directly: :class:`FusedIDConv`, or the
    depthwise conv itself (it has nothing to fold)."""
    if num_groups > 1:
        return FusedIDConv(dim, num_groups=num_groups, **knobs)
    return DepthwiseConv2d(dim, knobs["kernel_size"])
