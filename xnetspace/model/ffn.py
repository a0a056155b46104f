"""The multi-scale feed-forward network, MS-FFN (paper section III-C): fc1, depthwise convs of
several kernel sizes on channel groups (MSDW) with a residual, fc2.

Reference form: as the release. Fast training form: MSDW's branches and its residual as one
depthwise kernel, merged at every step (differentiable) and run by
:func:`~xnetspace.model.kernels.depthwise_same`. Inference form: :class:`FusedMSFFN` (that kernel
merged once; ``norm``, fc2's BN and the block's second layer scale folded into fc2).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import cast

import torch
import torch.fx
from torch import Tensor, nn

from ..spec import StageSpec
from . import complexity
from .complexity import Cost
from .convs import ConvBN, LayerScale, PointwiseConv2d, conv_bn
from .folds import (
    FastForm,
    Fusable,
    InferenceOnly,
    affine_param,
    affine_then_conv,
    bn_scale_shift,
    conv_then_affine,
    fold_bn,
    merge_depthwise,
)
from .kernels import depthwise_same, merged_depthwise_kernel

torch.fx.wrap("depthwise_same")  # a leaf for torchvision's FX tracer too (timm's knows it already)

__all__ = ["split_channels", "MultiScaleDWConv", "MSFFN", "FusedMSFFN"]


def split_channels(dim: int, count: int) -> list[int]:
    """Channels of ``count`` consecutive groups of ``dim``: the first takes the remainder
    (release ``MultiScaleDWConv``)."""
    return [dim - (count - 1) * (dim // count)] + [dim // count] * (count - 1)


class MultiScaleDWConv(nn.Module, Fusable):
    """Depthwise convs of several kernel sizes on consecutive channel groups (paper III-C).

    With n kernels, the first group has ``dim - (n-1) * (dim // n)`` channels, the others
    ``dim // n`` (release ``MultiScaleDWConv``). Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7)):
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.splits = split_channels(dim, len(kernel_sizes))
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.splits, kernel_sizes)
        )

    def merged(self, identity: bool = False) -> tuple[Tensor, Tensor]:
        """The branches as one depthwise kernel (C, 1, K, K) and bias (C,), K the largest kernel,
        plus the identity when asked (:func:`~xnetspace.model.kernels.merged_depthwise_kernel`; differentiable)."""
        weights: list[Tensor] = []
        biases: list[Tensor] = []
        for conv in self.convs:
            bias = conv.bias
            assert bias is not None  # built with biases; refines Optional for TorchScript
            # torch types Module.__getattr__ as Tensor | Module; these are the convs' tensors. The
            # ignores end their lines: TorchScript parses type comments.
            weights.append(conv.weight)  # type: ignore[arg-type]
            biases.append(bias)  # type: ignore[arg-type]
        return merged_depthwise_kernel(weights, identity), torch.cat(biases)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.splits, dim=1)  # indexed, not zipped: FX cannot iterate a traced tuple
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], dim=1)

    def fuse(self, identity: bool = False) -> nn.Conv2d:
        """One depthwise conv of the largest kernel computing ``MSDW(x)`` (``+ x`` with ``identity``):
        smaller kernels zero-padded and centred (exact, :func:`~xnetspace.model.folds.merge_depthwise`)."""
        return merge_depthwise(cast(Sequence[nn.Conv2d], self.convs), identity)

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7)) -> Cost:
        n = hw[0] * hw[1]
        total = Cost()
        for c, k in zip(split_channels(dim, len(kernel_sizes)), kernel_sizes):
            total += complexity.conv(c, c, k, n, groups=c)
        return total


