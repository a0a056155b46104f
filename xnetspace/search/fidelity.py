"""The fidelity study: how well each cheap score ranks a space's specs, against the noise ceiling.

``xnetspace fidelity SPACE --dataset D --n-specs M --seeds K --out DIR`` trains M random in-budget
specs of SPACE with K seeds under the space's proxy recipe (on the validation split) and K other
seeds under the confirmation recipe (twice the epochs, on the held-out test split), and records
every run (per-epoch training loss, validation or test cross-entropy and top-1) with each spec's
zero-cost scores, FLOPs and params. Then, for every score a search could rank by:

- the proxy's validation cross-entropy from 1 seed, and its mean over 2..K seeds; the same after
  each earlier epoch of the proxy recipe; the proxy's top-1; TSE (Ru et al., NeurIPS 2021) from 1
  seed and K seeds; each zero-cost score (Abdelfattah et al., ICLR 2021); FLOPs and params (the
  baselines any proxy must beat: ZiCo, ICLR 2023),

it gives Kendall tau, Spearman rho and precision@5 against the specs' K-seed confirmed mean, with
paired-bootstrap 95% intervals, beside the **noise ceiling**: Kendall tau between the means of two
disjoint halves of the confirmation seeds (:func:`~.stats.noise_ceiling`), the most any score can
reach when the target is itself a noisy mean. It also replays racing over seeds on the recorded
runs (``racing``): for each threshold z, the seeds a search would have spent and the ranking it
would have got (:func:`~.fidelity_stats.racing_replay`).

The runs are jobs (:mod:`.jobs`) of an Optuna study in ``DIR/fidelity.db``: a killed or interrupted
fidelity study resumes with the same command and trains nothing twice, and worker processes share
the cores. ``DIR/runs.csv`` holds the raw runs, ``DIR/fidelity.json`` the analysis (which
:func:`~.fidelity_stats.analyze_runs` recomputes from ``runs.csv`` alone), ``DIR/fidelity.png`` the
figure.

This module defines the study and runs it; the runs and their file are :mod:`.fidelity_runs`, the
analysis :mod:`.fidelity_stats`, the figure and the terminal's lines :mod:`.fidelity_report`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..cost import cost_report
from ..paths import output_folder
from ..spec import MAX_SEED, NetworkSpec
from .confirmation import CONFIRM_SEED_OFFSET
from .data import DataSplit, load_dataset
from .errors import SearchError, WorkerCrashed
from .fidelity_report import plot_fidelity
from .fidelity_runs import FidelityRun, write_runs
from .fidelity_schema import FidelityResult, StudyInfo
from .fidelity_stats import analyze_runs
from .jobs import Job, enqueue_jobs, finished_record, job_results, job_state, open_job_study
from .names import JobRole
from .score import LOSS
from .space import SearchSpace
from .train import TrainConfig, check_recipe
from .zero_cost import ZERO_COST

__all__ = ["FidelityConfig", "specs", "plan", "run_fidelity", "FIDELITY_STUDY", "FIDELITY_FILES"]

FIDELITY_STUDY = "fidelity"
FIDELITY_FILES = ("fidelity.db", "workers.log", "runs.csv", "fidelity.json", "fidelity.png")  # written into --out
_CONFIG_ATTR = "xnetspace_fidelity"


class FidelityConfig(BaseModel):
    """What defines a fidelity study (resuming it with another is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    space: SearchSpace
    dataset: str = "digits"
    n_specs: int = Field(30, ge=3, le=10_000)
    seeds: int = Field(4, ge=2, le=64, description="K: seeds per spec and recipe")
    confirm_epochs: int | None = Field(None, ge=1, description="default: twice the proxy's")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the spec sample")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the proxy recipe (default: the space's)")

    @model_validator(mode="before")
    @classmethod
    def _space_recipe(cls, data: Any) -> Any:
        """Without ``train``, the space's own recipe (what ``xnetspace fidelity`` trains with)."""
        if isinstance(data, dict) and data.get("train") is None:
            space = data.get("space")
            recipe = (
                space.train
                if isinstance(space, SearchSpace)
                else space.get("train")
                if isinstance(space, dict)
                else None
            )
            if recipe is not None:
                data = {**data, "train": recipe}
        return data

    @property
    def epochs(self) -> int:
        return self.confirm_epochs or 2 * self.train.epochs

    @property
    def proxy_seeds(self) -> tuple[int, ...]:
        return tuple(self.train.seed + k for k in range(self.seeds))

    @property
    def confirm_seeds(self) -> tuple[int, ...]:
        return tuple(self.train.seed + CONFIRM_SEED_OFFSET + k for k in range(self.seeds))


