"""TransXNet operators, from small to large: layer scale, IDConv, OSRA, STE, D-Mixer, MS-FFN.

Paper: arXiv 2310.19380, section III; release: github.com/LMMMEng/TransXNet `models/transxnet.py`.
Every module computes exactly what the release computes (same operator order, biases, norms and
initialisation), so release checkpoints load through :mod:`xnetspace.checkpoint` and reproduce
its outputs. Shapes: ``B`` batch, ``C`` channels, ``H x W`` map, ``N = H*W`` tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, trunc_normal_
from torch import Tensor, nn

__all__ = ["LayerScale", "IDConv", "OSRA", "SqueezedTokenEnhancer", "DMixer", "MultiScaleDWConv", "MSFFN"]


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, act: bool = False, **kwargs) -> ConvNormAct:
    """Conv (no bias) -> BN (-> GELU): the release's ``ConvModule``; keys ``conv``, ``bn``."""
    return ConvNormAct(in_chs, out_chs, kernel_size, bias=False, apply_act=act, act_layer=nn.GELU, **kwargs)


class LayerScale(nn.Module):
    """Per-channel affine map ``w * x + b`` as a depthwise 1x1 conv (paper eq. 1, LS).

    Shapes: (B, C, H, W) -> (B, C, H, W). ``weight`` (C, 1, 1, 1) starts at ``init_value``,
    ``bias`` (C,) at 0 (release ``LayerScale``). FLOPs: B*C*H*W (one per element, as a conv).
    """

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])


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
            _conv_bn(dim, dim // reduction, act=True),
            nn.Conv2d(dim // reduction, dim * num_groups, 1),
        )
        trunc_normal_(self.weight, std=0.02)
        trunc_normal_(self.bias, std=0.02)

    def dynamic_weight_bias(self, x: Tensor) -> tuple[Tensor, Tensor]:
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
        x = F.conv2d(x.reshape(1, B * C, H, W), weight, bias, padding=self.kernel_size // 2, groups=B * C)
        return x.reshape(B, C, H, W)


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
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, dim * 2, 1)
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr = nn.Sequential(
                _conv_bn(dim, dim, k, stride=sr_ratio, padding=k // 2, groups=dim, act=True),
                _conv_bn(dim, dim, 1, groups=dim),
            )
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.num_heads
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


class SqueezedTokenEnhancer(nn.Module):
    """Squeezed token enhancer, STE (paper section III-B, eq. 2): a cheap channel/spatial mixer.

    DW 3x3 -> GELU -> BN -> 1x1 C -> c' -> GELU -> BN -> 1x1 c' -> C -> BN, c' = max(16, C // 8).
    Shapes: (B, C, H, W) -> (B, C, H, W). The D-Mixer adds its input back (``STE(Y) + Y``).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.bn_dw = nn.BatchNorm2d(dim)
        self.conv_reduce = nn.Conv2d(dim, hidden_dim, 1)
        self.bn_reduce = nn.BatchNorm2d(hidden_dim)
        self.conv_expand = nn.Conv2d(hidden_dim, dim, 1)
        self.bn_expand = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn_dw(self.act(self.conv_dw(x)))
        x = self.bn_reduce(self.act(self.conv_reduce(x)))
        return self.bn_expand(self.conv_expand(x))


class DMixer(nn.Module):
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
            self.idconv = nn.Conv2d(local_dim, local_dim, kernel_size, padding=kernel_size // 2, groups=local_dim)
        self.osra = OSRA(attn_dim, num_heads, sr_ratio) if attn_dim else None
        self.ste = SqueezedTokenEnhancer(dim, ste_dim)

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        if self.idconv is None:
            x = self.osra(x, pos_bias)
        elif self.osra is None:
            x = self.idconv(x)
        else:
            x_local, x_global = x.split(self.split, dim=1)
            x = torch.cat([self.idconv(x_local), self.osra(x_global, pos_bias)], dim=1)
        return self.ste(x) + x


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

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([conv(part) for conv, part in zip(self.convs, x.split(self.splits, dim=1))], dim=1)


class MSFFN(nn.Module):
    """Multi-scale feed-forward network, MS-FFN (paper section III-C).

    fc1 (1x1 C -> hid, no bias) -> GELU -> BN; ``x + MSDW(x)``; GELU -> BN; dropout; fc2
    (1x1 hid -> C, no bias) -> BN; dropout. Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7), drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, bias=False)
        self.fc1_bn = nn.BatchNorm2d(hidden_dim)
        self.msdw = MultiScaleDWConv(hidden_dim, kernel_sizes)
        self.norm = nn.BatchNorm2d(hidden_dim)
        self.fc2 = _conv_bn(hidden_dim, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1_bn(self.act(self.fc1(x)))
        x = self.msdw(x) + x
        x = self.drop(self.norm(self.act(x)))
        return self.drop(self.fc2(x))
