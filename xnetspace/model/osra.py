"""Overlapping spatial-reduction attention, OSRA (paper section III-B2, eq. 4): the D-Mixer's global
branch, with its relative position bias P.

Reference form: queries from every position; keys and values from the map reduced by OSR and
refined by LR (a residual depthwise 3x3); per-head ``softmax(q k^T * scale + P) v``. Fast training
form: LR's residual in the centre tap of its kernel (:func:`~xnetspace.model.kernels.depthwise_same`)
and the attention as one ``baddbmm`` + ``bmm`` (:func:`bmm_attention`). Inference form:
:class:`FusedOSRA` (OSR's BNs folded, LR's residual merged; SDPA off the CPU). P belongs to the
stage, which resizes it once per input size (:func:`resize_pos_bias`) for all its blocks.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from ..spec import StageSpec
from . import complexity
from .complexity import Cost
from .convs import ConvBN, PointwiseConv2d, conv_bn, fused_conv_bn
from .folds import FastForm, Fusable, InferenceOnly, affine_param, bn_scale_shift, merge_depthwise
from .kernels import depthwise_same, merged_depthwise_kernel

torch.fx.wrap("depthwise_same")  # a leaf for torchvision's FX tracer too (timm's knows it already)

__all__ = ["OSRA", "FusedOSRA", "reduced_size", "resize_pos_bias", "bmm_attention"]


def reduced_size(size: int, sr_ratio: int) -> int:
    """Side length after OSRA's spatial reduction (paper eq. 4, OSR).

    OSR is a depthwise conv of kernel ``r + 3``, stride ``r``, padding ``(r + 3) // 2``; this is its
    output length for an input of ``size`` (``ceil(size / r)`` for even r, ``size // r + 1`` for
    odd r). ``sr_ratio == 1`` means no reduction.
    """
    if sr_ratio == 1:
        return size
    kernel, pad = sr_ratio + 3, (sr_ratio + 3) // 2
    return (size + 2 * pad - kernel) // sr_ratio + 1


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


def bmm_attention(
    q: Tensor, k: Tensor, v: Tensor, num_heads: int, scale: float, pos_bias: Tensor | None = None
) -> Tensor:
    """``softmax(q^T k * scale + P) v`` per head, with one ``baddbmm`` (scale and bias fused) and
    one ``bmm`` that needs no transposed copy of the attention map (paper eq. 4).

    Shapes: ``q`` (B, C, H, W); ``k``, ``v`` (B, C, h, w); ``pos_bias`` P (1 or B, heads, H*W, h*w);
    heads split the channels head-major; returns (B, C, H, W). On the CPU this measured faster
    than ``scaled_dot_product_attention`` for TransXNet's shapes (``benchmarks/bench_model.py``).
    """
    B, C, H, W = q.shape
    d = C // num_heads
    q = q.reshape(B * num_heads, d, H * W).transpose(1, 2)  # (B*h, N, d)
    k, v = k.reshape(B * num_heads, d, -1), v.reshape(B * num_heads, d, -1)  # (B*h, d, M)
    if pos_bias is None:
        attn = torch.bmm(q, k) * scale
    else:
        bias = pos_bias.expand(B, -1, -1, -1).reshape(B * num_heads, H * W, -1)
        attn = torch.baddbmm(bias, q, k, alpha=scale)  # (B*h, N, M)
    return torch.bmm(v, attn.softmax(dim=-1).transpose(1, 2)).reshape(B, C, H, W)  # (B*h, d, N) first


class OSRA(nn.Module, FastForm, Fusable):
    """Overlapping spatial-reduction attention (paper section III-B2, eq. 4).

    Queries come from every position; keys and values from the map reduced by OSR (a depthwise
    conv of kernel r+3, stride r -> BN -> GELU -> depthwise 1x1 -> BN; none when r = 1) and refined
    by a residual depthwise 3x3 (LR). Heads split channels head-major. The logits get the stage's
    relative position bias ``pos_bias`` (1 or B, h, N, M), which the caller has already resized.

    Shapes: (B, C, H, W) -> (B, C, H, W); attention map (B, h, N, M), M = tokens after OSR.
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1):
        super().__init__()
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.scale = (dim // num_heads) ** -0.5
        self.q = PointwiseConv2d(dim, dim)
        self.kv = PointwiseConv2d(dim, dim * 2)
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr: nn.Module = nn.Sequential(
                conv_bn(dim, dim, k, stride=sr_ratio, padding=k // 2, groups=dim, act=True),
                conv_bn(dim, dim, 1, groups=dim),
            )
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fast = False

    def forward(self, x: Tensor, pos_bias: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.num_heads
        if self.fast:  # LR's residual in the centre tap of its kernel; attention by (b)addbmm
            kv = self.sr(x)
            kv = depthwise_same(
                kv, merged_depthwise_kernel([self.local_conv.weight], identity=True), self.local_conv.bias, C
            )
            k, v = self.kv(kv).chunk(2, dim=1)
            return bmm_attention(self.q(x), k, v, h, self.scale, pos_bias)
        q = self.q(x).reshape(B, h, C // h, -1).transpose(-1, -2)  # (B, h, N, d)
        kv = self.sr(x)
        kv = self.local_conv(kv) + kv
        k, v = self.kv(kv).chunk(2, dim=1)
        k = k.reshape(B, h, C // h, -1)  # (B, h, d, M)
        v = v.reshape(B, h, C // h, -1).transpose(-1, -2)  # (B, h, M, d)
        attn = (q @ k) * self.scale  # (B, h, N, M)
        if pos_bias is not None:
            attn = attn + pos_bias
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(-1, -2)  # (B, h, d, N)
        return x.reshape(B, C, H, W)

    def fuse(self) -> nn.Module:
        """Inference form (:class:`FusedOSRA`): OSR's BNs folded (the last one, before
        LR's zero-padded conv, as an affine map), LR's residual merged into its kernel; attention
        through SDPA off the CPU."""
        sr, scale, shift = None, None, None
        if isinstance(self.sr, nn.Sequential):
            sr = cast(ConvBN, self.sr[0]).fuse()
            last = cast(ConvBN, self.sr[1])
            dw, bn = last.conv, last.bn  # depthwise 1x1 then BN: one affine map
            scale, shift = bn_scale_shift(bn)
            scale = scale * dw.weight.flatten()  # the 1x1 has no bias
        return FusedOSRA(self.q.in_channels, self.num_heads, self.sr_ratio).take(
            q=copy.deepcopy(self.q),
            sr=sr,
            sr_scale=None if scale is None else affine_param(scale),
            sr_shift=None if shift is None else affine_param(shift),
            local_conv=merge_depthwise([self.local_conv], identity=True),
            kv=copy.deepcopy(self.kv),
        )

    @staticmethod
    def knobs(stage: StageSpec) -> dict[str, int]:
        """OSRA's constructor arguments (other than ``dim``) from a stage spec: what the D-Mixer
        passes through to it unread, so that a new OSRA knob changes the spec and this module only."""
        return dict(num_heads=stage.num_heads, sr_ratio=stage.sr_ratio)

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, num_heads: int = 1, sr_ratio: int = 1) -> Cost:
        """q (on the N tokens), kv, OSR and LR (on the M tokens after OSR), and the two attention
        matmuls (q k and attn v). Activations: queries, keys, values and outputs (4 C N + 4 C M),
        the logits with their bias sum and softmax (3 h N M). Logits: h N M."""
        n = hw[0] * hw[1]
        reduced = (reduced_size(hw[0], sr_ratio), reduced_size(hw[1], sr_ratio))
        m = reduced[0] * reduced[1]
        cost = PointwiseConv2d.cost(hw, dim, dim) + PointwiseConv2d.cost(reduced, dim, 2 * dim)  # q, kv
        if sr_ratio > 1:
            cost += ConvBN.cost(reduced, dim, dim, sr_ratio + 3, groups=dim) + ConvBN.cost(
                reduced, dim, dim, 1, groups=dim
            )
        cost += complexity.conv(dim, dim, 3, m, groups=dim)  # local_conv (LR)
        cost += complexity.matmul(2 * dim * n * m)  # q @ k and attn @ v
        cost.activations = 4 * dim * n + 4 * dim * m + 3 * num_heads * n * m
        cost.logits = num_heads * n * m
        return cost


class FusedOSRA(InferenceOnly):
    """Overlapping spatial-reduction attention (paper eq. 4) with OSR's BNs folded (the second
    one, before the padded LR conv, kept as ``sr_scale``/``sr_shift``) and LR's residual merged.

    ``fused_attn``: None (default) uses ``F.scaled_dot_product_attention`` except on the CPU, where
    the explicit ``baddbmm``/``softmax``/``bmm`` path is faster for these shapes; True/False force
    one. Shapes: (B, C, H, W) -> same; ``pos_bias`` (1 or B, h, N, M).
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.fused_attn: bool | None = None
        self.q = PointwiseConv2d(dim, dim)
        self.kv = PointwiseConv2d(dim, dim * 2)
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.sr: nn.Module | None = None
        self.sr_scale: nn.Parameter | None = None
        self.sr_shift: nn.Parameter | None = None
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr = fused_conv_bn(dim, dim, k, act=True, stride=sr_ratio, padding=k // 2, groups=dim)
            self.sr_scale = nn.Parameter(torch.ones(dim, 1, 1))
            self.sr_shift = nn.Parameter(torch.zeros(dim, 1, 1))
        self.eval()

    @staticmethod
    def cost(hw: tuple[int, int], dim: int, num_heads: int = 1, sr_ratio: int = 1, pos_bias: bool = True) -> Cost:
        """q, kv, OSR's strided conv with its BN folded and the second BN's affine map (``addcmul``:
        0 flops, 2 C parameters), LR with its residual merged, and the attention on the CPU path:
        q k as ``baddbmm`` with the position bias (``bmm`` without one), attn v as ``bmm``.
        Logits: h N M."""
        n = hw[0] * hw[1]
        reduced = (reduced_size(hw[0], sr_ratio), reduced_size(hw[1], sr_ratio))
        m = reduced[0] * reduced[1]
        cost = PointwiseConv2d.cost(hw, dim, dim) + PointwiseConv2d.cost(reduced, dim, 2 * dim)  # q, kv
        if sr_ratio > 1:
            cost += ConvBN.fused_cost(reduced, dim, dim, sr_ratio + 3, groups=dim) + Cost(params=2 * dim)
        cost += complexity.conv(dim, dim, 3, m, groups=dim)  # local_conv (LR)
        cost += complexity.bmm(dim * n * m, bias=pos_bias) + complexity.bmm(dim * n * m)  # q k, attn v
        cost.logits = num_heads * n * m
        return cost

    def forward(self, x: Tensor, pos_bias: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(x)
        # sr_shift and sr_scale are set whenever sr is (both None otherwise); the ignore ends the line:
        # TorchScript parses type comments.
        kv = x if self.sr is None else torch.addcmul(self.sr_shift, self.sr(x), self.sr_scale)  # type: ignore[arg-type]
        k, v = self.kv(self.local_conv(kv)).chunk(2, dim=1)  # (B, C, h', w') each
        use_sdpa = self.fused_attn if self.fused_attn is not None else not x.is_cpu
        if use_sdpa:
            q, k, v = (t.reshape(B, h, d, -1).transpose(-1, -2) for t in (q, k, v))  # (B, h, N|M, d)
            mask = None if pos_bias is None else pos_bias.to(q.dtype)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale).transpose(-1, -2)
            return x.reshape(B, C, H, W)
        return bmm_attention(q, k, v, h, self.scale, pos_bias)