def specs(config: FidelityConfig, num_classes: int, in_chans: int) -> list[NetworkSpec]:
    """The M distinct in-budget specs, drawn uniformly from the space with ``config.seed``."""
    space = config.space
    pool = space.distinct_specs(config.n_specs, config.seed, "fidelity", num_classes=num_classes, in_chans=in_chans)
    if len(pool) < config.n_specs:
        raise SearchError(
            f"space '{space.name}' gave only {len(pool)} distinct in-budget specs of the "
            f"{config.n_specs} asked (--n-specs)"
        )
    return pool


def plan(config: FidelityConfig, pool: list[NetworkSpec]) -> list[Job]:
    """Two jobs per spec: its K proxy runs (with its zero-cost scores) and its K confirmation runs,
    each naming the spec's place in the pool (``spec_index``)."""
    jobs = []
    for i, spec in enumerate(pool):
        data = spec.model_dump(mode="json")
        jobs.append(
            Job(
                role=JobRole.PROXY,
                label=f"spec {i}",
                spec=data,
                seeds=config.proxy_seeds,
                epochs=config.train.epochs,
                proxy=True,
                zero_cost=True,
                spec_index=i,
            )
        )
        jobs.append(
            Job(
                role=JobRole.CONFIRM,
                label=f"spec {i}",
                spec=data,
                seeds=config.confirm_seeds,
                epochs=config.epochs,
                spec_index=i,
            )
        )
    return jobs


def _url(out: Path) -> str:
    """The storage of the study in ``out``."""
    return f"sqlite:///{(out / 'fidelity.db').resolve()}"


