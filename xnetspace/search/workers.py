"""Workers: the loop that runs trials until the study's slots are done, then the confirmation
jobs, in this process or in spawned processes (one or more per device), all on one storage.

Several workers share the storage safely (:mod:`.storage`: a queued trial is popped by exactly
one of them). What a worker can still meet is a trial that another process finished first: the
heartbeat failed it while this worker was slow, or a duplicate job was trained elsewhere. Optuna
then refuses to change its state (``UpdateFinishedTrialError``, "Cannot tell a COMPLETE trial");
the worker notes it in ``OUT/workers.log`` and goes on, since the other process's result stands.
A worker process that crashes writes its traceback to ``$TMPDIR/xnetspace-logs/`` and the head
prints one line naming the file when it happens.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna

from ..errors import interrupted
from ..logs import LOG_FOLDER, error_log
from .confirmation import control_finished, open_confirm_study, plan_jobs
from .control import control_top_up, open_control_study, spent
from .data import DataSplit, load_dataset
from .errors import StudyStalled, SurplusTrial, TrialFailed, WorkerCrashed
from .jobs import JobObjective, enqueue_jobs, job_results, job_state, open_job_study
from .objective import Objective
from .progress import POLL_SECONDS, Monitor
from .score import Metric
from .study import RunOptions, StudyConfig, open_study, slot_state, stalled, top_up_slots, usable_cores
from .train import TrainConfig

__all__ = [
    "run_worker",
    "worker_process",
    "guarded",
    "drain_jobs",
    "job_worker",
    "run_processes",
    "spawn_workers",
    "run_one",
    "fail_stale",
    "cpu_share",
    "LostWorker",
    "SLOTS_AHEAD",
    "work_left",
    "check_lost",
    "control_max_trials",
    "check_progress",
    "study_finished",
]

JOB_HEARTBEAT = 10  # seconds between the heartbeats of a job worker's running job (job_worker)
SLOTS_AHEAD = 2  # queued slots each worker keeps ahead of itself (few: a study of any N starts at once)


def control_max_trials(options: RunOptions) -> int:
    """The most trials the random control may hold (repeats of an earlier spec spend nothing, so
    in a space of few specs it must stop on a count): ten times the search's N, at least 100."""
    return max(10 * options.n_trials, 100)


