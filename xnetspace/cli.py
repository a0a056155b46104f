"""Command line: ``xnetspace build SPEC`` and ``xnetspace flops SPEC``.

SPEC is a spec file (``.yaml``/``.json``) or a preset name (``transxnet_t``). Bad input (spec,
checkpoint, image, option) exits with status 2 and one paragraph on stderr, never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from .checkpoint import CheckpointError, load_weights, read_checkpoint, save_checkpoint
from .cost import FLOP_KINDS, CostReport, cost_report, parse_image_size
from .network import build_model
from .spec import NetworkSpec, SpecError, format_validation_error, resolve_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="xnetspace: TransXNet specs, builder, cost model and search.")
# Piped output (CI logs, files) gets a table wide enough not to truncate, not rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

SpecArg = typer.Argument(..., help="spec file (.yaml/.json) or preset name (transxnet_t, _s, _b)")
ImageSizeOpt = typer.Option("224", "--image-size", help="input size H or HxW, in pixels")
JsonOpt = typer.Option(False, "--json", help="print one JSON object instead of tables")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _load(spec_arg: str, image_size: str) -> tuple[NetworkSpec, tuple[int, int]]:
    try:
        return resolve_spec(spec_arg), parse_image_size(image_size)
    except ValidationError as err:
        _fail(format_validation_error(err, f"spec {spec_arg}"))
    except (SpecError, ValueError) as err:
        _fail(str(err))


def _gflops(flops: int) -> str:
    return f"{flops / 1e9:.3f}"


def _stage_table(report: CostReport) -> Table:
    h, w = report.image_size
    table = Table(title=f"{report.spec.name} at {h}x{w}: {report.params:,} params, "
                        f"{_gflops(report.flops)} GFLOPs ({_gflops(report.conv_flops)} in convolutions)")
    for col in ("part", "depth", "width", "heads", "G", "mlp", "attn", "sr", "resolution", "params", "GFLOPs"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for part in report.parts:
        if part.name.startswith("stage"):
            s = report.spec.stages[int(part.name[5:]) - 1]
            knobs = (s.depth, s.embed_dim, s.num_heads if s.attn_channels else "-",
                     s.idconv_groups if s.idconv_channels else "-", f"{s.mlp_ratio:g}",
                     f"{s.attn_ratio:g}", s.sr_ratio if s.attn_channels else "-")
        else:
            knobs = ("",) * 7
        table.add_row(part.name, *map(str, knobs), f"{part.size[0]}x{part.size[1]}",
                      f"{part.params:,}", _gflops(part.flops))
    table.add_row("total", *("",) * 8, f"{report.params:,}", _gflops(report.flops), style="bold")
    return table


def _kind_table(report: CostReport) -> Table:
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


@app.command()
def build(
    spec: str = SpecArg,
    image_size: str = ImageSizeOpt,
    image: Optional[Path] = typer.Option(None, help="photograph to classify (default: scikit-image's 'chelsea')"),
    checkpoint: Optional[Path] = typer.Option(None, help="weights: a release checkpoint or one saved by --save"),
    save: Optional[Path] = typer.Option(None, help="save the network with its spec to this file"),
    as_json: bool = JsonOpt,
) -> None:
    """Build SPEC, print its per-stage cost, and classify one real photograph in eval mode."""
    from .data import DEFAULT_PHOTO, photo_batch

    net_spec, size = _load(spec, image_size)
    model = build_model(net_spec).eval()
    try:
        if checkpoint is not None:
            load_weights(model, read_checkpoint(checkpoint))
        batch = photo_batch(net_spec, size, image)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    with torch.inference_mode():
        output = model(batch)
    result = cost_report(net_spec, size).to_dict()
    result |= {"image": str(image) if image else DEFAULT_PHOTO,
               "checkpoint": str(checkpoint) if checkpoint else None,
               "output_shape": list(output.shape)}
    result["stages"] = [p for p in result.pop("parts") if "stage" in p]
    if net_spec.num_classes:
        probs, classes = output.softmax(-1)[0].topk(min(5, net_spec.num_classes))
        result["top5"] = [{"class": int(c), "prob": float(p)} for p, c in zip(probs, classes)]
    if save is not None:
        result["saved"] = str(save_checkpoint(model, save))

    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print(_stage_table(cost_report(net_spec, size)))
    console.print(f"input: {result['image']}, preprocessed to {tuple(batch.shape)}; "
                  f"weights: {result['checkpoint'] or 'random init'}")
    console.print(f"output shape: {tuple(output.shape)}")
    for rank, top in enumerate(result.get("top5", []), start=1):
        console.print(f"  top-{rank}: class {top['class']:4d}  p = {top['prob']:.4f}")
    if save is not None:
        console.print(f"saved to {result['saved']}")


@app.command()
def flops(spec: str = SpecArg, image_size: str = ImageSizeOpt, as_json: bool = JsonOpt) -> None:
    """Exact params and FLOPs of SPEC from the spec alone, by stage and operator kind."""
    net_spec, size = _load(spec, image_size)
    report = cost_report(net_spec, size)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    console.print(_stage_table(report))
    console.print(_kind_table(report))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
