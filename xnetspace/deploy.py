"""Inference (deploy) form of TransXNet: the same function with fewer, larger operators.

The paper names its own speed limit (arXiv 2310.19380, section V): "potentially inefficient
operators (e.g. multi-kernel depthwise convolutions in MS-FFN)". ``TransXNet.reparameterize()``
(or ``timm.utils.reparameterize_model``, which calls the ``fuse()`` method of every module that has
one) replaces each training module by the module below that computes the same eval-mode function.
This module holds the exact folds and the fused modules only; it imports neither the training
modules nor the network (their ``fuse()`` methods build the modules here), so the arrows point
one way: :mod:`xnetspace.ops` -> deploy -> :mod:`xnetspace.layers` -> :mod:`xnetspace.network`.

- every BN next to a convolution is folded into it where that is exact: after any conv (stem,
  downsamples, IDConv's proj, OSR, fc2) or before an unpadded 1x1 conv (STE's ``bn_dw`` and
  ``bn_reduce``, MS-FFN's ``norm``). A BN before a zero-padded conv (MS-FFN's ``fc1_bn``, OSR's
  last BN) is not exact at the borders (its shift would reach the padding) and stays a per-channel
  affine map;
- MS-FFN's depthwise kernels (1, 3, 5, 7), zero-padded to the largest and centred, plus its
  identity, become one depthwise conv; DPE's and OSRA's local-refinement residuals go into the
  centre tap of their kernels;
- the layer scales, linear, go into the last conv before them (LS2 into fc2; LS1 into STE's last
  conv, its weight also scaling the ``+ Y`` shortcut);
- IDConv's proj runs once on the K x K pooled map and the global mean together (it is pointwise);
- OSRA's attention uses ``scaled_dot_product_attention`` with the position bias as additive mask
  off the CPU; on the CPU, where SDPA measured slower for these shapes (``benchmarks/bench_model.py
  --attention``), one ``baddbmm`` (scale and bias fused) then ``bmm`` with no transposed copy;
- each stage caches its position bias resized per input size.

Every module here is eval-only: ``train()`` raises (dropout, drop-path and BN statistics are gone);
gradients still flow, e.g. for saliency maps. State-dict keys differ from the training form: save
and load the training form, then re-parameterise.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .ops import DualBranchTokens, bmm_attention, merged_depthwise_kernel, resize_pos_bias

__all__ = [
    "bn_scale_shift",
    "fold_bn",
    "conv_then_affine",
    "affine_then_conv",
    "merge_depthwise",
    "InferenceOnly",
    "FusedSTE",
    "FusedIDConv",
    "FusedOSRA",
    "FusedDMixer",
    "FusedMSFFN",
    "FusedBlock",
    "FusedStage",
]


# -- exact folds -----------------------------------------------------------------------------------
def _conv_like(conv: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A copy of ``conv`` (stride, padding, groups) with new weight and a bias."""
    out = copy.deepcopy(conv)
    out.weight = nn.Parameter(weight.detach().clone())
    out.bias = nn.Parameter(bias.detach().clone())
    return out


def _bias(conv: nn.Conv2d) -> Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """Eval-mode BN (running statistics) as ``scale * x + shift``, each (C,)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    return scale, shift if bn.bias is None else shift + bn.bias


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv (eval-mode BN; torch's ``fuse_conv_bn_weights``). Exact."""
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    return _conv_like(conv, weight, bias)


