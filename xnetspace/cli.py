"""Command line: ``xnetspace build SPEC``, ``xnetspace flops SPEC``, ``search``, ``analyze``, ...

A command parses its options, calls the library and maps the library's errors (:func:`_answers`);
the rules and the words it prints live beside the code that makes each result (``report_lines``
of :mod:`xnetspace.build_report`, :mod:`.search.analysis`, :mod:`.search.refine_report`, ...), so that
Python callers get the same. tests/test_cli.py keeps every command body within 40 lines.

SPEC is a spec file (``.yaml``/``.json``) or a preset name (``transxnet_t``). Bad input (spec,
checkpoint, image, option) exits with status 2 and one paragraph on stderr, never a traceback;
Ctrl-C exits 130; an internal error (a bug) exits 1 with one paragraph naming a log file that
holds its traceback (:func:`main`).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import typer
from pydantic import ValidationError
from rich.console import Console

from .build_report import kind_table, stage_table
from .checkpoint import load_weights, read_checkpoint, save_checkpoint
from .cost import cost_report, parse_image_size
from .errors import ReportedError
from .errors import interrupted as was_interrupted
from .model import build_model
from .spec import MAX_CLASSES, MAX_IN_CHANS, MAX_SEED, NetworkSpec, format_validation_error, resolve_spec, save_spec
from .strict_json import to_json

if TYPE_CHECKING:
    from .search.fidelity_schema import FidelityResult
    from .search.space import SearchSpace

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="xnetspace: TransXNet specs, builder, cost model and search."
)
# Piped output (CI logs, files) gets a table wide enough not to truncate, not rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

SpecArg = typer.Argument(..., help="spec file (.yaml/.json) or preset name (transxnet_t, _s, _b)")
ImageSizeOpt = typer.Option("224", "--image-size", help="input size H or HxW, in pixels")
JsonOpt = typer.Option(False, "--json", help="print one JSON object instead of tables")


MAX_WORKER_INDEX = 1_000_000  # worker k's sampler is seeded --seed + 1000 k: below 2**32 (spec.MAX_SEED)
MAX_MESSAGE = 3000  # characters of one error paragraph; the sources already keep values short


def _fail(message: str) -> None:
    if len(message) > MAX_MESSAGE:  # last guard: a message never floods the terminal
        message = f"{message[:MAX_MESSAGE]} ... ({len(message) - MAX_MESSAGE:,} more characters)"
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def _answers(
    options: str | None = None,
    *,
    writing: str | None = None,
    place: object = None,
    interrupted: str | Callable[[], str] | None = None,
) -> Iterator[None]:
    """The library's answers to bad input, as the command line gives them: one paragraph on stderr
    (``error: ...``, via :func:`_fail`) and exit 2 for a ValueError (SpecError, SpaceError,
    DataError, CheckpointError, AnalysisError, ...), an OSError and a
    :class:`~xnetspace.errors.ReportedError` (SearchError, ...); a ReportedError with another
    ``exit_status`` (WorkerCrashed: 1) exits with that, its message whole.

    Args:
        options: what a pydantic ValidationError is about ("search options"): its problems are
            listed (:func:`format_validation_error`); None: its text, as any ValueError.
        writing: what an OSError failed to write ("the study's files"): ``cannot write WRITING:
            why (file)``, the file being the error's, else ``place``; None: the error's text.
        interrupted: the line Ctrl-C prints before exit 130 (or a function giving it); None:
            Ctrl-C goes on to :func:`main`.
    """
    try:
        try:
            yield
        except Exception as err:
            if not was_interrupted(err):
                raise
            raise KeyboardInterrupt from err  # Ctrl-C that landed in a library's cleanup is still Ctrl-C
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        typer.echo(interrupted() if callable(interrupted) else interrupted, err=True)
        raise typer.Exit(130) from None
    except ValidationError as err:
        _fail(str(err) if options is None else format_validation_error(err, options))
    except ReportedError as err:
        if err.exit_status != 2:  # not the user's input (worker processes died): the logs named
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_status) from None
        _fail(str(err))
    except ValueError as err:
        _fail(str(err))
    except OSError as err:
        _fail(
            str(err) if writing is None else f"cannot write {writing}: {err.strerror or err} ({err.filename or place})"
        )


def _devices(devices: str) -> list[str]:
    """``--devices cpu,cuda:0`` as a list (the library checks each entry); none at all is refused."""
    listed = [d.strip() for d in devices.split(",") if d.strip()]
    if not listed:
        raise ValueError(f"--devices {devices!r} names no device: give cpu, cuda or cuda:K (comma-separated)")
    return listed


def _one_device(device: str) -> str:
    """``--device`` as one checked device (cpu, cuda, cuda:K; CUDA only where there is one)."""
    from .search.study import check_devices

    listed = check_devices(device)
    if len(listed) != 1:
        raise ValueError(f"--device {device!r} names {len(listed)} devices; give one")
    return listed[0]


def _load(spec_arg: str, image_size: str) -> tuple[NetworkSpec, tuple[int, int]]:
    from .spec import check_image_size
    from .text import shorten

    with _answers(f"spec {shorten(spec_arg)}"):
        if len(image_size) > 40:  # "16384x16384" is 11 characters; int() of 5,000 digits fails
            raise ValueError(f"--image-size {shorten(image_size, 40)!r} must be H or HxW, e.g. 224 or 224x192")
        size = check_image_size(parse_image_size(image_size), "--image-size")
        return resolve_spec(spec_arg), size


@app.command()
def build(
    spec: str = SpecArg,
    image_size: str = ImageSizeOpt,
    image: Path | None = typer.Option(None, help="photograph to classify (default: scikit-image's 'chelsea')"),
    checkpoint: Path | None = typer.Option(None, help="weights: a release checkpoint or one saved by --save"),
    save: str | None = typer.Option(
        None, help="save the network with its spec to this file (a regular file; a symlink is followed)"
    ),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="seed of the random initialisation (without --checkpoint)"),
    force: bool = typer.Option(
        False, "--force", help="build and run even when the memory or time estimate exceeds the limit"
    ),
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
    from .build_report import build_notice, check_build, classify, nonfinite_warning, report_lines
    from .paths import output_file, saved_line, write_atomically
    from .photo import photo_batch

    net_spec, size = _load(spec, image_size)
    with _answers():
        inputs: list[str | Path] = [spec, *(p for p in (checkpoint, image) if p is not None)]
        target = None if save is None else output_file(save, "--save", "save the network", inputs=inputs)
    if not as_json:  # what the spec alone tells, before anything is built
        console.print(stage_table(cost_report(net_spec, size)))
    with _answers():
        notice = None if force else build_notice(check_build(net_spec, size))
        if notice and not as_json:
            console.print(notice)
        torch.manual_seed(seed)  # the same command prints the same numbers
        model = build_model(net_spec, force=True).eval()  # checked above, with the forward
        if checkpoint is not None:
            load_weights(model, read_checkpoint(checkpoint))
        batch = photo_batch(net_spec, size, image)
    result = classify(model, batch, net_spec, size, image, checkpoint)
    if warning := nonfinite_warning(result):
        typer.echo(warning, err=True)
    if save is not None and target is not None:  # target: --save's file
        with _answers():
            write_atomically(target, lambda path: save_checkpoint(model, path), "save the network", save)
        result["saved"] = save
    if as_json:
        typer.echo(to_json(result, indent=2))
        return
    for line in report_lines(result, tuple(batch.shape)):
        console.print(line)
    if save is not None and target is not None:
        console.print(saved_line(save, target), markup=False, highlight=False)


@app.command()
def flops(spec: str = SpecArg, image_size: str = ImageSizeOpt, as_json: bool = JsonOpt) -> None:
    """Exact params and FLOPs of SPEC from the spec alone, by stage and operator kind."""
    net_spec, size = _load(spec, image_size)
    report = cost_report(net_spec, size)
    if as_json:
        typer.echo(to_json(report.to_dict(), indent=2))
        return
    console.print(stage_table(report))
    console.print(kind_table(report))


@app.command()
def scale(
    preset: str = typer.Argument(..., help="preset name or spec file to scale"),
    flops_max: str = typer.Option(..., "--flops", help="FLOP budget maximum, e.g. 3M or 1.2G (fvcore count)"),
    image_size: str = ImageSizeOpt,
    flops_min: str | None = typer.Option(None, "--flops-min", help="FLOP budget minimum"),
    max_params: str | None = typer.Option(None, "--max-params", help="parameter maximum, e.g. 1.5M"),
    save: str | None = typer.Option(
        None, help="write the scaled spec to this YAML (or .json) file (a regular file; a symlink is followed)"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Scale a preset to a FLOP budget (depth, width and heads x one factor; xnetspace/scaling.py)."""
    from .paths import output_file, saved_line
    from .scaling import scale_to_budget
    from .search.space import parse_count

    net_spec, size = _load(preset, image_size)
    with _answers():
        target = None if save is None else output_file(save, "--save", "save the spec", inputs=[preset])
        scaled = scale_to_budget(
            net_spec,
            parse_count(flops_max),
            size,
            min_flops=parse_count(flops_min) if flops_min else None,
            max_params=parse_count(max_params) if max_params else None,
        )
        if target is not None:
            save_spec(scaled, target)
    report = cost_report(scaled, size)
    if as_json:
        typer.echo(
            to_json(
                {
                    "flops": report.flops,
                    "params": report.params,
                    "image_size": list(size),
                    "spec": scaled.model_dump(mode="json"),
                    "saved": save,
                }
            )
        )
        return
    console.print(stage_table(report))
    if save is not None and target is not None:
        console.print(saved_line(save, target), markup=False, highlight=False)