def run_worker(
    config: StudyConfig, options: RunOptions, device: str = "cpu", worker: int = 0, data: DataSplit | None = None
) -> None:
    """Run trials until the study's N slots are all done (waiting for other workers' running
    trials, which may still be requeued by the heartbeat), then the random-search control's trials
    until it has spent the search's compute (with ``random:auto``, :mod:`.control`), then the
    confirmation jobs until they are all done (:mod:`.confirmation`), or until ``options.timeout``
    passes."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our monitor prints one line per trial
    assert options.out is not None  # options resolved for the study (RunOptions.resolved)
    study = open_study(config, options, worker)
    data = data or load_dataset(config.dataset, config.train.image_size, config.train.seed)
    run = _WorkerRun(
        config,
        options,
        device,
        worker,
        data,
        deadline=time.monotonic() + options.timeout if options.timeout else math.inf,
        poll=min(2.0, options.heartbeat / 2),
        since=datetime.now(),  # failures of earlier runs do not stop this one (a re-run tries again)
    )
    if not _run_search_trials(run, study):
        return  # the head says why (check_progress); nothing is confirmed of a failing study
    control = None
    if "random:auto" in options.baselines and time.monotonic() < run.deadline:
        control = _run_control_trials(run, study)
    _run_confirmation_jobs(run, study, control)


@dataclass
class _WorkerRun:
    """What the phases of one :func:`run_worker` share: the study, where it runs, and when to stop."""

    config: StudyConfig
    options: RunOptions
    device: str
    worker: int
    data: DataSplit
    deadline: float  # time.monotonic() after which no new trial starts
    poll: float  # seconds to wait for other workers' running trials
    since: datetime  # failures before it do not count as stalling

    @property
    def out(self) -> Path:
        assert self.options.out is not None  # options resolved for the study (RunOptions.resolved)
        return self.options.out


def _run_search_trials(run: _WorkerRun, study: optuna.Study) -> bool:
    """The search's trials until its N slots are done or the deadline passes; False when the study
    stalled (its trials kept failing)."""
    n_trials = run.options.n_trials
    objective = Objective(run.config, run.data, n_trials, run.device, run.worker)
    while time.monotonic() < run.deadline:
        fail_stale(study)
        state = top_up_slots(study, n_trials, SLOTS_AHEAD)
        if state.done >= n_trials and not state.extra:
            break
        if state.waiting + state.extra == 0:
            time.sleep(run.poll)  # another worker's trial, or a dead one the heartbeat will requeue
            continue
        run_one(study, objective, run.out, run.worker)
        if stalled(study, n_trials, run.since):
            return False
    return True


def _run_control_trials(run: _WorkerRun, study: optuna.Study) -> optuna.Study:
    """The random-search control's trials until it has spent the search's compute (or holds its
    most trials, or stalls, or the deadline passes); returns the control study."""
    control = open_control_study(run.config, run.options.address, run.options.seed, run.options.pruner, run.worker)
    cap = control_max_trials(run.options)
    objective = Objective(run.config, run.data, cap, run.device, run.worker)
    target, per_trial = spent(study), run.config.proxy_seeds * run.config.train.epochs
    while time.monotonic() < run.deadline:
        fail_stale(control)
        _, running, waiting = control_top_up(control, target, per_trial, cap)
        if waiting == 0:
            if running == 0:
                break
            time.sleep(run.poll)
            continue
        run_one(control, objective, run.out, run.worker)
        if stalled(control, cap, run.since):
            break
    return control


def _run_confirmation_jobs(run: _WorkerRun, study: optuna.Study, control: optuna.Study | None) -> None:
    """The confirmation jobs until they are all done or the deadline passes."""
    config, data = run.config, run.data
    cstudy = open_confirm_study(run.options.address, config.score)
    objective = JobObjective(config.train, data, config.score, run.device, run.worker)
    while time.monotonic() < run.deadline:
        fail_stale(cstudy)
        # Re-planned every round: jobs that wait on others' results (random:N) appear when ready.
        plan = plan_jobs(study, cstudy, config, run.options, data.num_classes, data.in_chans, control)
        enqueue_jobs(cstudy, plan, config.train, config.dataset)
        _, running, waiting = job_state(cstudy)
        if waiting == 0:
            if running == 0:
                break
            time.sleep(run.poll)
            continue
        run_one(cstudy, objective, run.out, run.worker)


def run_one(study: optuna.Study, objective: Callable, out: Path, worker: int) -> None:
    """Pop one queued trial and run it; a trial that another process finished first is noted in
    ``out/workers.log`` and left as that process finished it (module docstring)."""
    try:
        study.optimize(objective, n_trials=1, catch=(TrialFailed, SurplusTrial))
    except Exception as err:  # only a lost race is absorbed; anything else propagates
        if not _lost_race(err):
            raise
        _note(
            out,
            f"worker {worker}, study '{study.study_name}': {str(err).rstrip('.')}: the trial was "
            f"finished by another process (the heartbeat, when this worker seemed dead); that result "
            f"stands; going on",
        )


def _lost_race(err: Exception) -> bool:
    """Optuna's refusals to change a trial that is already finished."""
    return isinstance(err, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(err, ValueError) and str(err).startswith("Cannot tell a ")
    )


