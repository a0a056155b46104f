"""Cost model: exact params and FLOPs of a spec without building it (measured latency, which needs
the built network, is :func:`xnetspace.latency.measure_latency`).

FLOPs are counted as fvcore counts them (one multiply-add = one flop), operator kind by operator
kind, for one image in eval mode, so that ``count_flops(spec, (H, W))`` equals
``fvcore.nn.FlopCountAnalysis(build_model(spec).eval(), torch.randn(1, in_chans, H, W)).total()``
exactly. fvcore's rules, which this module mirrors (``fvcore/nn/jit_handles.py``):

- conv: ``prod(weight.shape) * H_out * W_out``; matmul ``(.., n, k) @ (.., k, m)``: ``numel(a) * m``;
  linear: ``in * out``;
- batch_norm (eval): 2 per element; group_norm: 5 per element; adaptive_avg_pool2d: 1 per input
  element; elementwise ops, softmax, GELU, mean and the bicubic resize of position biases: 0.

Like pycls's ``complexity()`` methods, each function below mirrors one module of
:mod:`xnetspace.layers` / :mod:`xnetspace.network`; every block of a stage costs the same, so a
stage costs ``depth`` blocks. The whole count takes tens of microseconds.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Union

import torch

from .spec import NetworkSpec, StageSpec, reduced_size

__all__ = [
    "FLOP_KINDS",
    "PartCost",
    "CostReport",
    "cost_report",
    "count_params",
    "count_flops",
    "fvcore_flops",
    "parse_image_size",
]

# fvcore's operator names, and what they are in TransXNet.
FLOP_KINDS = {
    "conv": "convolutions",
    "matmul": "attention matmuls",
    "batch_norm": "batch norms",
    "group_norm": "group norms",
    "adaptive_avg_pool2d": "pooling",
    "linear": "classifier",
}

ImageSize = Union[int, tuple[int, int]]


def parse_image_size(size: Union[ImageSize, str]) -> tuple[int, int]:
    """``224``, ``(224, 192)``, ``"224"`` or ``"224x192"`` -> (H, W).

    Raises:
        ValueError: not one or two positive integers.
    """
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"image size {size!r} must be H or HxW, e.g. 224 or 224x192") from None
    if isinstance(size, int) or len(size) == 1:
        size = (size, size) if isinstance(size, int) else (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image size {size!r} must be one or two positive integers")
    return int(size[0]), int(size[1])


@dataclass
class PartCost:
    """Params and FLOPs (by fvcore operator kind) of one part: ``stem``, ``stage1``.., ``head``.

    ``size`` is the part's output map (H, W) (for the head: its input map).
    """

    name: str
    params: int = 0
    flops_by_kind: Counter = field(default_factory=Counter)
    size: tuple[int, int] = (0, 0)

    @property
    def flops(self) -> int:
        return sum(self.flops_by_kind.values())

    def add(self, kind: str, flops: int, params: int = 0) -> None:
        self.flops_by_kind[kind] += flops
        self.params += params


@dataclass
class CostReport:
    """Whole-network cost: ``parts`` in forward order, with totals and per-kind sums."""

    spec: NetworkSpec
    image_size: tuple[int, int]
    parts: list[PartCost]

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def flops(self) -> int:
        return sum(p.flops for p in self.parts)

    @property
    def flops_by_kind(self) -> Counter:
        total = Counter()
        for p in self.parts:
            total.update(p.flops_by_kind)
        return +total

    @property
    def conv_flops(self) -> int:
        """Convolutions plus the classifier (a 1x1 conv in the release): the paper's convention."""
        kinds = self.flops_by_kind
        return kinds["conv"] + kinds["linear"]

    def to_dict(self) -> dict:
        """Plain-JSON form: totals, per-kind FLOPs and one entry per part."""
        stages = {i: s for i, s in enumerate(self.spec.stages, start=1)}
        return {
            "name": self.spec.name,
            "image_size": list(self.image_size),
            "params": self.params,
            "flops": self.flops,
            "conv_flops": self.conv_flops,
            "flops_by_kind": dict(self.flops_by_kind),
            "parts": [
                {"name": p.name, "params": p.params, "flops": p.flops,
                 "flops_by_kind": dict(+p.flops_by_kind), "resolution": list(p.size),
                 **({"stage": stages[int(p.name[5:])].model_dump(mode="json")}
                    if p.name.startswith("stage") else {})}
                for p in self.parts
            ],
        }


