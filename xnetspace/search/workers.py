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

from .data import DataSplit, load_dataset
from .objective import Objective, SurplusTrial, TrialFailed
from .progress import Monitor
from .study import RunOptions, SearchError, StudyConfig, open_study, slot_state

__all__ = ["run_worker", "worker_process", "run_processes"]


def run_worker(config: StudyConfig, options: RunOptions, device: str = "cpu", worker: int = 0,
               data: Optional[DataSplit] = None) -> None:
    """Run trials until the study's N slots are all done (waiting for other workers' running
    trials, which may still be requeued by the heartbeat), or ``options.timeout`` passes."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our monitor prints one line per trial
    study = open_study(config, options, worker)
    data = data or load_dataset(config.dataset, config.train.image_size, config.train.seed)
    objective = Objective(config, data, options.n_trials, device, worker)
    deadline = time.monotonic() + options.timeout if options.timeout else math.inf
    poll = min(2.0, options.heartbeat / 2)
    while time.monotonic() < deadline:
        with warnings.catch_warnings():  # fail_stale_trials is marked experimental; optimize uses it too
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        state = slot_state(study, options.n_trials)
        if state.waiting == 0:
            if state.running == 0:
                break
            time.sleep(poll)  # another worker's trial, or a dead one the heartbeat will requeue
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed, SurplusTrial))


def worker_process(config_json: str, options_json: str, device: str, worker: int) -> None:
    """Entry point of a spawned worker; ``device`` ``cuda:K`` pins the process to GPU K."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    run_worker(StudyConfig.model_validate_json(config_json), RunOptions.model_validate_json(options_json),
               device, worker)


def run_processes(config: StudyConfig, options: RunOptions, monitor: Monitor) -> None:
    """One spawned worker process per entry of ``options.devices``, polled by ``monitor``.

    Raises:
        SearchError: a worker process that exited with an error.
    """
    ctx = mp.get_context("spawn")  # fresh interpreters: CUDA_VISIBLE_DEVICES is set before CUDA starts
    procs = [ctx.Process(target=worker_process, args=(config.model_dump_json(), options.model_dump_json(), d, i),
                         name=f"xnetspace-worker-{i}") for i, d in enumerate(options.devices)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            monitor.poll()
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    monitor.poll()
    crashed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode]
    if crashed:
        raise SearchError(f"worker process(es) crashed: {', '.join(crashed)}")