@torch.no_grad()
def conv_then_affine(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    """``scale * conv(x) + shift`` (per output channel, (C_out,) each) as one conv. Exact."""
    return _conv_like(conv, conv.weight * scale.reshape(-1, 1, 1, 1), _bias(conv) * scale + shift)


@torch.no_grad()
def affine_then_conv(scale: Tensor, shift: Tensor, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(scale * x + shift)`` (per input channel, (C_in,) each) as one conv.

    Raises:
        ValueError: ``conv`` is not a dense, unpadded 1x1 conv; for any other conv the shift
            would also reach the zero padding (or mix across groups) and the fold is not exact.
    """
    if conv.kernel_size != (1, 1) or conv.groups != 1 or tuple(conv.padding) != (0, 0):
        raise ValueError(f"an affine map folds exactly only into a dense unpadded 1x1 conv, not {conv}")
    weight = conv.weight * scale.reshape(1, -1, 1, 1)
    return _conv_like(conv, weight, _bias(conv) + conv.weight.flatten(1) @ shift)


@torch.no_grad()
def merge_depthwise(convs: Sequence[nn.Conv2d], identity: bool = False) -> nn.Conv2d:
    """Depthwise convs on consecutive channel groups (outputs concatenated), plus ``x`` when
    ``identity``, as one depthwise conv of the largest kernel K, padding K // 2.

    Exact: a k x k kernel zero-padded to K x K and centred reads the same taps under the same zero
    padding, and the identity is a 1 in the centre tap. Shapes: (B, sum C_i, H, W) -> same.

    Raises:
        ValueError: a conv that is not depthwise with stride 1 and padding k // 2 (odd k).
    """
    for c in convs:
        k = c.kernel_size[0]
        if c.groups != c.in_channels or c.out_channels != c.in_channels or c.stride != (1, 1) \
                or c.kernel_size != (k, k) or k % 2 == 0 or tuple(c.padding) != (k // 2, k // 2):
            raise ValueError(f"merge_depthwise needs odd-kernel depthwise convs, stride 1, padding k//2: {c}")
    weight = merged_depthwise_kernel([c.weight for c in convs], identity)
    size = weight.shape[-1]
    ref = convs[0].weight
    out = nn.Conv2d(len(weight), len(weight), size, padding=size // 2, groups=len(weight),
                    device=ref.device, dtype=ref.dtype)
    out.weight.copy_(weight)
    out.bias.copy_(torch.cat([_bias(c) for c in convs]))
    return out


def _affine_param(values: Tensor) -> nn.Parameter:
    """(C,) -> (C, 1, 1) parameter that broadcasts over (B, C, H, W) in either memory format."""
    return nn.Parameter(values.detach().reshape(-1, 1, 1).clone())


# -- fused modules ---------------------------------------------------------------------------------
class InferenceOnly(nn.Module):
    """Base of the re-parameterised modules: always in eval mode.

    Raises:
        RuntimeError: on ``train()``/``train(True)``: the folds assume eval mode (BN running
            statistics, no dropout or drop-path), so the training form must be trained instead.
    """

    def train(self, mode: bool = True) -> "InferenceOnly":
        if mode:
            raise RuntimeError(
                f"{type(self).__name__} is part of a re-parameterised (inference-only) TransXNet and "
                "cannot train; train the training form (build_model / load_checkpoint) and call "
                "reparameterize() afterwards"
            )
        return super().train(False)


class FusedSTE(InferenceOnly):
    """Squeezed token enhancer (paper eq. 2) with its three BNs folded:
    DW 3x3 -> GELU -> 1x1 C -> c' -> GELU -> 1x1 c' -> C. Shapes: (B, C, H, W) -> same."""

    def __init__(self, conv_dw: nn.Conv2d, conv_reduce: nn.Conv2d, conv_expand: nn.Conv2d):
        super().__init__()
        self.conv_dw, self.conv_reduce, self.conv_expand = conv_dw, conv_reduce, conv_expand
        self.act = nn.GELU()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_expand(self.act(self.conv_reduce(self.act(self.conv_dw(x)))))


class FusedIDConv(InferenceOnly):
    """Input-dependent depthwise conv (paper eq. 3) with proj's BN folded and proj run once.

    proj is pointwise, so the K x K pooled map and the global mean go through it together as one
    (B, C, K*K + 1, 1) map. Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, weight: Tensor, bias: Tensor, proj: nn.Module, kernel_size: int):
        super().__init__()
        self.num_groups, self.kernel_size = weight.shape[0], kernel_size
        self.weight = nn.Parameter(weight.detach().flatten(2).clone())  # (G, C, K*K)
        self.bias = nn.Parameter(bias.detach().clone())  # (G, C)
        self.proj = proj
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        G, K = self.num_groups, self.kernel_size
        context = torch.cat([F.adaptive_avg_pool2d(x, K).flatten(2), x.mean(dim=(-2, -1)).unsqueeze(-1)], dim=2)
        scale = self.proj(context.unsqueeze(-1)).reshape(B, G, C, K * K + 1).softmax(dim=1)
        weight = (scale[..., :-1] * self.weight).sum(dim=1)  # (B, C, K*K)
        bias = (scale[..., -1] * self.bias).sum(dim=1)  # (B, C)
        x = F.conv2d(x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, K, K), bias.flatten(),
                     padding=K // 2, groups=B * C)
        return x.reshape(B, C, H, W)


class FusedOSRA(InferenceOnly):
    """Overlapping spatial-reduction attention (paper eq. 4) with OSR's BNs folded (the second
    one, before the padded LR conv, kept as ``sr_scale``/``sr_shift``) and LR's residual merged.

    ``fused_attn``: None (default) uses ``F.scaled_dot_product_attention`` except on the CPU, where
    the explicit ``baddbmm``/``softmax``/``bmm`` path is faster for these shapes; True/False force
    one. Shapes: (B, C, H, W) -> same; ``pos_bias`` (1 or B, h, N, M).
    """

    def __init__(self, q: nn.Conv2d, sr: Optional[nn.Module], sr_scale: Optional[Tensor],
                 sr_shift: Optional[Tensor], local_conv: nn.Conv2d, kv: nn.Conv2d, num_heads: int, scale: float):
        super().__init__()
        self.num_heads, self.scale = num_heads, scale
        self.fused_attn: Optional[bool] = None
        self.q, self.kv, self.local_conv = q, kv, local_conv
        self.sr = sr
        self.sr_scale = None if sr_scale is None else _affine_param(sr_scale)
        self.sr_shift = None if sr_shift is None else _affine_param(sr_shift)
        self.eval()

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(x)
        kv = x if self.sr is None else torch.addcmul(self.sr_shift, self.sr(x), self.sr_scale)
        k, v = self.kv(self.local_conv(kv)).chunk(2, dim=1)  # (B, C, h', w') each
        use_sdpa = self.fused_attn if self.fused_attn is not None else not x.is_cpu
        if use_sdpa:
            q, k, v = (t.reshape(B, h, d, -1).transpose(-1, -2) for t in (q, k, v))  # (B, h, N|M, d)
            mask = None if pos_bias is None else pos_bias.to(q.dtype)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale).transpose(-1, -2)
            return x.reshape(B, C, H, W)
        return bmm_attention(q, k, v, h, self.scale, pos_bias)