def _task(dataset: str | None, space: SearchSpace) -> tuple[str, str]:
    """``--dataset`` as given, or the space's own task (a missing Fashion-MNIST package: digits), with why."""
    from .search.data import default_dataset

    return (dataset, "given by --dataset") if dataset is not None else default_dataset(space.dataset)


class _SearchOpt:
    """``xnetspace search``'s options, in the order its help lists them (typer reads each from the
    default it is given in the command's signature)."""

    # the space, the task and the budget
    space = typer.Option(..., "--space", help="space file (spaces/*.yaml) or a shipped space's name")
    dataset = typer.Option(
        None,
        help=(
            "digits[:N] (N training images, default all 898) | fashion-mnist[:N] | fashion-mnist:PATH[:N] "
            "| synthetic[:N] | imagefolder:PATH | cifar10:PATH | cifar100:PATH (docs/data.md); default: the "
            "space's task (fashion_cpu: fashion-mnist:10000, digits where its package is missing)"
        ),
    )
    n_trials = typer.Option(25, "--n-trials", help="trials the study holds in total (a re-run continues up to N)")
    flops_max = typer.Option(None, "--flops-max", help="FLOP budget maximum, e.g. 0.5G or 300M (overrides the space)")
    flops_min = typer.Option(None, "--flops-min", help="FLOP budget minimum (overrides the space)")
    latency_table = typer.Option(
        None, "--latency-table", help="a device's latency table (xnetspace latency-table): latency is predicted from it"
    )
    max_latency_ms = typer.Option(
        None, "--max-latency-ms", help="latency budget in ms (predicted with --latency-table, else measured)"
    )
    # the proxy recipe, and how long this run may start trials
    image_size = typer.Option(None, "--image-size", help="proxy training image size (default: the space's)")
    epochs = typer.Option(None, help="proxy training epochs (default: the space's)")
    batch_size = typer.Option(None, "--batch-size", help="proxy training batch size")
    lr = typer.Option(None, help="AdamW learning rate")
    trial_time_limit = typer.Option(
        None, "--trial-time-limit", help="seconds one trial may take (scoring, training and evaluation)"
    )
    augment = typer.Option(
        None,
        help=(
            "augmentation of the training batches: none | flip | crop-flip | rrc-flip "
            "(default: the space's; docs/data.md)"
        ),
    )
    timeout = typer.Option(None, help="seconds after which this run starts no new trial")
    # the objective and the sampling
    objective = typer.Option(
        "loss",
        help=(
            "what candidates are ranked by: loss (validation cross-entropy, the default) | top1 "
            "| tse (training-speed estimate) | synflow | naswot | grad_norm (zero-cost, no training) "
            "| top1-flops | top1-latency | loss-latency (docs/search.md)"
        ),
    )
    proxy_seeds = typer.Option(
        1, "--proxy-seeds", help="seeds a candidate is trained with at most; its score is their mean"
    )
    race = typer.Option(
        None,
        "--race",
        help=(
            "z: a candidate worse than the incumbent by more than z standard errors after half its seeds "
            "gets no more (default: every candidate gets all)"
        ),
    )
    sampler = typer.Option(None, help="tpe | random | nsga2 | qmc (default: tpe, nsga2 for two objectives)")
    pruner = typer.Option(None, help="median | hyperband | none (default: median; none for two objectives)")
    population = typer.Option(
        False,
        "--population",
        help="a population study for `xnetspace analyze`: --sampler random --pruner none --confirm-top 0",
    )
    seed = typer.Option(0, min=0, max=MAX_SEED, help="seed of the samplers and of the training")
    # where the study is kept and where it runs
    storage = typer.Option(None, help="Optuna RDB URL (default: sqlite in --out)")
    study_name = typer.Option(None, "--study-name", help="default: SPACE-DATASET-OBJECTIVE")
    devices = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,... (one worker process per entry)")
    # the confirmation
    baseline = typer.Option(
        None,
        help=(
            "controls confirmed like the winner, comma-separated: PRESET (scaled to the study's budget), "
            "random:auto (random search at equal compute; the default with confirmation), "
            "random:N (best of N random in-budget specs), none"
        ),
    )
    confirm_top = typer.Option(
        5, "--confirm-top", help="candidates retrained after the search with several seeds (0: none)"
    )
    confirm_seeds = typer.Option(3, "--confirm-seeds", help="seeds per confirmed candidate (>= 2 for a 95% CI)")
    confirm_epochs = typer.Option(None, "--confirm-epochs", help="confirmation epochs (default: the proxy's)")
    fidelity_sample = typer.Option(
        5,
        "--fidelity-sample",
        help=(
            "random in-budget specs confirmed beside the top candidates, for Kendall tau and the spread "
            "between architectures (0: none; none without confirmation)"
        ),
    )
    # the output folder and the workers
    out = typer.Option(None, help="output folder (default: runs/STUDY_NAME)")
    heartbeat = typer.Option(10, help="heartbeat interval in seconds; dead workers' trials are retried")
    workers_per_device = typer.Option(
        None,
        "--workers-per-device",
        help="worker processes per device (default: one single-thread worker per CPU core, at most 8; one per GPU)",
    )


