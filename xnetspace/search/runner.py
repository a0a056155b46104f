"""The whole search on the head node: check the space, open or resume the study, run the
workers, train the baseline, write the results.

The pieces, one room each: :mod:`.study` (config, storage, slots), :mod:`.objective` (one trial),
:mod:`.workers` (the trial loop, processes), :mod:`.progress` (terminal output), :mod:`.results`
(files on disk).
"""
from __future__ import annotations

import json

import optuna

from ..cost import cost_report
from ..spec import NetworkSpec, load_preset
from .data import DataSplit, load_dataset
from .progress import Monitor, log
from .results import SearchOutcome, write_results
from .study import RunOptions, StudyConfig, ensure_slots, open_study, slot_state
from .train import train_candidate
from .workers import run_processes, run_worker

__all__ = ["run_search"]


def run_search(config: StudyConfig, options: RunOptions) -> SearchOutcome:
    """Check the space, open or resume the study, run the workers, write the results.

    Raises:
        SpaceError: constraints no spec in the space can meet.
        SearchError: a resumed study with another config; a worker process that crashed.
        xnetspace.search.data.DataError: a dataset that cannot be read.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    options.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    check = config.space.check(num_classes=data.num_classes, in_chans=data.in_chans)
    study = open_study(config, options)
    ensure_slots(study, options.n_trials)
    log(options, f"{data}\nspace {config.space.name}: {check.summary()}\n"
                  f"study '{options.study_name}' in {options.storage_url}: "
                  f"{slot_state(study, options.n_trials).done} of {options.n_trials} trials done")

    monitor = Monitor(study, options)
    try:
        if len(options.devices) == 1:
            with monitor.running():
                run_worker(config, options, options.devices[0], 0, data)
        else:
            run_processes(config, options, monitor)
    finally:
        monitor.close()
        baseline = _baseline(config, options, data) if options.baseline else None
        outcome = write_results(study, config, options, baseline)
    return outcome


def _baseline(config: StudyConfig, options: RunOptions, data: DataSplit) -> dict:
    """Train a paper preset with the study's recipe (cached in the output folder)."""
    path = options.out / f"baseline_{options.baseline}.json"
    key = {"dataset": config.dataset, "train": config.train.model_dump(mode="json")}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    spec = NetworkSpec.model_validate({**load_preset(options.baseline).model_dump(),
                                       "num_classes": data.num_classes, "in_chans": data.in_chans})
    log(options, f"training baseline {options.baseline} with the same recipe ...")
    recipe = config.train.model_copy(update={"time_limit": None})  # a guard for candidates, not the recipe
    result = train_candidate(spec, data, recipe, options.devices[0])
    report = cost_report(spec, config.space.constraints.image_size)
    baseline = {"key": key, "preset": options.baseline, "top1": result.top1, "top1_history": result.history,
                "flops": report.flops, "params": report.params, "seconds": round(result.seconds, 1)}
    path.write_text(json.dumps(baseline, indent=2))
    return baseline