def _open(config: FidelityConfig, out: Path, heartbeat: int = 10) -> optuna.Study:
    study = open_job_study(_url(out), FIDELITY_STUDY, heartbeat, LOSS)
    mine, stored = config.model_dump(mode="json"), study.user_attrs.get(_CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(_CONFIG_ATTR, mine)
    elif stored != mine:
        raise SearchError(f"{out} holds a fidelity study of another space, dataset, size or recipe; use another --out")
    return study


def run_fidelity(
    config: FidelityConfig,
    out: Path,
    devices: str | Sequence[str] = ("cpu",),
    workers_per_device: int | None = None,
    progress: bool = True,
) -> FidelityResult:
    """Train (or resume) the fidelity study in ``out`` and write ``runs.csv``, ``fidelity.json``
    and ``fidelity.png``; returns the analysis (:func:`~.fidelity_stats.analyze_runs`) with the
    times and the study's definition (``config``), as ``fidelity.json`` holds it.

    ``devices``: a list or a comma-separated text (cpu, cuda, cuda:K); ``workers_per_device``
    worker processes on each (default: one per CPU core on the CPU, at most 8; one per GPU).

    Raises:
        ValueError: a device that is none, CUDA where there is none, fewer than one worker per
            device or more than the machine holds (checked before anything is written); a batch
            larger than the training split.
        SearchError: a space without M distinct in-budget specs; ``out`` holding another study.
        WorkerCrashed: worker processes that crashed before the study was done.
        xnetspace.search.data.DataError: a dataset that cannot be read.
    """
    from .study import check_devices, check_workers

    devices = check_devices(devices)
    per_device = check_workers(devices, workers_per_device)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    output_folder(out, "--out", FIDELITY_FILES)
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    check_recipe(config.train, data)
    pool = specs(config, data.num_classes, data.in_chans)
    study = _open(config, out)
    jobs = plan(config, pool)
    enqueue_jobs(study, jobs, config.train, config.dataset)
    costs = _costs(config, pool)
    start = time.perf_counter()
    _train_jobs(config, out, study, jobs, costs, [d for _ in range(per_device) for d in devices], progress)
    runs = _runs(study, jobs, pool, costs, config)
    write_runs(runs, out / "runs.csv")
    result = analyze_runs(runs, seed=config.seed)
    result.seconds_this_run = round(time.perf_counter() - start, 1)
    result.seconds_trained = round(sum(r.seconds for r in runs if r.first_of_job), 1)
    result.config = _config_summary(config, data)
    (out / "fidelity.json").write_text(result.json_text() + "\n")
    plot_fidelity(result, out / "fidelity.png")
    return result


def _train_jobs(
    config: FidelityConfig,
    out: Path,
    study: optuna.Study,
    jobs: list[Job],
    costs: list[tuple[int, int]],
    slots: list[str],
    progress: bool,
) -> None:
    """Train the queued jobs with a worker process per device slot (:func:`~.workers.job_worker`),
    under a progress bar whose time estimate weighs each job by its FLOPs x seeds x epochs
    (:class:`~.progress.JobMonitor`).

    Raises:
        WorkerCrashed: workers that ended while jobs were still running or waiting.
    """
    from .progress import JobMonitor
    from .workers import job_worker, spawn_workers

    slots = slots[: max(1, len(jobs))]  # no more than there are jobs
    sizes = {
        j.key(config.train, config.dataset): float(costs[cast(int, j.spec_index)][0] * len(j.seeds) * j.epochs)
        for j in jobs
    }
    where = (_url(out), FIDELITY_STUDY, config.train.model_dump_json(), config.dataset, LOSS, str(out))
    monitor = JobMonitor(study, sizes, len(slots), "fidelity", progress)
    try:
        lost = spawn_workers(job_worker, slots, lambda i, d, threads: (*where, d, i, threads), monitor=monitor)
    finally:
        monitor.close()
    _, running, waiting = job_state(study)
    if lost and running + waiting:
        raise WorkerCrashed(
            "fidelity workers ended before the study was done: "
            + "; ".join(w.describe() for w in lost)
            + ". Re-run the same command to continue it"
        )


def _config_summary(config: FidelityConfig, data: DataSplit) -> StudyInfo:
    """What ``fidelity.json`` records of the study's definition."""
    return StudyInfo(
        space=config.space.name,
        dataset=config.dataset,
        n_specs=config.n_specs,
        seeds=config.seeds,
        proxy_epochs=config.train.epochs,
        confirm_epochs=config.epochs,
        split="test" if data.test is not None else "val",
    )


def _runs(
    study: optuna.Study,
    jobs: list[Job],
    pool: list[NetworkSpec],
    costs: list[tuple[int, int]],
    config: FidelityConfig,
) -> list[FidelityRun]:
    """The finished jobs' runs (``runs.csv``'s rows), in the order of the plan: a spec's proxy runs,
    then its confirmation runs."""
    results = job_results(study)
    runs = []
    for job in jobs:
        record = finished_record(results.get(job.key(config.train, config.dataset), []))
        if record is None:
            continue
        i = cast(int, job.spec_index)  # every job of the plan names its spec
        zero_cost = {name: record.zero_cost[name] for name in ZERO_COST if name in record.zero_cost}
        runs += [
            FidelityRun.of(
                i,
                "proxy" if job.proxy else "confirm",
                pool[i],
                run,
                costs[i],
                zero_cost=zero_cost,
                seconds=record.seconds or 0.0,
                first_of_job=n == 0,
            )
            for n, run in enumerate(record.runs)
        ]
    return runs


def _costs(config: FidelityConfig, pool: list[NetworkSpec]) -> list[tuple[int, int]]:
    """Each spec's FLOPs and params at the space's image size."""
    reports = [cost_report(spec, config.space.constraints.image_size) for spec in pool]
    return [(r.flops, r.params) for r in reports]
