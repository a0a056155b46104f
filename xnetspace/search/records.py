"""What trials store: typed records, and the rules that read them. The only module that touches
Optuna's ``user_attrs`` of trials.

A search trial holds a :class:`TrialRecord` (its slot, why it was rejected or failed, the spec it
sampled with its FLOPs and params, and one :class:`RunRecord` per seed it was trained with); a
confirmation run (a trial of the ``NAME:confirm`` study) holds a :class:`JobRecord` (the job and
its runs). Each record is one user attribute, :data:`KEY`, written whole (one storage write per
update, not one per field), readable in optuna-dashboard as JSON.

The state rules every module shares are written here once: :func:`is_live` (does a trial hold one
of the study's N slots), :func:`is_heartbeat_failure` (a failure the retry callback queues
again), :func:`is_failure` (a trial that ended without a score through no choice of the study),
:func:`is_candidate` (a completed trial that trained a spec of its own) and
:func:`counts_as_job` (a confirmation run that is queued, running or done).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "KEY",
    "RunRecord",
    "TrialRecord",
    "JobRecord",
    "read_trial",
    "read_job",
    "write",
    "slot_attrs",
    "job_attrs",
    "is_live",
    "is_heartbeat_failure",
    "is_failure",
    "is_candidate",
    "counts_as_job",
]

KEY = "xnetspace"  # the one user attribute a trial's record is stored under


class RunRecord(BaseModel):
    """One training run of a spec with one seed: per epoch, the validation (or held-out) top-1 in
    percent and cross-entropy in nats, and the mean training loss (label-smoothed cross-entropy,
    what the optimiser minimised; their sum is the training-speed estimate, TSE).

    A run of a tabular benchmark (:mod:`.tabulate`) also holds, per epoch, the held-out split's
    top-1 and cross-entropy (``test_top1``, ``test_loss``) and the wall seconds at the epoch's end
    (``epoch_seconds``, cumulative, for the whole ``pack`` of seeds trained together)."""

    model_config = ConfigDict(extra="ignore")

    seed: int
    top1: list[float] = Field(default_factory=list)
    loss: list[float] = Field(default_factory=list)
    train_loss: list[float] = Field(default_factory=list)
    seconds: float = 0.0
    test_top1: list[float] = Field(default_factory=list)
    test_loss: list[float] = Field(default_factory=list)
    epoch_seconds: list[float] = Field(default_factory=list)
    pack: int = 1

    @property
    def epochs(self) -> int:
        return len(self.top1)

    @classmethod
    def of(cls, seed: int, result: Any, pack: int | None = None) -> RunRecord:
        """The record of a :class:`~xnetspace.search.train.TrainResult` (so far) trained with ``seed``;
        with ``pack`` (a tabular benchmark's run, trained in a pack of that many seeds) also its
        held-out curves and per-epoch wall seconds."""
        run = cls(
            seed=seed,
            top1=list(result.history),
            loss=list(result.loss_history),
            train_loss=list(result.train_loss_history),
            seconds=round(result.seconds, 2),
        )
        if pack is not None:
            run.test_top1, run.test_loss = list(result.test_history), list(result.test_loss_history)
            run.epoch_seconds, run.pack = [round(s, 3) for s in result.seconds_history], pack
        return run


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    surplus: bool = False  # created when there was nothing left to do; it did nothing
    reason: str | None = None  # why it was rejected, pruned or failed
    traceback: str | None = None
    worker: int | None = None
    seconds: float | None = None
    runs: list[RunRecord] = Field(default_factory=list)
    zero_cost: dict[str, float] = Field(default_factory=dict)  # scores at initialisation (search/zero_cost.py)

    def run(self, seed: int) -> RunRecord | None:
        """The finished run with ``seed`` (None if there is none)."""
        return next((r for r in self.runs if r.seed == seed), None)

    def final(self, name: str) -> float | None:
        """Mean over the runs of their last epoch's ``top1`` or ``loss`` (None without a run)."""
        values = [getattr(r, name)[-1] for r in self.runs if getattr(r, name)]
        return math.fsum(values) / len(values) if values else None


class TrialRecord(_Record):
    """A search trial: its slot, the sampled spec and its cost, its zero-cost scores and its runs
    (one per seed).

    ``rejected``: the sample was invalid or over budget and never trained (its slot went back to
    the queue); ``duplicate_of``: the same spec as that earlier trial, whose result it took;
    ``race``: why it got fewer seeds than the others."""

    slot: bool = False
    rejected: bool = False
    rejected_samples: int = 0
    spec: dict[str, Any] | None = None
    spec_digest: str | None = None
    flops: int | None = None
    params: int | None = None
    latency_ms: float | None = None
    latency_predicted: bool = False  # latency_ms from the space's latency table, not measured
    duplicate_of: int | None = None
    race: str | None = None  # why racing gave it fewer seeds than the study's proxy_seeds

    @property
    def top1_history(self) -> list[float]:
        """Validation top-1 per epoch of the first run (empty before one finished an epoch)."""
        return self.runs[0].top1 if self.runs else []

    @property
    def loss_history(self) -> list[float]:
        """Validation cross-entropy per epoch of the first run."""
        return self.runs[0].loss if self.runs else []


class JobRecord(_Record):
    """A confirmation run: the job (see :class:`xnetspace.search.confirmation.ConfirmJob`, kept as
    plain data here) and its identity ``key`` (spec, seeds, schedule, split and recipe)."""

    job: dict[str, Any] | None = None
    key: str | None = None


_R = TypeVar("_R", TrialRecord, JobRecord)


def _read(trial: FrozenTrial | optuna.Trial, kind: type[_R]) -> _R:
    return kind.model_validate(trial.user_attrs.get(KEY, {}))


def read_trial(trial: FrozenTrial | optuna.Trial) -> TrialRecord:
    """The record of a search trial (an empty one if it has none)."""
    return _read(trial, TrialRecord)


def read_job(trial: FrozenTrial | optuna.Trial) -> JobRecord:
    """The record of a confirmation run (an empty one if it has none)."""
    return _read(trial, JobRecord)


def write(trial: optuna.Trial, record: TrialRecord | JobRecord) -> None:
    """Store ``record`` in the running ``trial`` (one storage write)."""
    trial.set_user_attr(KEY, record.model_dump(mode="json", exclude_defaults=True))


def slot_attrs() -> dict[str, Any]:
    """``user_attrs`` of a queued empty slot (``study.enqueue_trial({}, user_attrs=...)``)."""
    return {KEY: TrialRecord(slot=True).model_dump(mode="json", exclude_defaults=True)}


def job_attrs(job: dict[str, Any], key: str) -> dict[str, Any]:
    """``user_attrs`` of a queued confirmation run."""
    return {KEY: JobRecord(job=job, key=key).model_dump(mode="json", exclude_defaults=True)}


# -- the state rules ---------------------------------------------------------------------------------
def is_heartbeat_failure(trial: FrozenTrial) -> bool:
    """A failure without a recorded reason: the heartbeat failed a dead worker's trial, and the
    retry callback has queued a copy of it, which takes its place."""
    return trial.state == TrialState.FAIL and read_trial(trial).reason is None


def is_live(trial: FrozenTrial) -> bool:
    """Does the trial hold one of the study's N slots (running, queued, or counted as done)?

    Rejected samples and surplus trials hold none; nor does a heartbeat failure (its retry does)."""
    record = read_trial(trial)
    return record.slot and not record.rejected and not record.surplus and not is_heartbeat_failure(trial)


def is_failure(trial: FrozenTrial) -> bool:
    """A trial that ended without a score through no choice of the study: failed with its reason
    (an error in training, out of memory, a score that is not finite) or pruned because its
    training diverged. The pruner's and the time limit's prunings are choices, not failures."""
    record = read_trial(trial)
    return (trial.state == TrialState.FAIL and record.reason is not None) or (
        trial.state == TrialState.PRUNED and (record.reason or "").startswith("Diverged")
    )


def is_candidate(trial: FrozenTrial) -> bool:
    """A completed trial that trained a spec of its own (not a repeat of an earlier one)."""
    record = read_trial(trial)
    return trial.state == TrialState.COMPLETE and record.slot and record.duplicate_of is None


def counts_as_job(trial: FrozenTrial) -> bool:
    """A confirmation run that counts: queued, running or finished; a surplus copy and a heartbeat
    failure (queued again by the retry callback) do not."""
    record = read_job(trial)
    return record.job is not None and not record.surplus and not is_heartbeat_failure(trial)
