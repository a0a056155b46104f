"""Kernels several TransXNet operators share: depthwise kernels merged into one, and exact
matmul forms of small-map depthwise and dense 1x1 convolutions (the fast training form's).

Used by the fast training forms of DPE (:mod:`.dpe`), IDConv (:mod:`.idconv`), OSRA's local
refinement (:mod:`.osra`), STE (through :mod:`.convs`) and MS-FFN (:mod:`.ffn`), and by the folds
into the inference form (:func:`xnetspace.model.folds.merge_depthwise`). Written so that
``torch.jit.script`` compiles them; :func:`depthwise_same` is a leaf of FX graphs (each module that
calls it also registers it with ``torch.fx.wrap``). Paper: arXiv 2310.19380, eq. 1 (DPE), eq. 4
(LR) and section III-C (MS-FFN's multi-kernel depthwise convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

__all__ = ["merged_depthwise_kernel", "depthwise_same", "pointwise"]


def merged_depthwise_kernel(weights: list[Tensor], identity: bool = False) -> Tensor:
    """Depthwise kernels (C_i, 1, k_i, k_i), odd k_i, as one (sum C_i, 1, K, K) kernel, K = max k_i.

    Each kernel is zero-padded to K x K and centred, so under padding K // 2 it reads the same taps
    as before under padding k_i // 2; the groups' outputs come out concatenated in order. With
    ``identity`` the centre tap gains 1, so the conv also adds its input (a residual ``x + conv(x)``
    as one conv). Exact and differentiable: the gradient reaches every ``weights[i]``.
    """
    size = 1
    for w in weights:
        size = max(size, w.shape[-1])
    padded: list[Tensor] = []
    for w in weights:
        pad = (size - w.shape[-1]) // 2
        padded.append(F.pad(w, [pad, pad, pad, pad]) if pad else w)
    weight = torch.cat(padded) if len(padded) > 1 else padded[0]
    if identity:
        centre = torch.zeros(size * size, dtype=weight.dtype, device=weight.device)
        centre[size * size // 2] = 1.0
        weight = weight + centre.reshape(1, 1, size, size)
    return weight


@register_notrace_function  # its path depends on the map size: one node under FX
def depthwise_same(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=K // 2, groups=groups)`` for odd K x K kernels and stride
    1, computed the fastest exact way for the map's size.

    A depthwise conv on an H x W map is, per channel, a linear map of its N = H*W pixels: an N x N
    matrix whose entries are kernel taps (zero where a tap would read padding). When N <= 2 K^2
    (TransXNet's 7x7 kernels on the 8x8 to 1x1 maps of 32x32 inputs) the matrices, gathered from
    the kernel, and one batched matmul do fewer multiply-adds than the conv (N^2 against N K^2)
    and ran 2-40x faster than oneDNN's depthwise conv on the CPU, forward and backward together
    (batch 64); larger maps use the conv, as do batches under 8 (IDConv's per-sample kernels fold
    the batch into the channels, so nothing amortises gathering the matrices). Exact: the same
    products, summed in another order. The conv path crops the kernel to the taps that can reach
    the map (on a 2x2 map a 7x7 kernel is a 3x3 one), which is exact too.

    Shapes: ``x`` (B, C, H, W); ``weight`` (C, 1, K, K); ``bias`` (C,) or None; returns (B, C, H, W).
    """
    k = weight.shape[-1]
    B, C, H, W = x.shape
    n = H * W
    if groups != C or weight.shape[0] != C or n > 2 * k * k or B < 8 or not x.is_contiguous():
        # a tap more than H - 1 rows (W - 1 columns) from the centre reads only zero padding
        kh, kw = min(k, 2 * H - 1), min(k, 2 * W - 1)
        if kh < k or kw < k:
            weight = weight[:, :, (k - kh) // 2 : (k + kh) // 2, (k - kw) // 2 : (k + kw) // 2]
        return F.conv2d(x, weight, bias, padding=[kh // 2, kw // 2], groups=groups)
    # index[o, i]: the tap that carries input pixel i to output pixel o; k*k (a zero) if none
    rows = torch.arange(H, device=x.device).repeat_interleave(W)
    cols = torch.arange(W, device=x.device).repeat(H)
    dy = rows.unsqueeze(0) - rows.unsqueeze(1) + k // 2
    dx = cols.unsqueeze(0) - cols.unsqueeze(1) + k // 2
    inside = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
    index = torch.where(inside, dy * k + dx, k * k)
    taps = torch.cat([weight.reshape(C, k * k), weight.new_zeros(C, 1)], dim=1)
    out = torch.einsum("com,bcm->bco", taps[:, index], x.reshape(B, C, n)).reshape(B, C, H, W)
    return out if bias is None else out + bias.reshape(-1, 1, 1)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A dense 1x1 conv (stride 1, no padding) as one matmul over the flattened map: on the CPU,
    for contiguous (NCHW) maps of 8x8 and smaller, this ran up to 2x faster than oneDNN's conv,
    forward and backward together (batch 64). Exact up to the order of the sums; other memory
    formats go to the conv. Written as an einsum so that under ``torch.func.vmap`` (packed
    replicas, :mod:`xnetspace.pack`) it is one batched matmul over the replicas rather than one per
    replica and image (a packed training step of 4 tiny_cpu replicas: 310 ms against 450 ms).

    Shapes: ``x`` (B, C_in, H, W); ``weight`` (C_out, C_in, 1, 1); ``bias`` (C_out,) or None;
    returns (B, C_out, H, W).
    """
    B, C, H, W = x.shape
    if not x.is_contiguous():
        return F.conv2d(x, weight, bias)
    out = torch.einsum("oc,bcn->bon", weight.reshape(weight.shape[0], C), x.reshape(B, C, H * W))  # (B, C_out, N)
    if bias is not None:
        out = out + bias.reshape(-1, 1)
    return out.reshape(B, -1, H, W)
