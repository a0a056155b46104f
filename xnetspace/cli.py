"""Command line: ``xnetspace build SPEC`` and ``xnetspace flops SPEC``.

SPEC is a spec file (``.yaml``/``.json``) or a preset name (``transxnet_t``). Bad input (spec,
checkpoint, image, option) exits with status 2 and one paragraph on stderr, never a traceback;
Ctrl-C exits 130; an internal error (a bug) exits 1 with one paragraph naming a log file that
holds its traceback (:func:`main`).
"""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .checkpoint import CheckpointError, load_weights, nonfinite_keys, read_checkpoint, save_checkpoint
from .cost import FLOP_KINDS, CostReport, cost_report, parse_image_size
from .model import build_model
from .spec import (MAX_CLASSES, MAX_IN_CHANS, NetworkSpec, SpecError, format_validation_error,
                   resolve_spec, save_spec)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="xnetspace: TransXNet specs, builder, cost model and search.")
# Piped output (CI logs, files) gets a table wide enough not to truncate, not rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

SpecArg = typer.Argument(..., help="spec file (.yaml/.json) or preset name (transxnet_t, _s, _b)")
ImageSizeOpt = typer.Option("224", "--image-size", help="input size H or HxW, in pixels")
JsonOpt = typer.Option(False, "--json", help="print one JSON object instead of tables")


MAX_MESSAGE = 3000  # characters of one error paragraph; the sources already keep values short


def _fail(message: str) -> None:
    if len(message) > MAX_MESSAGE:  # last guard: a message never floods the terminal
        message = f"{message[:MAX_MESSAGE]} ... ({len(message) - MAX_MESSAGE:,} more characters)"
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _load(spec_arg: str, image_size: str) -> tuple[NetworkSpec, tuple[int, int]]:
    from .spec import check_image_size
    from .text import shorten

    try:
        if len(image_size) > 40:  # "16384x16384" is 11 characters; int() of 5,000 digits fails
            raise ValueError(f"--image-size {shorten(image_size, 40)!r} must be H or HxW, e.g. 224 or 224x192")
        size = check_image_size(parse_image_size(image_size), "--image-size")
        return resolve_spec(spec_arg), size
    except ValidationError as err:
        _fail(format_validation_error(err, f"spec {shorten(spec_arg)}"))
    except (SpecError, ValueError, OSError) as err:
        _fail(str(err))


def _gflops(flops: int) -> str:
    return f"{flops / 1e9:.3f}"


