"""The dual dynamic token mixer, D-Mixer (paper section III-B, eq. 2), and its squeezed token
enhancer, STE: ``Y = concat(IDConv(X1), OSRA(X2, P))``, then ``STE(Y) + Y``.

The two branches are :mod:`.idconv` and :mod:`.osra`; this module splits the channels between
them (:class:`DualBranchTokens`, shared by both forms), holds STE, and folds the block's first
layer scale into the inference form (:class:`FusedDMixer`, :class:`FusedSTE`). The D-Mixer has
no fast training form of its own: its parts have theirs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..spec import StageSpec
from . import complexity
from .complexity import Cost
from .convs import DepthwiseConv2d, LayerScale, PointwiseConv2d
from .folds import Fusable, InferenceOnly, affine_param, affine_then_conv, bn_scale_shift, conv_then_affine, fold_bn
from .idconv import IDConv, fused_local_branch, fused_local_branch_cost, local_branch, local_branch_cost
from .osra import OSRA, FusedOSRA

__all__ = ["DualBranchTokens", "SqueezedTokenEnhancer", "FusedSTE", "DMixer", "FusedDMixer"]


class DualBranchTokens(nn.Module):
    """Base of both D-Mixer forms: computes Y = ``concat(IDConv(X1), OSRA(X2, P))`` (paper eq. 2).

    Subclasses set ``split`` ((C1, C2), C1 + C2 = C), ``idconv`` (None when C1 = 0) and ``osra``
    (None when C2 = 0); X1 is the first C1 channels, X2 the last C2, and a missing branch leaves
    all channels to the other. Shapes: (B, C, H, W) -> (B, C, H, W); ``pos_bias`` (1 or B, h, N, M).
    """

    def dual_branch_tokens(self, x: Tensor, pos_bias: Tensor | None = None) -> Tensor:
        """Y for input ``x`` (B, C, H, W) and the stage's resized position bias."""
        if self.idconv is None:
            return self.osra(x, pos_bias)
        if self.osra is None:
            return self.idconv(x)
        # split, idconv and osra are the subclasses' (module docstring); torch types Module.__getattr__
        # as Tensor | Module. The ignores end their lines: TorchScript parses type comments.
        c_local = self.split[0]  # type: ignore[index]
        x_local, x_global = x[:, :c_local], x[:, c_local:]  # views, as split() gives
        return torch.cat([self.idconv(x_local), self.osra(x_global, pos_bias)], dim=1)  # type: ignore[operator]


class SqueezedTokenEnhancer(nn.Module, Fusable):
    """Squeezed token enhancer, STE (paper section III-B, eq. 2): a cheap channel/spatial mixer.

    DW KxK -> GELU -> BN -> 1x1 C -> c' -> GELU -> BN -> 1x1 c' -> C -> BN, c' = max(16, C // 8), K
    ``kernel_size`` (the paper's 3; ``StageSpec.ste_kernel_size``).
    Shapes: (B, C, H, W) -> (B, C, H, W). The D-Mixer adds its input back (``STE(Y) + Y``).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv_dw = DepthwiseConv2d(dim, kernel_size)
        self.bn_dw = nn.BatchNorm2d(dim)
        self.conv_reduce = PointwiseConv2d(dim, hidden_dim)
        self.bn_reduce = nn.BatchNorm2d(hidden_dim)
        self.conv_expand = PointwiseConv2d(hidden_dim, dim)
        self.bn_expand = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn_dw(self.act(self.conv_dw(x)))
        x = self.bn_reduce(self.act(self.conv_reduce(x)))
        return self.bn_expand(self.conv_expand(x))

    def fuse(self, layer_scale: LayerScale | None = None) -> FusedSTE:
        """Inference form (:class:`FusedSTE`): ``bn_dw`` into ``conv_reduce``,
        ``bn_reduce`` and ``bn_expand`` into ``conv_expand`` (1x1, unpadded: exact), then
        ``layer_scale`` (the block's LS1) into ``conv_expand`` too when given."""
        reduce = affine_then_conv(*bn_scale_shift(self.bn_dw), self.conv_reduce)
        expand = fold_bn(affine_then_conv(*bn_scale_shift(self.bn_reduce), self.conv_expand), self.bn_expand)
        if layer_scale is not None:
            expand = conv_then_affine(expand, *layer_scale.scale_shift())
        dim, hidden_dim = self.conv_reduce.in_channels, self.conv_reduce.out_channels
        return FusedSTE(dim, hidden_dim, self.conv_dw.kernel_size[0]).take(
            conv_dw=copy.deepcopy(self.conv_dw), conv_reduce=reduce, conv_expand=expand
        )

    @staticmethod
    def knobs(stage: StageSpec) -> dict[str, int]:
        """STE's constructor arguments (other than ``dim``) from a stage spec, passed through the
        D-Mixer unread (as :meth:`~xnetspace.model.osra.OSRA.knobs`)."""
        return dict(hidden_dim=stage.ste_dim, kernel_size=stage.ste_kernel_size)

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, hidden_dim: int, kernel_size: int = 3) -> Cost:
        n = hw[0] * hw[1]
        return (
            DepthwiseConv2d.cost(hw, dim, kernel_size)
            + complexity.batch_norm(dim, n)
            + PointwiseConv2d.cost(hw, dim, hidden_dim)
            + complexity.batch_norm(hidden_dim, n)
            + PointwiseConv2d.cost(hw, hidden_dim, dim)
            + complexity.batch_norm(dim, n)
        )


