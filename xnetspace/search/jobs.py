"""Training jobs: a spec trained with a few seeds on a recipe, as trials of an Optuna study that any
worker can pop. Confirmation (:mod:`.confirmation`) and the fidelity study (:mod:`.fidelity`)
plan their runs as jobs.

A job is queued as a WAITING trial holding its :class:`~.records.JobRecord`; workers pop jobs
atomically (:mod:`.storage`), so they spread over all workers and devices and the heartbeat retries
a killed worker's job. Its identity is its key: the spec, the seeds, the schedule, the split and
the recipe. Planning is a pure function of what has finished, so re-planning (after a crash, from
another worker) queues nothing twice; a job queued twice by workers planning at once is trained by
the lowest-numbered unfinished copy only; runs an interrupted copy finished are kept, not trained
again. A job's seeds train at once, as one pack (:func:`~.train.train_seeds`).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from typing import cast

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict

from ..spec import NetworkSpec
from .data import DataSplit
from .errors import SurplusTrial, TrialFailed
from .names import JobRole
from .records import JobRecord, RunRecord, counts_as_job, job_attrs, read_job, write
from .score import Metric
from .storage import connect_storage
from .train import TrainConfig, train_seeds
from .zero_cost import zero_cost_scores

__all__ = [
    "Job",
    "open_job_study",
    "job_results",
    "finished_record",
    "enqueue_jobs",
    "job_state",
    "JobObjective",
]


class Job(BaseModel):
    """A spec trained with each of ``seeds`` for ``epochs`` epochs.

    ``proxy`` jobs use the validation split (what a search trial sees); the others the dataset's
    held-out test split. ``role`` and ``label`` say what the job is for (:class:`~.names.JobRole`
    ``candidate`` and ``trial 12``, ``baseline`` and ``transxnet_t_x0.384``, ...; a role is stored
    as its string); ``trial`` is the search trial it confirms.
    With ``zero_cost`` the job also records the spec's zero-cost scores (:mod:`.zero_cost`); with
    ``test`` (a tabular benchmark's job, :mod:`.tabulate`) every epoch is also scored on the
    held-out test split, and each run keeps its per-epoch wall seconds. ``spec_index`` is the
    spec's place in the pool it was drawn from (the fidelity study's, :mod:`.fidelity`; a
    tabulation's enumeration, :mod:`.tabulate`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: JobRole
    label: str
    spec: dict
    seeds: tuple[int, ...]
    epochs: int
    proxy: bool = False
    trial: int | None = None
    zero_cost: bool = False
    test: bool = False
    spec_index: int | None = None

    def key(self, train: TrainConfig, dataset: str) -> str:
        """Identity of the job: spec, seeds, schedule, split, recipe and dataset (and ``test``
        when set: keys of earlier jobs stay as they were)."""
        digest = NetworkSpec.model_validate(self.spec).digest()
        identity = [digest, list(self.seeds), self.epochs, self.proxy, self.zero_cost, train.model_dump(mode="json")]
        blob = json.dumps([*identity, dataset, *(["test"] if self.test else [])], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_job_study(storage_url: str, name: str, heartbeat: int | None, score: Metric) -> optuna.Study:
    """The study ``name`` holding jobs, created if missing; its direction is ``score``'s (the jobs'
    values are that score, what optuna-dashboard shows)."""
    return optuna.create_study(
        storage=connect_storage(storage_url, heartbeat),
        study_name=name,
        direction=score.direction,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(),
        pruner=optuna.pruners.NopPruner(),
    )


def job_results(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """The counted job trials (:func:`~.records.counts_as_job`) by job key."""
    by_key: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if counts_as_job(t):
            by_key.setdefault(cast(str, read_job(t).key), []).append(t)  # a counted job has its key
    return by_key


def finished_record(trials: list[FrozenTrial]) -> JobRecord | None:
    """The record of a finished job (None while it is not finished)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return read_job(done[0]) if done else None


def enqueue_jobs(study: optuna.Study, jobs: list[Job], train: TrainConfig, dataset: str) -> int:
    """Queue the jobs that are not queued, running or finished yet; returns how many."""
    present = set(job_results(study))
    queued = 0
    for job in jobs:
        key = job.key(train, dataset)
        if key not in present:
            study.enqueue_trial({}, user_attrs=job_attrs(job.model_dump(mode="json"), key))
            present.add(key)
            queued += 1
    return queued


def job_state(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, waiting) job trials."""
    trials = [t for t in study.get_trials(deepcopy=False) if counts_as_job(t)]
    return (
        sum(t.state.is_finished() for t in trials),
        sum(t.state == TrialState.RUNNING for t in trials),
        sum(t.state == TrialState.WAITING for t in trials),
    )


class JobObjective:
    """Runs one popped job: trains its spec with its seeds (one pack) on its schedule and split,
    records every run (top-1, cross-entropy and training loss per epoch) and returns the mean of
    ``score`` over them. ``train`` is the recipe (its ``epochs`` and ``seed`` are the job's)."""

    def __init__(self, train: TrainConfig, data: DataSplit, score: Metric, device: str, worker: int = 0):
        self.train, self.data, self.score, self.device, self.worker = train, data, score, device, worker

    def __call__(self, trial: optuna.Trial) -> float:
        record = read_job(trial)
        if record.job is None:  # ask() made a fresh trial: another worker took the last job
            write(trial, record.model_copy(update={"surplus": True}))
            raise SurplusTrial("no job left")
        job = Job.model_validate(record.job)
        others = [
            t
            for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and read_job(t).key == record.key
        ]
        # Two copies of one job (workers planning at once): the lowest-numbered unfinished one trains.
        for other in others:
            if counts_as_job(other) and (
                other.state == TrialState.COMPLETE or (not other.state.is_finished() and other.number < trial.number)
            ):
                write(trial, record.model_copy(update={"surplus": True}))
                raise SurplusTrial(f"same job as trial {other.number}")
        # Runs an interrupted copy finished (Ctrl-C, a killed worker) are kept, not trained again.
        done = {r.seed: r for other in others for r in read_job(other).runs}
        record = record.model_copy(
            update={
                "worker": self.worker,
                "runs": [done[s] for s in job.seeds if s in done],
                "zero_cost": next((read_job(o).zero_cost for o in others if read_job(o).zero_cost), {}),
            }
        )
        spec = NetworkSpec.model_validate(job.spec)
        split = self.data if job.proxy else self.data.held_out()
        recipe = self.train.model_copy(update={"epochs": job.epochs, "seed": job.seeds[0], "time_limit": None})
        start = time.perf_counter()
        try:
            if job.zero_cost and not record.zero_cost:
                record.zero_cost = zero_cost_scores(spec, self.data, job.seeds[0], recipe.batch_size, self.device)
            missing = [s for s in job.seeds if s not in done]
            if missing and job.test:  # both curves, each run with its pack's wall seconds
                results = train_seeds(spec, split, missing, recipe, self.device, score_test=True)
                record.runs += [RunRecord.of(s, r, pack=len(missing)) for s, r in zip(missing, results)]
            elif missing:
                results = train_seeds(spec, split, missing, recipe, self.device)
                record.runs += [RunRecord.of(s, r) for s, r in zip(missing, results)]
            record.runs.sort(key=lambda r: job.seeds.index(r.seed))
        except Exception as err:  # noqa: BLE001 - a failed job is recorded, never the end of the study
            record.reason = f"{type(err).__name__}: {str(err)[:300]}"
            raise TrialFailed(str(err)) from None
        finally:
            record.seconds = round(time.perf_counter() - start, 2)
            write(trial, record)
        return statistics.fmean(self.score.of_run(r) for r in record.runs)