def _stage_table(report: CostReport) -> Table:
    h, w = report.image_size
    table = Table(title=f"{escape(report.spec.name)} at {h}x{w}: {report.params:,} params, "
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
    save: Optional[str] = typer.Option(None, help="save the network with its spec to this file (a regular file; a symlink is followed)"),
    seed: int = typer.Option(0, help="seed of the random initialisation (without --checkpoint)"),
    force: bool = typer.Option(False, "--force", help="build and run even when the memory or time estimate exceeds the limit"),
    as_json: bool = JsonOpt,
) -> None:
    """Build SPEC, print its per-stage cost, and classify one real photograph in eval mode.

    The per-stage table (from the spec alone) is printed first. Refused at once (exit 2), unless
    --force, when the network and its forward at --image-size would need more memory than is
    available (xnetspace.memory.check_memory) or take longer than a minute on this machine
    (xnetspace.timing.check_time), and before building when --save names no writable regular file.
    Weights that are not finite (NaN or inf, from --checkpoint) are reported on stderr as a
    warning (``nonfinite_weights`` in --json); the command still exits 0 with the outputs they give.
    """
    from .memory import check_memory
    from .photo import DEFAULT_PHOTO, photo_batch
    from .timing import check_time

    net_spec, size = _load(spec, image_size)
    target = None if save is None else _save_target(save)
    if not as_json:  # what the spec alone tells, before anything is built
        console.print(_stage_table(cost_report(net_spec, size)))
    try:
        if not force:
            check_memory(net_spec, size)
            seconds = check_time(net_spec, size)
            if seconds >= 5 and not as_json:
                console.print(f"building and running once: about {seconds:.0f} s (estimated for this machine now)")
        torch.manual_seed(seed)  # the same command prints the same numbers
        model = build_model(net_spec, force=True).eval()  # checked above, with the forward
        if checkpoint is not None:
            load_weights(model, read_checkpoint(checkpoint))
        batch = photo_batch(net_spec, size, image)
    except (CheckpointError, SpecError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    bad_weights = nonfinite_keys(model.state_dict()) if checkpoint is not None else []
    if bad_weights:
        from .text import shorten

        typer.echo(f"warning: {len(bad_weights)} weight tensors of {shorten(str(checkpoint))} are not finite (NaN or "
                   f"inf), e.g. {', '.join(shorten(k, 80) for k in bad_weights[:3])}; the outputs below are not "
                   f"meaningful", err=True)
    with torch.inference_mode():
        output = model(batch)
    result = cost_report(net_spec, size).to_dict()
    result |= {"image": str(image) if image else DEFAULT_PHOTO,
               "checkpoint": str(checkpoint) if checkpoint else None,
               "output_shape": list(output.shape)}
    if checkpoint is not None:
        result["nonfinite_weights"] = bad_weights
    result["stages"] = [p for p in result.pop("parts") if "stage" in p]
    if net_spec.num_classes:
        probs, classes = output.softmax(-1)[0].topk(min(5, net_spec.num_classes))
        result["top5"] = [{"class": int(c), "prob": float(p)} for p, c in zip(probs, classes)]
        if net_spec.num_classes == 1000:  # ImageNet-1k, the release's class order; names ship with timm
            from timm.data import ImageNetInfo

            names = ImageNetInfo()
            for top in result["top5"]:
                top["name"] = names.index_to_description(top["class"])
    if target is not None:
        _save(model, save, target)
        result["saved"] = save

    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print(f"input: {result['image']}, preprocessed to {tuple(batch.shape)}; "
                  f"weights: {result['checkpoint'] or 'random init'}")
    console.print(f"output shape: {tuple(output.shape)}")
    for rank, top in enumerate(result.get("top5", []), start=1):
        console.print(f"  top-{rank}: class {top['class']:4d}  p = {top['prob']:.4f}"
                      + (f"  {top['name']}" if "name" in top else ""))
    if target is not None:
        through = f" (the symlink's target, {target})" if _through_link(save, target) else ""
        console.print(f"saved to {save}{through}", markup=False, highlight=False)


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _save_target(where: str) -> Path:
    """The regular file that ``--save WHERE`` writes: WHERE itself, or the file a symlink (even a
    dangling one) points to. Checked before anything is built.

    Refuses (exit 2, via :func:`_fail`): an empty name or one with a NUL byte, a symlink loop, a
    target that exists but is not a regular file (a folder, a device such as /dev/full, a FIFO, a
    socket: none is ever replaced or written into) or is read-only, and a folder where no file can
    be made (tried with an unnamed temporary file).
    """
    from .text import shorten

    shown = shorten(where)
    if not where.strip():
        _fail("--save needs a file name, got an empty one")
    if "\0" in where:
        _fail(f"--save {shown!r}: a file name cannot hold a NUL byte")
    try:
        target = Path(where).resolve()  # follows every symlink; a dangling one gives its target
        mode = target.stat().st_mode if target.exists() else None
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        _fail(f"cannot save the network to {shown!r}: {getattr(err, 'strerror', None) or err}")
    link = f" (the symlink's target, {shorten(str(target))!r})" if _through_link(where, target) else ""
    if mode is not None:
        kind = next((name for test, name in _FILE_KINDS if test(mode)), None)
        if kind is not None or not stat.S_ISREG(mode):
            _fail(f"cannot save the network to {shown!r}: it is {kind or 'not a regular file'}{link}, not a "
                  f"regular file; --save writes a checkpoint file and never replaces anything else")
        if not mode & 0o222:
            _fail(f"cannot save the network to {shown!r}: the file is read-only{link}; make it writable "
                  f"(chmod u+w) or choose another name")
    folder = target.parent  # missing folders are made at saving; the first existing one must take a file
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file where the file system allows one
            pass
    except OSError as err:
        _fail(f"cannot save the network to {shown!r}: {err.strerror or err} (no new file can be made in "
              f"{shorten(str(folder))!r})")
    return target


def _through_link(where: str, target: Path) -> bool:
    """Whether a symlink led from ``where`` to ``target``."""
    return str(target) != os.path.abspath(where)


def _save(model: torch.nn.Module, where: str, target: Path) -> None:
    """save_checkpoint into a temporary file beside ``target`` (the resolved ``--save`` path),
    synced, then renamed over it: a failed save (full disk, unwritable folder) leaves no
    half-written file and an existing file intact, and a symlink stays a symlink.

    Refuses (exit 2, via :func:`_fail`) any error of the file system, naming it (ENOSPC: "No space
    left on device").
    """
    from .text import shorten

    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    created = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # ours alone; mode per umask
        created = True
        save_checkpoint(model, partial)
        os.replace(partial, target)
    except OSError as err:
        if created:
            try:
                partial.unlink()
            except OSError:
                pass
        step = f" (no new file can be made in {shorten(str(target.parent))!r})" if str(err.filename) == str(partial) else ""
        _fail(f"cannot save the network to {shorten(where)!r}: {err.strerror or err}{step}")


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


@app.command()
def scale(
    preset: str = typer.Argument(..., help="preset name or spec file to scale"),
    flops_max: str = typer.Option(..., "--flops", help="FLOP budget maximum, e.g. 3M or 1.2G (fvcore count)"),
    image_size: str = ImageSizeOpt,
    flops_min: Optional[str] = typer.Option(None, "--flops-min", help="FLOP budget minimum"),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="parameter maximum, e.g. 1.5M"),
    save: Optional[Path] = typer.Option(None, help="write the scaled spec to this YAML file"),
    as_json: bool = JsonOpt,
) -> None:
    """Scale a preset to a FLOP budget (depth, width and heads x one factor; xnetspace/scaling.py)."""
    from .scaling import scale_to_budget
    from .search.space import parse_count

    net_spec, size = _load(preset, image_size)
    try:
        scaled = scale_to_budget(net_spec, parse_count(flops_max), size,
                                 min_flops=parse_count(flops_min) if flops_min else None,
                                 max_params=parse_count(max_params) if max_params else None)
        if save is not None:
            save_spec(scaled, save)
    except (SpecError, ValueError, OSError) as err:
        _fail(str(err))
    report = cost_report(scaled, size)
    if as_json:
        typer.echo(json.dumps({"flops": report.flops, "params": report.params, "image_size": list(size),
                               "spec": scaled.model_dump(mode="json"), "saved": str(save) if save else None}))
        return
    console.print(_stage_table(report))
    if save is not None:
        console.print(f"saved to {save}")


