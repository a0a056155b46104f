"""The study: its config, its Optuna storage and its N slots.

``--n-trials`` N counts the study's trials: the study holds N *slots*, queued trials that
workers pop atomically (:mod:`.storage`), so any number of workers (processes, machines)
sharing the storage run exactly N trials between them. Slots are queued a few at a time, ahead
of the workers (:func:`top_up_slots`), so a study of any N starts at once; only the first N live
slots by trial number may train, so a slot queued twice by racing workers is surplus, never an
N+1-th trial. Re-running a command continues up to N. The storage has a heartbeat: a worker
killed mid-trial leaves a trial that the heartbeat marks failed and
``RetryHeartbeatStaleTrialCallback`` queues again, so nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..latency_table import read_table
from ..paths import path_name
from ..spec import MAX_SEED, preset_names
from .errors import SearchError
from .names import ObjectiveName, SecondObjective
from .records import is_candidate, is_failure, is_live, read_trial, slot_attrs
from .score import Direction, Metric, proxy_of, score_of
from .space import SearchSpace
from .storage import check_shareable, connect_storage
from .train import TrainConfig

__all__ = [
    "StudyConfig",
    "RunOptions",
    "usable_cores",
    "MAX_AUTO_CPU_WORKERS",
    "check_devices",
    "device_workers",
    "check_workers",
    "SearchError",
    "ObjectiveName",
    "open_study",
    "live_slots",
    "candidates",
    "pareto_front",
    "top_up_slots",
    "MAX_FAILURES_IN_A_ROW",
    "failure_streak",
    "stalled",
    "SlotState",
    "slot_state",
    "store_run_options",
    "stored_settings",
    "make_sampler",
    "make_pruner",
    "default_out",
]

_CONFIG_ATTR = "xnetspace_config"
_RUN_ATTR = "xnetspace_run"


class StudyConfig(BaseModel):
    """What defines a study: resuming it with a different config is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    space: SearchSpace
    dataset: str = "digits"
    objective: ObjectiveName = ObjectiveName.LOSS
    train: TrainConfig = Field(default_factory=TrainConfig)
    proxy_seeds: int = Field(
        1, ge=1, le=64, description="seeds a candidate is trained with at most (its score is the mean over them)"
    )
    race: float | None = Field(
        None,
        gt=0,
        description="z: a candidate whose mean after its first seeds is worse "
        "than the incumbent's by more than z standard errors "
        "gets no more seeds (None: every candidate gets all)",
    )

    @classmethod
    def create(
        cls,
        space: SearchSpace,
        dataset: str = "digits",
        objective: str = "loss",
        *,
        proxy_seeds: int = 1,
        race: float | None = None,
        flops_min: int | None = None,
        flops_max: int | None = None,
        latency_table: str | None = None,
        max_latency_ms: float | None = None,
        **recipe: Any,
    ) -> StudyConfig:
        """A study of ``space`` with its budgets (FLOPs, latency and the latency table it is
        predicted from) and training recipe overridden where given (``recipe``: TrainConfig fields
        such as ``epochs``, ``lr``, ``seed``; None means the space's).

        Raises:
            pydantic.ValidationError: an invalid field or recipe value.
            SpaceError: a budget whose minimum is above its maximum.
            LatencyTableError: a latency table that cannot be read.
        """
        if flops_min is not None or flops_max is not None:
            space = space.with_flops(flops_min, flops_max)
        if latency_table is not None or max_latency_ms is not None:
            space = space.with_latency(latency_table, max_latency_ms)
        if space.constraints.latency_table is not None:
            read_table(space.constraints.latency_table)  # refused now, not in every worker
        recipe = {k: v for k, v in recipe.items() if v is not None}
        train = TrainConfig.model_validate({**space.train.model_dump(), **recipe})
        return cls(space=space, dataset=dataset, objective=objective, train=train, proxy_seeds=proxy_seeds, race=race)

    @property
    def directions(self) -> list[Direction]:
        """The study's directions in Optuna's words: the proxy's, then ``minimize`` for a cost."""
        if self.second_objective is not None:
            return [self.proxy.direction, "minimize"]  # the score, then the cost
        return [self.proxy.direction]

    @property
    def second_objective(self) -> SecondObjective | None:
        """The cost minimized beside the proxy score (None in a single-objective study)."""
        # Converted: a config copied with model_copy(update=...) is not validated and may hold the string.
        return ObjectiveName(self.objective).second

    @property
    def score(self) -> Metric:
        """The score confirmation runs measure (cross-entropy, or top-1 for top-1 objectives)."""
        return score_of(self.objective)

    @property
    def proxy(self) -> Metric:
        """The score the search ranks candidates by (:mod:`.score`)."""
        return proxy_of(self.objective)

    @property
    def proxy_seed_list(self) -> tuple[int, ...]:
        """The seeds of a candidate's proxy runs: ``train.seed``, ``train.seed + 1``, ... (the first
        :attr:`first_seeds` of them trained first, as one pack)."""
        return tuple(self.train.seed + k for k in range(self.proxy_seeds))

    @property
    def first_seeds(self) -> int:
        """Seeds every candidate gets before racing decides on the rest: half of them, at least one."""
        return max(1, self.proxy_seeds // 2)


def default_out(study_name: str) -> Path:
    """The output folder of a study without ``--out``: ``runs/NAME``, its name made one safe folder
    name (:func:`xnetspace.paths.path_name`: a study named ``../../x`` stays inside ``runs/``)."""
    return Path("runs") / path_name(study_name)


@dataclass(frozen=True)
class StudyAddress:
    """Where a study lives: its storage URL, its name, and the heartbeat (seconds) of the trials
    run on it. The studies beside it (``NAME:confirm``, ``NAME:control``) share the storage and
    heartbeat; a module that opens one gets this, not the whole :class:`RunOptions`."""

    storage_url: str
    study_name: str
    heartbeat: int


class RunOptions(BaseModel):
    """How this run works on the study (may change between runs). Numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_trials: int = Field(25, ge=1)  # the replays of issue 30: TPE beats random search from 25 (docs/findings.md)
    out: Path | None = Field(None, description="output folder (default: runs/STUDY_NAME, the name made safe)")
    storage: str | None = None
    study_name: str | None = Field(None, description="default: SPACE-DATASET-OBJECTIVE")
    sampler: Literal["tpe", "random", "nsga2", "qmc"] | None = Field(
        None, description="default: nsga2 for two objectives, random for a population, else tpe"
    )
    pruner: Literal["median", "hyperband", "none"] | None = Field(
        None, description="default: none for two objectives or a population, else median"
    )
    population: bool = Field(
        False, description="a population study for analyze/refine: random sampler, no pruner, no confirmation"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the samplers (worker k adds 1000 k)")
    timeout: float | None = Field(None, gt=0, description="seconds after which no new trial starts")
    devices: list[str] = Field(
        default_factory=lambda: ["cpu"],
        description="cpu, cuda or cuda:K, one worker group each (a comma-separated text too)",
    )
    heartbeat: int = Field(10, ge=1, description="heartbeat interval in seconds (grace: 3 intervals)")
    baseline: str | None = Field(
        None,
        description="comma-separated controls confirmed beside the winner: a preset "
        "scaled to the budget, random:auto (random search at equal "
        "compute), random:N (the best of N random specs) or none; "
        "default random:auto when confirmation is on",
    )
    confirm_top: int = Field(5, ge=0, description="candidates retrained after the search (0: none)")
    confirm_seeds: int = Field(3, ge=1, description="seeds per confirmed candidate")
    confirm_epochs: int | None = Field(
        None, ge=1, description="confirmation epochs (default: the proxy's; docs/fidelity.md says why)"
    )
    fidelity_sample: int = Field(
        5, ge=0, description="random in-budget candidates added to the confirmed set (none when confirm_top is 0)"
    )
    workers_per_device: int | None = Field(
        None, ge=1, description="worker processes per entry of devices (None: see RunOptions.workers)"
    )
    progress: bool = True

    # What every worker of the study must agree on; the head stores it, joining workers read it.
    SHARED: ClassVar[tuple[str, ...]] = (
        "n_trials",
        "sampler",
        "pruner",
        "seed",
        "heartbeat",
        "baseline",
        "confirm_top",
        "confirm_seeds",
        "confirm_epochs",
        "fidelity_sample",
    )

    def epochs_to_confirm(self, train: TrainConfig) -> int:
        """Confirmation epochs: ``confirm_epochs``, else the proxy's own. Confirmation re-measures the
        study's objective with fresh seeds on held-out data; a longer recipe is another objective,
        and on the default task the 3-epoch proxy ranks specs against their 6-epoch order (fidelity
        study, docs/fidelity.md)."""
        return self.confirm_epochs or train.epochs

    @property
    def workers(self) -> int:
        """Worker processes per entry of ``devices``: ``workers_per_device`` when given, else one
        per CPU core on the CPU (each single-threaded; at most :data:`MAX_AUTO_CPU_WORKERS`) and
        one per GPU. Small proxy networks keep one core busy better than two: on 2 cores two
        single-thread workers finished the default study in 5 min 36 s, one two-thread worker in
        6 min 58 s (docs/performance.md, "Proxy-training speed")."""
        return device_workers(self.devices, self.workers_per_device)

    @property
    def worker_devices(self) -> list[str]:
        """The device of each worker process a study starts: :attr:`workers` per entry of
        ``devices``, dealt round-robin, and no more than the study can keep busy
        (:attr:`parallelism`): a 1-trial study starts no thousand processes."""
        dealt = [d for _ in range(self.workers) for d in self.devices]
        return dealt[: max(1, self.parallelism)]

    @property
    def parallelism(self) -> int:
        """The most trials or jobs a study can run at once: its N trials (the random control's come
        after them, as many), or its confirmation jobs, at most the top K, two per random spec
        (``random:N``, the fidelity sample), one per control and one noise check."""
        n_random = max(
            [int(b.split(":")[1]) for b in self.baselines if b.startswith("random:") and b != "random:auto"], default=0
        )
        n_fidelity = self.fidelity_sample if self.confirm_top else 0  # plan_jobs: no confirmed set to add to
        jobs = self.confirm_top + 2 * max(n_random, n_fidelity) + len(self.baselines) + 1
        return max(self.n_trials, jobs)

    @property
    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        if self.out is None:
            raise SearchError("these run options have no output folder yet: resolve them for a study first")
        return f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def address(self) -> StudyAddress:
        """Where the study lives (options resolved for the study: :meth:`resolved`)."""
        if self.study_name is None:
            raise SearchError("these run options have no study name yet: resolve them for a study first")
        return StudyAddress(self.storage_url, self.study_name, self.heartbeat)

    @field_validator("devices", mode="before")
    @classmethod
    def _device_list(cls, value: Any) -> Any:
        return check_devices(value, here=False) if isinstance(value, (str, list)) else value

    @field_validator("storage")
    @classmethod
    def _shareable(cls, url: str | None) -> str | None:
        return None if url is None else check_shareable(url)  # before any work: refused, not a crash

    def resolved(self, config: StudyConfig) -> RunOptions:
        """These options with every default that depends on the study filled in: the study name
        (``SPACE-DATASET-OBJECTIVE``), the output folder (``runs/NAME``, :func:`default_out`), the sampler and pruner
        (NSGA-II and no pruner for two objectives; random sampling, no pruner and no confirmation
        for a population study; else TPE and the median pruner). :func:`~.runner.run_search` and
        ``xnetspace search`` both run on the resolved options.

        Raises:
            ValueError: a pruner asked of a two-objective study (Optuna cannot prune them), a
                population study with another sampler or a pruner, a CUDA device on a machine
                without CUDA, or more worker processes than this machine can hold
                (:func:`check_workers`).
        """
        two = len(config.directions) > 1
        if two and self.pruner not in (None, "none"):
            raise ValueError(
                "multi-objective studies cannot prune (Optuna's trial.report is single-objective); drop --pruner"
            )
        if self.population and (self.sampler not in (None, "random") or self.pruner not in (None, "none")):
            raise ValueError(
                f"--population means --sampler random --pruner none; drop --sampler {self.sampler} / "
                f"--pruner {self.pruner}"
            )
        check_devices(self.devices)
        check_workers(self.devices, self.workers_per_device)
        name = self.study_name or f"{config.space.name}-{config.dataset.split(':')[0]}-{config.objective}"
        return self.model_copy(
            update=dict(
                study_name=name,
                out=self.out or default_out(name),
                sampler=self.sampler or ("random" if self.population else "nsga2" if two else "tpe"),
                pruner=self.pruner or ("none" if self.population or two else "median"),
                confirm_top=0 if self.population else self.confirm_top,
            )
        )

    @field_validator("baseline")
    @classmethod
    def _known_baselines(cls, value: str | None) -> str | None:
        for name in _split(value):
            kind, _, count = name.partition(":")
            if (
                name in ("none", "random:auto")
                or name in preset_names()
                or (kind == "random" and count.isdigit() and int(count) >= 1)
            ):
                continue
            raise ValueError(
                f"--baseline {name!r} is neither a preset ({', '.join(preset_names())}), random:auto (random search "
                f"at equal compute), random:N (the best of N random in-budget specs, e.g. random:8) "
                f"nor none"
            )
        return value

    @property
    def baselines(self) -> list[str]:
        """The controls confirmed beside the winner, in the order given (the first is the summary's
        ``baseline``): ``--baseline`` as given; by default random search at equal compute
        (``random:auto``) when candidates are confirmed, none otherwise."""
        if self.baseline is None:
            return ["random:auto"] if self.confirm_top else []
        return [name for name in _split(self.baseline) if name != "none"]


def check_devices(devices: str | Sequence[str], here: bool = True) -> list[str]:
    """The devices of ``--devices`` as a list: a comma-separated text or a list, each entry cpu,
    cuda or cuda:K; with ``here``, CUDA entries also need a CUDA device on this machine (the head's
    options are checked without it: they may be meant for other machines).

    Raises:
        ValueError: no device at all (``""``, ``",,"``), an entry that names no device, or CUDA
            asked of a machine without it.
    """
    given = devices if isinstance(devices, str) else ",".join(map(str, devices))
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"--devices {given!r} names no device: give cpu, cuda or cuda:K (comma-separated)")
    for device in devices:
        if not isinstance(device, str) or not (
            device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            raise ValueError(f"device {device!r} must be cpu, cuda or cuda:K")
    if here and any(d.startswith("cuda") for d in devices):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--devices {','.join(devices)}: no CUDA device is available here")
    return list(devices)


def device_workers(devices: Sequence[str], asked: int | None = None) -> int:
    """Worker processes per entry of ``devices``: ``asked`` when given, else one per CPU core on
    the CPU (at most :data:`MAX_AUTO_CPU_WORKERS`; each single-threaded) and one per GPU.

    Raises:
        ValueError: ``asked`` below 1.
    """
    if asked is not None:
        if asked < 1:
            raise ValueError(f"--workers-per-device {asked} must be at least 1")
        return asked
    return min(usable_cores(), MAX_AUTO_CPU_WORKERS) if list(devices) == ["cpu"] else 1


MAX_WORKERS_PER_CORE = 4  # CPU worker processes beyond this many per core only wait for each other
WORKER_MEMORY = 1 << 30  # host memory one worker process holds (torch, Optuna, the data, a model): about 1 GB


def check_workers(devices: Sequence[str], asked: int | None) -> int:
    """:func:`device_workers`, with an asked count checked against this machine before any work:
    at most :data:`MAX_WORKERS_PER_CORE` CPU worker processes per usable core, and no more worker
    processes in all than the available memory holds at :data:`WORKER_MEMORY` each (1,000 of them
    would start for minutes and then run out of memory). How many of them a study starts is then
    capped by the work it has (:attr:`RunOptions.worker_devices`).

    Raises:
        ValueError: ``asked`` below 1, or above what the machine can hold (the message says why).
    """
    from ..memory_limit import available_memory, human_bytes

    per_device = device_workers(devices, asked)
    if asked is None:
        return per_device
    cpu, total = list(devices).count("cpu") * asked, len(devices) * asked
    cores = usable_cores()
    if cpu > MAX_WORKERS_PER_CORE * cores:
        raise ValueError(
            f"--workers-per-device {asked:,}: {cpu:,} worker processes on the CPU, but this machine has {cores} "
            f"usable core(s): at most {MAX_WORKERS_PER_CORE * cores} ({MAX_WORKERS_PER_CORE} per core; more only "
            f"wait for each other)"
        )
    free = available_memory()
    if free is not None and asked > max(1, free // WORKER_MEMORY // len(devices)):  # one per device always may
        raise ValueError(
            f"--workers-per-device {asked:,}: {total:,} worker processes would need about "
            f"{human_bytes(total * WORKER_MEMORY)} of memory (about {human_bytes(WORKER_MEMORY)} each), but "
            f"{human_bytes(free)} is available: at most {max(1, free // WORKER_MEMORY // len(devices))} per device"
        )
    return per_device


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


# -- the study ---------------------------------------------------------------------------------------
def open_study(config: StudyConfig, options: RunOptions, worker: int = 0) -> optuna.Study:
    """Create or load the study in ``options.storage_url`` with heartbeat and retries.

    Raises:
        SearchError: an existing study of that name was made with another config; a storage that
            cannot be opened (see :func:`connect_storage`).
    """
    storage = connect_storage(options.storage_url, options.heartbeat)
    study = optuna.create_study(
        storage=storage,
        study_name=options.study_name,
        directions=config.directions,
        load_if_exists=True,
        sampler=make_sampler(config, options, worker),
        pruner=make_pruner(config, options.pruner),
    )
    stored = study.user_attrs.get(_CONFIG_ATTR)
    mine = config.model_dump(mode="json")
    if stored is not None:
        try:  # fields added since the study was made take their defaults, as when it was made
            stored = StudyConfig.model_validate(stored).model_dump(mode="json")
        except ValidationError:
            pass  # compared as stored: it differs
    if stored is None:
        study.set_user_attr(_CONFIG_ATTR, mine)
    elif stored != mine:
        changed = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise SearchError(
            f"study '{options.study_name}' in {options.storage_url} was created with another "
            f"{', '.join(changed)}; use a new --study-name (or --out) for a new study"
        )
    return study


def store_run_options(study: optuna.Study, options: RunOptions) -> None:
    """Record the options every worker must share (``RunOptions.SHARED``) in the study; the head
    calls this on every run, so a re-run with another ``--confirm-top`` is what workers follow."""
    study.set_user_attr(_RUN_ATTR, options.model_dump(mode="json", include=set(RunOptions.SHARED)))


def stored_settings(study: optuna.Study) -> tuple[StudyConfig | None, dict]:
    """The study's config and shared run options as the head stored them (None, {} if absent)."""
    config = study.user_attrs.get(_CONFIG_ATTR)
    return (StudyConfig.model_validate(config) if config is not None else None), dict(
        study.user_attrs.get(_RUN_ATTR, {})
    )


def make_sampler(config: StudyConfig, options: RunOptions, worker: int) -> optuna.samplers.BaseSampler:
    """``options.sampler`` seeded for worker ``worker`` (workers of one study draw different
    sequences): TPE (multivariate), random, QMC or NSGA-II."""
    seed = options.seed + 1000 * worker  # workers must not propose the same sequence
    if options.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=min(10, max(2, options.n_trials // 3))
        )
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if options.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, options.n_trials // 4)))


def make_pruner(config: StudyConfig, pruner: str | None) -> optuna.pruners.BasePruner:
    """The run's ``pruner`` (median: Optuna's MedianPruner after 5 trials and 1 epoch; hyperband
    over the proxy's epochs); none for two-objective studies, which Optuna cannot prune."""
    if len(config.directions) > 1 or pruner == "none":
        return optuna.pruners.NopPruner()  # multi-objective studies cannot prune
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.train.epochs, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


MAX_AUTO_CPU_WORKERS = 8  # each worker holds about 1 GB resident (torch, data, a model)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def live_slots(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that hold slots, by trial number (the first N run; see :func:`is_live`)."""
    return sorted((t for t in study.get_trials(deepcopy=False) if is_live(t)), key=lambda t: t.number)


def candidates(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that trained a spec of their own (not a repeat of an earlier one)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_candidate(t)]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated candidates, each objective in the study's direction (the score first: top-1
    maximised or cross-entropy minimised; then FLOPs or latency, minimised)."""
    trials = candidates(study)
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]

    def dominates(o: FrozenTrial, t: FrozenTrial) -> bool:
        return o.values != t.values and all(s * a >= s * b for s, a, b in zip(signs, o.values, t.values))

    return [t for t in trials if not any(dominates(o, t) for o in trials)]


MAX_FAILURES_IN_A_ROW = 10  # trials failing one after another before a study stops (docs/search.md)


def failure_streak(study: optuna.Study, n_trials: int, since: datetime | None = None) -> tuple[int, str | None]:
    """How many of the study's N slots finished last, one after another, as failures
    (:func:`~.records.is_failure`), counting those finished after ``since`` only (a re-run tries
    again), and the last one's reason."""
    finished = [
        t
        for t in live_slots(study)[:n_trials]
        if t.state.is_finished() and t.datetime_complete and (since is None or t.datetime_complete >= since)
    ]
    finished.sort(key=lambda t: t.datetime_complete or datetime.min)
    streak = 0
    for trial in reversed(finished):
        if not is_failure(trial):
            break
        streak += 1
    return streak, read_trial(finished[-1]).reason if streak else None


def stalled(study: optuna.Study, n_trials: int, since: datetime | None = None) -> str | None:
    """Why the study cannot make progress, or None: its last :data:`MAX_FAILURES_IN_A_ROW` trials
    failed in a row, or every one of its N trials is finished and failed (since ``since``)."""
    streak, reason = failure_streak(study, n_trials, since)
    state = slot_state(study, n_trials)
    if streak >= MAX_FAILURES_IN_A_ROW:
        return f"its last {streak} trials failed one after another (the last: {reason})"
    if streak and streak == state.done == n_trials:
        return f"every one of its {n_trials} trial(s) failed (the last: {reason})"
    return None


def top_up_slots(study: optuna.Study, n_trials: int, ahead: int) -> SlotState:
    """Queue empty slots until ``ahead`` of them wait, never more than ``n_trials`` live slots in
    all, and return the state of the N slots. Workers call it before they pop one, so the queue
    stays a few slots ahead of them whatever N is."""
    live = live_slots(study)
    state = _count(live, n_trials)
    missing = max(0, min(n_trials - len(live), ahead - state.waiting - state.extra))
    for _ in range(missing):
        study.enqueue_trial({}, user_attrs=slot_attrs())
    state.waiting += missing
    return state


@dataclass
class SlotState:
    """How many of the study's N slots are finished, running and queued, and how many slots
    beyond the N wait (queued twice by racing workers: popped, they end as surplus)."""

    done: int
    running: int
    waiting: int
    extra: int = 0


def slot_state(study: optuna.Study, n_trials: int) -> SlotState:
    """Count the first ``n_trials`` live slots by state (read from the storage: every worker's)."""
    return _count(live_slots(study), n_trials)


def _count(live: list[FrozenTrial], n_trials: int) -> SlotState:
    states = [t.state for t in live[:n_trials]]
    return SlotState(
        sum(s.is_finished() for s in states),
        states.count(TrialState.RUNNING),
        states.count(TrialState.WAITING),
        sum(t.state == TrialState.WAITING for t in live[n_trials:]),
    )