def _budget(
    flops_min: str | None, flops_max: str | None, latency_table: str | None, max_latency_ms: float | None
) -> dict:
    """``search``'s budget options as ``StudyConfig.create``'s arguments (counts such as 1.5M parsed)."""
    from .search.space import parse_count

    return dict(
        flops_min=None if flops_min is None else parse_count(flops_min),
        flops_max=None if flops_max is None else parse_count(flops_max),
        latency_table=latency_table,
        max_latency_ms=max_latency_ms,
    )


def _interrupted_search(started: list) -> Callable[[], str]:
    """What an interrupted search says: how far the study got once its options were resolved
    (``started``, filled in by the command), else that nothing started."""
    from .search import progress_summary

    def message() -> str:
        done = progress_summary(started[0]) if started else "nothing started"
        return f"interrupted: {done}; the study is kept: re-run the same command to continue"

    return message


@app.command()
def search(
    space: str = _SearchOpt.space,
    dataset: str | None = _SearchOpt.dataset,
    n_trials: int = _SearchOpt.n_trials,
    flops_max: str | None = _SearchOpt.flops_max,
    flops_min: str | None = _SearchOpt.flops_min,
    latency_table: str | None = _SearchOpt.latency_table,
    max_latency_ms: float | None = _SearchOpt.max_latency_ms,
    image_size: int | None = _SearchOpt.image_size,
    epochs: int | None = _SearchOpt.epochs,
    batch_size: int | None = _SearchOpt.batch_size,
    lr: float | None = _SearchOpt.lr,
    trial_time_limit: float | None = _SearchOpt.trial_time_limit,
    augment: str | None = _SearchOpt.augment,
    timeout: float | None = _SearchOpt.timeout,
    objective: str = _SearchOpt.objective,
    proxy_seeds: int = _SearchOpt.proxy_seeds,
    race: float | None = _SearchOpt.race,
    sampler: str | None = _SearchOpt.sampler,
    pruner: str | None = _SearchOpt.pruner,
    population: bool = _SearchOpt.population,
    seed: int = _SearchOpt.seed,
    storage: str | None = _SearchOpt.storage,
    study_name: str | None = _SearchOpt.study_name,
    devices: str = _SearchOpt.devices,
    baseline: str | None = _SearchOpt.baseline,
    confirm_top: int = _SearchOpt.confirm_top,
    confirm_seeds: int = _SearchOpt.confirm_seeds,
    confirm_epochs: int | None = _SearchOpt.confirm_epochs,
    fidelity_sample: int = _SearchOpt.fidelity_sample,
    out: str | None = _SearchOpt.out,
    heartbeat: int = _SearchOpt.heartbeat,
    workers_per_device: int | None = _SearchOpt.workers_per_device,
) -> None:
    """Search a design space under a FLOP budget with proxy training (Optuna)."""
    from .paths import folder_option
    from .search import RunOptions, StudyConfig, run_search
    from .search.space import load_space

    started: list[RunOptions] = []  # the options once resolved: what an interrupted run reports on
    interrupted = _interrupted_search(started)
    with _answers("search options", writing="the study's files", place="the output folder", interrupted=interrupted):
        folder = folder_option(out)  # "" is refused here: as a Path it would be ".", the working folder
        # fmt: off
        the_space = load_space(space)
        dataset, why = _task(dataset, the_space)
        config = StudyConfig.create(
            the_space, dataset, objective, proxy_seeds=proxy_seeds, race=race,
            **_budget(flops_min, flops_max, latency_table, max_latency_ms),
            image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, time_limit=trial_time_limit,
            seed=seed, augment=augment,
        )
        started.append(RunOptions(
            n_trials=n_trials, out=folder, storage=storage, study_name=study_name, sampler=sampler, pruner=pruner,
            population=population, seed=seed, timeout=timeout, devices=_devices(devices), heartbeat=heartbeat,
            baseline=baseline, workers_per_device=workers_per_device, confirm_top=confirm_top,
            confirm_seeds=confirm_seeds, confirm_epochs=confirm_epochs, fidelity_sample=fidelity_sample,
        ).resolved(config))
        # fmt: on
        run_search(config, started[0], task=why)


