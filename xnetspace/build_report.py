"""What ``xnetspace build``, ``flops`` and ``scale`` report: the per-stage and per-operator-kind
cost tables of a spec (rich tables), the checks before a build, and a built network's run on one
photograph as a JSON-able result and as lines of text.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from .checkpoint import nonfinite_keys
from .cost import FLOP_KINDS, CostReport, cost_report
from .memory import check_memory
from .photo import DEFAULT_PHOTO
from .spec import NetworkSpec, StageSpec, stage_knob, stage_knobs
from .text import shorten
from .timing import check_time

__all__ = [
    "stage_table",
    "kind_table",
    "check_build",
    "build_notice",
    "classify",
    "nonfinite_warning",
    "report_lines",
    "NOTICE_SECONDS",
]

NOTICE_SECONDS = 5  # a build estimated to take this long or longer is announced


def _gflops(flops: int) -> str:
    return f"{flops / 1e9:.3f}"


def _knob_cell(stage: StageSpec, knob: str) -> str:
    """A stage knob's cell: "-" where its operator has no channels in this stage."""
    absent = {"osra": not stage.attn_channels, "idconv": not stage.idconv_channels}
    value = getattr(stage, knob)
    return "-" if absent.get(stage_knob(knob).operator) else f"{value:g}" if isinstance(value, float) else str(value)


def stage_table(report: CostReport) -> Table:
    """Params and GFLOPs of each part (stem, stages, head) with each stage's knobs."""
    h, w = report.image_size
    table = Table(
        title=f"{escape(report.spec.name)} at {h}x{w}: {report.params:,} params, "
        f"{_gflops(report.flops)} GFLOPs ({_gflops(report.conv_flops)} in convolutions)"
    )
    headers = {k: c for k in stage_knobs() if (c := stage_knob(k).column)}  # StageSpec's field metadata
    shown = tuple(headers)
    for col in ("part", *headers.values(), "resolution", "params", "GFLOPs"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for part in report.parts:
        if part.name.startswith("stage"):
            s = report.spec.stages[int(part.name[5:]) - 1]
            knobs = tuple(_knob_cell(s, k) for k in shown)
        else:
            knobs = ("",) * len(shown)
        name = f"stem /{report.spec.stem_stride}" if part.name == "stem" else part.name  # its stride
        table.add_row(name, *map(str, knobs), f"{part.size[0]}x{part.size[1]}", f"{part.params:,}", _gflops(part.flops))
    table.add_row("total", *("",) * (len(shown) + 1), f"{report.params:,}", _gflops(report.flops), style="bold")
    return table


def kind_table(report: CostReport) -> Table:
    """FLOPs of each part by operator kind (fvcore's names)."""
    table = Table(title="FLOPs by operator kind (fvcore's names; one multiply-add = one flop)")
    table.add_column("part")
    for kind in FLOP_KINDS:
        table.add_column(f"{kind}", justify="right")
    table.add_column("total", justify="right")
    for part in report.parts:
        table.add_row(part.name, *(f"{part.flops_by_kind[k]:,}" for k in FLOP_KINDS), f"{part.flops:,}")
    total = report.flops_by_kind
    table.add_row("total", *(f"{total[k]:,}" for k in FLOP_KINDS), f"{report.flops:,}", style="bold")
    return table


def check_build(spec: NetworkSpec, image_size: tuple[int, int]) -> float:
    """The estimated seconds of building ``spec`` and one forward at ``image_size`` on this
    machine, once both fit (:func:`~xnetspace.memory.check_memory`, :func:`~xnetspace.timing.check_time`).

    Raises:
        MemoryLimitError, TimeLimitError: the estimate exceeds what is available or a minute.
    """
    check_memory(spec, image_size)
    return check_time(spec, image_size)


def build_notice(seconds: float) -> str | None:
    """The line announcing a build of ``seconds`` (estimated), when it is long enough to say so."""
    if seconds < NOTICE_SECONDS:
        return None
    return f"building and running once: about {seconds:.0f} s (estimated for this machine now)"


def classify(
    model: torch.nn.Module,
    batch: torch.Tensor,
    spec: NetworkSpec,
    image_size: tuple[int, int],
    image: Path | None = None,
    checkpoint: Path | None = None,
) -> dict:
    """Run ``model`` (``spec``, in eval mode) once on ``batch`` (the photograph ``image``, default
    scikit-image's chelsea) and report: the spec's cost (:meth:`CostReport.to_dict`; its parts
    as ``stages``), ``image``, ``checkpoint``, ``output_shape``, ``nonfinite_weights`` (with a
    checkpoint: the weight tensors that are NaN or inf) and ``top5`` (class, prob and, for
    ImageNet-1k, its name) for a network with a head."""
    bad_weights = nonfinite_keys(model.state_dict()) if checkpoint is not None else []
    with torch.inference_mode():
        output = model(batch)
    result = cost_report(spec, image_size).to_dict()
    result |= {
        "image": str(image) if image else DEFAULT_PHOTO,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "output_shape": list(output.shape),
    }
    if checkpoint is not None:
        result["nonfinite_weights"] = bad_weights
    result["stages"] = [p for p in result.pop("parts") if "stage" in p]
    if spec.num_classes:
        probs, classes = output.softmax(-1)[0].topk(min(5, spec.num_classes))
        result["top5"] = [{"class": int(c), "prob": float(p)} for p, c in zip(probs, classes)]
        if spec.num_classes == 1000:  # ImageNet-1k, the release's class order; names ship with timm
            from timm.data import ImageNetInfo

            names = ImageNetInfo()
            for top in result["top5"]:
                top["name"] = names.index_to_description(top["class"])
    return result


def nonfinite_warning(result: dict) -> str | None:
    """The warning for weights of the checkpoint that are not finite (:func:`classify`), if any."""
    bad = result.get("nonfinite_weights")
    if not bad:
        return None
    return (
        f"warning: {len(bad)} weight tensors of {shorten(result['checkpoint'])} are not finite (NaN or inf), "
        f"e.g. {', '.join(shorten(k, 80) for k in bad[:3])}; the outputs below are not meaningful"
    )


def report_lines(result: dict, input_shape: tuple[int, ...]) -> list[str]:
    """:func:`classify`'s result in words: the input and weights, the output shape and the top-5."""
    lines = [
        f"input: {result['image']}, preprocessed to {tuple(input_shape)}; "
        f"weights: {result['checkpoint'] or 'random init'}",
        f"output shape: {tuple(result['output_shape'])}",
    ]
    for rank, top in enumerate(result.get("top5", []), start=1):
        lines.append(
            f"  top-{rank}: class {top['class']:4d}  p = {top['prob']:.4f}"
            + (f"  {top['name']}" if "name" in top else "")
        )
    return lines