# -- one function per module, mirroring construction ------------------------------------------------
def _conv(part: PartCost, c_in: int, c_out: int, k: int, n_out: int, groups: int = 1, bias: bool = True) -> None:
    weight = c_out * (c_in // groups) * k * k
    part.add("conv", weight * n_out, weight + (c_out if bias else 0))


def _bn(part: PartCost, c: int, n: int) -> None:
    part.add("batch_norm", 2 * c * n, 2 * c)


def _conv_bn(part: PartCost, c_in: int, c_out: int, k: int, n_out: int, groups: int = 1) -> None:
    _conv(part, c_in, c_out, k, n_out, groups, bias=False)
    _bn(part, c_out, n_out)


def _idconv(part: PartCost, c: int, k: int, g: int, n: int) -> None:
    r = c // 4
    maps = k * k + 1  # proj runs twice: on the K x K pooled map and on the 1 x 1 mean
    banks, proj = g * c * k * k + g * c, c * r + r * g * c + g * c  # proj: 1x1 (no bias), 1x1 (bias)
    part.add("conv", (c * r + r * g * c) * maps + c * k * k * n, banks + proj)
    part.add("batch_norm", 2 * r * maps, 2 * r)
    part.add("adaptive_avg_pool2d", c * n)


def _osra(part: PartCost, c: int, heads: int, r: int, hw: tuple[int, int]) -> None:
    n = hw[0] * hw[1]
    m = reduced_size(hw[0], r) * reduced_size(hw[1], r)
    _conv(part, c, c, 1, n)  # q
    if r > 1:
        _conv_bn(part, c, c, r + 3, m, groups=c)
        _conv_bn(part, c, c, 1, m, groups=c)
    _conv(part, c, c, 3, m, groups=c)  # local refinement
    _conv(part, c, 2 * c, 1, m)  # kv
    part.add("matmul", 2 * c * n * m)  # q @ k and attn @ v


def _ste(part: PartCost, c: int, hidden: int, n: int) -> None:
    _conv(part, c, c, 3, n, groups=c)
    _bn(part, c, n)
    _conv(part, c, hidden, 1, n)
    _bn(part, hidden, n)
    _conv(part, hidden, c, 1, n)
    _bn(part, c, n)


def _msffn(part: PartCost, stage: StageSpec, n: int) -> None:
    c, hid = stage.embed_dim, stage.hidden_dim
    _conv(part, c, hid, 1, n, bias=False)
    _bn(part, hid, n)
    for ch, k in zip(stage.ffn_splits, stage.ffn_kernel_sizes):
        _conv(part, ch, ch, k, n, groups=ch)
    _bn(part, hid, n)
    _conv_bn(part, hid, c, 1, n)


def _block(part: PartCost, stage: StageSpec, hw: tuple[int, int], layer_scale: bool) -> None:
    c, n = stage.embed_dim, hw[0] * hw[1]
    _conv(part, c, c, 7, n, groups=c)  # DPE
    part.add("group_norm", 2 * 5 * c * n, 2 * 2 * c)  # norm1, norm2
    if stage.idconv_channels and stage.idconv_groups > 1:
        _idconv(part, stage.idconv_channels, stage.idconv_kernel_size, stage.idconv_groups, n)
    elif stage.idconv_channels:
        _conv(part, stage.idconv_channels, stage.idconv_channels, stage.idconv_kernel_size, n,
              groups=stage.idconv_channels)
    if stage.attn_channels:
        _osra(part, stage.attn_channels, stage.num_heads, stage.sr_ratio, hw)
    _ste(part, c, stage.ste_dim, n)
    _msffn(part, stage, n)
    if layer_scale:
        part.add("conv", 2 * c * n, 2 * 2 * c)


def cost_report(spec: NetworkSpec, image_size: ImageSize = 224) -> CostReport:
    """Per-part params and FLOPs of ``spec`` for one (in_chans, H, W) image, without building it.

    Args:
        image_size: H (square) or (H, W), in pixels.

    Raises:
        ValueError: an image size that is not one or two positive integers.
    """
    size = parse_image_size(image_size)
    sizes = spec.stage_sizes(size)
    stem = PartCost("stem", size=sizes[0])
    _conv_bn(stem, spec.in_chans, spec.embed_dims[0], 7, sizes[0][0] * sizes[0][1])
    parts = [stem]
    c_prev = None
    for i, (stage, hw) in enumerate(zip(spec.stages, sizes)):
        part = PartCost(f"stage{i + 1}", size=hw)
        if c_prev is not None:
            _conv_bn(part, c_prev, stage.embed_dim, 3, hw[0] * hw[1])
        bias_shape = spec.pos_bias_shape(i)
        if bias_shape:
            part.params += bias_shape[1] * bias_shape[2] * bias_shape[3]
        block = PartCost("block")
        _block(block, stage, hw, spec.layer_scale_init_value is not None)
        part.params += stage.depth * block.params
        for kind, flops in block.flops_by_kind.items():
            part.flops_by_kind[kind] += stage.depth * flops
        parts.append(part)
        c_prev = stage.embed_dim
    head = PartCost("head", size=sizes[-1])
    n_last = sizes[-1][0] * sizes[-1][1]
    head.add("group_norm", 5 * c_prev * n_last, 2 * c_prev)
    head.add("adaptive_avg_pool2d", c_prev * n_last)
    if spec.num_classes:
        head.add("linear", c_prev * spec.num_classes, c_prev * spec.num_classes + spec.num_classes)
    parts.append(head)
    return CostReport(spec, size, parts)


def count_params(spec: NetworkSpec) -> int:
    """Exactly ``sum(p.numel() for p in build_model(spec).parameters())``, without building."""
    return cost_report(spec, spec.image_size).params


def count_flops(spec: NetworkSpec, image_size: ImageSize = 224) -> int:
    """Exactly fvcore's total for ``build_model(spec).eval()`` on one (in_chans, H, W) image.

    Args:
        image_size: H (square) or (H, W), in pixels.
    """
    return cost_report(spec, image_size).flops


def fvcore_flops(model: torch.nn.Module, image_size: ImageSize = 224, in_chans: int = 3):
    """fvcore's ``FlopCountAnalysis`` of ``model`` (put in eval mode) on one random image, with
    its warnings silenced: the reference the cost model is tested against."""
    with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    h, w = parse_image_size(image_size)
    analysis = FlopCountAnalysis(model.eval(), torch.randn(1, in_chans, h, w))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis
