"""Cost model: exact params and FLOPs of a spec without building it (measured latency, which needs
the built network, is :func:`xnetspace.latency.measure_latency`).

FLOPs are counted as fvcore counts them (one multiply-add = one flop), operator kind by operator
kind, for one image in eval mode, so that ``count_flops(spec, (H, W))`` equals
``fvcore.nn.FlopCountAnalysis(build_model(spec).eval(), torch.randn(1, in_chans, H, W)).total()``
exactly (fvcore's rules: :mod:`xnetspace.model.complexity`).

This module reports; it walks nothing itself. The walk over a spec (stem, stages, head) is
:meth:`TransXNet.cost <xnetspace.model.network.TransXNet.cost>`, beside the network's
construction, and what each part costs is beside its own construction, in its operator's module
(pycls's ``complexity()``): the static ``cost(hw, ...)`` of :class:`~xnetspace.model.stem.Stem`,
:class:`~xnetspace.model.block.TransXNetStage` (which sums its downsample and ``depth`` blocks,
each of which sums DPE, the D-Mixer's IDConv, OSRA and STE, and MS-FFN) and
:func:`~xnetspace.model.head.head_cost`. The whole count takes tens of microseconds.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch

from .model.complexity import Cost
from .model.network import TransXNet
from .spec import NetworkSpec

__all__ = [
    "FLOP_KINDS",
    "PartCost",
    "CostReport",
    "cost_report",
    "network_cost",
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

ImageSize = int | tuple[int, int]


def parse_image_size(size: ImageSize | str) -> tuple[int, int]:
    """``224``, ``(224, 192)``, ``"224"`` or ``"224x192"`` -> (H, W).

    Raises:
        ValueError: not one or two positive integers.
    """
    value: int | tuple[int, ...] | str = size
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")  # noqa: RUF001 - a times sign between the sides reads as an x
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"image size {value!r} must be H or HxW, e.g. 224 or 224x192") from None
    if isinstance(value, int) or len(value) == 1:
        value = (value, value) if isinstance(value, int) else (value[0], value[0])
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"image size {value!r} must be one or two positive integers")
    return int(value[0]), int(value[1])


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
        total: Counter[str] = Counter()
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
        stages = dict(enumerate(self.spec.stages, start=1))
        return {
            "name": self.spec.name,
            "image_size": list(self.image_size),
            "params": self.params,
            "flops": self.flops,
            "conv_flops": self.conv_flops,
            "flops_by_kind": dict(self.flops_by_kind),
            "parts": [
                {
                    "name": p.name,
                    "params": p.params,
                    "flops": p.flops,
                    "flops_by_kind": dict(+p.flops_by_kind),
                    "resolution": list(p.size),
                    **(
                        {"stage": stages[int(p.name[5:])].model_dump(mode="json")} if p.name.startswith("stage") else {}
                    ),
                }
                for p in self.parts
            ],
        }


def network_cost(
    spec: NetworkSpec, image_size: ImageSize = 224, form: str = "reference"
) -> list[tuple[str, tuple[int, int], Cost]]:
    """``(name, map size, cost)`` of each part of ``build_model(spec, form=form)`` in forward
    order, for one (in_chans, H, W) image: :meth:`TransXNet.cost
    <xnetspace.model.network.TransXNet.cost>` at a parsed image size.

    Raises:
        ValueError: an image size that is not one or two positive integers; an unknown ``form``.
    """
    return TransXNet.cost(spec, parse_image_size(image_size), form)


def cost_report(spec: NetworkSpec, image_size: ImageSize = 224, form: str = "reference") -> CostReport:
    """Per-part params and FLOPs of ``spec`` for one (in_chans, H, W) image, without building it.

    Args:
        image_size: H (square) or (H, W), in pixels.
        form: ``"reference"`` (= ``"fast"``) or ``"fused"``, the inference form
            (:meth:`TransXNet.cost <xnetspace.model.network.TransXNet.cost>`).

    Raises:
        ValueError: an image size that is not one or two positive integers; an unknown ``form``.
    """
    size = parse_image_size(image_size)
    walk = network_cost(spec, size, form)
    parts = [PartCost(name, cost.params, Counter(cost.flops), hw) for name, hw, cost in walk]
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
    its warnings silenced: the reference the cost model is tested against. fvcore has no rule for
    ``baddbmm`` (the inference form's attention logits with their bias); it gets ``bmm``'s."""
    with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import get_shape

    def baddbmm(inputs: list, _outputs: list) -> int:  # fvcore calls (inputs, outputs); (bias, a, b): numel(a) * m
        a, b = get_shape(inputs[1]), get_shape(inputs[2])
        return math.prod(a) * b[-1]

    h, w = parse_image_size(image_size)
    analysis = FlopCountAnalysis(model.eval(), torch.randn(1, in_chans, h, w))
    analysis.set_op_handle("aten::baddbmm", baddbmm)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis
