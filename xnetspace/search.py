"""FLOP-budgeted architecture search over a :class:`~xnetspace.space.SearchSpace` with Optuna.

How a study runs (``run_search``):

1. The space is checked before any trial: constraints no spec can meet are refused.
2. The study lives in an Optuna RDB storage (default: SQLite in the output folder) with a
   heartbeat; a worker killed mid-trial leaves a trial that the heartbeat marks failed and
   ``RetryHeartbeatStaleTrialCallback`` queues again, so nothing is lost.
3. ``--n-trials`` N counts the study's trials: the study holds N *slots*, queued trials that
   workers pop atomically, so any number of workers (processes, machines) sharing the storage
   run exactly N trials between them. Re-running a command tops the queue up to N again.
4. Each trial samples a spec; invalid or over-budget samples are *rejected* before anything is
   built (the cost model is exact), recorded as pruned trials with the reason (which teaches the
   sampler where the budget ends), and replaced by a new slot; the trial that finally trains
   records how many samples were rejected before it. A spec identical to an earlier candidate
   (same canonical hash) is not trained again: the trial takes the earlier result.
5. The candidate is proxy-trained; each epoch's top-1 is reported so a pruner can stop it.
   Divergence or an overrun time limit ends it as pruned, out-of-memory or any other error as
   failed, with the reason in the trial's user attributes; the study goes on.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn, Optional, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .cost import cost_report, measure_latency
from .data import DataSplit, load_dataset
from .space import SearchSpace, SpaceError, _human
from .spec import NetworkSpec, load_preset
from .train import Diverged, TimeLimitExceeded, TrainConfig, train_candidate

__all__ = ["StudyConfig", "RunOptions", "SearchError", "run_search", "open_study", "Objective", "SearchOutcome"]

ObjectiveName = Literal["top1", "top1-flops", "top1-latency"]
_DIRECTIONS = {"top1": ["maximize"], "top1-flops": ["maximize", "minimize"], "top1-latency": ["maximize", "minimize"]}
_CONFIG_ATTR = "xnetspace_config"
_MAX_REJECTIONS_IN_A_ROW = 500


class SearchError(RuntimeError):
    """A study that cannot run as asked (e.g. resumed with another recipe); the message says why."""


class TrialFailed(RuntimeError):
    """A trial ended in failure with a recorded reason (out of memory, an error in training)."""


class SurplusTrial(RuntimeError):
    """A trial created when the study's N slots were already taken; it does nothing."""


class StudyConfig(BaseModel):
    """What defines a study: resuming it with a different config is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: SearchSpace
    dataset: str = "digits"
    objective: ObjectiveName = "top1"
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def directions(self) -> list[str]:
        return _DIRECTIONS[self.objective]


class RunOptions(BaseModel):
    """How this run works on the study (may change between runs)."""

    model_config = ConfigDict(extra="forbid")

    n_trials: int = Field(20, ge=1)
    out: Path = Path("runs/study")
    storage: Optional[str] = None
    study_name: str = "study"
    sampler: Literal["tpe", "random", "nsga2", "qmc"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int = 0
    timeout: Optional[float] = Field(None, gt=0, description="seconds after which no new trial starts")
    devices: list[str] = Field(default_factory=lambda: ["cpu"])
    heartbeat: int = Field(10, ge=1, description="heartbeat interval in seconds (grace: 3 intervals)")
    baseline: Optional[str] = None
    progress: bool = True

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"


# -- the study ---------------------------------------------------------------------------------------
def open_study(config: StudyConfig, options: RunOptions, worker: int = 0) -> optuna.Study:
    """Create or load the study in ``options.storage_url`` with heartbeat and retries.

    Raises:
        SearchError: an existing study of that name was made with another config.
    """
    with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            options.storage_url,
            engine_kwargs={"connect_args": {"timeout": 60}} if options.storage_url.startswith("sqlite") else None,
            heartbeat_interval=options.heartbeat,
            grace_period=3 * options.heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    study = optuna.create_study(
        storage=storage, study_name=options.study_name, directions=config.directions, load_if_exists=True,
        sampler=_sampler(config, options, worker), pruner=_pruner(config, options),
    )
    stored = study.user_attrs.get(_CONFIG_ATTR)
    mine = config.model_dump(mode="json")
    if stored is None:
        study.set_user_attr(_CONFIG_ATTR, mine)
    elif stored != mine:
        changed = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise SearchError(f"study '{options.study_name}' in {options.storage_url} was created with another "
                          f"{', '.join(changed)}; use a new --study-name (or --out) for a new study")
    return study


def _sampler(config: StudyConfig, options: RunOptions, worker: int) -> optuna.samplers.BaseSampler:
    seed = options.seed + 1000 * worker  # workers must not propose the same sequence
    if options.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(2, options.n_trials // 3)))
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if options.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, options.n_trials // 4)))


def _pruner(config: StudyConfig, options: RunOptions) -> optuna.pruners.BasePruner:
    if len(config.directions) > 1 or options.pruner == "none":
        return optuna.pruners.NopPruner()  # multi-objective studies cannot prune
    if options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.train.epochs, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def _is_live(trial: FrozenTrial) -> bool:
    """Does the trial hold one of the study's N slots (running, queued, or counted as done)?"""
    attrs = trial.user_attrs
    if not attrs.get("slot") or attrs.get("rejected") or attrs.get("surplus"):
        return False
    if trial.state == TrialState.FAIL:
        return "reason" in attrs  # failures without a reason are heartbeat failures, queued again
    return True


