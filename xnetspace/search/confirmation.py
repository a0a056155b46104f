"""Confirmation: after the search, retrain the leading candidates with several seeds on a longer
schedule, beside a baseline at the same budget, and measure how well the proxy ranked them.

One proxy run per candidate selects seed noise as readily as architecture (Yang et al., "NAS
Evaluation is Frustratingly Hard", ICLR 2020); so the study does what careful NAS papers do by
hand. After its N trials:

- the top ``confirm_top`` distinct candidates by proxy score are retrained with
  ``confirm_seeds`` new seeds (the proxy's seed + 1, + 2, ...) for ``confirm_epochs`` epochs and
  scored on the dataset's held-out test split (the validation split when it has none), which the
  search never saw;
- the baseline, a paper preset scaled to the study's budget (:mod:`xnetspace.scaling`), or the
  best by proxy score of N random in-budget specs (``random:N``: the random-search control of Li
  & Talwalkar, UAI 2019), is confirmed the same way;
- ``fidelity_sample`` random in-budget specs get a proxy run and a confirmation too, so the rank
  correlation of proxy and confirmed scores is not measured on the top of the ranking only;
- with ``confirm_top`` 0, the best candidate is still retrained at the proxy recipe with the
  new seeds, to measure the seed noise of the proxy score.

Runs are *jobs*: trials of a second Optuna study, ``NAME:confirm``, in the same storage, queued
as WAITING trials that any worker pops (so they are spread over all workers and devices, and
the heartbeat retries a killed worker's run). The plan is a pure function of what is finished,
so re-planning after a crash or from another worker queues nothing twice; a job's key (spec,
seed, schedule, recipe) is trained once, whatever the races.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from typing import Literal, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, ValidationError

from ..cost import cost_report
from ..scaling import ScalingError, scale_to_budget
from ..spec import NetworkSpec, SpecError, load_preset, preset_names
from .data import DataSplit
from .objective import SurplusTrial, TrialFailed
from .space import RandomTrial, SearchSpace
from .stats import mean_difference, pooled_seed_std, rank_fidelity, seed_summary, separation
from .records import RunRecord, counts_as_job, job_attrs, read_job, read_trial, write
from .score import TOP1, Score
from .storage import connect_storage
from .study import RunOptions, SearchError, StudyConfig, candidates
from .train import train_candidate

__all__ = ["ConfirmJob", "ConfirmError", "check_baseline", "baseline_spec", "open_confirm_study", "plan_jobs",
           "enqueue_jobs", "ConfirmObjective", "confirmation_state", "summarize", "check_options", "CONFIRM_SUFFIX"]

CONFIRM_SUFFIX = ":confirm"
Role = Literal["candidate", "baseline", "random", "fidelity", "noise"]


class ConfirmError(SearchError):
    """Confirmation options that cannot work (a baseline that is neither a preset nor random:N,
    a budget no scaled preset meets, a CI asked of fewer than 2 seeds)."""


class ConfirmJob(BaseModel):
    """One training job of the confirmation phase: a spec trained with each of ``seeds``.

    ``proxy`` jobs use the search's recipe and validation split (the score a search trial would
    give); the others use ``epochs`` and the held-out split.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    label: str
    spec: dict
    seeds: tuple[int, ...]
    epochs: int
    proxy: bool = False
    trial: Optional[int] = None

    def key(self, config: StudyConfig) -> str:
        """Identity of the job: spec, seeds, schedule, split and recipe (never trained twice)."""
        digest = NetworkSpec.model_validate(self.spec).digest()
        blob = json.dumps([digest, list(self.seeds), self.epochs, self.proxy, config.train.model_dump(mode="json"),
                           config.dataset], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- options checked before anything trains ------------------------------------------------------------
def check_baseline(name: Optional[str]) -> None:
    """Refuse a baseline that is neither a preset name nor ``random:N`` (N >= 1).

    Raises:
        ConfirmError: with the accepted forms.
    """
    if name is None or name in preset_names():
        return
    kind, _, count = name.partition(":")
    if kind == "random" and count.isdigit() and int(count) >= 1:
        return
    raise ConfirmError(f"--baseline {name!r} is neither a preset ({', '.join(preset_names())}) nor random:N "
                       f"(the best of N random in-budget specs, e.g. random:8)")


def baseline_spec(name: str, space: SearchSpace, num_classes: int, in_chans: int) -> NetworkSpec:
    """The preset ``name`` scaled to the space's FLOP budget (and its max params), with the
    space's fixed network fields, so that it is counted exactly as the candidates are.

    Raises:
        ConfirmError: no scaled version of the preset meets the budget.
    """
    c = space.constraints
    network = {**space.network, "num_classes": num_classes, "in_chans": in_chans}
    try:
        return scale_to_budget(load_preset(name), c.flops[1] if c.flops else 10 ** 18, c.image_size,
                               min_flops=c.flops[0] if c.flops else None, max_params=c.max_params, network=network)
    except (ScalingError, SpecError, ValidationError) as err:
        raise ConfirmError(f"--baseline {name}: {err}") from None


def check_options(options: RunOptions) -> None:
    """Raises ConfirmError for options no confirmation can honour (a CI from one seed)."""
    check_baseline(options.baseline)
    if (options.confirm_top or options.baseline) and options.confirm_seeds < 2:
        raise ConfirmError(f"--confirm-seeds {options.confirm_seeds}: a 95% confidence interval needs at least "
                           f"2 seeds per candidate (use 2 or more, or --confirm-top 0 without --baseline)")


# -- the confirmation study ----------------------------------------------------------------------------
def open_confirm_study(options: RunOptions, score: Score) -> optuna.Study:
    """The study ``NAME:confirm`` beside the search's, holding the confirmation runs; its direction
    is the study score's (what optuna-dashboard shows; the runs' values are that score)."""
    storage = connect_storage(options.storage_url, options.heartbeat)
    return optuna.create_study(storage=storage, study_name=options.study_name + CONFIRM_SUFFIX,
                               direction=score.direction, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())


def _results(cstudy: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """The counted job trials (:func:`~.records.counts_as_job`) by job key."""
    by_key: dict[str, list[FrozenTrial]] = {}
    for t in cstudy.get_trials(deepcopy=False):
        if counts_as_job(t):
            by_key.setdefault(read_job(t).key, []).append(t)
    return by_key


def _runs(trials: list[FrozenTrial]) -> Optional[list[RunRecord]]:
    """The runs of a finished job, one per seed (None while it is not finished)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return read_job(done[0]).runs if done else None


def _random_pool(config: StudyConfig, count: int, num_classes: int, in_chans: int) -> list[NetworkSpec]:
    """``count`` distinct in-budget specs drawn uniformly from the space (fixed seed)."""
    rng, space, pool, seen = random.Random(config.train.seed + 7919), config.space, [], set()
    for _ in range(200 * count + 1000):
        if len(pool) == count:
            break
        try:
            spec = space.sample(RandomTrial(rng), num_classes=num_classes, in_chans=in_chans)
        except (ValidationError, SpecError):
            continue
        report = cost_report(spec, space.constraints.image_size)
        if space.constraints.violations(report.flops, report.params) or spec.digest() in seen:
            continue
        seen.add(spec.digest())
        pool.append(spec.model_copy(update={"name": f"{space.name}_random{len(pool)}"}))
    return pool


def plan_jobs(study: optuna.Study, cstudy: optuna.Study, config: StudyConfig, options: RunOptions,
              num_classes: int, in_chans: int) -> list[ConfirmJob]:
    """Every job the finished search calls for, given what has finished so far (pure: the same
    state gives the same list). Jobs that depend on proxy runs (the best of random:N) appear once
    those runs are done."""
    epochs = options.confirm_epochs or 2 * config.train.epochs
    seeds = tuple(config.train.seed + 1 + i for i in range(options.confirm_seeds))
    jobs: list[ConfirmJob] = []

    def confirm(role: Role, label: str, spec: dict, trial: Optional[int] = None, proxy: bool = False) -> None:
        jobs.append(ConfirmJob(role=role, label=label, spec=spec, seeds=seeds, trial=trial, proxy=proxy,
                               epochs=config.train.epochs if proxy else epochs))

    rank = config.score.rank_key
    ranked = sorted(candidates(study), key=lambda t: (rank(t.values[0]), read_trial(t).flops or 0, t.number))
    for t in ranked[:options.confirm_top]:
        confirm("candidate", f"trial {t.number}", read_trial(t).spec, t.number)
    if not options.confirm_top and ranked and options.confirm_seeds > 1:
        confirm("noise", f"trial {ranked[0].number}", read_trial(ranked[0]).spec, ranked[0].number, proxy=True)
    if options.baseline and not options.baseline.startswith("random:"):
        spec = baseline_spec(options.baseline, config.space, num_classes, in_chans)
        confirm("baseline", spec.name, spec.model_dump(mode="json"))

    n_random = int(options.baseline.split(":")[1]) if (options.baseline or "").startswith("random:") else 0
    n_fidelity = options.fidelity_sample if options.confirm_top else 0  # no confirmed set to add to
    pool = _random_pool(config, max(n_random, n_fidelity), num_classes, in_chans)
    proxy_jobs = {i: ConfirmJob(role="random", label=spec.name, spec=spec.model_dump(mode="json"),
                                seeds=(config.train.seed,), epochs=config.train.epochs, proxy=True)
                  for i, spec in enumerate(pool)}
    jobs.extend(proxy_jobs.values())
    for spec in pool[:n_fidelity]:
        confirm("fidelity", spec.name, spec.model_dump(mode="json"))
    if n_random:
        results = _results(cstudy)
        runs = {i: _runs(results.get(job.key(config), [])) for i, job in proxy_jobs.items() if i < n_random}
        if all(v is not None for v in runs.values()):
            scores = {i: config.score.of_run(r[0]) for i, r in runs.items()}
            best = min(scores, key=lambda i: (rank(scores[i]), i))
            confirm("baseline", f"best of {options.baseline}: {pool[best].name}", pool[best].model_dump(mode="json"))
    return jobs


def enqueue_jobs(cstudy: optuna.Study, config: StudyConfig, jobs: list[ConfirmJob]) -> int:
    """Queue the jobs that are not queued, running or finished yet; returns how many."""
    present = set(_results(cstudy))
    queued = 0
    for job in jobs:
        key = job.key(config)
        if key not in present:
            cstudy.enqueue_trial({}, user_attrs=job_attrs(job.model_dump(mode="json"), key))
            present.add(key)
            queued += 1
    return queued


def confirmation_state(cstudy: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, waiting) job trials."""
    trials = [t for t in cstudy.get_trials(deepcopy=False) if counts_as_job(t)]
    return (sum(t.state.is_finished() for t in trials), sum(t.state == TrialState.RUNNING for t in trials),
            sum(t.state == TrialState.WAITING for t in trials))


class ConfirmObjective:
    """Runs one popped job: trains its spec with each of its seeds and its schedule, records every
    run (top-1 and cross-entropy per epoch) and returns the mean of the study's score over them
    (top-1 in percent, or cross-entropy in nats for the ``loss`` objective)."""

    def __init__(self, config: StudyConfig, data: DataSplit, device: str, worker: int = 0):
        self.config, self.data, self.device, self.worker = config, data, device, worker

    def __call__(self, trial: optuna.Trial) -> float:
        record = read_job(trial)
        if record.job is None:  # ask() made a fresh trial: another worker took the last job
            write(trial, record.model_copy(update={"surplus": True}))
            raise SurplusTrial("no confirmation job left")
        job = ConfirmJob.model_validate(record.job)
        # Workers planning at once may queue one job twice. It is trained by the lowest-numbered
        # unfinished trial of its key (and not at all once one is complete), so of two copies
        # exactly one trains, whichever order they are popped and checked in.
        for other in trial.study.get_trials(deepcopy=False):
            if other.number != trial.number and counts_as_job(other) and read_job(other).key == record.key and (
                    other.state == TrialState.COMPLETE or (not other.state.is_finished() and other.number < trial.number)):
                write(trial, record.model_copy(update={"surplus": True}))
                raise SurplusTrial(f"same job as trial {other.number}")
        split = self.data if job.proxy else self.data.held_out()
        # Runs an interrupted copy of this job finished (Ctrl-C, a killed worker) are kept, not redone.
        done = {r.seed: r for other in trial.study.get_trials(deepcopy=False)
                if other.number != trial.number and read_job(other).key == record.key for r in read_job(other).runs}
        record = record.model_copy(update={"worker": self.worker, "runs": [done[s] for s in job.seeds if s in done]})
        start = time.perf_counter()
        try:
            for seed in [s for s in job.seeds if s not in done]:
                recipe = self.config.train.model_copy(update={"epochs": job.epochs, "seed": seed, "time_limit": None})
                result = train_candidate(NetworkSpec.model_validate(job.spec), split, recipe, self.device)
                record.runs.append(RunRecord.of(seed, result))
                if len(record.runs) < len(job.seeds):
                    write(trial, record)  # each finished run is kept, whatever happens to the rest
            record.runs.sort(key=lambda r: job.seeds.index(r.seed))
        except Exception as err:  # noqa: BLE001 - a failed run is recorded, never the end of the study
            record.reason = f"{type(err).__name__}: {str(err)[:300]}"
            raise TrialFailed(str(err)) from None
        finally:
            record.seconds = round(time.perf_counter() - start, 2)
            write(trial, record)
        return statistics.fmean(self.config.score.of_run(r) for r in record.runs)


# -- the evidence --------------------------------------------------------------------------------------
def summarize(study: optuna.Study, cstudy: optuna.Study, config: StudyConfig, options: RunOptions,
              data: DataSplit) -> Optional[dict]:
    """The confirmation's results as ``summary.json`` holds them (None before any job finished).

    Keys: ``score`` (``name``: ``top1`` or ``loss``, ``unit``, ``direction``: the score every
    ``confirm``, ``proxy_score``, difference and ranking below is in), ``candidates`` (one per
    confirmed candidate: ``trial``, ``spec_digest``, ``proxy_top1``, ``proxy_score``, ``flops``,
    ``params``, ``confirm``), ``best`` (the candidate with the best confirmed mean; ties: fewer
    FLOPs), ``baseline`` (``name``, ``flops``, ``params``, ``confirm``) or None, ``difference``
    (best minus baseline: ``mean``, ``ci95``, ``distinguishable``), ``leaders`` (best minus
    runner-up, the same fields), ``noise`` (``seed_std``: pooled over every spec confirmed with 2+
    seeds; ``between_std``: the std of the candidates' confirmed means), ``separation`` (whether
    confirmed specs differ beyond seed noise, :func:`xnetspace.search.stats.separation`:
    ``candidates`` over the top K, ``all`` over every confirmed spec: the top K, the fidelity
    sample and the baseline; in a ``loss`` study ``separation_top1`` beside it, the same runs by
    top-1), ``fidelity_sample`` (the random specs confirmed for ``fidelity``:
    ``label``, ``proxy_top1``, ``proxy_score``, ``spec_digest``, ``flops``, ``params``,
    ``confirm``), ``fidelity`` (proxy score against confirmed mean: ``kendall_tau``,
    ``spearman_rho``, ``n``, ``ci95``) and ``protocol`` (seeds, epochs, split). Every ``confirm``
    is ``{mean, std, ci95, n, scores}``, one score per seed: top-1 in percent, or cross-entropy in
    nats for the ``loss`` objective, where each confirmed spec also has ``confirm_top1`` (the same
    runs' top-1) to read beside it.
    """
    score = config.score
    jobs = plan_jobs(study, cstudy, config, options, data.num_classes, data.in_chans)
    results = _results(cstudy)
    groups: dict[tuple[str, str], dict] = {}
    for job in jobs:
        entry = groups.setdefault((job.role, job.label), {"job": job, "scores": [], "top1": [], "proxy": job.proxy})
        for run in _runs(results.get(job.key(config), [])) or []:
            entry["scores"].append(score.of_run(run))
            entry["top1"].append(TOP1.of_run(run))
    if not any(g["scores"] for g in groups.values()):
        return None
    size = config.space.constraints.image_size

    def described(g: dict) -> dict:
        spec = NetworkSpec.model_validate(g["job"].spec)
        report = cost_report(spec, size)
        out = {"spec_digest": spec.digest(), "flops": report.flops, "params": report.params,
               "confirm": seed_summary(g["scores"])}
        if score.name != "top1" and None not in g["top1"]:
            out["confirm_top1"] = seed_summary(g["top1"])
        return out

    trials = {t.number: t for t in candidates(study)}
    confirmed = []
    for (role, _), g in groups.items():
        if role == "candidate" and g["scores"]:
            t = trials[g["job"].trial]
            proxy_top1 = read_trial(t).final("top1")
            confirmed.append({"trial": t.number, "proxy_top1": proxy_top1, "proxy_score": t.values[0], **described(g)})
    ranked = sorted(confirmed, key=lambda c: (score.rank_key(c["confirm"]["mean"]), c["flops"]))
    best = ranked[0] if ranked else None
    baseline = next(({"name": label, **described(g)} for (role, label), g in groups.items()
                     if role == "baseline" and g["scores"]), None)

    proxies = {g["job"].label: g for (role, _), g in groups.items() if role == "random" and g["scores"]}
    fid_pairs = [(c["proxy_score"], c["confirm"]["mean"]) for c in confirmed]
    fid_pairs += [(proxies[label]["scores"][0], seed_summary(g["scores"])["mean"]) for (role, label), g in groups.items()
                  if role == "fidelity" and g["scores"] and label in proxies]
    noise_groups = [g["scores"] for (role, _), g in groups.items() if role != "random" and len(g["scores"]) > 1]
    means = [c["confirm"]["mean"] for c in confirmed]
    sampled = [{"label": label, "proxy_top1": proxies[label]["top1"][0] if label in proxies else None,
                "proxy_score": proxies[label]["scores"][0] if label in proxies else None, **described(g)}
               for (role, label), g in groups.items() if role == "fidelity" and g["scores"]]
    def separations(key: str) -> dict:
        top = [c[key]["scores"] for c in confirmed if key in c]
        rest = [x[key]["scores"] for x in sampled + ([baseline] if baseline else []) if key in x]
        return {"candidates": separation(top), "all": separation(top + rest)}

    return {
        "score": {"name": score.name, "unit": score.unit, "direction": score.direction},
        "candidates": confirmed,
        "fidelity_sample": sampled,
        "best": best,
        "baseline": baseline,
        "difference": mean_difference(best["confirm"]["scores"], baseline["confirm"]["scores"])
        if best and baseline else None,
        "leaders": mean_difference(ranked[0]["confirm"]["scores"], ranked[1]["confirm"]["scores"])
        if len(ranked) > 1 else None,
        "noise": {"seed_std": pooled_seed_std(noise_groups),
                  "between_std": statistics.stdev(means) if len(means) > 1 else math.nan,
                  "proxy_seed_std": next((statistics.stdev(g["scores"]) for (role, _), g in groups.items()
                                          if role == "noise" and len(g["scores"]) > 1), None)},
        "separation": separations("confirm"),
        **({"separation_top1": separations("confirm_top1")} if score.name != "top1" else {}),
        "fidelity": rank_fidelity([p for p, _ in fid_pairs], [c for _, c in fid_pairs], seed=config.train.seed),
        "protocol": {"seeds": [config.train.seed + 1 + i for i in range(options.confirm_seeds)],
                     "epochs": options.confirm_epochs or 2 * config.train.epochs,
                     "split": "test" if data.test is not None else "val", "proxy_epochs": config.train.epochs,
                     "confirm_top": options.confirm_top},
        "pending": sum(1 for j in jobs if _runs(results.get(j.key(config), [])) is None),
    }
