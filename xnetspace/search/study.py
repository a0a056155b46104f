"""The study: its config, its Optuna storage and its N slots.

``--n-trials`` N counts the study's trials: the study holds N *slots*, queued trials that
workers pop atomically, so any number of workers (processes, machines) sharing the storage run
exactly N trials between them. Re-running a command tops the queue up to N again. The storage
has a heartbeat: a worker killed mid-trial leaves a trial that the heartbeat marks failed and
``RetryHeartbeatStaleTrialCallback`` queues again, so nothing is lost.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field

from .space import SearchSpace
from .train import TrainConfig

__all__ = ["StudyConfig", "RunOptions", "SearchError", "ObjectiveName", "open_study", "is_live", "live_slots",
           "ensure_slots", "SlotState", "slot_state"]

ObjectiveName = Literal["top1", "top1-flops", "top1-latency"]
_DIRECTIONS = {"top1": ["maximize"], "top1-flops": ["maximize", "minimize"], "top1-latency": ["maximize", "minimize"]}
_CONFIG_ATTR = "xnetspace_config"


class SearchError(RuntimeError):
    """A study that cannot run as asked (e.g. resumed with another recipe); the message says why."""


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
