"""Dynamic position encoding, DPE (paper section III-A, eq. 1): ``x + DWConv7x7(x)``, the first step
of every block (the release's ``pos_embed``).

Reference form: the depthwise 7x7 conv (bias) and the residual add. Fast training form: the
residual in the centre tap of the kernel, merged at every step (differentiable), run by
:func:`~xnetspace.model.kernels.depthwise_same`. Inference form: one ``nn.Conv2d`` with the
residual merged (:meth:`DPE.fuse`).
"""

from __future__ import annotations

import torch.fx
from torch import Tensor, nn

from . import complexity
from .complexity import Cost
from .folds import FastForm, Fusable, merge_depthwise
from .kernels import depthwise_same, merged_depthwise_kernel

torch.fx.wrap("depthwise_same")  # a leaf for torchvision's FX tracer too (timm's knows it already)

__all__ = ["DPE", "DPE_KERNEL"]

DPE_KERNEL = 7


class DPE(nn.Conv2d, FastForm, Fusable):
    """``x + conv(x)``, conv depthwise 7x7, padding 3, with a bias: an ``nn.Conv2d`` (keys ``weight``,
    ``bias``; the release's initialisation through the network's). Shapes: (B, C, H, W) -> same."""

    def __init__(self, dim: int):
        super().__init__(dim, dim, DPE_KERNEL, padding=DPE_KERNEL // 2, groups=dim)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:  # the residual in the centre tap of the kernel
            weight = merged_depthwise_kernel([self.weight], identity=True)
            return depthwise_same(x, weight, self.bias, x.shape[1])
        return x + self._conv_forward(x, self.weight, self.bias)

    def fuse(self) -> nn.Conv2d:
        """Inference form: one depthwise conv computing ``x + conv(x)`` (residual in the centre tap)."""
        return merge_depthwise([self], identity=True)

    @staticmethod
    def fused(dim: int) -> nn.Conv2d:
        """The inference form, built directly: a depthwise 7x7 conv with a bias (as :meth:`fuse`'s)."""
        return nn.Conv2d(dim, dim, DPE_KERNEL, padding=DPE_KERNEL // 2, groups=dim)

    @staticmethod
    def cost(hw: tuple[int, int], dim: int) -> Cost:
        """Either form's cost: the conv (fvcore counts the residual add as 0, merged or not)."""
        return complexity.conv(dim, dim, DPE_KERNEL, hw[0] * hw[1], groups=dim)