@app.command()
def search(
    space: str = typer.Option(..., "--space", help="space file (spaces/*.yaml) or a shipped space's name"),
    dataset: str = typer.Option("digits", help="digits[:N] (N training images, default all 898) | synthetic[:N] | imagefolder:PATH | cifar10:PATH | cifar100:PATH"),
    n_trials: int = typer.Option(20, "--n-trials", help="trials the study holds in total (a re-run continues up to N)"),
    flops_max: Optional[str] = typer.Option(None, "--flops-max", help="FLOP budget maximum, e.g. 0.5G or 300M (overrides the space)"),
    flops_min: Optional[str] = typer.Option(None, "--flops-min", help="FLOP budget minimum (overrides the space)"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="proxy training image size (default: the space's)"),
    epochs: Optional[int] = typer.Option(None, help="proxy training epochs (default: the space's)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="proxy training batch size"),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate"),
    trial_time_limit: Optional[float] = typer.Option(None, "--trial-time-limit", help="seconds one trial may train"),
    augment: Optional[str] = typer.Option(None, help="augmentation of the training batches: none | flip | crop-flip | rrc-flip (default: the space's; docs/data.md)"),
    timeout: Optional[float] = typer.Option(None, help="seconds after which this run starts no new trial"),
    objective: str = typer.Option("loss", help="what candidates are ranked by: loss (validation cross-entropy, the default) | top1 | tse (training-speed estimate) | synflow | naswot | grad_norm (zero-cost, no training) | top1-flops | top1-latency (docs/search.md)"),
    proxy_seeds: int = typer.Option(1, "--proxy-seeds", help="seeds a candidate is trained with at most; its score is their mean"),
    race: Optional[float] = typer.Option(None, "--race", help="z: a candidate worse than the incumbent by more than z standard errors after half its seeds gets no more (default: every candidate gets all)"),
    sampler: Optional[str] = typer.Option(None, help="tpe | random | nsga2 | qmc (default: tpe, nsga2 for two objectives)"),
    pruner: Optional[str] = typer.Option(None, help="median | hyperband | none (default: median; none for two objectives)"),
    population: bool = typer.Option(False, "--population", help="a population study for `xnetspace analyze`: --sampler random --pruner none --confirm-top 0"),
    seed: int = typer.Option(0, help="seed of the samplers and of the training"),
    storage: Optional[str] = typer.Option(None, help="Optuna RDB URL (default: sqlite in --out)"),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="default: SPACE-DATASET-OBJECTIVE"),
    devices: str = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,... (one worker process per entry)"),
    baseline: Optional[str] = typer.Option(None, help="controls confirmed like the winner, comma-separated: PRESET (scaled to the study's budget), random:auto (random search at equal compute; the default with confirmation), random:N (best of N random in-budget specs), none"),
    confirm_top: int = typer.Option(5, "--confirm-top", help="candidates retrained after the search with several seeds (0: none)"),
    confirm_seeds: int = typer.Option(3, "--confirm-seeds", help="seeds per confirmed candidate (>= 2 for a 95% CI)"),
    confirm_epochs: Optional[int] = typer.Option(None, "--confirm-epochs", help="confirmation epochs (default: twice the proxy's)"),
    fidelity_sample: int = typer.Option(5, "--fidelity-sample", help="random in-budget specs confirmed beside the top candidates, for Kendall tau and the spread between architectures (0: none; none without confirmation)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: runs/STUDY_NAME)"),
    heartbeat: int = typer.Option(10, help="heartbeat interval in seconds; dead workers' trials are retried"),
    workers_per_device: Optional[int] = typer.Option(None, "--workers-per-device", help="worker processes per device (default: one single-thread worker per CPU core, at most 8; one per GPU)"),
) -> None:
    """Search a design space under a FLOP budget with proxy training (Optuna)."""
    from .search.data import DataError
    from .search import RunOptions, SearchError, StudyConfig, WorkerCrashed, progress_summary, run_search
    from .search.space import SpaceError, load_space, parse_count

    try:
        space_def = load_space(space)
        if flops_min is not None or flops_max is not None:
            space_def = space_def.with_flops(None if flops_min is None else parse_count(flops_min),
                                             None if flops_max is None else parse_count(flops_max))
        recipe = {k: v for k, v in dict(image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                                        time_limit=trial_time_limit, seed=seed, augment=augment).items() if v is not None}
        train = space_def.train.model_validate({**space_def.train.model_dump(), **recipe})
        config = StudyConfig(space=space_def, dataset=dataset, objective=objective, train=train,
                             proxy_seeds=proxy_seeds, race=race)
        name = study_name or f"{space_def.name}-{dataset.split(':')[0]}-{objective}"
        two = len(config.directions) > 1
        if two and pruner not in (None, "none"):
            raise ValueError("multi-objective studies cannot prune (Optuna's trial.report is single-objective); "
                             "drop --pruner")
        if population:  # uniform, unpruned samples: an unbiased EDF of the space (pycls)
            if sampler not in (None, "random") or pruner not in (None, "none"):
                raise ValueError(f"--population means --sampler random --pruner none; drop --sampler {sampler} / --pruner {pruner}")
            sampler, pruner = "random", "none"
        options = RunOptions(
            n_trials=n_trials, out=out or Path("runs") / name, storage=storage, study_name=name,
            sampler=sampler or ("nsga2" if two else "tpe"), pruner=pruner or ("none" if two else "median"),
            seed=seed, timeout=timeout, devices=[d.strip() for d in devices.split(",") if d.strip()],
            heartbeat=heartbeat, baseline=baseline, workers_per_device=workers_per_device,
            confirm_top=0 if population else confirm_top, confirm_seeds=confirm_seeds,
            confirm_epochs=confirm_epochs, fidelity_sample=fidelity_sample,
        )
        _check_devices(options.devices)
        run_search(config, options)
    except KeyboardInterrupt:
        done = progress_summary(options) if "options" in locals() else "nothing started"
        typer.echo(f"interrupted: {done}; the study is kept: re-run the same command to continue", err=True)
        raise typer.Exit(130) from None
    except ValidationError as err:
        _fail(format_validation_error(err, "search options"))
    except WorkerCrashed as err:  # not the user's input: exit 1, the logs named
        _crashed(err)
    except (SpaceError, SpecError, SearchError, DataError, ValueError) as err:
        _fail(str(err))
    except OSError as err:  # an unwritable --out, a full disk while writing results
        _fail(f"cannot write the study's files: {err.strerror or err} ({err.filename or 'the output folder'})")


