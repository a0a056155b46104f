"""Pieces shared by TransXNet's training form (:mod:`xnetspace.layers`, :mod:`xnetspace.network`)
and its inference form (:mod:`xnetspace.deploy`): the D-Mixer's two-branch token mixing and the
resizing of a stage's position bias.

They sit below both forms so that each form imports them and neither imports the other's
internals. Both are written so that ``torch.jit.script`` compiles them and ``torch.fx`` traces
the modules that use them (:func:`resize_pos_bias` is a leaf of the FX graph).
Paper: arXiv 2310.19380, eq. 2 (D-Mixer) and eq. 4 (OSRA's position bias P).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from .spec import reduced_size

__all__ = ["DualBranchTokens", "resize_pos_bias"]


class DualBranchTokens(nn.Module):
    """Base of both D-Mixer forms: computes Y = ``concat(IDConv(X1), OSRA(X2, P))`` (paper eq. 2).

    Subclasses set ``split`` ((C1, C2), C1 + C2 = C), ``idconv`` (None when C1 = 0) and ``osra``
    (None when C2 = 0); X1 is the first C1 channels, X2 the last C2, and a missing branch leaves
    all channels to the other. Shapes: (B, C, H, W) -> (B, C, H, W); ``pos_bias`` (1 or B, h, N, M).
    """

    def dual_branch_tokens(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        """Y for input ``x`` (B, C, H, W) and the stage's resized position bias."""
        if self.idconv is None:
            return self.osra(x, pos_bias)
        if self.osra is None:
            return self.idconv(x)
        c_local = self.split[0]
        x_local, x_global = x[:, :c_local], x[:, c_local:]  # views, as split() gives
        return torch.cat([self.idconv(x_local), self.osra(x_global, pos_bias)], dim=1)


@register_notrace_function  # timm's FX tracer (features_only with feature_cls="fx") keeps it as one node
def resize_pos_bias(pos_bias: Tensor, height: int, width: int, sr_ratio: int) -> Tensor:
    """A stage's position bias (1, h, N0, M0) for an (height, width) map: (1, h, N, M), N = H*W,
    M the tokens after OSR; resized bicubically (``align_corners=False``) unless already that size
    (then ``pos_bias`` itself). Paper eq. 4, P.

    Under ``torch.fx`` tracing ``height``/``width`` are proxies, so the modules that call this
    register it as a leaf (``torch.fx.wrap``) rather than tracing its size arithmetic.
    """
    n = height * width
    m = reduced_size(height, sr_ratio) * reduced_size(width, sr_ratio)
    if pos_bias.shape[-2] == n and pos_bias.shape[-1] == m:
        return pos_bias
    return F.interpolate(pos_bias, size=[n, m], mode="bicubic", align_corners=False)
