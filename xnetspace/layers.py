"""TransXNet operators, from small to large: layer scale, IDConv, OSRA, STE, D-Mixer, MS-FFN.

Paper: arXiv 2310.19380, section III; release: github.com/LMMMEng/TransXNet `models/transxnet.py`.
Every module computes exactly what the release computes (same operator order, biases, norms and
initialisation), so release checkpoints load through :mod:`xnetspace.checkpoint` and reproduce
its outputs. Shapes: ``B`` batch, ``C`` channels, ``H x W`` map, ``N = H*W`` tokens.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import ConvNormAct, trunc_normal_
from torch import Tensor, nn

from .deploy import (FusedDMixer, FusedIDConv, FusedMSFFN, FusedOSRA, FusedSTE, affine_then_conv, bn_scale_shift,
                     conv_then_affine, fold_bn, merge_depthwise)
from .ops import DualBranchTokens, bmm_attention, depthwise_same, merged_depthwise_kernel, pointwise

torch.fx.wrap("depthwise_same")  # a leaf for torchvision's FX tracer too (timm's knows it already)

__all__ = [
    "ConvBN", "conv_bn", "PointwiseConv2d", "DepthwiseConv2d", "LayerScale", "IDConv", "OSRA",
    "SqueezedTokenEnhancer", "DMixer", "MultiScaleDWConv", "MSFFN",
]

# Each module with an inference form has ``fuse()`` returning it (timm's ``reparameterize_model``
# convention), built from the folds and fused modules of :mod:`xnetspace.deploy`, which imports
# nothing from here.
#
# Modules with a ``fast`` attribute also have a fast *training* form (``fast = True``, set for the
# whole network by ``TransXNet.set_train_form("fast")``): the same function, train mode included,
# with the same parameters and fewer operators; what each merges is said in its ``forward``.


class ConvBN(ConvNormAct):
    """timm's ConvNormAct (keys ``conv``, ``bn``) whose ``fuse()`` folds the BN into the conv.

    Its fast form runs a dense 1x1 conv as a matmul (:func:`xnetspace.ops.pointwise`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        conv = self.conv
        self.dense_1x1 = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 \
            and tuple(conv.padding) == (0, 0)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and self.dense_1x1:
            return self.bn(pointwise(x, self.conv.weight, self.conv.bias))
        return self.bn(self.conv(x))  # no anti-aliasing layer here (timm's ``aa``)

    def fuse(self) -> nn.Module:
        """Eval-mode equivalent: the conv with BN folded in, then the activation if any."""
        conv = fold_bn(self.conv, self.bn)
        act = self.bn.act
        return (conv if isinstance(act, nn.Identity) else nn.Sequential(conv, act)).eval()


def conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, act: bool = False, **kwargs) -> ConvBN:
    """Conv (no bias) -> BN (-> GELU when ``act``): the release's ``ConvModule``; keys ``conv``, ``bn``.

    Shapes: (B, in_chs, H, W) -> (B, out_chs, H', W'); ``kwargs`` (stride, padding, groups) go to
    timm's ``ConvNormAct``. Used for the stem, the downsamples, IDConv's proj, OSR and fc2.
    """
    return ConvBN(in_chs, out_chs, kernel_size, bias=False, apply_act=act, act_layer=nn.GELU, **kwargs)