def _live_slots(study: optuna.Study) -> list[FrozenTrial]:
    return sorted((t for t in study.get_trials(deepcopy=False) if _is_live(t)), key=lambda t: t.number)


def ensure_slots(study: optuna.Study, n_trials: int) -> int:
    """Queue empty slots until the study holds ``n_trials``; returns how many were queued."""
    missing = n_trials - len(_live_slots(study))
    for _ in range(max(0, missing)):
        study.enqueue_trial({}, user_attrs={"slot": True})
    return max(0, missing)


@dataclass
class SlotState:
    done: int
    running: int
    waiting: int


def slot_state(study: optuna.Study, n_trials: int) -> SlotState:
    live = _live_slots(study)[:n_trials]
    states = [t.state for t in live]
    return SlotState(sum(s.is_finished() for s in states), states.count(TrialState.RUNNING),
                     states.count(TrialState.WAITING))


# -- one trial ---------------------------------------------------------------------------------------
class Objective:
    """The Optuna objective: sample, reject or deduplicate, train, report. Loads data once."""

    def __init__(self, config: StudyConfig, data: DataSplit, n_trials: int, device: str, worker: int = 0):
        self.config, self.data, self.n_trials = config, data, n_trials
        self.device, self.worker = device, worker
        self.space = config.space
        self.rejected_in_a_row = 0

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        if not self._holds_slot(trial):
            trial.set_user_attr("surplus", True)
            raise SurplusTrial("the study's slots were all taken")
        try:
            spec = self.space.sample(trial, num_classes=self.data.num_classes, in_chans=self.data.in_chans)
        except ValidationError as err:
            self._reject(trial, "invalid spec: " + err.errors()[0]["msg"].removeprefix("Value error, "))
        report = cost_report(spec, self.space.constraints.image_size)
        spec = spec.model_copy(update={"name": f"{self.space.name}_trial{trial.number}"})  # a label only
        for key, value in dict(flops=report.flops, params=report.params, spec_digest=spec.digest(),
                               spec=spec.model_dump(mode="json"), worker=self.worker).items():
            trial.set_user_attr(key, value)
        problems = self.space.constraints.violations(report.flops, report.params)
        if problems:
            self._reject(trial, "over budget: " + "; ".join(problems))
        duplicate = self._earlier_candidate(trial, spec.digest())
        if duplicate is not None:
            return self._repeat(trial, duplicate)
        latency = self._latency(trial, spec)

        trial.set_user_attr("rejected_samples", self.rejected_in_a_row)
        self.rejected_in_a_row = 0
        result = self._train(trial, spec)
        if self.config.objective == "top1-flops":
            return result.top1, float(report.flops)
        if self.config.objective == "top1-latency":
            return result.top1, latency
        return result.top1

    def _holds_slot(self, trial: optuna.Trial) -> bool:
        """Only the first N live slots (by trial number) may run: exact N whatever the races."""
        if not trial.user_attrs.get("slot"):
            return False
        live = [t.number for t in _live_slots(trial.study)]
        return trial.number in live[: self.n_trials]

    def _reject(self, trial: optuna.Trial, reason: str) -> NoReturn:
        """Record why the sample is not trained, give its slot back, and end the trial pruned."""
        trial.set_user_attr("rejected", True)
        trial.set_user_attr("reason", reason)
        trial.study.enqueue_trial({}, user_attrs={"slot": True})  # the slot goes back to the queue
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= _MAX_REJECTIONS_IN_A_ROW:
            raise SpaceError(f"{self.rejected_in_a_row} samples in a row were rejected (last: {reason}); "
                             f"widen the space or the budget")
        raise optuna.TrialPruned(reason)

    def _earlier_candidate(self, trial: optuna.Trial, digest: str) -> Optional[FrozenTrial]:
        for other in trial.study.get_trials(deepcopy=False):
            if (other.number != trial.number and other.user_attrs.get("spec_digest") == digest
                    and not other.user_attrs.get("rejected") and other.state != TrialState.FAIL
                    and other.user_attrs.get("slot") and not other.user_attrs.get("surplus")):
                if other.state == TrialState.RUNNING:
                    self._reject(trial, f"same spec as trial {other.number}, still training")
                return other
        return None

    def _repeat(self, trial: optuna.Trial, earlier: FrozenTrial) -> float | Sequence[float]:
        trial.set_user_attr("duplicate_of", earlier.number)
        for key in ("top1_history", "latency_ms", "seconds"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        if earlier.state != TrialState.COMPLETE:
            trial.set_user_attr("reason", f"same spec as trial {earlier.number}, which was pruned")
            raise optuna.TrialPruned(trial.user_attrs["reason"])
        return earlier.values if len(earlier.values) > 1 else earlier.values[0]

    def _latency(self, trial: optuna.Trial, spec: NetworkSpec) -> float:
        constraints = self.space.constraints
        if self.config.objective != "top1-latency" and constraints.max_latency_ms is None:
            return math.nan
        latency = measure_latency(spec, constraints.latency_batch_size, constraints.image_size, self.device,
                                  min_run_time=0.3)
        trial.set_user_attr("latency_ms", latency)
        if constraints.max_latency_ms is not None:
            # Known only after measuring: an Optuna constraint (feasible when <= 0) that
            # constraint-aware samplers learn from; over the limit, the spec is not trained.
            trial.set_constraint("latency_ms", latency - constraints.max_latency_ms)
            if latency > constraints.max_latency_ms:
                self._reject(trial, f"over budget: latency {latency:.1f} ms above max {constraints.max_latency_ms:g} ms")
        return latency

    def _train(self, trial: optuna.Trial, spec: NetworkSpec):
        history: list[float] = []
        single = len(self.config.directions) == 1

        def report(epoch: int, top1: float) -> None:
            history.append(top1)
            trial.set_user_attr("top1_history", history)
            if single:
                trial.report(top1, epoch)
                if trial.should_prune():
                    trial.set_user_attr("reason", f"pruner stopped it after epoch {epoch + 1}")
                    raise optuna.TrialPruned(trial.user_attrs["reason"])

        start = time.perf_counter()
        try:
            return train_candidate(spec, self.data, self.config.train, self.device, report)
        except (Diverged, TimeLimitExceeded) as err:
            trial.set_user_attr("reason", f"{type(err).__name__}: {err}")
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            raise
        except torch.OutOfMemoryError as err:
            trial.set_user_attr("reason", f"out of memory: {str(err).splitlines()[0]}")
            raise TrialFailed("out of memory") from None
        except Exception as err:  # noqa: BLE001 - any error ends this trial, never the study
            trial.set_user_attr("reason", f"{type(err).__name__}: {err}")
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            raise TrialFailed(str(err)) from None
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))