@app.command()
def fidelity(
    space: str = typer.Argument(..., help="space file (spaces/*.yaml) or a shipped space's name"),
    dataset: str = typer.Option("digits", help="as for search"),
    n_specs: int = typer.Option(30, "--n-specs", help="random in-budget specs of the space"),
    seeds: int = typer.Option(4, help="K: seeds per spec under the proxy recipe and under the confirmation recipe"),
    confirm_epochs: Optional[int] = typer.Option(None, "--confirm-epochs", help="confirmation epochs (default: twice the proxy's)"),
    out: Path = typer.Option(..., help="folder for fidelity.db, runs.csv, fidelity.json and fidelity.png (re-running resumes)"),
    seed: int = typer.Option(0, help="seed of the spec sample"),
    devices: str = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,..."),
    workers_per_device: Optional[int] = typer.Option(None, "--workers-per-device", help="worker processes per device (default: one per CPU core, at most 8; one per GPU)"),
    as_json: bool = JsonOpt,
) -> None:
    """How well each cheap score ranks the space's specs, against the noise ceiling (docs/fidelity.md).

    Trains N random in-budget specs with K seeds under the space's proxy recipe and K others under
    the confirmation recipe, keeps every run in runs.csv, and gives Kendall tau, Spearman rho and
    precision@5 of every score (proxy cross-entropy from 1..K seeds and earlier epochs, top-1, TSE,
    zero-cost scores, FLOPs, params) against the specs' K-seed confirmed mean, with bootstrap 95%
    intervals, beside the noise ceiling (half the confirmation seeds against the other half).
    """
    from .search.data import DataError
    from .search.errors import SearchError, WorkerCrashed
    from .search.fidelity import FidelityConfig, run_fidelity
    from .search.space import SpaceError, load_space

    try:
        space_def = load_space(space)
        config = FidelityConfig(space=space_def, dataset=dataset, n_specs=n_specs, seeds=seeds, seed=seed,
                                confirm_epochs=confirm_epochs, train=space_def.train)
        device_list = [d.strip() for d in devices.split(",") if d.strip()]
        _check_devices(device_list)
        result = run_fidelity(config, out, device_list, workers_per_device, progress=not as_json)
    except KeyboardInterrupt:
        typer.echo("interrupted: the finished runs are kept; re-run the same command to continue", err=True)
        raise typer.Exit(130) from None
    except ValidationError as err:
        _fail(format_validation_error(err, "fidelity options"))
    except WorkerCrashed as err:
        _crashed(err)
    except (SpaceError, SpecError, SearchError, DataError, ValueError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot write the fidelity study's files: {err.strerror or err} ({err.filename or out})")
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    c = result["ceiling"]
    console.print(f"{result['n_specs']} specs x {result['seeds']} seeds; target: {result['target']}; noise ceiling "
                  f"(Kendall tau, half the seeds against the other half): {_tau(c['kendall_tau'], c['ci95'])}",
                  markup=False, highlight=False)
    for s in result["scores"]:
        console.print(f"  {s['name']:>18s}  tau {_tau(s['kendall_tau'], s['ci95']['kendall_tau'])}  rho "
                      f"{_tau(s['spearman_rho'], s['ci95']['spearman_rho'])}  precision@5 {s['precision_at_5']:.2f}",
                      markup=False, highlight=False)
    for r in result["racing"]:
        console.print(f"  racing z={r['z']:g}: {100 * r['fraction_of_runs']:.0f}% of the runs, tau {r['kendall_tau']:.2f}, "
                      f"the best spec kept all its seeds {100 * r['best_kept_all_seeds']:.0f}% of the time",
                      markup=False, highlight=False)
    console.print(f"files: {out / 'runs.csv'}, {out / 'fidelity.json'}, {out / 'fidelity.png'}", markup=False,
                  highlight=False)


def _tau(value, ci) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="imagefolder:PATH, a folder of class folders (PATH/train and PATH/val [PATH/test] when present)"),
    image_size: int = typer.Option(..., "--image-size", help="proxy training image size S in pixels (stored at ceil(1.25 S) for random-resized crops)"),
    out: Optional[Path] = typer.Option(None, help="write the prepared .npz here, for --dataset imagefolder:FILE (default: the cache, where a study on imagefolder:PATH finds it)"),
    workers: Optional[int] = typer.Option(None, help="decoding threads (default: the usable cores, at most 16)"),
    as_json: bool = JsonOpt,
) -> None:
    """Decode an image folder once at the proxy resolution and store it as uint8 tensors.

    Every image is decoded once, its shorter side resized to ceil(1.25 S) and the centre square
    kept; images, labels, class names and the fixed train/val/test split go into one .npz file
    (xnetspace/search/prepare.py). Without --out it goes to the cache folder ($XNETSPACE_CACHE,
    else $XDG_CACHE_HOME/xnetspace or ~/.cache/xnetspace), keyed by the folder's file list, sizes,
    modification times and S: a study on imagefolder:PATH at --image-size S then decodes nothing.
    Images that cannot be read are counted and listed, never fatal.
    """
    import time

    from .search.data import DataError
    from .search.prepare import list_image_folder, load_or_prepare, prepare_image_folder

    try:
        kind, _, arg = dataset.partition(":")
        if kind != "imagefolder" or not arg:
            raise ValueError(f"prepare takes imagefolder:PATH, got {dataset[:200]!r} (digits, synthetic and CIFAR "
                             f"files are read into memory directly)")
        if not Path(arg).is_dir():
            raise ValueError(f"imagefolder:{arg[:200]}: no such folder")
        if not 8 <= image_size <= 1024:
            raise ValueError(f"--image-size {image_size} must be 8 to 1024 pixels (the proxy training size)")
        if workers is not None and not 1 <= workers <= 256:
            raise ValueError(f"--workers {workers} must be 1 to 256")
        if out is not None and out.is_dir():
            raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'prepared.npz'}")
        if out is not None and not out.parent.is_dir():
            raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
        start = time.perf_counter()
        if out is None:
            prepared, path, hit = load_or_prepare(Path(arg), image_size, log=lambda line: None, workers=workers,
                                                  progress=None if as_json else True)
        else:
            prepared = prepare_image_folder(list_image_folder(Path(arg)), image_size, workers,
                                            None if as_json else True)
            prepared.save(out)
            path, hit = out, False
        seconds = time.perf_counter() - start
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was written", err=True)
        raise typer.Exit(130) from None
    except (DataError, ValueError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot write the prepared file: {err.strerror or err} ({err.filename or out})")
    if as_json:
        typer.echo(json.dumps({"file": str(path) if path else None, "cache_hit": hit, "seconds": seconds,
                               "images": len(prepared.labels), **prepared.counts(), "classes": len(prepared.classes),
                               "image_size": prepared.image_size, "stored_size": prepared.stored_size,
                               "unreadable": [{"path": p, "error": e} for p, e in prepared.unreadable]}))
        return
    typer.echo(prepared.summary())
    for p, e in prepared.unreadable[5:]:  # the summary names the first five
        typer.echo(f"  unreadable: {p} ({e})")
    where = f"in the cache: {path}" if out is None else str(path)
    if path is None:
        typer.echo(f"not written: the cache folder cannot be written (set XNETSPACE_CACHE); {seconds:.1f} s")
    else:
        typer.echo(f"{'already prepared' if hit else f'prepared in {seconds:.1f} s'}, {where}")


@app.command()
def worker(
    storage: str = typer.Option(..., help="the study's Optuna RDB URL, e.g. postgresql+psycopg://USER:PW@HOST/DB"),
    study_name: str = typer.Option(..., "--study-name", help="the study to join (the head prints it)"),
    devices: str = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,... on this machine"),
    workers_per_device: Optional[int] = typer.Option(None, "--workers-per-device", help="worker processes per device (default: one single-thread worker per CPU core, at most 8; one per GPU)"),
    dataset: Optional[str] = typer.Option(None, help="this machine's path to the study's data, e.g. imagefolder:/data/x (checked against the head's)"),
    timeout: Optional[float] = typer.Option(None, help="seconds after which this worker starts no new trial"),
    worker_index: Optional[int] = typer.Option(None, "--worker-index", help="number of the first worker (seeds its sampler; default: random from 1000)"),
) -> None:
    """Join a study that `xnetspace search` created in a server database and run its trials until it is done.

    The study's space, dataset, recipe, N, sampler and pruner come from the storage, not from this
    command line. Exits 0 when the study's trials are all done (at once on a finished study).
    """
    from .search.data import DataError
    from .search.errors import SearchError, WorkerCrashed
    from .search.join import join_study

    try:
        device_list = [d.strip() for d in devices.split(",") if d.strip()]
        if workers_per_device is not None and workers_per_device < 1:
            raise ValueError(f"--workers-per-device {workers_per_device} must be at least 1")
        _check_devices(device_list)
        join_study(storage, study_name, device_list, workers_per_device, dataset, timeout, worker_index)
    except KeyboardInterrupt:
        typer.echo("interrupted: this worker's running trials are retried by the others (heartbeat)", err=True)
        raise typer.Exit(130) from None
    except ValidationError as err:
        _fail(format_validation_error(err, "worker options"))
    except WorkerCrashed as err:
        _crashed(err)
    except (SearchError, DataError, ValueError) as err:
        _fail(str(err))


@app.command()
def space(
    space_file: str = typer.Argument(..., help="space file (spaces/*.yaml) or a shipped space's name"),
    draws: int = typer.Option(2000, min=1, max=100_000, help="random specs to draw for the statistics (1..100,000)"),
    num_classes: int = typer.Option(10, "--num-classes", min=0, max=MAX_CLASSES, help="classes of the dataset the space is for"),
    in_chans: int = typer.Option(3, "--in-chans", min=1, max=MAX_IN_CHANS, help="input channels of the dataset"),
) -> None:
    """Check a design space: its Optuna parameters and how many random specs meet its budget."""
    from .search.space import SpaceError, load_space

    try:
        space_def = load_space(space_file)
        check = space_def.check(draws=draws, num_classes=num_classes, in_chans=in_chans)
    except ValidationError as err:
        _fail(format_validation_error(err, "space options (--num-classes, --in-chans)"))
    except (SpaceError, SpecError, ValueError, OSError) as err:
        _fail(str(err))
    params = space_def.param_names()
    console.print(f"space {space_def.name}: {space_def.description}", markup=False, highlight=False)
    console.print(f"parameters ({len(params)}): {', '.join(params)}", markup=False, highlight=False)
    if space_def.rules_summary():
        console.print(f"rules: {space_def.rules_summary()}", markup=False, highlight=False)
    console.print(check.summary(), markup=False, highlight=False)


@app.command()
def analyze(
    runs: Optional[list[Path]] = typer.Argument(None, help="study output folders (each holds study.db), in the order to compare"),
    storage: Optional[str] = typer.Option(None, help="an Optuna storage URL instead of folders (with --study-name)"),
    study_names: Optional[list[str]] = typer.Option(None, "--study-name", help="a study in --storage (repeat for several)"),
    out: Optional[Path] = typer.Option(None, help="folder for analysis.json and the figures (default: the run's folder for one run, else runs/analysis)"),
    bins: int = typer.Option(5, help="FLOP bins of the complexity normalisation"),
    force: bool = typer.Option(False, "--force", help="compare studies of different datasets, image sizes or scores anyway (different scores: by top-1 error)"),
    as_json: bool = JsonOpt,
) -> None:
    """Design-space analysis in the studies' score (cross-entropy in a loss study, top-1 error in a
    top1 study): EDFs, knob importances and marginals of each study, and the comparison of the
    first study with the others (KS statistic, bootstrap CIs)."""
    import warnings

    import optuna

    from .search.analysis import AnalysisError, analyze as analyze_studies, load_named_study, load_run, study_data
    from .search.analysis_plots import write_analysis
    from .text import shorten

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs, study_names = list(runs or []), list(study_names or [])
    try:
        if bool(storage) != bool(study_names):
            raise AnalysisError("--storage and --study-name go together: give both, or study folders only")
        if not runs and not study_names:
            raise AnalysisError("nothing to analyse: give study output folders (RUN ...) or --storage URL --study-name NAME")
        with warnings.catch_warnings(record=True) as caught:  # numerical libraries' notices: one line each
            warnings.simplefilter("always")
            data = [study_data(load_run(run), str(run), run / "summary.json") for run in runs]
            data += [study_data(load_named_study(storage, name), f"{storage} :: {name}") for name in study_names]
            result = analyze_studies(data, force=force, bins=bins)
            folder = out or (runs[0] if len(data) == 1 and runs else Path("runs") / "analysis")
            files = write_analysis(result, folder)
    except AnalysisError as err:
        _fail(str(err))
    for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught
                                 if not issubclass(w.category, (DeprecationWarning, FutureWarning))):
        typer.echo(f"warning: {shorten(message.splitlines()[0], 200)}", err=True)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return

    def say(line: str) -> None:  # names and messages are text, not rich markup
        console.print(line, markup=False, highlight=False)

    score = result["score"]
    d = 4 if score["unit"] == "nats" else 2  # decimals of the score
    say(f"score: {score['label']} ({score['unit']}, lower is better)" + (f"; {score['note']}" if "note" in score else ""))
    for s in result["studies"]:
        e = s["error"]
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(s["importance"].items())[:3]) or "none"
        say(f"{s['name']} ({s['space']}, {s['dataset']}, sampler {s['sampler']}): {s['n']} candidates, "
                      f"{s['rejected']} samples rejected; error best {e['min']:.{d}f} / median {e['median']:.{d}f} / "
                      f"mean {e['mean']:.{d}f} {score['unit']}; most important (fANOVA): {top}")
        for note in s["warnings"]:
            say(f"  warning: {note}")
    for c in result.get("comparisons", [result["comparison"]] if "comparison" in result else []):
        if c.get("ks_statistic") is not None:
            lo, hi = c["mean_difference_ci95"]
            blo, bhi = c["best_difference_ci95"]
            say(f"{c['a']} vs {c['b']}: KS {c['ks_statistic']:.3f} (p = {c['ks_pvalue']:.3g}); "
                          f"mean error difference {c['mean_difference']:+.{d}f} [95% CI {lo:+.{d}f}, {hi:+.{d}f}], best "
                          f"{c['best_difference']:+.{d}f} [{blo:+.{d}f}, {bhi:+.{d}f}]: {c['verdict']}")
        for note in c["warnings"]:
            say(f"  warning: {note}")
    say("files: " + ", ".join(str(p) for p in files.values()))

