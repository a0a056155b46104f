"""Workers: the loop that runs trials until the study's slots are done, in this process or in
spawned processes (one per device), all on one storage."""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import warnings
from typing import Optional

import optuna

from .confirmation import ConfirmObjective, confirmation_state, enqueue_jobs, open_confirm_study, plan_jobs
from .data import DataSplit, load_dataset
from .objective import Objective, SurplusTrial, TrialFailed
from .progress import POLL_SECONDS, Monitor
from .study import RunOptions, SearchError, StudyConfig, open_study, slot_state, usable_cores

__all__ = ["run_worker", "worker_process", "run_processes", "cpu_share"]


def run_worker(config: StudyConfig, options: RunOptions, device: str = "cpu", worker: int = 0,
               data: Optional[DataSplit] = None) -> None:
    """Run trials until the study's N slots are all done (waiting for other workers' running
    trials, which may still be requeued by the heartbeat), then the confirmation jobs until they
    are all done (see :mod:`.confirmation`), or until ``options.timeout`` passes."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our monitor prints one line per trial
    study = open_study(config, options, worker)
    data = data or load_dataset(config.dataset, config.train.image_size, config.train.seed)
    deadline = time.monotonic() + options.timeout if options.timeout else math.inf
    poll = min(2.0, options.heartbeat / 2)
    objective = Objective(config, data, options.n_trials, device, worker)
    while time.monotonic() < deadline:
        _fail_stale(study)
        state = slot_state(study, options.n_trials)
        if state.waiting == 0:
            if state.running == 0:
                break
            time.sleep(poll)  # another worker's trial, or a dead one the heartbeat will requeue
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed, SurplusTrial))

    cstudy = open_confirm_study(options)
    objective = ConfirmObjective(config, data, device, worker)
    while time.monotonic() < deadline:
        _fail_stale(cstudy)
        # Re-planned every round: jobs that wait on others' results (random:N) appear when ready.
        enqueue_jobs(cstudy, config, plan_jobs(study, cstudy, config, options, data.num_classes, data.in_chans))
        _, running, waiting = confirmation_state(cstudy)
        if waiting == 0:
            if running == 0:
                break
            time.sleep(poll)
            continue
        cstudy.optimize(objective, n_trials=1, catch=(TrialFailed, SurplusTrial))


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental; optimize uses it too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def worker_process(config_json: str, options_json: str, device: str, worker: int,
                   dataset: Optional[str] = None, threads: Optional[int] = None) -> None:
    """Entry point of a spawned worker; ``device`` ``cuda:K`` pins the process to GPU K.

    ``dataset`` is this machine's path to the study's data (default: the stored one; the caller has
    checked it); ``threads`` caps torch's intra-op threads (CPU workers share the cores)."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = StudyConfig.model_validate_json(config_json)
    data = load_dataset(dataset, config.train.image_size, config.train.seed) if dataset else None
    run_worker(config, RunOptions.model_validate_json(options_json), device, worker, data)


def cpu_share(workers: int) -> int:
    """Threads each of ``workers`` CPU worker processes gets: the cores this process may use,
    split evenly (at least 1), so K workers do not oversubscribe the machine."""
    return max(1, usable_cores() // max(1, workers))


def run_processes(config: StudyConfig, options: RunOptions, monitor: Optional[Monitor] = None,
                  dataset: Optional[str] = None, first_worker: int = 0) -> None:
    """``options.workers`` spawned worker processes per entry of ``options.devices``
    (a device repeated in the list gets as many more), polled by ``monitor``.

    Workers are numbered from ``first_worker`` (the sampler's seed offset, see ``open_study``).
    CPU workers split the cores: each sets ``torch.set_num_threads`` to :func:`cpu_share` of
    them. A worker that dies (killed, out of host memory) leaves its trial to the heartbeat, which
    fails it and queues it again for the others; they keep running.

    Raises:
        SearchError: a worker process that exited with an error (after all others ended).
    """
    ctx = mp.get_context("spawn")  # fresh interpreters: CUDA_VISIBLE_DEVICES is set before CUDA starts
    devices = [d for d in options.devices for _ in range(options.workers)]
    threads = cpu_share(devices.count("cpu"))
    procs = [ctx.Process(target=worker_process,
                         args=(config.model_dump_json(), options.model_dump_json(), d, first_worker + i, dataset,
                               threads if d == "cpu" else None),
                         name=f"xnetspace-worker-{first_worker + i}") for i, d in enumerate(devices)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if monitor is not None:
                monitor.poll()
            time.sleep(POLL_SECONDS)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    if monitor is not None:
        monitor.poll()
    crashed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode]
    if crashed:
        raise SearchError(f"worker process(es) crashed: {', '.join(crashed)}")
