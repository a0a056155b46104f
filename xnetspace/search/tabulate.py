"""A tabular benchmark: every spec of a finite space trained with K seeds, once, for replays.

NAS-Bench-101 (Ying et al., ICML 2019: 423k cells x 3 seeds), NAS-Bench-201 and NATS-Bench (Dong &
Yang, ICLR 2020; Dong et al., TPAMI 2021: 15,625 cells, per-epoch train/valid/test curves for 3
seeds) and JAHS-Bench-201 (Bansal et al., NeurIPS 2022) train a space once, so that search
strategies can be replayed against the table hundreds of times for free (:mod:`.replay`) and every
cheap score's fidelity read without training (:mod:`.bench_fidelity`).

``xnetspace tabulate SPACE --dataset D --seeds K --out DIR`` enumerates every distinct valid
in-budget spec of SPACE (:mod:`.space_grid`; a space with more than ``--max-specs`` of them is
refused, naming the count), trains each with K seeds under the space's proxy recipe, scoring every
epoch on the validation split (what a search sees) and on the held-out test split (what the replay
judges by), and records per spec its knobs, FLOPs, params, zero-cost scores (:mod:`.zero_cost`) and
measured latency (:mod:`xnetspace.latency`: the inference form, batch 1, one thread, at the budget's
image size). TransXNet-T scaled to the space's budget (:func:`~.confirmation.baseline_spec`) is
trained beside them with the same seeds as a reference row. The table and its meta file are
written by :func:`xnetspace.bench.write` (format: :mod:`xnetspace.bench`, docs/benchmark.md).

Each spec is one job (:mod:`.jobs`: its K seeds trained as one pack) of an Optuna study in
``DIR/tabulate.db``, popped by worker processes (:mod:`.workers`): a killed or interrupted
tabulation resumes with the same command and trains nothing twice; each sitting's wall time is
kept in the study and the meta file. A dataset without a test split (``synthetic``) gets its
validation scores in the test columns, and the meta file says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..bench import REFERENCE, Entry, Run, write
from ..cost import cost_report, parse_image_size
from ..latency import measure_latency
from ..model import build_model
from ..spec import NetworkSpec
from .confirmation import ConfirmError, baseline_spec
from .data import DataSplit, load_dataset
from .errors import SearchError, WorkerCrashed
from .jobs import Job, JobObjective, enqueue_jobs, finished_record, job_results, job_state, open_job_study
from .names import JobRole
from .records import JobRecord, read_job
from .score import LOSS
from .space import SearchSpace, space_data
from .space_grid import Enumeration, enumerate_space
from .storage import connect_storage, shown_url
from .study import default_out
from .train import TrainConfig

__all__ = [
    "TabulateConfig",
    "run_tabulate",
    "join_tabulation",
    "queue_tabulation",
    "Queued",
    "stored_tabulation",
    "study_location",
    "plan",
    "measure_latencies",
    "report_lines",
    "TABULATE_STUDY",
    "REFERENCE_PRESET",
]

TABULATE_STUDY = "tabulate"
REFERENCE_PRESET = "transxnet_t"
LATENCY_SECONDS = 0.5  # min_run_time of each spec's latency measurement
_CONFIG_ATTR, _SITTINGS_ATTR = "xnetspace_tabulate", "xnetspace_sittings"
_PACKAGES = ("xnetspace", "torch", "timm", "optuna", "numpy", "scipy", "pydantic", "fvcore")


class TabulateConfig(BaseModel):
    """What defines a tabulation (resuming it with another space, dataset or seed count is refused;
    ``max_specs`` is only a guard)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: SearchSpace
    dataset: str = "digits"
    seeds: int = Field(2, ge=1, le=64, description="K: seeds per spec")
    max_specs: int = Field(500, ge=1, description="refuse a space with more distinct in-budget specs")

    @property
    def train(self) -> TrainConfig:
        """The space's proxy recipe (every spec is trained with it)."""
        return self.space.train

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(self.train.seed + k for k in range(self.seeds))

    def identity(self) -> dict:
        return self.model_dump(mode="json", exclude={"max_specs"})


