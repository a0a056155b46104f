"""The whole search on the head node: check the space and the options, open or resume the
study, run the workers (trials, then confirmation), write the results and the evidence.

The pieces, one room each: :mod:`.study` (config, storage, slots), :mod:`.objective` (one trial),
:mod:`.confirmation` (retraining with seeds, baseline, fidelity), :mod:`.workers` (the trial
loop, processes), :mod:`.join` (workers from other machines), :mod:`.progress` (terminal
output), :mod:`.results` (files on disk).
"""

from __future__ import annotations

from datetime import datetime

import optuna

from ..paths import output_folder
from .confirmation import baseline_spec, check_options, open_confirm_study, summarize
from .control import open_control_study
from .data import DataSplit, load_dataset
from .join import record_dataset, worker_command
from .progress import Monitor, log
from .results import RESULT_FILES, SearchOutcome, write_results
from .space import SpaceCheck
from .study import RunOptions, StudyConfig, open_study, slot_state, store_run_options, top_up_slots
from .train import check_recipe
from .workers import SLOTS_AHEAD, check_lost, check_progress, run_processes, run_worker

__all__ = ["run_search", "progress_summary"]


def run_search(config: StudyConfig, options: RunOptions, task: str | None = None) -> SearchOutcome:
    """Check the space, open or resume the study, run the workers, write the results.

    ``task``: why this dataset runs, in words (the space's own task, digits because Fashion-MNIST
    is not installed, or given), logged beside it.

    ``options`` are resolved for ``config`` first (:meth:`RunOptions.resolved`: study name, output
    folder, sampler and pruner defaults), as ``xnetspace search`` does.

    Raises:
        ValueError: options that do not fit the study (a pruner for two objectives, ...).
        SpaceError: constraints no spec in the space can meet.
        SearchError: a resumed study with another config.
        WorkerCrashed: worker processes crashed and left the study unfinished (the results so far
            are written first).
        StudyStalled: its trials kept failing (``MAX_FAILURES_IN_A_ROW`` in a row, or all of them);
            the results so far are written first.
        ValueError: a batch larger than the training split (before any trial).
        xnetspace.search.data.DataError: a dataset that cannot be read.
        xnetspace.paths.PathError: an output folder that cannot be written (checked before any work).
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    option = "--out" if options.out is not None else "the default output folder"
    options = options.resolved(config)
    assert options.out is not None  # resolved() sets it
    data, check = _checked_inputs(config, options, option)
    output_folder(options.out, option, RESULT_FILES)
    study = open_study(config, options)
    processes = len(options.worker_devices)
    top_up_slots(study, options.n_trials, SLOTS_AHEAD * processes)
    store_run_options(study, options)  # what joining workers read (join.read_study)
    record_dataset(study, data)
    _log_start(study, config, options, data, check, task)

    control = (
        open_control_study(config, options.address, options.seed, options.pruner)
        if "random:auto" in options.baselines
        else None
    )
    cstudy = open_confirm_study(options.address, config.score)
    monitor = Monitor(study, cstudy, options.n_trials, config.score, options.progress, control)
    lost, since = [], datetime.now()
    try:
        if processes == 1:
            with monitor.running():
                run_worker(config, options, options.devices[0], 0, data)
        else:
            lost = run_processes(config, options, monitor)
    finally:
        monitor.close()
        summary = summarize(study, cstudy, config, options, data, control)
        assert options.out is not None and options.study_name is not None  # resolved() sets them
        outcome = write_results(
            study, config, summary, options.out, options.study_name, options.progress, options.devices[0]
        )
    check_lost(lost, study, options, config.score)
    check_progress(study, options, since)
    return outcome


def _checked_inputs(config: StudyConfig, options: RunOptions, option: str) -> tuple[DataSplit, SpaceCheck]:
    """The dataset and the space's check, once everything that can be refused before any work
    passed: the output folder (not made yet), the recipe, the space, the options, the baselines.
    ``option`` names the output folder in errors."""
    assert options.out is not None  # resolved() sets it
    output_folder(options.out, option, RESULT_FILES, create=False)  # checked first, made once the input is good
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    check_recipe(config.train, data)
    check = config.space.check(num_classes=data.num_classes, in_chans=data.in_chans)
    check_options(options)
    for name in options.baselines:  # a preset no scaling fits the budget is refused before anything trains
        if not name.startswith("random:"):
            baseline_spec(name, config.space, data.num_classes, data.in_chans)
    return data, check


def _log_start(
    study: optuna.Study,
    config: StudyConfig,
    options: RunOptions,
    data: DataSplit,
    check: SpaceCheck,
    task: str | None,
) -> None:
    """Log how other machines join (a shared storage only), the dataset, the space's check and the
    study's progress so far."""
    if not options.storage_url.startswith("sqlite"):
        log(options.progress, f"other machines join with:\n  {worker_command(options)}")
    log(
        options.progress,
        f"{data}" + (f" ({task})" if task else "") + f"\nspace {config.space.name}: {check.summary()}\n"
        f"study '{options.study_name}' in {options.storage_url}: "
        f"{slot_state(study, options.n_trials).done} of {options.n_trials} trials done",
    )


def progress_summary(options: RunOptions) -> str:
    """``"7 of 20 trials done"`` read from the study's storage (for the line printed when a run
    is interrupted); a plain phrase when the storage cannot be read."""
    try:
        study = optuna.load_study(study_name=options.study_name, storage=options.storage_url)
        return f"{slot_state(study, options.n_trials).done} of {options.n_trials} trials done"
    except Exception:  # noqa: BLE001 - an interrupted run must still exit with its short line
        return "the trials that finished are kept"