# -- workers -----------------------------------------------------------------------------------------
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


def _worker_process(config_json: str, options_json: str, device: str, worker: int) -> None:
    """Entry point of a spawned worker; ``device`` ``cuda:K`` pins the process to GPU K."""
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda"
    run_worker(StudyConfig.model_validate_json(config_json), RunOptions.model_validate_json(options_json),
               device, worker)


# -- the whole search --------------------------------------------------------------------------------
@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search produced."""

    study: optuna.Study
    best: Optional[FrozenTrial]
    files: dict[str, Path] = field(default_factory=dict)
    baseline: Optional[dict] = None


def run_search(config: StudyConfig, options: RunOptions) -> SearchOutcome:
    """Check the space, open or resume the study, run the workers, write the results.

    Raises:
        SpaceError: constraints no spec in the space can meet.
        SearchError: a resumed study with another config; a worker process that crashed.
        xnetspace.data.DataError: a dataset that cannot be read.
    """
    from .results import write_results

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    options.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    check = config.space.check(num_classes=data.num_classes, in_chans=data.in_chans)
    study = open_study(config, options)
    ensure_slots(study, options.n_trials)
    _log(options, f"{data}\nspace {config.space.name}: {check.summary()}\n"
                  f"study '{options.study_name}' in {options.storage_url}: "
                  f"{slot_state(study, options.n_trials).done} of {options.n_trials} trials done")

    monitor = _Monitor(study, options)
    try:
        if len(options.devices) == 1:
            with monitor.running():
                run_worker(config, options, options.devices[0], 0, data)
        else:
            _run_processes(config, options, monitor)
    finally:
        monitor.close()
        baseline = _baseline(config, options, data) if options.baseline else None
        outcome = write_results(study, config, options, baseline)
    return outcome


def _run_processes(config: StudyConfig, options: RunOptions, monitor: "_Monitor") -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fresh interpreters: CUDA_VISIBLE_DEVICES is set before CUDA starts
    procs = [ctx.Process(target=_worker_process, args=(config.model_dump_json(), options.model_dump_json(), d, i),
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
    _log(options, f"training baseline {options.baseline} with the same recipe ...")
    recipe = config.train.model_copy(update={"time_limit": None})  # a guard for candidates, not the recipe
    result = train_candidate(spec, data, recipe, options.devices[0])
    report = cost_report(spec, config.space.constraints.image_size)
    baseline = {"key": key, "preset": options.baseline, "top1": result.top1, "top1_history": result.history,
                "flops": report.flops, "params": report.params, "seconds": round(result.seconds, 1)}
    path.write_text(json.dumps(baseline, indent=2))
    return baseline


def _log(options: RunOptions, message: str) -> None:
    if options.progress:
        from tqdm import tqdm

        tqdm.write(message)


class _Monitor:
    """Progress bar over the study's N trials and one line per finished trial, read from the
    storage so that it sees every worker's trials."""

    def __init__(self, study: optuna.Study, options: RunOptions):
        from tqdm import tqdm

        self.study, self.options = study, options
        self.seen: set[int] = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.bar = tqdm(total=options.n_trials, desc="trials", unit="trial", disable=not options.progress,
                        initial=slot_state(study, options.n_trials).done, dynamic_ncols=True, mininterval=0)

    def poll(self) -> None:
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in self.seen:
                self.seen.add(trial.number)
                if _is_live(trial):
                    self.bar.write(trial_line(trial))
        done = slot_state(self.study, self.options.n_trials).done
        if done != self.bar.n:  # redraw only on progress: logs get one bar line per trial
            self.bar.update(done - self.bar.n)

    @contextlib.contextmanager
    def running(self):
        """Poll in a background thread while the block (an in-process worker) runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(1.0):
                self.poll()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.poll()

    def close(self) -> None:
        self.bar.close()


def trial_line(trial: FrozenTrial) -> str:
    """``trial 12  COMPLETE  14.2M FLOPs  0.31M params  top-1 97.50  12.3 s  (3 rejected)``."""
    a = trial.user_attrs
    top1 = f"top-1 {trial.values[0]:6.2f}" if trial.values else (
        f"top-1 {a['top1_history'][-1]:6.2f}" if a.get("top1_history") else "top-1    -  ")
    parts = [f"trial {trial.number:4d}", f"{trial.state.name:8s}", f"{_human(a.get('flops', 0)):>7s} FLOPs",
             f"{_human(a.get('params', 0)):>7s} params", top1, f"{a.get('seconds', 0):6.1f} s"]
    if a.get("rejected_samples"):
        parts.append(f"({a['rejected_samples']} rejected before)")
    if "duplicate_of" in a:
        parts.append(f"(same spec as trial {a['duplicate_of']})")
    if a.get("reason"):
        parts.append(f"[{a['reason']}]")
    return "  ".join(parts)