def space_hash(space: SearchSpace) -> str:
    """A short SHA-256 of the space's canonical JSON (name, knobs, rules, budget, recipe). Fields
    added to the space model since tables were shipped are left out while unset, so that those
    tables keep their hash (``constraints.latency_table``, issue 33)."""
    data = space.model_dump(mode="json")
    if data["constraints"].get("latency_table") is None:
        data["constraints"].pop("latency_table", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan(config: TabulateConfig, found: Enumeration, reference: NetworkSpec | None) -> list[Job]:
    """One job per spec (its K seeds as one pack, both splits scored each epoch, zero-cost scores;
    ``spec_index`` its place in the enumeration), and one for the reference."""
    common = dict(seeds=config.seed_list, epochs=config.train.epochs, proxy=True, zero_cost=True, test=True)
    jobs = [
        Job(role=JobRole.SPEC, label=f"spec {i}", spec=spec.model_dump(mode="json"), spec_index=i, **common)
        for i, spec in enumerate(found.specs)
    ]
    if reference is not None:
        jobs.append(Job(role=JobRole.REFERENCE, label=reference.name, spec=reference.model_dump(mode="json"), **common))
    return jobs


def study_location(config: TabulateConfig, out: Path, storage: str | None = None) -> tuple[str, str]:
    """The job study's storage URL and name: ``out/tabulate.db`` and ``tabulate``, or on a server
    (``storage``, e.g. PostgreSQL) a name of its own per table (the space's name and a hash of what
    defines the table), since one server holds many."""
    if storage is None:
        return f"sqlite:///{(out / 'tabulate.db').resolve()}", TABULATE_STUDY
    digest = hashlib.sha256(json.dumps(config.identity(), sort_keys=True).encode()).hexdigest()[:12]
    return storage, f"{TABULATE_STUDY}-{config.space.name}-{digest}"


def _open(config: TabulateConfig, url: str, name: str, heartbeat: int = 10) -> optuna.Study:
    study = open_job_study(url, name, heartbeat, LOSS)
    mine, stored = config.identity(), study.user_attrs.get(_CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(_CONFIG_ATTR, mine)
    elif stored != mine:
        changed = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise SearchError(
            f"{name} in {shown_url(url)} holds a table of another {', '.join(changed)}; use another --out"
        )
    return study


def _work(config_json: str, url: str, name: str, out: str, device: str, worker: int, poll: float = 2.0) -> None:
    """One worker: pop and train jobs until none is queued or running."""
    from .workers import drain_jobs

    config = TabulateConfig.model_validate_json(config_json)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = _open(config, url, name)
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    objective = JobObjective(config.train, data, LOSS, device, worker)
    drain_jobs(study, objective, Path(out), worker, poll)


def _process(config_json: str, url: str, name: str, out: str, device: str, worker: int, threads: int | None) -> None:
    from .workers import guarded

    guarded(lambda d: _work(config_json, url, name, out, d, worker), device, threads)


def stored_tabulation(storage: str, study_name: str) -> TabulateConfig | None:
    """The tabulation that study ``study_name`` in ``storage`` holds (None: no such study, or not a
    tabulation), for ``xnetspace worker`` to join."""
    storage_obj = connect_storage(storage)
    if study_name not in {s.study_name for s in storage_obj.get_all_studies()}:
        return None
    stored = optuna.load_study(study_name=study_name, storage=storage_obj).user_attrs.get(_CONFIG_ATTR)
    return None if stored is None else TabulateConfig.model_validate(stored)


def join_tabulation(
    config: TabulateConfig,
    storage: str,
    study_name: str,
    devices: str | Sequence[str] = ("cpu",),
    workers_per_device: int | None = None,
    first_worker: int | None = None,
) -> int:
    """Work on a tabulation another machine started (``xnetspace tabulate --storage URL``) until
    no job is queued or running: this machine's worker processes pop its jobs as the head's do.
    Returns the jobs finished meanwhile (by every machine). The head writes the table.

    Raises:
        ValueError: a bad device or worker count.
        WorkerCrashed: workers that crashed before the table was done.
    """
    from .study import check_devices, device_workers
    from .workers import spawn_workers

    devices = check_devices(devices)
    workers = [d for d in devices for _ in range(device_workers(devices, workers_per_device))]
    first = first_worker if first_worker is not None else random.randrange(1000, 1_000_000)
    out = default_out(study_name)
    study = _open(config, storage, study_name)
    before = job_state(study)[0]
    lost = spawn_workers(
        _process,
        workers,
        lambda i, d, threads: (config.model_dump_json(), storage, study_name, str(out), d, first + i, threads),
        first_worker=first,
    )
    _raise_lost(lost, study)
    return job_state(study)[0] - before


def run_tabulate(
    config: TabulateConfig,
    out: Path,
    devices: str | Sequence[str] = ("cpu",),
    workers_per_device: int | None = None,
    progress: bool = True,
    latency_seconds: float = LATENCY_SECONDS,
    storage: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict:
    """Train (or resume) the tabulation in ``out`` and write ``table.csv`` and ``meta.json``
    (:func:`xnetspace.bench.write`); returns the meta data.

    ``devices``: a list or a comma-separated text (cpu, cuda, cuda:K); ``workers_per_device``
    worker processes on each (default: one per CPU core on the CPU, at most 8; one per GPU).
    ``storage``: a server's Optuna RDB URL (PostgreSQL) holding the job study instead of
    ``out/tabulate.db``, so that other machines join with ``xnetspace worker --storage URL
    --study-name NAME`` (given to ``announce`` once the jobs are queued); the head waits for
    their jobs too, then writes the table.

    Raises:
        ValueError: a bad device or worker count (before anything is written).
        SpaceError: a continuous knob, too many combinations, a latency budget (:mod:`.space_grid`).
        SearchError: more than ``max_specs`` distinct in-budget specs (naming how many), none at
            all; ``out`` holding a table of another space, dataset or seed count.
        WorkerCrashed: workers that crashed before the table was done (re-run to continue).
        xnetspace.search.data.DataError: a dataset that cannot be read.
    """
    from .study import check_devices, device_workers

    devices = check_devices(devices)
    per_device = device_workers(devices, workers_per_device)
    queued = queue_tabulation(config, out, storage)
    if storage is not None and announce is not None:
        announce(f"other machines join with:\n{join_command(queued.url, queued.name)}")
    workers = [d for d in devices for _ in range(per_device)]
    _train(config, queued.study, (queued.url, queued.name), queued.jobs, out, workers, progress)
    entries, failed = _entries(config, queued, out / "latency.json", latency_seconds)
    meta = _meta(config, queued, failed, workers, latency_seconds)
    write(out, entries, list(queued.found.grid), meta)
    return json.loads((out / "meta.json").read_text())


@dataclass
class Queued:
    """A tabulation's job study with its jobs queued (:func:`queue_tabulation`)."""

    study: optuna.Study
    url: str
    name: str
    jobs: list[Job]
    data: DataSplit
    found: Enumeration
    reference: NetworkSpec | None
    reference_error: str | None


def queue_tabulation(config: TabulateConfig, out: Path, storage: str | None = None) -> Queued:
    """Enumerate the space, plan one job per spec (and the reference) and queue the jobs not yet
    queued in the job study (:func:`study_location`); nothing is trained. Workers on this machine
    (:func:`run_tabulate`) or others (:func:`join_tabulation`) then pop them.

    Raises:
        SpaceError, SearchError, DataError: as :func:`run_tabulate`.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    found = _enumerate(config, data)
    reference, reference_error = _reference(config, data)
    out.mkdir(parents=True, exist_ok=True)
    url, name = study_location(config, out, storage)
    study = _open(config, url, name)
    jobs = plan(config, found, reference)
    enqueue_jobs(study, jobs, config.train, config.dataset)
    return Queued(study, url, name, jobs, data, found, reference, reference_error)


def _entries(config: TabulateConfig, queued: Queued, cache: Path, latency_seconds: float) -> tuple[list, list[dict]]:
    """The table's entries (finished specs, their latency measured now) and the failed jobs."""
    results = job_results(queued.study)
    key = {j.label: j.key(config.train, config.dataset) for j in queued.jobs}
    records = {j.label: finished_record(results.get(key[j.label], [])) for j in queued.jobs}
    specs = {j.label: NetworkSpec.model_validate(j.spec) for j in queued.jobs if records[j.label] is not None}
    latency = measure_latencies(specs.values(), config.space.constraints.image_size, cache, latency_seconds)
    entries = [
        _entry(j, specs[j.label], queued.found, records[j.label], latency, config)
        for j in queued.jobs
        if j.label in specs
    ]
    failed = [
        {"label": j.label, "digest": NetworkSpec.model_validate(j.spec).digest(), "reason": _reason(results, j, config)}
        for j in queued.jobs
        if j.label not in specs
    ]
    return entries, failed


def _enumerate(config: TabulateConfig, data: DataSplit) -> Enumeration:
    """The space's specs, refused when more than ``max_specs`` or none."""
    found = enumerate_space(config.space, num_classes=data.num_classes, in_chans=data.in_chans)
    n, name = len(found.specs), config.space.name
    if n > config.max_specs:
        raise SearchError(
            f"space '{name}' has {n:,} distinct in-budget specs ({found.combinations:,} combinations), more than "
            f"--max-specs {config.max_specs:,}; raise --max-specs to train them all, or use a smaller space"
        )
    if n == 0:
        raise SearchError(f"space '{name}' has no valid in-budget spec ({found.counts()})")
    return found


def _reference(config: TabulateConfig, data: DataSplit) -> tuple[NetworkSpec | None, str | None]:
    """TransXNet-T scaled to the budget, or the reason there is none."""
    try:
        return baseline_spec(REFERENCE_PRESET, config.space, data.num_classes, data.in_chans), None
    except ConfirmError as err:
        return None, str(err)


def _train(
    config: TabulateConfig,
    study: optuna.Study,
    location: tuple[str, str],
    jobs: list[Job],
    out: Path,
    workers: list[str],
    progress: bool,
):
    """Run the workers until every job is done (a progress bar meanwhile); each sitting's wall
    time and jobs are recorded in the study as it goes (:class:`_Sitting`), also when it is
    interrupted."""
    from .progress import JobMonitor
    from .workers import spawn_workers

    image = config.space.constraints.image_size
    sizes = {
        j.key(config.train, config.dataset): float(cost_report(NetworkSpec.model_validate(j.spec), image).flops)
        * len(j.seeds)
        * j.epochs
        for j in jobs
    }
    sitting = _Sitting(study, workers)
    monitor = JobMonitor(study, sizes, len(workers), "tabulate", progress, on_poll=sitting.update)
    lost = []
    try:
        lost = spawn_workers(
            _process,
            workers,
            lambda i, d, threads: (config.model_dump_json(), *location, str(out), d, i, threads),
            monitor=monitor,
        )
    finally:
        monitor.close()
        sitting.update(force=True)
    _raise_lost(lost, study)


def _raise_lost(lost: list, study: optuna.Study) -> None:
    """WorkerCrashed when workers crashed and jobs are left."""
    _, running, waiting = job_state(study)
    if lost and running + waiting:
        raise WorkerCrashed(
            "tabulate workers ended before the table was done: "
            + "; ".join(w.describe() for w in lost)
            + ". Re-run the same command to continue it"
        )


def join_command(url: str, name: str) -> str:
    """The command that joins a tabulation from another machine (the storage URL as given)."""
    return " ".join(shlex.quote(part) for part in ["xnetspace", "worker", "--storage", url, "--study-name", name])


class _Sitting:
    """This sitting's entry in the study's list of sittings (when it started, its wall seconds, the
    jobs it finished, its workers), rewritten every ``every`` seconds while it runs: a killed head
    loses at most that much of its own time."""

    def __init__(self, study: optuna.Study, workers: list[str], every: float = 30.0):
        self.study, self.every, self.start, self.written = study, every, time.perf_counter(), -math.inf
        self.done_before = job_state(study)[0]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.entry = {"started": started, "wall_seconds": 0.0, "jobs_finished": 0, "workers": workers}
        self.sittings = [*study.user_attrs.get(_SITTINGS_ATTR, []), self.entry]
        self.update(force=True)

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.written < self.every:
            return
        self.written = now
        self.entry.update(
            wall_seconds=round(now - self.start, 1), jobs_finished=job_state(self.study)[0] - self.done_before
        )
        self.study.set_user_attr(_SITTINGS_ATTR, self.sittings)


def measure_latencies(specs, image_size: Any, cache: Path, seconds: float = LATENCY_SECONDS) -> dict[str, float]:
    """Median milliseconds of one forward of each spec's inference form (``reparameterize()``), batch
    1, one CPU thread, at ``image_size`` (:func:`xnetspace.latency.measure_latency`, running for
    ``seconds``), by digest; measured once: ``cache`` (JSON) keeps them across sittings."""
    done: dict[str, float] = json.loads(cache.read_text()) if cache.is_file() else {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec in specs:
            digest = spec.digest()
            if digest not in done:
                model = build_model(spec).reparameterize()
                done[digest] = measure_latency(spec, 1, image_size, "cpu", model=model, min_run_time=seconds)
                cache.write_text(json.dumps(done, indent=1))
    finally:
        torch.set_num_threads(threads)
    return done


def _entry(
    job: Job, spec: NetworkSpec, found: Enumeration, record: JobRecord | None, latency: dict, config: TabulateConfig
) -> Entry:
    """A table entry of a finished job (test columns: the validation scores without a test split)."""
    record = cast(JobRecord, record)
    report = cost_report(spec, config.space.constraints.image_size)
    index = -1 if job.spec_index is None else job.spec_index  # the reference has no place in the space
    runs = tuple(
        Run(
            seed=r.seed,
            pack=r.pack,
            val_loss=tuple(r.loss),
            val_top1=tuple(r.top1),
            test_loss=tuple(r.test_loss or r.loss),
            test_top1=tuple(r.test_top1 or r.top1),
            train_loss=tuple(r.train_loss),
            seconds=tuple(s / r.pack for s in r.epoch_seconds),
        )
        for r in record.runs
    )
    return Entry(
        index=index,
        role="space" if index >= 0 else REFERENCE,
        name=spec.name,
        digest=spec.digest(),
        flops=report.flops,
        params=report.params,
        latency_ms=latency.get(spec.digest(), float("nan")),
        zero_cost=dict(record.zero_cost),
        knobs=found.knobs[index] if index >= 0 else {},
        runs=runs,
    )


def _reason(results: dict, job: Job, config: TabulateConfig) -> str:
    trials = results.get(job.key(config.train, config.dataset), [])
    return next((read_job(t).reason for t in trials if read_job(t).reason), None) or "not trained"


def _meta(config: TabulateConfig, queued: Queued, failed: list[dict], workers: list[str], latency_s: float) -> dict:
    """What the meta file says besides the table (:mod:`xnetspace.bench`)."""
    space, study, data, found = config.space, queued.study, queued.data, queued.found
    reference, reference_error = queued.reference, queued.reference_error
    sittings = study.user_attrs.get(_SITTINGS_ATTR, [])
    trained = [read_job(t) for t in study.get_trials(deepcopy=False) if read_job(t).job is not None]
    image = parse_image_size(space.constraints.image_size)
    ref: dict[str, Any] = {"preset": REFERENCE_PRESET}
    if reference is not None:
        report = cost_report(reference, image)
        ref |= {"name": reference.name, "digest": reference.digest(), "flops": report.flops, "params": report.params}
        ref["spec"] = reference.model_dump(mode="json")
    else:
        ref["error"] = reference_error
    return {
        "format": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "space": space_data(space),
        "space_hash": space_hash(space),
        "dataset": config.dataset,
        "splits": _splits(data),
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "recipe": config.train.model_dump(mode="json"),
        "seeds": list(config.seed_list),
        "score": {"val": "validation split", "test": "test split" if data.test is not None else "validation split"},
        "enumeration": {**found.counts(), "grid": {k: len(v) for k, v in found.grid.items()}},
        "specs": {
            str(i): {"name": s.name, "digest": s.digest(), "knobs": found.knobs[i], "spec": s.model_dump(mode="json")}
            for i, s in enumerate(found.specs)
        },
        "failed": failed,
        "reference": ref,
        "latency": {
            "form": "inference",
            "batch_size": 1,
            "threads": 1,
            "device": "cpu",
            "image_size": list(image),
            "min_run_time": latency_s,
        },
        "machine": _machine(workers),
        "versions": _versions(),
        "seconds_trained": round(sum(r.seconds or 0.0 for r in trained), 1),
        "sittings": sittings,
        "wall_seconds": round(sum(s["wall_seconds"] for s in sittings), 1),
    }


def _splits(data: DataSplit) -> dict:
    sizes = {name: getattr(data, name) for name in ("train", "val", "test")}
    return {name: (len(cast(Any, d)) if d is not None else None) for name, d in sizes.items()}


def _machine(workers: list[str]) -> dict:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "workers": workers,
    }


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def report_lines(meta: dict, out: Path | None = None) -> list[str]:
    """The tabulation in words (``xnetspace tabulate``): what was trained, the time it took, the
    reference and the failures, and the files."""
    n, counts = len(meta["specs"]), meta["enumeration"]
    lines = [
        f"{meta['space']['name']} on {meta['dataset']}: {n} distinct in-budget specs (of {counts['combinations']:,} "
        f"combinations: {counts['invalid']} invalid, {counts['over_budget']} over budget, {counts['repeats']} "
        f"repeats) x {len(meta['seeds'])} seeds, {meta['recipe']['epochs']} epochs each",
        f"  trained {meta['seconds_trained']:,.0f} s of jobs in {meta['wall_seconds']:,.0f} s of wall time over "
        f"{len(meta['sittings'])} sitting(s)",
    ]
    ref = meta["reference"]
    lines.append(
        f"  reference: {ref['name']} ({ref['flops']:,} FLOPs)" if "name" in ref else f"  no reference: {ref['error']}"
    )
    if meta["score"]["test"] != "test split":
        lines.append(f"  {meta['dataset']} has no test split: the test columns hold the validation scores")
    for f in meta["failed"]:
        lines.append(f"  failed: {f['label']}: {f['reason']}")
    if out is not None:
        lines.append(f"files: {out / 'table.csv'}, {out / 'meta.json'} (query: xnetspace.bench.load)")
    return lines
