"""The study: its config, its Optuna storage and its N slots.

``--n-trials`` N counts the study's trials: the study holds N *slots*, queued trials that
workers pop atomically, so any number of workers (processes, machines) sharing the storage run
exactly N trials between them. Re-running a command tops the queue up to N again. The storage
has a heartbeat: a worker killed mid-trial leaves a trial that the heartbeat marks failed and
``RetryHeartbeatStaleTrialCallback`` queues again, so nothing is lost.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field

from .score import Score, score_of
from .space import SearchSpace
from .train import TrainConfig

__all__ = ["StudyConfig", "RunOptions", "usable_cores", "MAX_AUTO_CPU_WORKERS", "SearchError", "ObjectiveName", "open_study", "is_live", "live_slots",
           "candidates", "ensure_slots", "SlotState", "slot_state", "store_run_options", "stored_settings", "connect_storage"]

ObjectiveName = Literal["top1", "loss", "top1-flops", "top1-latency"]
_DIRECTIONS = {"top1": ["maximize"], "loss": ["minimize"], "top1-flops": ["maximize", "minimize"],
               "top1-latency": ["maximize", "minimize"]}
_CONFIG_ATTR = "xnetspace_config"
_RUN_ATTR = "xnetspace_run"


class SearchError(RuntimeError):
    """A study that cannot run as asked (e.g. resumed with another recipe); the message says why."""


class StudyConfig(BaseModel):
    """What defines a study: resuming it with a different config is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: SearchSpace
    dataset: str = "digits"
    objective: ObjectiveName = "loss"
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def directions(self) -> list[str]:
        return _DIRECTIONS[self.objective]

    @property
    def score(self) -> Score:
        """The score candidates are ranked and confirmed by (the first objective)."""
        return score_of(self.objective)


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
    baseline: Optional[str] = Field(None, description="a preset scaled to the budget, or random:N")
    confirm_top: int = Field(5, ge=0, description="candidates retrained after the search (0: none)")
    confirm_seeds: int = Field(3, ge=1, description="seeds per confirmed candidate")
    confirm_epochs: Optional[int] = Field(None, ge=1, description="confirmation epochs (default: 2x the proxy's)")
    fidelity_sample: int = Field(5, ge=0, description="random in-budget candidates added to the confirmed set "
                                                      "(none when confirm_top is 0)")
    workers_per_device: Optional[int] = Field(
        None, ge=1, description="worker processes per entry of devices (None: see RunOptions.workers)")
    progress: bool = True

    # What every worker of the study must agree on; the head stores it, joining workers read it.
    SHARED: ClassVar[tuple[str, ...]] = ("n_trials", "sampler", "pruner", "seed", "heartbeat", "baseline",
                                         "confirm_top", "confirm_seeds", "confirm_epochs", "fidelity_sample")

    @property
    def workers(self) -> int:
        """Worker processes per entry of ``devices``: ``workers_per_device`` when given, else one
        per CPU core on the CPU (each single-threaded; at most :data:`MAX_AUTO_CPU_WORKERS`) and
        one per GPU. Small proxy networks keep one core busy better than two: on 2 cores two
        single-thread workers finished the default study in 5 min 36 s, one two-thread worker in
        6 min 58 s (README, "Proxy-training speed")."""
        if self.workers_per_device is not None:
            return self.workers_per_device
        return min(usable_cores(), MAX_AUTO_CPU_WORKERS) if self.devices == ["cpu"] else 1

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"


# -- the study ---------------------------------------------------------------------------------------
def open_study(config: StudyConfig, options: RunOptions, worker: int = 0) -> optuna.Study:
    """Create or load the study in ``options.storage_url`` with heartbeat and retries.

    Raises:
        SearchError: an existing study of that name was made with another config; a storage that
            cannot be opened (see :func:`connect_storage`).
    """
    storage = connect_storage(options.storage_url, options.heartbeat)
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


