"""The classifier head (paper Fig. 2; the release's ``classifier``): GN -> global pooling -> linear.

A plain ``nn.Sequential`` with keys ``norm``, ``global_pool``, ``fc`` (timm's layout: the
network's ``forward_head`` and ``reset_classifier`` reach into it by name). It has no training
variants and nothing to fold.
"""

from __future__ import annotations

from collections import OrderedDict

from timm.layers import SelectAdaptivePool2d
from torch import nn

from . import complexity
from .complexity import Cost

__all__ = ["head", "head_pool", "head_cost"]


def head_pool(pool_type: str, num_classes: int) -> SelectAdaptivePool2d:
    """timm's pooling of ``pool_type`` (``"avg"``, ``"max"``, ...; ``""``: none, the map is kept).

    Raises:
        ValueError: ``""`` with ``num_classes > 0`` (a linear layer needs a pooled vector), or an
            unknown pool type (timm's message).
    """
    # "" keeps the map (timm: flatten only when pooling); a linear head cannot follow a map.
    if not pool_type and num_classes:
        raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


def head(in_chs: int, num_classes: int, global_pool: str = "avg") -> nn.Sequential:
    """GN (one group) -> pooling -> linear (``nn.Identity`` when ``num_classes == 0``).
    Shapes: (B, in_chs, H, W) -> (B, num_classes), or (B, in_chs) pre-logits."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.GroupNorm(1, in_chs),
            global_pool=head_pool(global_pool, num_classes),
            fc=nn.Linear(in_chs, num_classes) if num_classes else nn.Identity(),
        )
    )


def head_cost(hw: tuple[int, int], in_chs: int, num_classes: int) -> Cost:
    """Cost on an (H, W) input map ``hw``, with average pooling (the default). Activations are not
    counted: the last stage's bound covers its output map."""
    n = hw[0] * hw[1]
    cost = complexity.group_norm(in_chs, n) + complexity.adaptive_avg_pool(in_chs, n)
    if num_classes:
        cost += complexity.linear(in_chs, num_classes)
    return cost
