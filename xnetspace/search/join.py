"""Joining a study from another machine: ``xnetspace worker --storage URL --study-name NAME``.

The head (``xnetspace search``) creates the study in a server database (PostgreSQL) and stores
in it everything a worker needs: the study's config (space, dataset, recipe), the run options
all workers share (``RunOptions.SHARED``: N, sampler, pruner, seed, heartbeat, confirmation) and
the facts of its dataset (classes, channels, image counts). A joining worker reads them from the
storage, never from its own command line, so every worker runs the same study; ``--dataset`` only
says where this machine keeps the same data, and is refused when its facts differ. The worker
then runs the ordinary worker loop (:func:`.workers.run_worker`) until the study is done.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Sized
from datetime import datetime
from typing import cast

import optuna

from .confirmation import open_confirm_study
from .control import open_control_study
from .data import DataError, DataSplit, load_dataset
from .progress import Monitor, log
from .storage import connect_storage, shown_url
from .study import (
    RunOptions,
    SearchError,
    StudyConfig,
    check_devices,
    check_workers,
    default_out,
    open_study,
    stored_settings,
)
from .workers import check_lost, check_progress, run_processes, run_worker, study_finished

__all__ = [
    "record_dataset",
    "dataset_facts",
    "read_study",
    "dataset_name",
    "local_data",
    "worker_command",
    "join_study",
]

_DATA_ATTR = "xnetspace_data"
_PATH_KINDS = ("imagefolder", "cifar10", "cifar100", "fashion-mnist")  # datasets whose argument is a local folder


def dataset_facts(data: DataSplit) -> dict:
    """What two copies of one dataset must agree on: classes, channels, train and val image counts."""
    return {
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "train_images": len(cast(Sized, data.train)),
        "val_images": len(cast(Sized, data.val)),
    }


def record_dataset(study: optuna.Study, data: DataSplit) -> None:
    """Store the facts of the head's dataset in the study, for joining workers to check theirs."""
    facts = dataset_facts(data)
    if study.user_attrs.get(_DATA_ATTR) != facts:
        study.set_user_attr(_DATA_ATTR, facts)