def connect_storage(url: str, heartbeat: Optional[int] = None) -> optuna.storages.RDBStorage:
    """Open the Optuna RDB storage at ``url`` (SQLite, PostgreSQL ``postgresql+psycopg://``, MySQL),
    with a heartbeat every ``heartbeat`` seconds (grace: 3 intervals) whose stale trials are failed
    and queued again, when given.

    Server databases get ``pool_pre_ping`` (a connection the server dropped is replaced before use,
    not handed to a trial) and a 10 s connect timeout; SQLite waits up to 60 s for its file lock.

    Raises:
        SearchError: a malformed URL, a missing driver, an unreachable server, refused credentials
            or a missing database, in one paragraph without the password.
    """
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise SearchError(f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
                          f"postgresql+psycopg://USER:PASSWORD@HOST:5432/DB") from None
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 60}} if sqlite else {
        "pool_pre_ping": True, "pool_recycle": 3600, "connect_args": {"connect_timeout": 10}}
    try:
        with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beat = {} if heartbeat is None else dict(
                heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
    except ImportError as err:  # SQLAlchemy's missing-driver error
        raise SearchError(f"--storage {shown}: the database driver is not installed ({err}); for PostgreSQL "
                          f"install the extra: pip install -e '.[postgres]'") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise SearchError(f"--storage {shown}: {err}") from None
    except sqlalchemy.exc.SQLAlchemyError as err:  # unreachable, wrong password, no such database
        reason = " ".join(str(getattr(err, "orig", None) or err).split())
        raise SearchError(f"--storage {shown}: cannot connect: {reason}") from None


def store_run_options(study: optuna.Study, options: RunOptions) -> None:
    """Record the options every worker must share (``RunOptions.SHARED``) in the study; the head
    calls this on every run, so a re-run with another ``--confirm-top`` is what workers follow."""
    study.set_user_attr(_RUN_ATTR, options.model_dump(mode="json", include=set(RunOptions.SHARED)))


def stored_settings(study: optuna.Study) -> tuple[Optional[StudyConfig], dict]:
    """The study's config and shared run options as the head stored them (None, {} if absent)."""
    config = study.user_attrs.get(_CONFIG_ATTR)
    return (StudyConfig.model_validate(config) if config is not None else None), dict(study.user_attrs.get(_RUN_ATTR, {}))


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


MAX_AUTO_CPU_WORKERS = 8  # each worker holds about 1 GB resident (torch, data, a model)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def is_live(trial: FrozenTrial) -> bool:
    """Does the trial hold one of the study's N slots (running, queued, or counted as done)?

    Rejected samples and surplus trials hold none; a failure without a recorded reason is a
    heartbeat failure that the retry callback queues again, so it holds none either."""
    attrs = trial.user_attrs
    if not attrs.get("slot") or attrs.get("rejected") or attrs.get("surplus"):
        return False
    if trial.state == TrialState.FAIL:
        return "reason" in attrs  # failures without a reason are heartbeat failures, queued again
    return True


def live_slots(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that hold slots, by trial number (the first N run; see :func:`is_live`)."""
    return sorted((t for t in study.get_trials(deepcopy=False) if is_live(t)), key=lambda t: t.number)


def candidates(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that trained a spec of their own (not a repeat of an earlier one)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("slot") and "duplicate_of" not in t.user_attrs]


def ensure_slots(study: optuna.Study, n_trials: int) -> int:
    """Queue empty slots until the study holds ``n_trials``; returns how many were queued."""
    missing = n_trials - len(live_slots(study))
    for _ in range(max(0, missing)):
        study.enqueue_trial({}, user_attrs={"slot": True})
    return max(0, missing)


@dataclass
class SlotState:
    """How many of the study's N slots are finished, running and queued."""

    done: int
    running: int
    waiting: int


def slot_state(study: optuna.Study, n_trials: int) -> SlotState:
    """Count the first ``n_trials`` live slots by state (read from the storage: every worker's)."""
    live = live_slots(study)[:n_trials]
    states = [t.state for t in live]
    return SlotState(sum(s.is_finished() for s in states), states.count(TrialState.RUNNING),
                     states.count(TrialState.WAITING))
