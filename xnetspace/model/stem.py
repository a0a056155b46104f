"""The stem and the downsamples between stages (paper section III-A, Fig. 2: the overlapping patch
embeddings): a strided conv without bias, then a BN.

Both are :class:`~xnetspace.model.convs.ConvBN` (keys ``conv``, ``bn``; the release's
``patch_embed.proj`` and ``network.{odd}.proj``), so their fast form and their fold into one conv
(``fuse()``) are ConvBN's; their costs are here.
"""

from __future__ import annotations

from torch import nn

from .complexity import Cost
from .convs import ConvBN, fused_conv_bn

__all__ = ["Stem", "Downsample", "stem_kernel", "DOWNSAMPLE_KERNEL"]

DOWNSAMPLE_KERNEL = 3  # stride 2, padding 1: ceil(H / 2)


def stem_kernel(stride: int) -> int:
    """The stem's kernel at ``stride`` (spec field ``stem_stride``): PVTv2's overlapping patch
    embedding, k = 2s - 1 (the paper's 7x7 at stride 4, the downsamples' 3x3 at stride 2), and 3x3
    at stride 1 (a CIFAR ResNet's stem) so that it still mixes neighbours. Padding k // 2 gives
    ceil(H / s) rows."""
    return max(3, 2 * stride - 1)


# Stem.cost and Downsample.cost take their own arguments (ConvBN.cost's with the class's kernel): each
# class is costed by name, never through ConvBN, hence the ignored override checks below.
class Stem(ConvBN):
    """k x k conv at ``stride`` s (4: the paper's 7x7; 2 and 1 for small images: 3x3,
    :func:`stem_kernel`), padding k // 2, no bias -> BN.
    Shapes: (B, in_chans, H, W) -> (B, dim, ceil(H/s), ceil(W/s))."""

    def __init__(self, in_chans: int, dim: int, stride: int = 4):
        k = stem_kernel(stride)
        super().__init__(
            in_chans, dim, k, bias=False, apply_act=False, act_layer=nn.GELU, stride=stride, padding=k // 2
        )

    @staticmethod
    def cost(  # type: ignore[override]
        hw: tuple[int, int], out_hw: tuple[int, int], in_chans: int, dim: int, stride: int = 4
    ) -> Cost:
        """Cost on an (H, W) image ``hw`` with an ``out_hw`` output map. Activations: the image, the
        conv's output and the BN's."""
        cost = ConvBN.cost(out_hw, in_chans, dim, stem_kernel(stride))
        cost.activations = in_chans * hw[0] * hw[1] + 2 * dim * out_hw[0] * out_hw[1]
        return cost

    @staticmethod
    def fused(in_chans: int, dim: int, stride: int = 4) -> nn.Module:
        """The inference form (what ``fuse()`` returns), built directly: the conv with BN folded."""
        k = stem_kernel(stride)
        return fused_conv_bn(in_chans, dim, k, stride=stride, padding=k // 2)

    @staticmethod
    def fused_cost(  # type: ignore[override]
        out_hw: tuple[int, int], in_chans: int, dim: int, stride: int = 4
    ) -> Cost:
        """Cost of :meth:`fused` with an ``out_hw`` output map."""
        return ConvBN.fused_cost(out_hw, in_chans, dim, stem_kernel(stride))


class Downsample(ConvBN):
    """3x3 conv, stride 2, padding 1, no bias -> BN, before every stage but the first.
    Shapes: (B, in_chs, H, W) -> (B, dim, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_chs: int, dim: int):
        super().__init__(
            in_chs, dim, DOWNSAMPLE_KERNEL, bias=False, apply_act=False, act_layer=nn.GELU, stride=2, padding=1
        )

    @staticmethod
    def cost(hw: tuple[int, int], in_chs: int, dim: int) -> Cost:  # type: ignore[override]
        """Cost at the (H, W) output map ``hw``."""
        return ConvBN.cost(hw, in_chs, dim, DOWNSAMPLE_KERNEL)

    @staticmethod
    def fused(in_chs: int, dim: int) -> nn.Module:
        """The inference form (what ``fuse()`` returns), built directly: the conv with BN folded."""
        return fused_conv_bn(in_chs, dim, DOWNSAMPLE_KERNEL, stride=2, padding=1)

    @staticmethod
    def fused_cost(hw: tuple[int, int], in_chs: int, dim: int) -> Cost:  # type: ignore[override]
        """Cost of :meth:`fused` at the (H, W) output map ``hw``."""
        return ConvBN.fused_cost(hw, in_chs, dim, DOWNSAMPLE_KERNEL)