@app.command()
def refine(
    run: Path = typer.Argument(..., help="a population study's output folder (xnetspace search --population --out RUN)"),
    out: Path = typer.Option(..., help="folder for refine.json, refined_space.yaml and refine_edf.png"),
    verify: int = typer.Option(0, "--verify", min=0, help="then sample and train a fresh population of N from the refined space and compare it with the original (0: no)"),
    force: bool = typer.Option(False, "--force", help="refine a study that is not a population study (another sampler, a pruner)"),
    seed: int = typer.Option(0, help="seed of the bootstraps, fANOVA and the --verify study"),
    devices: str = typer.Option("cpu", help="--verify: cpu | cuda | cuda:0,cuda:1,..."),
    workers_per_device: Optional[int] = typer.Option(None, "--workers-per-device", help="--verify: worker processes per device"),
    as_json: bool = JsonOpt,
) -> None:
    """Refine a design space from a population study (pycls's AnyNet-to-RegNet step): test candidate
    constraints (ties, non-decreasing widths/depths/heads, an attention-share schedule, a fitted
    RegNet width rule, fixing knobs of nil importance) against the population's EDFs, and write the
    refined space with the accepted ones. The rule and its reasons: docs/design_spaces.md."""
    import warnings

    import optuna

    from .search.analysis import AnalysisError, load_run, study_data
    from .search.analysis_schema import RefineResult
    from .search.data import DataError
    from .search.errors import SearchError, WorkerCrashed
    from .search.refine import refine as refine_study
    from .search.refine_plots import write_refine
    from .search.space import SpaceError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fANOVA's and scipy's notices; refine.json says what matters
            data = study_data(load_run(run), str(run), run / "summary.json")
            refinement = refine_study(data, force=force, seed=seed)
        files = write_refine(refinement, out)
        if verify:
            from .search.refine_verify import verify as verify_refinement

            device_list = [d.strip() for d in devices.split(",") if d.strip()]
            _check_devices(device_list)
            checked = verify_refinement(refinement, data, out, verify, device_list, workers_per_device, seed,
                                        progress=not as_json)
            refinement.result["verify"] = checked
            refinement.result = RefineResult.model_validate(refinement.result).model_dump(exclude_unset=True)
            files["json"].write_text(json.dumps(refinement.result, indent=2) + "\n")
    except WorkerCrashed as err:
        _crashed(err)
    except (AnalysisError, SpaceError, SpecError, SearchError, DataError, ValueError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot write the refinement: {err.strerror or err} ({err.filename or out})")
    result = refinement.result
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    score = result["score"]
    say(f"{result['study']} ({result['space']}): {result['members']} members, {score['label']} ({score['unit']})")
    for step in sorted(result["steps"], key=lambda s: (s["order"] is None, s["order"] or 0)):
        test = step["test"] or step["first_test"]
        where = f"{test['satisfying']}/{test['members']}" if test else "-"
        say(f"  {step['verdict']:<14} {where:>8}  {step['description']}: {step['reason']}")
    say(f"accepted {len(result['accepted'])}; knobs {len(result['knobs_before'])} -> {len(result['knobs_after'])}; "
        f"members satisfying all accepted: {result['members_left']}")
    if result.get("verify"):
        c = result["verify"]["comparison"]
        if c.get("mean_difference_ci95"):
            lo, hi = c["mean_difference_ci95"]
            say(f"verify: {result['verify']['members']} fresh members; refined minus original mean {c['mean_difference']:+.4g} "
                f"[95% CI {lo:+.4g}, {hi:+.4g}], KS {c['ks_statistic']:.3f} (p = {c['ks_pvalue']:.3g}): {c['verdict']}")
    for note in result["warnings"]:
        say(f"  note: {note}")
    say("files: " + ", ".join(str(p) for p in files.values()))


def _crashed(err: Exception) -> None:
    """Exit 1 (not bad input) with the one paragraph naming each lost worker's log file."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _check_devices(devices: list[str]) -> None:
    for device in devices:
        if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"--devices entry {device!r} must be cpu, cuda or cuda:K")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--devices {device}: no CUDA device is available here")


def main() -> None:
    """The ``xnetspace`` console script: ``app()`` with every way out turned into a short answer.

    Exit status: 0 done; 2 bad input (one paragraph, also for unknown options); 130 Ctrl-C (a short
    line); 1 an internal error (a bug): one paragraph naming a log file with the traceback,
    never the traceback itself.
    """
    try:
        app()
    except SystemExit as done:
        # typer turns Ctrl-C into exit 130 silently (Exit raised from the KeyboardInterrupt);
        # commands that catch it themselves say more and raise Exit(130) from None.
        if done.code == 130 and isinstance(getattr(done.__context__, "__cause__", None), KeyboardInterrupt):
            typer.echo("interrupted (Ctrl-C); nothing was saved by this command", err=True)
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted (Ctrl-C); nothing was saved by this command", err=True)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last guard: a bug gets a log file, not a traceback
        from .text import shorten

        from .logs import error_log

        log = error_log(err)
        where = f"the traceback is in {log}" if log else "no log file could be written"
        typer.echo(f"internal error: {type(err).__name__}: {shorten(str(err), 200)}. This is a bug in "
                   f"xnetspace, not a problem with your input; {where} (please attach it to a bug report).",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