@app.command()
def fidelity(
    space: str | None = typer.Argument(None, help="space file (spaces/*.yaml) or a shipped space's name"),
    dataset: str | None = typer.Option(None, help="as for search (default: the space's task)"),
    n_specs: int = typer.Option(30, "--n-specs", help="random in-budget specs of the space"),
    seeds: int = typer.Option(4, help="K: seeds per spec under the proxy recipe and under the confirmation recipe"),
    confirm_epochs: int | None = typer.Option(
        None, "--confirm-epochs", help="confirmation epochs (default: twice the proxy's)"
    ),
    out: str | None = typer.Option(
        None, help="folder for fidelity.db, runs.csv, fidelity.json and fidelity.png (re-running resumes)"
    ),
    table: Path | None = typer.Option(
        None, "--table", help="a table (xnetspace tabulate): its scores' fidelity, without training (no SPACE)"
    ),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="seed of the spec sample"),
    devices: str = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,..."),
    workers_per_device: int | None = typer.Option(
        None,
        "--workers-per-device",
        help="worker processes per device (default: one per CPU core, at most 8; one per GPU)",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """How well each cheap score ranks the space's specs, against the noise ceiling (docs/fidelity.md).

    Trains N random in-budget specs with K seeds under the space's proxy recipe and K others under
    the confirmation recipe, keeps every run in runs.csv, and gives Kendall tau, Spearman rho and
    precision@5 of every score (proxy cross-entropy from 1..K seeds and earlier epochs, top-1, TSE,
    zero-cost scores, FLOPs, params) against the specs' K-seed confirmed mean, with bootstrap 95%
    intervals, beside the noise ceiling (half the confirmation seeds against the other half).
    With --table, the same from a table's runs against its mean test score (docs/benchmark.md).
    """
    from .paths import folder_option
    from .search.fidelity import FidelityConfig, run_fidelity
    from .search.space import load_space

    if table is not None or space is None or out is None:
        return _fidelity_of_table(table, space, out, seed, as_json)
    with _answers(
        "fidelity options",
        writing="the fidelity study's files",
        place=out,
        interrupted="interrupted: the finished runs are kept; re-run the same command to continue",
    ):
        the_space = load_space(space)
        config = FidelityConfig(
            space=the_space,
            dataset=_task(dataset, the_space)[0],
            n_specs=n_specs,
            seeds=seeds,
            seed=seed,
            confirm_epochs=confirm_epochs,
        )
        folder = folder_option(out)
        result = run_fidelity(config, folder, _devices(devices), workers_per_device, progress=not as_json)
    if as_json:
        typer.echo(result.json_text())
        return
    _print_fidelity(result, folder)


def _print_fidelity(result: FidelityResult, folder: Path | None) -> None:
    """The lines ``xnetspace fidelity`` prints of a study's or a table's analysis (files in ``folder``)."""
    from .search.fidelity_report import report_lines

    for line in report_lines(result, folder):
        console.print(line, markup=False, highlight=False)


@app.command()
def prepare(
    dataset: str = typer.Argument(
        ..., help="imagefolder:PATH, a folder of class folders (PATH/train and PATH/val [PATH/test] when present)"
    ),
    image_size: int = typer.Option(
        ...,
        "--image-size",
        help="proxy training image size S in pixels (stored at ceil(1.25 S) for random-resized crops)",
    ),
    out: str | None = typer.Option(
        None,
        help=(
            "write the prepared .npz here, a new file outside PATH, for --dataset imagefolder:FILE "
            "(default: the cache, where a study on imagefolder:PATH finds it)"
        ),
    ),
    workers: int | None = typer.Option(None, help="decoding threads (default: the usable cores, at most 16)"),
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
    from .search.prepare import prepare_dataset, report_lines

    with _answers(writing="the prepared file", place=out, interrupted="interrupted: nothing was written"):
        run = prepare_dataset(dataset, image_size, out, workers, progress=not as_json)
    if as_json:
        typer.echo(to_json(run.to_dict()))
        return
    for line in report_lines(run):
        typer.echo(line)


@app.command()
def worker(
    storage: str = typer.Option(..., help="the study's Optuna RDB URL, e.g. postgresql+psycopg://USER:PW@HOST/DB"),
    study_name: str = typer.Option(..., "--study-name", help="the study to join (the head prints it)"),
    devices: str = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,... on this machine"),
    workers_per_device: int | None = typer.Option(
        None,
        "--workers-per-device",
        help="worker processes per device (default: one single-thread worker per CPU core, at most 8; one per GPU)",
    ),
    dataset: str | None = typer.Option(
        None, help="this machine's path to the study's data, e.g. imagefolder:/data/x (checked against the head's)"
    ),
    timeout: float | None = typer.Option(None, help="seconds after which this worker starts no new trial"),
    worker_index: int | None = typer.Option(
        None,
        "--worker-index",
        min=0,
        max=MAX_WORKER_INDEX,
        help="number of the first worker (seeds its sampler; default: random from 1000)",
    ),
) -> None:
    """Join a study that `xnetspace search` (or `xnetspace tabulate --storage`) created in a server
    database and run its trials (or its table's jobs) until it is done.

    The study's space, dataset, recipe, N, sampler and pruner come from the storage, not from this
    command line. Exits 0 when the study's trials are all done (at once on a finished study).
    """
    from .search.join import join_study
    from .search.study import check_devices, check_workers
    from .search.tabulate import join_tabulation, stored_tabulation

    with _answers(
        "worker options", interrupted="interrupted: this worker's running trials are retried by the others (heartbeat)"
    ):
        check_workers(check_devices(_devices(devices)), workers_per_device)  # before the storage is touched
        table = stored_tabulation(storage, study_name)
        if table is not None:  # a tabulation's jobs: its own config, no sampler
            done = join_tabulation(table, storage, study_name, _devices(devices), workers_per_device, worker_index)
            typer.echo(f"tabulation {study_name!r}: no job left ({done} finished while this worker ran)")
            return
        join_study(storage, study_name, _devices(devices), workers_per_device, dataset, timeout, worker_index)


@app.command()
def space(
    space_file: str = typer.Argument(..., help="space file (spaces/*.yaml) or a shipped space's name"),
    draws: int = typer.Option(2000, min=1, max=100_000, help="random specs to draw for the statistics (1..100,000)"),
    num_classes: int = typer.Option(
        10, "--num-classes", min=0, max=MAX_CLASSES, help="classes of the dataset the space is for"
    ),
    in_chans: int = typer.Option(3, "--in-chans", min=1, max=MAX_IN_CHANS, help="input channels of the dataset"),
) -> None:
    """Check a design space: its Optuna parameters and how many random specs meet its budget."""
    from .search.space import load_space

    with _answers("space options (--num-classes, --in-chans)"):
        space_def = load_space(space_file)
        check = space_def.check(draws=draws, num_classes=num_classes, in_chans=in_chans)
    params = space_def.param_names()
    console.print(f"space {space_def.name}: {space_def.description}", markup=False, highlight=False)
    console.print(f"parameters ({len(params)}): {', '.join(params)}", markup=False, highlight=False)
    console.print(f"task: {space_def.dataset} (what --dataset runs when not given)", markup=False, highlight=False)
    if space_def.rules_summary():
        console.print(f"rules: {space_def.rules_summary()}", markup=False, highlight=False)
    console.print(check.summary(), markup=False, highlight=False)


@app.command()
def analyze(
    runs: list[Path] | None = typer.Argument(
        None, help="study output folders (each holds study.db), in the order to compare"
    ),
    storage: str | None = typer.Option(None, help="an Optuna storage URL instead of folders (with --study-name)"),
    study_names: list[str] | None = typer.Option(
        None, "--study-name", help="a study in --storage (repeat for several)"
    ),
    out: str | None = typer.Option(
        None,
        help="folder for analysis.json and the figures (default: the run's folder for one run, else runs/analysis)",
    ),
    bins: int = typer.Option(5, help="FLOP bins of the complexity normalisation"),
    force: bool = typer.Option(
        False,
        "--force",
        help="compare studies of different datasets, image sizes or scores anyway (different scores: by top-1 error)",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Design-space analysis in the studies' score (cross-entropy in a loss study, top-1 error in a
    top1 study): EDFs, knob importances and marginals of each study, and the comparison of the
    first study with the others (KS statistic, bootstrap CIs)."""
    from .paths import folder_option
    from .search.analysis_report import report_lines
    from .search.analysis_run import run_analysis

    with _answers():
        folder = folder_option(out)
        result, files, notices = run_analysis(runs or [], storage, study_names or [], folder, bins, force)
    for notice in notices:
        typer.echo(f"warning: {notice}", err=True)
    if as_json:  # what analysis.json holds
        typer.echo(to_json(result.model_dump(exclude_unset=True), indent=2))
        return
    for line in report_lines(result, files):  # names and messages are text, not rich markup
        console.print(line, markup=False, highlight=False)


@app.command()
def refine(
    run: Path = typer.Argument(
        ..., help="a population study's output folder (xnetspace search --population --out RUN)"
    ),
    out: str = typer.Option(..., help="folder for refine.json, refined_space.yaml and refine_edf.png"),
    verify: int = typer.Option(
        0,
        "--verify",
        min=0,
        help=(
            "then sample and train a fresh population of N from the refined space and compare it with the "
            "original (0: no)"
        ),
    ),
    force: bool = typer.Option(
        False, "--force", help="refine a study that is not a population study (another sampler, a pruner)"
    ),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="seed of the bootstraps, fANOVA and the --verify study"),
    devices: str = typer.Option("cpu", help="--verify: cpu | cuda | cuda:0,cuda:1,..."),
    workers_per_device: int | None = typer.Option(
        None, "--workers-per-device", help="--verify: worker processes per device"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Refine a design space from a population study (pycls's AnyNet-to-RegNet step): test candidate
    constraints (ties, non-decreasing widths/depths/heads, an attention-share schedule, a fitted
    RegNet width rule, fixing knobs of nil importance) against the population's EDFs, and write the
    refined space with the accepted ones. The rule and its reasons: docs/design_spaces.md."""
    from .paths import folder_option
    from .search.refine_report import report_lines
    from .search.refine_verify import refine_run

    with _answers(writing="the refinement", place=out):
        result, files = refine_run(
            run, folder_option(out), verify, force, seed, _devices(devices), workers_per_device, progress=not as_json
        )
    if as_json:
        typer.echo(result.json_text())
        return
    for line in report_lines(result, files):
        console.print(line, markup=False, highlight=False)


def _fidelity_of_table(table: Path | None, space: str | None, out: str | None, seed: int, as_json: bool) -> None:
    """``xnetspace fidelity --table TABLE [--out DIR]``: the fidelity of a table's scores, no training."""
    from .bench import load
    from .paths import output_folder, write_atomically
    from .search.bench_fidelity import table_fidelity

    if table is None or space is not None:
        return _fail(
            "fidelity takes SPACE and --out (a fidelity study), or --table TABLE without SPACE (a table's fidelity)"
        )
    with _answers(writing="fidelity.json", place=out):
        folder = None if out is None else output_folder(out, "--out", ["fidelity.json"], create=False)
        result = table_fidelity(load(table), seed=seed)
        if folder is not None:
            output_folder(folder, "--out", ["fidelity.json"])
            text = result.json_text() + "\n"
            write_atomically(folder / "fidelity.json", lambda path: path.write_text(text), "write the fidelity")
    if as_json:
        typer.echo(result.json_text())
        return
    _print_fidelity(result, None)


@app.command()
def tabulate(
    space: str = typer.Argument(..., help="space file or a shipped space's name; every knob finite"),
    dataset: str | None = typer.Option(
        None, help="as for search (one with a test split: the test columns; default: the space's task)"
    ),
    seeds: int = typer.Option(2, help="K: seeds per spec"),
    max_specs: int = typer.Option(500, "--max-specs", help="refuse a space with more distinct in-budget specs"),
    out: str = typer.Option(..., help="folder for tabulate.db, table.csv and meta.json (re-running resumes)"),
    devices: str = typer.Option("cpu", help="cpu | cuda | cuda:0,cuda:1,..."),
    workers_per_device: int | None = typer.Option(
        None, "--workers-per-device", help="worker processes per device (default: one per CPU core, at most 8)"
    ),
    storage: str | None = typer.Option(
        None, help="a server's Optuna RDB URL for the jobs (other machines join with xnetspace worker)"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Train every distinct in-budget spec of a finite space with K seeds, and TransXNet-T scaled
    to its budget beside them: a tabular benchmark to replay searches against (docs/benchmark.md)."""
    from .paths import output_folder
    from .search.space import load_space
    from .search.tabulate import TabulateConfig, report_lines, run_tabulate

    with _answers(
        "tabulate options",
        writing="the table's files",
        place=out,
        interrupted="interrupted: the finished specs are kept; re-run the same command to continue",
    ):
        folder = output_folder(out, "--out", ["tabulate.db", "table.csv", "meta.json"], create=False)
        the_space = load_space(space)
        config = TabulateConfig(space=the_space, dataset=_task(dataset, the_space)[0], seeds=seeds, max_specs=max_specs)
        meta = run_tabulate(
            config,
            folder,
            _devices(devices),
            workers_per_device,
            progress=not as_json,
            storage=storage,
            announce=lambda line: typer.echo(line, err=True),
        )
    if as_json:
        typer.echo(to_json(meta, indent=2))
        return
    for line in report_lines(meta, folder):
        console.print(line, markup=False, highlight=False)


@app.command()
def replay(
    table: Path = typer.Argument(..., help="a table's folder (xnetspace tabulate --out)"),
    samplers: str = typer.Option(
        "random,tpe,tpe-multivariate,gp,evolution,protocol", help="comma-separated, of those (docs/benchmark.md)"
    ),
    budget: str = typer.Option("10,25,50", help="evaluations per search, comma-separated"),
    repeats: int = typer.Option(200, help="searches per sampler and budget"),
    gp_repeats: int = typer.Option(10, "--gp-repeats", help="repeats of the slow GPSampler (at most --repeats)"),
    seed: int = typer.Option(
        0, min=0, max=MAX_SEED, help="repeat r seeds its samplers with seed + r; the proxy seeds are drawn from it"
    ),
    score: str = typer.Option("loss", help="loss (cross-entropy) or top1"),
    population: int = typer.Option(10, help="evolution: population size"),
    tournament: int = typer.Option(3, help="evolution: tournament size"),
    out: str = typer.Option(..., help="folder for replay.json, replay.csv and replay.png"),
    as_json: bool = JsonOpt,
) -> None:
    """Replay search strategies against a table hundreds of times: each sampler searches the
    table's space as xnetspace search does, sees one seed's validation score, and is judged by its
    pick's mean test score (regret, top-1%/top-5 hits, paired with random search)."""
    from .bench import load
    from .paths import output_folder
    from .search.replay import ReplayConfig, run_replay
    from .search.replay_stats import report_lines

    with _answers("replay options", writing="the replay's files", place=out):
        folder = output_folder(out, "--out", ["replay.json", "replay.csv", "replay.png"], create=False)
        config = ReplayConfig(
            samplers=tuple(s.strip() for s in samplers.split(",") if s.strip()),
            budgets=_counts(budget, "--budget"),
            repeats=repeats,
            gp_repeats=gp_repeats,
            seed=seed,
            score=score,
            population=population,
            tournament=tournament,
        )
        summary = run_replay(load(table), config, folder, progress=not as_json)
    if as_json:
        typer.echo(to_json(summary, indent=2))
        return
    for line in report_lines(summary, folder):
        console.print(line, markup=False, highlight=False)


@app.command("latency-table")
def latency_table(
    spaces: list[str] = typer.Argument(..., help="space files or shipped spaces' names whose shapes to time"),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N: the device the table is for"),
    batch_size: int = typer.Option(1, "--batch-size", min=1, max=4096, help="images per forward"),
    threads: int = typer.Option(1, min=1, max=256, help="CPU threads (torch.set_num_threads)"),
    specs: int = typer.Option(
        200, min=1, max=100_000, help="distinct in-budget specs per space whose operators are timed"
    ),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="seed of the spec draw"),
    in_chans: int = typer.Option(
        1, "--in-chans", min=1, max=MAX_IN_CHANS, help="input channels (digits, Fashion-MNIST: 1)"
    ),
    num_classes: int = typer.Option(10, "--num-classes", min=0, max=MAX_CLASSES, help="classes of the task"),
    repeats: int = typer.Option(30, min=1, max=10_000, help="passes over a network's operators in a round (median)"),
    rounds: int = typer.Option(3, min=1, max=100, help="rounds over all the networks (each operator's fastest kept)"),
    out: str = typer.Option(..., help="the table's JSON file (re-running adds what it lacks)"),
) -> None:
    """Time every operator (stem, downsample, DPE, GroupNorm, IDConv, OSRA, STE, MS-FFN, the block's
    wiring, head) of the spaces' specs, each network's in turn as the network runs them, once per
    device: the table that predict_latency sums along a spec (docs/performance.md)."""
    from tqdm import tqdm

    from .latency_table import fill_table, network_operators, open_table
    from .paths import output_file
    from .search.space import load_space

    with _answers(
        "latency-table options",
        writing="the latency table",
        place=out,
        interrupted="interrupted: the timed operators are kept; re-run the same command to continue",
    ):
        target = output_file(out, "--out", "write the latency table")
        table = open_table(target, _one_device(device), batch_size, threads, "float32", repeats)
        networks = []
        for name in spaces:
            space_def = load_space(name)
            for spec in space_def.distinct_specs(specs, seed, "latency", in_chans=in_chans, num_classes=num_classes):
                networks.append((spec.digest(), network_operators(spec, space_def.constraints.image_size)))
        timed = fill_table(
            table,
            networks,
            rounds,
            save=lambda t: t.save(target),
            progress=lambda todo: tqdm(todo, "latency-table", unit="net"),
        )
    typer.echo(
        f"{len(table.entries)} operators from {len(table.networks)} networks in {out} ({timed} network rounds now) "
        f"on {table.device_name}, batch {batch_size}, {threads} thread(s)"
    )


def _counts(text: str, option: str) -> tuple[int, ...]:
    """``10,25,50`` as counts, or a ValueError naming ``option`` and the text."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{option} {text[:40]!r} must be comma-separated whole numbers, e.g. 10,25,50") from None


def main() -> None:
    """The ``xnetspace`` console script: ``app()`` with every way out turned into a short answer.

    Exit status: 0 done; 2 bad input (one paragraph, also for unknown options); 130 Ctrl-C or
    SIGTERM (a short line); 1 an internal error (a bug): one paragraph naming a log file with the
    traceback, never the traceback itself.
    """
    # SIGTERM (kill, a scheduler stopping a job) ends a command as Ctrl-C does: exit 130, the study kept.
    previous = signal.signal(signal.SIGTERM, _terminate)
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
        if was_interrupted(err):
            typer.echo("interrupted (Ctrl-C); nothing was saved by this command", err=True)
            sys.exit(130)
        from .logs import error_log
        from .text import shorten

        log = error_log(err)
        where = f"the traceback is in {log}" if log else "no log file could be written"
        typer.echo(
            f"internal error: {type(err).__name__}: {shorten(str(err), 200)}. This is a bug in "
            f"xnetspace, not a problem with your input; {where} (please attach it to a bug report).",
            err=True,
        )
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