class FusedDMixer(InferenceOnly, DualBranchTokens):
    """D-Mixer (paper eq. 2) with the block's layer scale LS1 folded in:
    ``LS1(STE(Y) + Y) = STE'(Y) + w * Y`` (STE' has w and LS1's bias in its last conv).

    ``forward(x, pos_bias, shortcut)`` adds ``shortcut`` (the block's residual) in the same pass.
    Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, split: Tuple[int, int], idconv: Optional[nn.Module], osra: Optional[nn.Module],
                 ste: FusedSTE, y_scale: Optional[Tensor] = None):
        super().__init__()
        self.split, self.idconv, self.osra, self.ste = tuple(split), idconv, osra, ste
        self.y_scale = None if y_scale is None else _affine_param(y_scale)
        self.eval()

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None, shortcut: Optional[Tensor] = None) -> Tensor:
        y = self.dual_branch_tokens(x, pos_bias)
        out = self.ste(y)
        if shortcut is not None:
            out = out + shortcut
        return out + y if self.y_scale is None else torch.addcmul(out, y, self.y_scale)


class FusedMSFFN(InferenceOnly):
    """MS-FFN (paper III-C) for inference: fc1 -> GELU -> ``fc1_scale * x + fc1_shift`` (fc1's BN,
    kept: a zero-padded conv follows) -> one depthwise KxK conv (every branch and the identity) ->
    GELU -> fc2 (1x1 with ``norm``, fc2's BN and the layer scale LS2 folded in).
    Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, fc1: nn.Conv2d, fc1_scale: Tensor, fc1_shift: Tensor, dwconv: nn.Conv2d, fc2: nn.Conv2d):
        super().__init__()
        self.fc1, self.dwconv, self.fc2 = fc1, dwconv, fc2
        self.fc1_scale, self.fc1_shift = _affine_param(fc1_scale), _affine_param(fc1_shift)
        self.act = nn.GELU()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = torch.addcmul(self.fc1_shift, self.act(self.fc1(x)), self.fc1_scale)
        return self.fc2(self.act(self.dwconv(x)))