class FusedSTE(InferenceOnly):
    """Squeezed token enhancer (paper eq. 2) with its three BNs folded:
    DW KxK -> GELU -> 1x1 C -> c' -> GELU -> 1x1 c' -> C. Shapes: (B, C, H, W) -> same."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv_dw = DepthwiseConv2d(dim, kernel_size)
        self.conv_reduce = PointwiseConv2d(dim, hidden_dim)
        self.conv_expand = PointwiseConv2d(hidden_dim, dim)
        self.act = nn.GELU()
        self.eval()

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, hidden_dim: int, kernel_size: int = 3) -> Cost:
        """The three convs, each with a bias (the BNs folded in)."""
        return (
            DepthwiseConv2d.cost(hw, dim, kernel_size)
            + PointwiseConv2d.cost(hw, dim, hidden_dim)
            + PointwiseConv2d.cost(hw, hidden_dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_expand(self.act(self.conv_reduce(self.act(self.conv_dw(x)))))


class DMixer(DualBranchTokens, Fusable):
    """Dual dynamic token mixer, D-Mixer (paper section III-B, eq. 2).

    The first ``dim - attn_dim`` channels go through IDConv (a static depthwise conv with one
    group: :func:`~xnetspace.model.idconv.local_branch`), the last ``attn_dim`` through OSRA; the
    concatenation Y gives ``STE(Y) + Y``. ``attn_dim`` 0 or ``dim`` leaves out the unused branch.
    ``idconv``, ``osra`` and ``ste`` are each operator's own knobs (their ``knobs(stage)``), passed
    on unread; :meth:`knobs` gives all four from a stage. Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self, dim: int, attn_dim: int, idconv: Mapping[str, Any], osra: Mapping[str, Any], ste: Mapping[str, Any]
    ):
        super().__init__()
        local_dim = dim - attn_dim
        self.split = (local_dim, attn_dim)
        self.knobs_of = dict(idconv=dict(idconv), osra=dict(osra), ste=dict(ste))  # for fuse(); not in forward
        self.idconv = local_branch(local_dim, **idconv) if local_dim else None
        self.osra = OSRA(attn_dim, **osra) if attn_dim else None
        self.ste = SqueezedTokenEnhancer(dim, **ste)

    @staticmethod
    def knobs(stage: StageSpec) -> dict[str, Any]:
        """The D-Mixer's arguments after ``dim`` from a stage: its split (``attn_ratio``) and each
        operator's :meth:`knobs`, which it reads no further."""
        return dict(
            attn_dim=stage.attn_channels,
            idconv=IDConv.knobs(stage),
            osra=OSRA.knobs(stage),
            ste=SqueezedTokenEnhancer.knobs(stage),
        )

    def forward(self, x: Tensor, pos_bias: Tensor | None = None) -> Tensor:
        x = self.dual_branch_tokens(x, pos_bias)
        return self.ste(x) + x

    def fuse(self, layer_scale: LayerScale | None = None) -> FusedDMixer:
        """Inference form (:class:`FusedDMixer`) with the block's LS1 folded in:
        ``LS1(STE(Y) + Y) = STE'(Y) + w * Y``; the branches and STE fused."""
        idconv = self.idconv.fuse() if isinstance(self.idconv, IDConv) else copy.deepcopy(self.idconv)
        osra = None if self.osra is None else self.osra.fuse()
        y_scale = None if layer_scale is None else affine_param(layer_scale.scale_shift()[0])
        fused = FusedDMixer(sum(self.split), self.split[1], **self.knobs_of, layer_scale=layer_scale is not None)
        return fused.take(idconv=idconv, osra=osra, ste=self.ste.fuse(layer_scale), y_scale=y_scale)

    @staticmethod
    def cost(
        hw: tuple[int, int],
        dim: int,
        attn_dim: int,
        idconv: Mapping[str, Any],
        osra: Mapping[str, Any],
        ste: Mapping[str, Any],
    ) -> Cost:
        local_dim = dim - attn_dim
        cost = Cost()
        if local_dim:
            cost += local_branch_cost(hw, local_dim, **idconv)
        if attn_dim:
            cost += OSRA.cost(hw, attn_dim, **osra)
        return cost + SqueezedTokenEnhancer.cost(hw, dim, **ste)