def read_study(storage_url: str, study_name: str) -> tuple[StudyConfig, dict, dict | None]:
    """The config, shared run options and dataset facts that the head stored in the study.

    Raises:
        SearchError: a storage that cannot be opened; no study of that name there (the message
            lists the studies it holds); a study that ``xnetspace search`` did not create.
    """
    storage = connect_storage(storage_url)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if study_name not in names:
        held = f"the studies there: {', '.join(names)}" if names else "it holds no study yet (start the head first)"
        raise SearchError(f"--study-name {study_name!r}: no such study in {shown_url(storage_url)}; {held}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    config, shared = stored_settings(study)
    missing = [n for n in RunOptions.SHARED if n not in shared]
    if config is None or missing:
        raise SearchError(
            f"study {study_name!r} in {shown_url(storage_url)} was not created by `xnetspace search` "
            f"(no stored {'config' if config is None else ', '.join(missing)}); a worker can only "
            f"join a study whose head stored its settings"
        )
    return config, shared, study.user_attrs.get(_DATA_ATTR)


def dataset_name(config: StudyConfig, dataset: str | None = None) -> str:
    """This machine's name of the study's dataset: ``dataset``, or the stored one (no data read).

    Raises:
        SearchError: another kind of dataset than the stored one; only the folder of a dataset
            read from a folder may differ.
    """
    name = dataset or config.dataset
    kind, stored_kind = name.partition(":")[0], config.dataset.partition(":")[0]
    if kind != stored_kind or (kind not in _PATH_KINDS and name != config.dataset):
        raise SearchError(
            f"--dataset {name!r} is not the study's dataset {config.dataset!r}; only the folder "
            f"of an {'/'.join(_PATH_KINDS)} dataset may differ between machines"
        )
    return name


def local_data(config: StudyConfig, facts: dict | None, dataset: str | None = None) -> DataSplit:
    """Load the study's dataset on this machine: ``dataset`` (this machine's path to the same data)
    or the stored name, checked against the stored facts.

    Raises:
        SearchError: another kind of dataset than the stored one, or one whose classes, channels
            or image counts differ from the head's.
        DataError: a dataset that cannot be read here.
    """
    name = dataset_name(config, dataset)
    try:
        data = load_dataset(name, config.train.image_size, config.train.seed)
    except DataError as err:
        hint = "" if dataset else "; give this machine's path to the same data with --dataset"
        raise DataError(f"{err}{hint}") from None
    mine = dataset_facts(data)
    if facts is not None and mine != facts:
        differ = ", ".join(f"{k} {mine[k]} here, {facts[k]} on the head" for k in facts if mine.get(k) != facts[k])
        raise SearchError(f"--dataset {name!r} is not the study's data: {differ}")
    return data


def worker_command(options: RunOptions) -> str:
    """The command that joins this study from another machine (the storage URL as given)."""
    assert options.study_name is not None  # options resolved for the study (RunOptions.resolved)
    devices = ",".join(options.devices)
    command = [
        "xnetspace",
        "worker",
        "--storage",
        options.storage_url,
        "--study-name",
        options.study_name,
        "--devices",
        devices,
    ]
    if options.workers_per_device is not None:  # else each machine takes its own default
        command += ["--workers-per-device", str(options.workers_per_device)]
    return " ".join(shlex.quote(part) for part in command)


def join_study(
    storage_url: str,
    study_name: str,
    devices: str | list[str],
    workers_per_device: int | None = None,
    dataset: str | None = None,
    timeout: float | None = None,
    worker: int | None = None,
    progress: bool = True,
) -> RunOptions:
    """Join the study ``study_name`` in ``storage_url`` and work until it is done (or ``timeout``).

    Runs one worker in this process, or ``workers_per_device`` processes per entry of
    ``devices`` (None: :attr:`RunOptions.workers`'s default). Workers are numbered from ``worker``
    (default: a random number from 1000 on, so that machines joining the same study draw different
    sampler seeds; the head's are 0..K-1).
    Started on a finished study (:func:`~.workers.study_finished`), it returns at once: no data
    is loaded, no process started.

    Raises:
        ValueError: a device that is none (or CUDA where there is none), fewer than one worker
            per device or more than this machine can hold; checked before the storage is read.
        StudyStalled: the study's trials kept failing.
        SearchError: see :func:`read_study` and :func:`local_data`.
        WorkerCrashed: worker processes crashed and left the study unfinished.
        DataError: a dataset that cannot be read here.
    """
    devices = check_devices(devices)
    check_workers(devices, workers_per_device)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the monitor prints one line per trial
    config, shared, facts = read_study(storage_url, study_name)
    options = RunOptions.model_validate(
        {
            **shared,
            "storage": storage_url,
            "study_name": study_name,
            "devices": devices,
            "workers_per_device": workers_per_device,
            "timeout": timeout,
            "progress": progress,
            "out": default_out(study_name),
        }
    )
    first = worker if worker is not None else random.randrange(1000, 1_000_000)
    study = open_study(config, options, first)
    dataset_name(config, dataset)  # another dataset is refused, finished study or not
    if facts is not None and study_finished(study, config, options, facts):
        log(options.progress, f"study '{study_name}' in {shown_url(storage_url)} is finished: nothing left to do")
        return options
    data = local_data(config, facts, dataset)
    _work_on(study, config, options, data, dataset, first)
    return options


def _work_on(
    study: optuna.Study, config: StudyConfig, options: RunOptions, data: DataSplit, dataset: str | None, first: int
) -> None:
    """Run this machine's workers (numbered from ``first``) on the joined study until it is done,
    in this process when there is one, else in worker processes; then check what they left.

    Raises:
        WorkerCrashed: worker processes crashed and left the study unfinished.
        StudyStalled: the study's trials kept failing.
    """
    count = len(options.worker_devices)
    log(
        options.progress,
        f"{data}\njoined study '{options.study_name}' in {shown_url(options.storage_url)} as worker {first}"
        f"{'' if count == 1 else f'..{first + count - 1}'}",
    )
    control = (
        open_control_study(config, options.address, options.seed, options.pruner, first)
        if "random:auto" in options.baselines
        else None
    )
    cstudy = open_confirm_study(options.address, config.score)
    monitor = Monitor(study, cstudy, options.n_trials, config.score, options.progress, control)
    lost, since = [], datetime.now()
    try:
        if count == 1:
            with monitor.running():
                run_worker(config, options, options.devices[0], first, data)
        else:
            lost = run_processes(config, options, monitor, dataset, first)
    finally:
        monitor.close()
    check_lost(lost, study, options, config.score)
    check_progress(study, options, since)