class FusedBlock(InferenceOnly):
    """TransXNet block (paper eq. 1) for inference: ``x = DPE'(x)`` (residual in the centre tap),
    ``x = D-Mixer'(GN1(x), P, shortcut=x)`` (LS1 folded), ``x = x + MS-FFN'(GN2(x))`` (LS2 folded).
    Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, dpe: nn.Conv2d, norm1: nn.Module, mixer: FusedDMixer, norm2: nn.Module, ffn: FusedMSFFN):
        super().__init__()
        self.dpe, self.norm1, self.mixer, self.norm2, self.ffn = dpe, norm1, mixer, norm2, ffn
        self.eval()

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        x = self.dpe(x)
        x = self.mixer(self.norm1(x), pos_bias, shortcut=x)
        return x + self.ffn(self.norm2(x))


class FusedStage(InferenceOnly):
    """A stage for inference: fused downsample, fused blocks, and the position bias (paper eq. 4, P)
    resized once per input size and cached (up to ``max_cached_sizes`` sizes; cleared by ``.to()``/``.half()``).

    Under ``torch.compile``/``torch.export`` a size not yet cached is resized in the graph instead.
    Shapes: (B, C_in, 2H, 2W) -> (B, C, H, W) (or same size without downsample).
    """

    max_cached_sizes = 8

    def __init__(self, downsample: nn.Module, pos_bias: Optional[Tensor], sr_ratio: int,
                 blocks: Sequence[FusedBlock]):
        super().__init__()
        self.sr_ratio = sr_ratio
        self.grad_checkpointing = False  # kept for set_grad_checkpointing(); nothing to checkpoint
        self.downsample = downsample
        self.register_buffer("pos_bias", None if pos_bias is None else pos_bias.detach().clone())
        self.blocks = nn.ModuleList(blocks)
        self._pos_bias_cache: "OrderedDict[Tuple[int, int], Tensor]" = OrderedDict()
        self.eval()

    def _apply(self, fn, recurse: bool = True):
        self._pos_bias_cache.clear()  # cached tensors would keep the old device/dtype
        return super()._apply(fn, recurse)

    def resized_pos_bias(self, height: int, width: int) -> Optional[Tensor]:
        """Position bias (1, h, N, M) for an (height, width) map, from the cache when it is there."""
        if self.pos_bias is None:
            return None
        key = (height, width)
        bias = self._pos_bias_cache.get(key)
        if bias is None:
            bias = resize_pos_bias(self.pos_bias, height, width, self.sr_ratio)
            if not torch.compiler.is_compiling():
                if len(self._pos_bias_cache) >= self.max_cached_sizes:
                    self._pos_bias_cache.popitem(last=False)
                self._pos_bias_cache[key] = bias
        return bias

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        pos_bias = self.resized_pos_bias(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            x = block(x, pos_bias)
        return x