class PointwiseConv2d(nn.Conv2d):
    """Dense 1x1 conv: an ``nn.Conv2d`` (same keys, same initialisation); its fast form is one
    matmul (:func:`xnetspace.ops.pointwise`). Shapes: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool = True):
        super().__init__(in_chs, out_chs, 1, bias=bias)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return pointwise(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, self.bias)


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise K x K conv, stride 1, padding K // 2, with a bias: an ``nn.Conv2d`` (same keys).

    Its fast form runs it the fastest exact way for the map's size (a batched matmul on small
    maps; :func:`xnetspace.ops.depthwise_same`). Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, kernel_size: int):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return depthwise_same(x, self.weight, self.bias, self.groups)
        return self._conv_forward(x, self.weight, self.bias)


class LayerScale(nn.Module):
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

    def scale_shift(self) -> Tuple[Tensor, Tensor]:
        """The map as ``scale * x + shift``, each (C,), for folding into a neighbouring conv."""
        return self.weight.flatten(), self.bias


class IDConv(nn.Module):
    """Input-dependent depthwise convolution (paper section III-B1, eq. 3).

    G static kernel banks ``weight`` (G, C, K, K) and bias banks ``bias`` (G, C) are mixed per
    sample by attention weights, softmax over G, that ``proj`` (1x1 conv C -> C//4 -> BN -> GELU
    -> 1x1 conv C//4 -> G*C) computes from the input pooled to K x K (for the kernel) and to 1 x 1
    (for the bias). Each sample is then convolved with its own depthwise kernel, padding K // 2.

    Shapes: (B, C, H, W) -> (B, C, H, W). Requires ``num_groups >= 2`` (with one group the softmax
    is 1: use a static depthwise conv, as :class:`DMixer` does).
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_groups: int = 2, reduction: int = 4):
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"IDConv needs num_groups >= 2, got {num_groups}")
        self.num_groups, self.kernel_size = num_groups, kernel_size
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

    def dynamic_weight_bias(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Per-sample kernel (B*C, 1, K, K) and bias (B*C,) for input ``x`` (B, C, H, W)."""
        B, C, H, W = x.shape
        G, K = self.num_groups, self.kernel_size
        scale = self.proj(self.pool(x)).reshape(B, G, C, K, K).softmax(dim=1)
        weight = (scale * self.weight.unsqueeze(0)).sum(dim=1)  # (B, C, K, K)
        scale = self.proj(x.mean(dim=(-2, -1), keepdim=True)).reshape(B, G, C).softmax(dim=1)
        bias = (scale * self.bias.unsqueeze(0)).sum(dim=1)  # (B, C)
        return weight.reshape(B * C, 1, K, K), bias.flatten()

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        weight, bias = self.dynamic_weight_bias(x)
        # The batch folds into the channels so one grouped conv applies B*C different kernels.
        if self.fast:  # the kernels cropped to the taps that reach the map (exact)
            return depthwise_same(x.reshape(1, B * C, H, W), weight, bias, B * C).reshape(B, C, H, W)
        x = F.conv2d(x.reshape(1, B * C, H, W), weight, bias, padding=self.kernel_size // 2, groups=B * C)
        return x.reshape(B, C, H, W)

    def fuse(self) -> nn.Module:
        """Inference form (:class:`xnetspace.deploy.FusedIDConv`): proj's BN folded, proj run once."""
        proj = nn.Sequential(self.proj[0].fuse(), copy.deepcopy(self.proj[1]))
        return FusedIDConv(self.weight, self.bias, proj, self.kernel_size)


class OSRA(nn.Module):
    """Overlapping spatial-reduction attention (paper section III-B2, eq. 4).

    Queries come from every position; keys and values from the map reduced by OSR (a depthwise
    conv of kernel r+3, stride r -> BN -> GELU -> depthwise 1x1 -> BN; none when r = 1) and refined
    by a residual depthwise 3x3 (LR). Heads split channels head-major. The logits get the stage's
    relative position bias ``pos_bias`` (1 or B, h, N, M), which the caller has already resized.

    Shapes: (B, C, H, W) -> (B, C, H, W); attention map (B, h, N, M), M = tokens after OSR.
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = PointwiseConv2d(dim, dim)
        self.kv = PointwiseConv2d(dim, dim * 2)
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr = nn.Sequential(
                conv_bn(dim, dim, k, stride=sr_ratio, padding=k // 2, groups=dim, act=True),
                conv_bn(dim, dim, 1, groups=dim),
            )
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fast = False

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.num_heads
        if self.fast:  # LR's residual in the centre tap of its kernel; attention by (b)addbmm
            kv = self.sr(x)
            kv = depthwise_same(kv, merged_depthwise_kernel([self.local_conv.weight], identity=True),
                                self.local_conv.bias, C)
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
        """Inference form (:class:`xnetspace.deploy.FusedOSRA`): OSR's BNs folded (the last one, before
        LR's zero-padded conv, as an affine map), LR's residual merged into its kernel; attention
        through SDPA off the CPU."""
        sr, scale, shift = None, None, None
        if isinstance(self.sr, nn.Sequential):
            sr = self.sr[0].fuse()
            dw, bn = self.sr[1].conv, self.sr[1].bn  # depthwise 1x1 then BN: one affine map
            scale, shift = bn_scale_shift(bn)
            scale = scale * dw.weight.flatten()  # the 1x1 has no bias
        return FusedOSRA(copy.deepcopy(self.q), sr, scale, shift, merge_depthwise([self.local_conv], identity=True),
                         copy.deepcopy(self.kv), self.num_heads, self.scale)


class SqueezedTokenEnhancer(nn.Module):
    """Squeezed token enhancer, STE (paper section III-B, eq. 2): a cheap channel/spatial mixer.

    DW 3x3 -> GELU -> BN -> 1x1 C -> c' -> GELU -> BN -> 1x1 c' -> C -> BN, c' = max(16, C // 8).
    Shapes: (B, C, H, W) -> (B, C, H, W). The D-Mixer adds its input back (``STE(Y) + Y``).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.conv_dw = DepthwiseConv2d(dim, 3)
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

    def fuse(self, layer_scale: Optional[LayerScale] = None) -> nn.Module:
        """Inference form (:class:`xnetspace.deploy.FusedSTE`): ``bn_dw`` into ``conv_reduce``,
        ``bn_reduce`` and ``bn_expand`` into ``conv_expand`` (1x1, unpadded: exact), then
        ``layer_scale`` (the block's LS1) into ``conv_expand`` too when given."""
        reduce = affine_then_conv(*bn_scale_shift(self.bn_dw), self.conv_reduce)
        expand = fold_bn(affine_then_conv(*bn_scale_shift(self.bn_reduce), self.conv_expand), self.bn_expand)
        if layer_scale is not None:
            expand = conv_then_affine(expand, *layer_scale.scale_shift())
        return FusedSTE(copy.deepcopy(self.conv_dw), reduce, expand)


class DMixer(DualBranchTokens):
    """Dual dynamic token mixer, D-Mixer (paper section III-B, eq. 2).

    The first ``dim - attn_dim`` channels go through IDConv (a static depthwise conv when
    ``num_groups == 1``), the last ``attn_dim`` through OSRA; the concatenation Y gives
    ``STE(Y) + Y``. ``attn_dim`` 0 or ``dim`` leaves out the unused branch.
    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        dim: int,
        attn_dim: int,
        ste_dim: int,
        kernel_size: int = 7,
        num_groups: int = 2,
        num_heads: int = 1,
        sr_ratio: int = 1,
    ):
        super().__init__()
        local_dim = dim - attn_dim
        self.split = (local_dim, attn_dim)
        self.idconv: Optional[nn.Module] = None
        if local_dim and num_groups > 1:
            self.idconv = IDConv(local_dim, kernel_size, num_groups)
        elif local_dim:  # G = 1: softmax over one group is 1, IDConv is a static DW conv
            self.idconv = DepthwiseConv2d(local_dim, kernel_size)
        self.osra = OSRA(attn_dim, num_heads, sr_ratio) if attn_dim else None
        self.ste = SqueezedTokenEnhancer(dim, ste_dim)

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        x = self.dual_branch_tokens(x, pos_bias)
        return self.ste(x) + x

    def fuse(self, layer_scale: Optional[LayerScale] = None) -> nn.Module:
        """Inference form (:class:`xnetspace.deploy.FusedDMixer`) with the block's LS1 folded in:
        ``LS1(STE(Y) + Y) = STE'(Y) + w * Y``; the branches and STE fused."""
        idconv = self.idconv.fuse() if isinstance(self.idconv, IDConv) else copy.deepcopy(self.idconv)
        osra = None if self.osra is None else self.osra.fuse()
        y_scale = None if layer_scale is None else layer_scale.scale_shift()[0]
        return FusedDMixer(self.split, idconv, osra, self.ste.fuse(layer_scale), y_scale)


class MultiScaleDWConv(nn.Module):
    """Depthwise convs of several kernel sizes on consecutive channel groups (paper III-C).

    With n kernels, the first group has ``dim - (n-1) * (dim // n)`` channels, the others
    ``dim // n`` (release ``MultiScaleDWConv``). Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7)):
        super().__init__()
        n = len(kernel_sizes)
        self.splits = [dim - (n - 1) * (dim // n)] + [dim // n] * (n - 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.splits, kernel_sizes)
        )

    def merged(self, identity: bool = False) -> Tuple[Tensor, Tensor]:
        """The branches as one depthwise kernel (C, 1, K, K) and bias (C,), K the largest kernel,
        plus the identity when asked (:func:`xnetspace.ops.merged_depthwise_kernel`; differentiable)."""
        weights: List[Tensor] = []
        biases: List[Tensor] = []
        for conv in self.convs:
            bias = conv.bias
            assert bias is not None  # built with biases; refines Optional for TorchScript
            weights.append(conv.weight)
            biases.append(bias)
        return merged_depthwise_kernel(weights, identity), torch.cat(biases)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.splits, dim=1)  # indexed, not zipped: FX cannot iterate a traced tuple
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], dim=1)

    def fuse(self, identity: bool = False) -> nn.Conv2d:
        """One depthwise conv of the largest kernel computing ``MSDW(x)`` (``+ x`` with ``identity``):
        smaller kernels zero-padded and centred (exact, :func:`xnetspace.deploy.merge_depthwise`)."""
        return merge_depthwise(self.convs, identity)


class MSFFN(nn.Module):
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

    def fuse(self, layer_scale: Optional[LayerScale] = None) -> nn.Module:
        """Inference form (:class:`xnetspace.deploy.FusedMSFFN`): ``MSDW(x) + x`` as one depthwise conv;
        ``norm``, fc2's BN and ``layer_scale`` (the block's LS2) folded into fc2; ``fc1_bn`` kept as
        an affine map (a zero-padded conv follows it, so folding it would change the borders)."""
        fc2 = fold_bn(affine_then_conv(*bn_scale_shift(self.norm), self.fc2.conv), self.fc2.bn)
        if layer_scale is not None:
            fc2 = conv_then_affine(fc2, *layer_scale.scale_shift())
        return FusedMSFFN(copy.deepcopy(self.fc1), *bn_scale_shift(self.fc1_bn), self.msdw.fuse(identity=True), fc2)