class MSFFN(nn.Module, FastForm, Fusable):
    """Multi-scale feed-forward network, MS-FFN (paper section III-C).

    fc1 (1x1 C -> hid, no bias) -> GELU -> BN; ``x + MSDW(x)``; GELU -> BN; dropout; fc2
    (1x1 hid -> C, no bias) -> BN; dropout. Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7), drop: float = 0.0):
        super().__init__()
        self.fc1 = PointwiseConv2d(dim, hidden_dim, bias=False)
        self.fc1_bn = nn.BatchNorm2d(hidden_dim)
        self.msdw = MultiScaleDWConv(hidden_dim, kernel_sizes)
        self.norm = nn.BatchNorm2d(hidden_dim)
        self.fc2 = conv_bn(hidden_dim, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1_bn(self.act(self.fc1(x)))
        if self.fast:  # MSDW's branches and the identity as one depthwise conv (kernel merged each step)
            weight, bias = self.msdw.merged(identity=True)
            x = depthwise_same(x, weight, bias, weight.shape[0])
        else:
            x = self.msdw(x) + x
        x = self.drop(self.norm(self.act(x)))
        return self.drop(self.fc2(x))

    def fuse(self, layer_scale: LayerScale | None = None) -> FusedMSFFN:
        """Inference form (:class:`FusedMSFFN`): ``MSDW(x) + x`` as one depthwise conv;
        ``norm``, fc2's BN and ``layer_scale`` (the block's LS2) folded into fc2; ``fc1_bn`` kept as
        an affine map (a zero-padded conv follows it, so folding it would change the borders)."""
        fc2 = fold_bn(affine_then_conv(*bn_scale_shift(self.norm), self.fc2.conv), self.fc2.bn)
        if layer_scale is not None:
            fc2 = conv_then_affine(fc2, *layer_scale.scale_shift())
        scale, shift = bn_scale_shift(self.fc1_bn)
        return FusedMSFFN(self.fc1.in_channels, self.fc1.out_channels, self.msdw.kernel_sizes).take(
            fc1=copy.deepcopy(self.fc1),
            fc1_scale=affine_param(scale),
            fc1_shift=affine_param(shift),
            dwconv=self.msdw.fuse(identity=True),
            fc2=fc2,
        )

    @staticmethod
    def knobs(stage: StageSpec) -> dict:
        """MS-FFN's constructor arguments (other than ``dim`` and ``drop``) from a stage spec, passed
        through the block unread (as :meth:`~xnetspace.model.osra.OSRA.knobs`)."""
        return dict(hidden_dim=stage.hidden_dim, kernel_sizes=stage.ffn_kernel_sizes)

    @staticmethod
    def cost(
        hw: tuple[int, int], dim: int, hidden_dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7), drop: float = 0.0
    ) -> Cost:
        """fc1, fc1_bn, MSDW, norm and fc2. Activations: fc1's, GELU's, BN's, the branches' and their
        concatenation's maps and oneDNN's blocked copies of them (6 x hidden x N)."""
        n = hw[0] * hw[1]
        cost = (
            PointwiseConv2d.cost(hw, dim, hidden_dim, bias=False)
            + complexity.batch_norm(hidden_dim, n)
            + MultiScaleDWConv.cost(hw, hidden_dim, kernel_sizes)
            + complexity.batch_norm(hidden_dim, n)
            + ConvBN.cost(hw, hidden_dim, dim)
        )
        cost.activations = 6 * hidden_dim * n
        return cost


class FusedMSFFN(InferenceOnly):
    """MS-FFN (paper III-C) for inference: fc1 -> GELU -> ``fc1_scale * x + fc1_shift`` (fc1's BN,
    kept: a zero-padded conv follows) -> one depthwise KxK conv (every branch and the identity) ->
    GELU -> fc2 (1x1 with ``norm``, fc2's BN and the layer scale LS2 folded in).
    Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7), drop: float = 0.0):
        super().__init__()
        k = max(kernel_sizes)
        self.fc1 = PointwiseConv2d(dim, hidden_dim, bias=False)
        self.fc1_scale = nn.Parameter(torch.ones(hidden_dim, 1, 1))
        self.fc1_shift = nn.Parameter(torch.zeros(hidden_dim, 1, 1))
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, k, padding=k // 2, groups=hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.act = nn.GELU()
        self.eval()

    @staticmethod
    def cost(
        hw: tuple[int, int], dim: int, hidden_dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7), drop: float = 0.0
    ) -> Cost:
        """fc1, the affine map (``addcmul``: 0 flops, 2 x hidden parameters), the merged depthwise
        conv (the largest kernel on every channel) and fc2 with its bias."""
        n = hw[0] * hw[1]
        return (
            PointwiseConv2d.cost(hw, dim, hidden_dim, bias=False)
            + Cost(params=2 * hidden_dim)
            + complexity.conv(hidden_dim, hidden_dim, max(kernel_sizes), n, groups=hidden_dim)
            + complexity.conv(hidden_dim, dim, 1, n)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.addcmul(self.fc1_shift, self.act(self.fc1(x)), self.fc1_scale)
        return self.fc2(self.act(self.dwconv(x)))
