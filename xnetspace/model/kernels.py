"""Kernels several TransXNet operators share: depthwise kernels merged into one, exact matmul
forms of small-map depthwise and dense 1x1 convolutions, and per-sample depthwise convolutions
whose CPU backward avoids oneDNN's slow paths (the fast training form's).

Used by the fast training forms of DPE (:mod:`.dpe`), IDConv (:mod:`.idconv`), OSRA's local
refinement (:mod:`.osra`), STE (through :mod:`.convs`) and MS-FFN (:mod:`.ffn`), and by the folds
into the inference form (:func:`xnetspace.model.folds.merge_depthwise`). Written so that
``torch.jit.script`` compiles them; :func:`depthwise_same`, :func:`depthwise` and
:func:`per_sample_depthwise` are leaves of FX graphs (each module that calls one also registers it
with ``torch.fx.wrap``). Paper:
arXiv 2310.19380, eq. 1 (DPE), eq. 3 (IDConv), eq. 4 (LR) and section III-C (MS-FFN's
multi-kernel depthwise convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

__all__ = [
    "merged_depthwise_kernel",
    "crop_to_map",
    "depthwise_same",
    "depthwise",
    "per_sample_depthwise",
    "pointwise",
    "adaptive_avg_pool",
]


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


def crop_to_map(weight: Tensor, height: int, width: int) -> Tensor:
    """A stride-1 ``same`` kernel (..., KH, KW), odd sizes, cropped to the taps that can reach an
    (height, width) map: a tap more than H - 1 rows (W - 1 columns) from the centre reads only zero
    padding, so on a 2x2 map a 7x7 kernel is a 3x3 one (exact). Returns (..., kh, kw), both odd,
    ``weight`` itself when nothing is cropped; use padding (kh // 2, kw // 2)."""
    rows, cols = weight.shape[-2], weight.shape[-1]
    kh, kw = min(rows, 2 * height - 1), min(cols, 2 * width - 1)
    if kh < rows or kw < cols:
        weight = weight[..., (rows - kh) // 2 : (rows + kh) // 2, (cols - kw) // 2 : (cols + kw) // 2]
    return weight


def _depthwise_matmul(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` as one batched matmul: each
    channel's (N_in, N_out) matrix of kernel taps (zero where a tap would read padding), gathered
    from its kernel. Shapes: ``x`` (B, C, H, W); ``weight`` (C, 1, K, K); returns (B, C, H', W'),
    contiguous."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    h_out, w_out = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    # index[i, o]: the tap that carries input pixel i to output pixel o; k*k (a zero) if none
    rows = torch.arange(H, device=x.device).repeat_interleave(W)
    cols = torch.arange(W, device=x.device).repeat(H)
    top = torch.arange(h_out, device=x.device).repeat_interleave(w_out) * stride - padding  # each window's corner
    left = torch.arange(w_out, device=x.device).repeat(h_out) * stride - padding
    dy, dx = rows.unsqueeze(1) - top.unsqueeze(0), cols.unsqueeze(1) - left.unsqueeze(0)
    inside = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
    index = torch.where(inside, dy * k + dx, k * k).flatten()
    taps = torch.cat([weight.reshape(C, k * k), weight.new_zeros(C, 1)], dim=1)
    # gather, not taps[:, index]: its backward is a scatter-add, 2-3x faster than index_put's sort;
    # gathered as (N_in, N_out), the layout the matmul reads, so that no gradient is transposed
    matrices = taps.gather(1, index.unsqueeze(0).expand(C, index.shape[0])).reshape(C, H * W, h_out * w_out)
    # one matmul per channel on strided views (einsum copied the input first: 10-50% slower); its
    # output is channel-major, on which the GELU and train-mode BN that follow ran up to 4x slower
    # (forward and backward) than on NCHW
    out = torch.bmm(x.reshape(B, C, H * W).transpose(0, 1), matrices)  # (C, B, N_out)
    return out.transpose(0, 1).contiguous().reshape(B, C, h_out, w_out)


def _matmul_pays(x: Tensor, k: int) -> bool:
    """Whether a depthwise K x K conv on ``x`` runs faster as :func:`_depthwise_matmul`: maps of at
    most 2 K^2 pixels, 4 K^2 for K >= 5 (batch 64 on the CPU, forward and backward: for 3x3
    kernels on maps from 5x5 up oneDNN's conv was as fast or faster, for 5x5 kernels on 8x8 to
    11x11 maps the matmul 1.5-2.5x and for 7x7 ones on 12x12 and 14x14 maps 1.2-1.7x faster);
    batches of 8 or more (to amortise gathering the matrices); on the CPU any layout (copied to
    NCHW), elsewhere NCHW maps only (channels_last goes to cuDNN's conv)."""
    B, _, H, W = x.shape
    return H * W <= (4 if k >= 5 else 2) * k * k and B >= 8 and (x.is_cpu or x.is_contiguous())


@register_notrace_function  # its path depends on the map size: one node under FX
def depthwise_same(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=K // 2, groups=groups)`` for odd K x K kernels and stride
    1, computed the fastest exact way for the map's size.

    A depthwise conv on an H x W map is, per channel, a linear map of its N = H*W pixels: an N x N
    matrix whose entries are kernel taps (zero where a tap would read padding). On small maps
    (TransXNet's 7x7 kernels on the 8x8 to 1x1 maps of 32x32 inputs) the matrices, gathered from
    the kernel, and one batched matmul ran 2-40x faster than oneDNN's depthwise conv on the CPU,
    forward and backward together (batch 64), though they do up to 4x the multiply-adds (N^2
    against N K^2); larger maps use the conv, as do batches under 8 (nothing amortises gathering
    the matrices) and, off the CPU, channels_last maps (:func:`_matmul_pays`). The output is contiguous
    NCHW. Exact: the same products, summed in another order. The conv path crops the kernel to the
    taps that can reach the map (:func:`crop_to_map`), exact too.

    Shapes: ``x`` (B, C, H, W); ``weight`` (C, 1, K, K); ``bias`` (C,) or None; returns (B, C, H, W).
    """
    k = weight.shape[-1]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    if groups != C or weight.shape[0] != C or not _matmul_pays(x, k):
        weight = crop_to_map(weight, H, W)
        return F.conv2d(x, weight, bias, padding=[weight.shape[-2] // 2, weight.shape[-1] // 2], groups=groups)
    out = _depthwise_matmul(x, weight, 1, k // 2)
    return out if bias is None else out + bias.reshape(-1, 1, 1)


@register_notrace_function  # its path depends on the map size: one node under FX
def depthwise(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, groups=C)`` for a depthwise K x K kernel, the
    fastest exact way for the map's size: a 1x1 kernel (stride 1, no padding) as a per-channel
    multiply(-add), small maps as one batched matmul (:func:`_depthwise_matmul`, as
    :func:`depthwise_same`; OSRA's spatial reduction, kernel r + 3 and stride r, on 8x8 to 2x2
    maps: 1.5-4x faster than oneDNN's conv, forward and backward), others the conv.

    Shapes: ``x`` (B, C, H, W); ``weight`` (C, 1, K, K); ``bias`` (C,) or None; returns
    (B, C, H', W'), H' = (H + 2 padding - K) // stride + 1.
    """
    k = weight.shape[-1]
    if k == 1 and stride == 1 and padding == 0:
        scale = weight.reshape(-1, 1, 1)
        return x * scale if bias is None else torch.addcmul(bias.reshape(-1, 1, 1), x, scale)
    if not _matmul_pays(x, k):
        return F.conv2d(x, weight, bias, stride=stride, padding=padding, groups=x.shape[1])
    out = _depthwise_matmul(x, weight, stride, padding)
    return out if bias is None else out + bias.reshape(-1, 1, 1)


class _GroupedConvForwardBackward(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2), groups=G)`` for x (1, G, H, W),
    weight (G, 1, kh, kw) odd, bias (G,), whose backward is two forward convs: oneDNN's backward of
    this conv (batch 1, thousands of groups) ran several times slower than its forward, which
    serves both gradients as well (the input's: the flipped kernel over the upstream gradient; the
    kernel's: the upstream gradient as the kernel over the input). Exact: the same products in
    another order."""

    generate_vmap_rule = True  # packs (xnetspace/pack.py) run it under torch.func.vmap

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        pad = [weight.shape[-2] // 2, weight.shape[-1] // 2]
        return F.conv2d(x, weight, bias, padding=pad, groups=weight.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        # under autocast the forward's conv ran in the gradient's dtype (bf16); autograd casts the
        # gradients back to the inputs' dtypes
        x, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)
        groups, pad = weight.shape[0], [weight.shape[-2] // 2, weight.shape[-1] // 2]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip([-2, -1]), padding=pad, groups=groups)
        if ctx.needs_input_grad[1]:  # output (1, G, kh, kw): each tap's sum of input times gradient
            grad_w = F.conv2d(x, grad.transpose(0, 1), padding=pad, groups=groups).transpose(0, 1)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=[0, 2, 3])
        return grad_x, grad_w, grad_b


@torch.jit.unused  # TorchScript cannot compile an autograd.Function; scripted networks take the conv
def _grouped_conv_cpu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return _GroupedConvForwardBackward.apply(x, weight, bias)


@register_notrace_function  # its path depends on the map size and device: one node under FX
def per_sample_depthwise(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Each sample convolved with its own depthwise kernel (IDConv, paper eq. 3): stride 1,
    padding K // 2, odd K; the same function as the release's ``F.conv2d(x.reshape(1, B*C, H, W),
    weight.reshape(B*C, 1, K, K), bias.flatten(), padding=K // 2, groups=B*C)``, computed without
    the CPU's slow paths.

    The kernel is cropped to the taps that reach the map (:func:`crop_to_map`). A 1x1 map is then
    a multiply-add (the cropped 1x1 conv would fall to ``aten::_slow_conv2d`` once per group on
    one CPU thread: 100 ms for batch 64 x 72 channels, forward and backward). Larger maps run the
    grouped conv; on the CPU, but for 3x3 kernels on maps of 3x3 and more, with a backward of two
    forward convs (:class:`_GroupedConvForwardBackward`: 2-5x faster for 5x5 and 7x7 kernels and on
    2x2 maps, batch 64). All exact: the same products, summed in another order.

    Shapes: ``x`` (B, C, H, W); ``weight`` (B, C, K, K); ``bias`` (B, C); returns (B, C, H, W).
    """
    B, C, H, W = x.shape
    weight = crop_to_map(weight, H, W)
    if H == 1 and W == 1:
        return torch.addcmul(bias.reshape(B, C, 1, 1), x, weight)
    kh, kw = weight.shape[-2], weight.shape[-1]
    x, weight, bias = x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, kh, kw), bias.flatten()
    # oneDNN's own backward is the faster one for 3x3 kernels on maps at least that large (1.1-1.3x)
    if x.is_cpu and not torch.jit.is_scripting() and (kh * kw > 9 or H < kh or W < kw):
        out = _grouped_conv_cpu(x, weight, bias)
    else:
        out = F.conv2d(x, weight, bias, padding=[kh // 2, kw // 2], groups=B * C)
    return out.reshape(B, C, H, W)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A dense 1x1 conv (stride 1, no padding) as one matmul over the flattened map: on the CPU,
    for contiguous (NCHW) maps of 8x8 and smaller, this ran up to 2x faster than oneDNN's conv,
    forward and backward together (batch 64); a 1x1 map is one linear layer over the batch. Exact
    up to the order of the sums. On the CPU every map takes it (a channel slice or channels_last
    map is copied to NCHW); elsewhere channels_last maps go to the conv. The output is contiguous
    NCHW: the matmul leaves it channel-major, on which the GELU and train-mode BN after it ran up
    to 4x slower, forward and backward, and the next fast path would take the conv. Written as an
    einsum so that under ``torch.func.vmap`` (packed replicas, :mod:`xnetspace.pack`) it is one
    batched matmul over the replicas rather than one per replica and image (a packed training step
    of 4 tiny_cpu replicas: 310 ms against 450 ms; a broadcast ``matmul`` took 60x the einsum's
    time on 1x1 maps under vmap).

    Shapes: ``x`` (B, C_in, H, W); ``weight`` (C_out, C_in, 1, 1); ``bias`` (C_out,) or None;
    returns (B, C_out, H, W).
    """
    B, C, H, W = x.shape
    if not (x.is_cpu or x.is_contiguous()):
        return F.conv2d(x, weight, bias)
    if H * W == 1:  # a linear layer over the batch (1.3-2x faster than the einsum's copies)
        return F.linear(x.reshape(B, C), weight.reshape(weight.shape[0], C), bias).reshape(B, -1, 1, 1)
    out = torch.einsum("oc,bcn->bon", weight.reshape(weight.shape[0], C), x.reshape(B, C, H * W)).contiguous()
    if bias is not None:
        out = out + bias.reshape(-1, 1)
    return out.reshape(B, -1, H, W)


def _pool_weights(size: int, out: int, like: Tensor) -> Tensor:
    """(out, size): row o averages the input positions of adaptive pooling's window o,
    [floor(o * size / out), ceil((o + 1) * size / out))."""
    o = torch.arange(out, device=like.device).unsqueeze(1)
    i = torch.arange(size, device=like.device).unsqueeze(0)
    inside = (i >= o * size // out) & (i < ((o + 1) * size + out - 1) // out)
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


def adaptive_avg_pool(x: Tensor, size: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; on the CPU, on maps of up to 8 x size^2 pixels, as one
    matmul with the (size^2, H*W) averaging matrix (IDConv's pooling to its kernel size, paper
    eq. 3): the pooling's CPU kernels took 12 ms forward and backward for batch 64 x 48 channels
    pooled from a 2x2 map to 7x7, the matmul 0.4 ms; from 56x56 the pooling is faster. Exact up to
    rounding (each pixel weighted by 1 / its window's size instead of the window's sum divided by
    its size).

    Shapes: ``x`` (B, C, H, W); returns (B, C, size, size), contiguous.
    """
    B, C, H, W = x.shape
    if H * W > 8 * size * size or not x.is_cpu:  # not measured off the CPU: the pooling there
        return F.adaptive_avg_pool2d(x, size)
    rows, cols = _pool_weights(H, size, x), _pool_weights(W, size, x)
    matrix = (rows.reshape(size, 1, H, 1) * cols.reshape(1, size, 1, W)).reshape(size * size, H * W)
    return torch.matmul(x.reshape(B * C, H * W), matrix.t()).reshape(B, C, size, size)