def _note(out: Path, message: str) -> None:
    """Append a timestamped line to ``out/workers.log`` (nothing if the folder is not writable)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "workers.log", "a") as log:
            log.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")
    except OSError:
        pass


def drain_jobs(study: optuna.Study, objective: Callable, out: Path, worker: int, poll: float = 2.0) -> None:
    """One worker of a job study (fidelity, tabulate): pop and train jobs (:func:`run_one`) until
    none is queued or running, retrying those whose worker died (:func:`fail_stale`)."""
    while True:
        fail_stale(study)
        _, running, waiting = job_state(study)
        if waiting == 0:
            if running == 0:
                return
            time.sleep(poll)
            continue
        run_one(study, objective, out, worker)


def job_worker(
    url: str,
    name: str,
    train_json: str,
    dataset: str,
    score: Metric,
    out: str,
    device: str,
    worker: int,
    threads: int | None,
) -> None:
    """Entry point of a spawned worker of a job study (the fidelity study's; :func:`guarded`): the
    study ``name`` in storage ``url`` (opened as the head opened it), its jobs popped and trained
    (:func:`drain_jobs`) with the recipe ``train_json`` on ``dataset``, each scored by ``score``,
    until none is queued or running; lost races noted in ``out/workers.log``."""

    def work(device: str) -> None:
        train = TrainConfig.model_validate_json(train_json)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = open_job_study(url, name, JOB_HEARTBEAT, score)
        data = load_dataset(dataset, train.image_size, train.seed)
        drain_jobs(study, JobObjective(train, data, score, device, worker), Path(out), worker)

    guarded(work, device, threads)


def fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental; optimize uses it too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def crash_log(name: str, pid: int) -> Path:
    """Where worker process ``name`` (pid ``pid``) writes its traceback if it crashes."""
    return LOG_FOLDER / f"{name}-{pid}.log"


def worker_process(
    config_json: str,
    options_json: str,
    device: str,
    worker: int,
    dataset: str | None = None,
    threads: int | None = None,
) -> None:
    """Entry point of a spawned search worker (:func:`guarded`): :func:`run_worker` on ``device``.

    ``dataset`` is this machine's path to the study's data (default: the stored one; the caller has
    checked it); ``threads`` caps torch's intra-op threads (CPU workers share the cores)."""

    def work(device: str) -> None:
        config = StudyConfig.model_validate_json(config_json)
        data = load_dataset(dataset, config.train.image_size, config.train.seed) if dataset else None
        run_worker(config, RunOptions.model_validate_json(options_json), device, worker, data)

    guarded(work, device, threads)


def guarded(work: Callable[[str], None], device: str, threads: int | None = None) -> None:
    """Run ``work(device)`` as a worker process: ``device`` ``cuda:K`` pins the process to GPU K
    (``CUDA_VISIBLE_DEVICES``, set before CUDA starts; ``work`` then gets ``cuda``); ``threads``
    caps torch's intra-op threads. A crash writes its traceback to :func:`crash_log` (never to
    the terminal) and exits with status 1; Ctrl-C (which the head receives too) exits with 130,
    also when it lands inside a library's cleanup and surfaces as another error."""
    try:
        if device.startswith("cuda:"):
            os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            device = "cuda"
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        work(device)
    except BaseException as err:  # noqa: BLE001 - a crash goes to its log file, not the terminal
        if interrupted(err):  # Ctrl-C, also when it landed in Optuna's bookkeeping (errors.interrupted)
            sys.exit(130)
        error_log(err, crash_log(mp.current_process().name, os.getpid()).stem)
        sys.exit(1)


def cpu_share(workers: int) -> int:
    """Threads each of ``workers`` CPU worker processes gets: the cores this process may use,
    split evenly (at least 1), so K workers do not oversubscribe the machine."""
    return max(1, usable_cores() // max(1, workers))


def _context() -> mp.context.SpawnContext | mp.context.ForkServerContext:
    """Fresh worker processes, which start CUDA themselves after ``CUDA_VISIBLE_DEVICES`` is set:
    forked from a server process that has imported this module once (torch, timm, Optuna: seconds
    of imports per process), where the platform has one; else spawned interpreters."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


@dataclass(frozen=True)
class LostWorker:
    """A worker process that ended with an error: its name, exit code (negative: killed by
    that signal) and the log file holding its traceback (None when it was killed)."""

    name: str
    exitcode: int
    log: Path | None

    def describe(self) -> str:
        if self.exitcode < 0:
            return (
                f"worker {self.name} was killed by signal {-self.exitcode} (out of memory?); the heartbeat "
                f"retries its running trial"
            )
        where = f"its traceback is in {self.log}" if self.log else "it left no traceback"
        return f"worker {self.name} crashed (exit code {self.exitcode}); {where}"


def run_processes(
    config: StudyConfig,
    options: RunOptions,
    monitor: Monitor | None = None,
    dataset: str | None = None,
    first_worker: int = 0,
) -> list[LostWorker]:
    """``options.workers`` worker processes per entry of ``options.devices`` (a device repeated
    in the list gets as many more; no more than the study can use, :attr:`~.study.RunOptions.worker_devices`)
    running :func:`run_worker`, polled by ``monitor``; returns the workers that ended with an
    error (each reported by ``monitor`` when it happened).

    Workers are numbered from ``first_worker`` (the sampler's seed offset, see ``open_study``).
    A worker that dies (crashed, killed, out of host memory) leaves its trial to the heartbeat,
    which fails it and queues it again for the others; they keep running. Whether the study got
    done anyway is the caller's to judge.
    """
    devices = options.worker_devices
    return spawn_workers(
        worker_process,
        devices,
        lambda i, d, threads: (
            config.model_dump_json(),
            options.model_dump_json(),
            d,
            first_worker + i,
            dataset,
            threads,
        ),
        first_worker,
        monitor,
    )


def spawn_workers(
    target: Callable,
    devices: list[str],
    arguments: Callable[[int, str, int | None], tuple],
    first_worker: int = 0,
    monitor=None,
) -> list[LostWorker]:
    """One process per entry of ``devices`` running ``target(*arguments(i, device, threads))``,
    named ``xnetspace-worker-N``, until all have ended; ``monitor`` (anything with ``poll()`` and
    ``log(line)``) is polled meanwhile. CPU workers split the cores: ``threads`` is
    :func:`cpu_share` of them for a CPU worker, None for a GPU one. Returns the workers that ended
    with an error, each reported to ``monitor`` when it happened."""
    ctx = _context()
    threads = cpu_share(devices.count("cpu"))
    procs = [
        ctx.Process(
            target=target,
            args=arguments(i, d, threads if d == "cpu" else None),
            name=f"xnetspace-worker-{first_worker + i}",
        )
        for i, d in enumerate(devices)
    ]
    lost: dict[str, LostWorker] = {}
    try:
        for p in procs:  # inside the try: Ctrl-C while they start ends the ones started
            p.start()
        while any(p.is_alive() for p in procs):
            if monitor is not None:
                monitor.poll()
            _note_lost(procs, lost, monitor)
            time.sleep(POLL_SECONDS)
    finally:
        _stop_started(procs)
    if monitor is not None:
        monitor.poll()
    _note_lost(procs, lost, monitor)
    return list(lost.values())


def _note_lost(procs: list, lost: dict[str, LostWorker], monitor) -> None:
    """Add the processes that ended with an error since the last look to ``lost`` (by name),
    telling ``monitor`` of each once."""
    for p in procs:
        if p.exitcode and p.name not in lost:
            log = crash_log(p.name, p.pid) if p.pid else None
            lost[p.name] = LostWorker(p.name, p.exitcode, log if log and log.is_file() else None)
            if monitor is not None:
                monitor.log(lost[p.name].describe())


def _stop_started(procs: list) -> None:
    """Terminate the started processes still running and wait for every started one."""
    started = [p for p in procs if p.pid is not None]
    for p in started:
        if p.is_alive():
            p.terminate()
    for p in started:
        p.join()


def check_progress(study: optuna.Study, options: RunOptions, since: datetime) -> None:
    """Raises StudyStalled: the study's trials kept failing (:func:`~.study.stalled`) in this run."""
    why = stalled(study, options.n_trials, since)
    if why:
        raise StudyStalled(
            f"study '{study.study_name}' stopped: {why}. Each failed trial's reason is in its line above and in "
            f"trials.csv; the study is kept: fix the cause and re-run the same command to continue it"
        )


def study_finished(study: optuna.Study, config: StudyConfig, options: RunOptions, facts: dict) -> bool:
    """Is there nothing left for a worker to do: the N trials finished, the random control (with
    ``random:auto``) has spent the search's compute, and every confirmation job the finished
    search calls for (:func:`~.confirmation.plan_jobs`, with the stored dataset ``facts``) is
    queued and finished? Reads the storage only: no data, no process."""
    if slot_state(study, options.n_trials).done < options.n_trials:
        return False
    control = None
    if "random:auto" in options.baselines:
        control = open_control_study(config, options.address, options.seed, options.pruner)
        if not control_finished(control, study):
            return False
    cstudy = open_confirm_study(options.address, config.score)
    plan = plan_jobs(study, cstudy, config, options, facts["num_classes"], facts["in_chans"], control)
    queued = set(job_results(cstudy))
    _, running, waiting = job_state(cstudy)
    return running + waiting == 0 and all(job.key(config.train, config.dataset) in queued for job in plan)


def work_left(study: optuna.Study, options: RunOptions, score) -> bool:
    """Does the study still have trials or queued/running confirmation runs to do?"""
    if slot_state(study, options.n_trials).done < options.n_trials:
        return True
    _, running, waiting = job_state(open_confirm_study(options.address, score))
    return running + waiting > 0


def check_lost(lost: list[LostWorker], study: optuna.Study, options: RunOptions, score) -> None:
    """A lost worker is an error only if its study was left unfinished: the others (or a heartbeat
    retry) may have done its work.

    Raises:
        WorkerCrashed: workers were lost and work is left (each named, with its log file).
    """
    if lost and work_left(study, options, score):
        raise WorkerCrashed(
            "worker processes ended before the study was done: "
            + "; ".join(w.describe() for w in lost)
            + ". The study is kept: re-run the same command to continue it"
        )