class FusedDMixer(InferenceOnly, DualBranchTokens):
    """D-Mixer (paper eq. 2) with the block's layer scale LS1 folded in:
    ``LS1(STE(Y) + Y) = STE'(Y) + w * Y`` (STE' has w and LS1's bias in its last conv).

    ``forward(x, pos_bias, shortcut)`` adds ``shortcut`` (the block's residual) in the same pass.
    Shapes: (B, C, H, W) -> same.
    """

    def __init__(
        self,
        dim: int,
        attn_dim: int,
        idconv: Mapping[str, Any],
        osra: Mapping[str, Any],
        ste: Mapping[str, Any],
        layer_scale: bool = True,
    ):
        super().__init__()
        local_dim = dim - attn_dim
        self.split = (local_dim, attn_dim)
        self.idconv = fused_local_branch(local_dim, **idconv) if local_dim else None
        self.osra = FusedOSRA(attn_dim, **osra) if attn_dim else None
        self.ste = FusedSTE(dim, **ste)
        self.y_scale = nn.Parameter(torch.ones(dim, 1, 1)) if layer_scale else None
        self.eval()

    @staticmethod
    def cost(
        hw: tuple[int, int],
        dim: int,
        attn_dim: int,
        idconv: Mapping[str, Any],
        osra: Mapping[str, Any],
        ste: Mapping[str, Any],
        layer_scale: bool = True,
        pos_bias: bool = True,
    ) -> Cost:
        """The fused branches and STE, and LS1's weight on Y (``addcmul``: 0 flops, C parameters);
        ``pos_bias``: whether OSRA gets the stage's position bias (its logits' kernel depends on it)."""
        local_dim = dim - attn_dim
        cost = Cost(params=dim if layer_scale else 0)
        if local_dim:
            cost += fused_local_branch_cost(hw, local_dim, **idconv)
        if attn_dim:
            cost += FusedOSRA.cost(hw, attn_dim, **osra, pos_bias=pos_bias)
        return cost + FusedSTE.cost(hw, dim, **ste)

    def forward(self, x: Tensor, pos_bias: Tensor | None = None, shortcut: Tensor | None = None) -> Tensor:
        y = self.dual_branch_tokens(x, pos_bias)
        out = self.ste(y)
        if shortcut is not None:
            out = out + shortcut
        return out + y if self.y_scale is None else torch.addcmul(out, y, self.y_scale)
