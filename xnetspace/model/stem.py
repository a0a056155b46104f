"""The stem and the downsamples between stages (paper section III-A, Fig. 2: the overlapping patch
embeddings): a strided conv without bias, then a BN.

Both are :class:`~xnetspace.model.convs.ConvBN` (keys ``conv``, ``bn``; the release's
``patch_embed.proj`` and ``network.{odd}.proj``), so their fast form and their fold into one conv
(``fuse()``) are ConvBN's; their costs are here.
"""

from __future__ import annotations

from torch import nn

from .complexity import Cost
from .convs import ConvBN

__all__ = ["Stem", "Downsample", "STEM_KERNEL", "DOWNSAMPLE_KERNEL"]

STEM_KERNEL = 7  # stride 4, padding 3: ceil(H / 4) (xnetspace.spec.STEM_STRIDE)
DOWNSAMPLE_KERNEL = 3  # stride 2, padding 1: ceil(H / 2)


# Stem.cost and Downsample.cost take their own arguments (ConvBN.cost's with the class's kernel): each
# class is costed by name, never through ConvBN, hence the ignored override checks below.
class Stem(ConvBN):
    """7x7 conv, stride 4, padding 3, no bias -> BN. Shapes: (B, in_chans, H, W) -> (B, dim, ceil(H/4), ceil(W/4))."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__(
            in_chans, dim, STEM_KERNEL, bias=False, apply_act=False, act_layer=nn.GELU, stride=4, padding=3
        )

    @staticmethod
    def cost(hw: tuple[int, int], out_hw: tuple[int, int], in_chans: int, dim: int) -> Cost:  # type: ignore[override]
        """Cost on an (H, W) image ``hw`` with an ``out_hw`` output map. Activations: the image, the
        conv's output and the BN's."""
        cost = ConvBN.cost(out_hw, in_chans, dim, STEM_KERNEL)
        cost.activations = in_chans * hw[0] * hw[1] + 2 * dim * out_hw[0] * out_hw[1]
        return cost


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
