"""Confirmation: after the search, retrain the leading candidates with new seeds on a longer
schedule, beside controls at the same budget, and measure how well the proxy ranked them against
the noise ceiling.

One proxy run per candidate selects seed noise as readily as architecture (Yang et al., "NAS
Evaluation is Frustratingly Hard", ICLR 2020); so the study does what careful NAS papers do by
hand. After its N trials:

- the top ``confirm_top`` distinct candidates by proxy score are retrained with
  ``confirm_seeds`` new seeds (``train.seed + 1000``, ``+ 1001``, ...: never a proxy run's) for
  ``confirm_epochs`` epochs and scored on the dataset's held-out test split (the validation split
  when it has none), which the search never saw;
- the controls (``RunOptions.baselines``), each confirmed the same way: a paper preset scaled to
  the study's budget (:mod:`xnetspace.scaling`); ``random:auto``, the best candidate of random
  search given the same proxy compute as the search (:mod:`.control`; Li & Talwalkar, UAI 2019);
  ``random:N``, the best by proxy score of N random in-budget specs;
- ``fidelity_sample`` random in-budget specs get the proxy evaluation and a confirmation too, so
  the rank correlation of proxy and confirmed scores is not measured on the top of the ranking
  only, and the noise ceiling (half the confirmation seeds against the other half) is measured
  on the same specs;
- with ``confirm_top`` 0 and one proxy seed, the best candidate is still retrained at the proxy
  recipe with the new seeds, to measure the seed noise of the proxy score.

The runs are jobs (:mod:`.jobs`) of a second Optuna study, ``NAME:confirm``, in the same storage:
spread over all workers, retried by the heartbeat, never trained twice.
"""

from __future__ import annotations

import math
import statistics
from typing import cast

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from ..cost import cost_report
from ..scaling import ScalingError, scale_to_budget
from ..spec import NetworkSpec, SpecError, load_preset, preset_names
from .control import control_best, spent
from .data import DataSplit
from .errors import SearchError
from .jobs import Job, finished_record, job_results, open_job_study
from .names import JobRole
from .records import JobRecord, read_trial
from .score import TOP1, Metric
from .space import SearchSpace
from .stats import mean_difference, noise_ceiling, pooled_seed_std, rank_fidelity, seed_summary, separation
from .study import RunOptions, StudyAddress, StudyConfig, candidates, pareto_front
from .summary import (
    Baseline,
    Candidate,
    Ceiling,
    Compute,
    Confirm,
    Difference,
    Fidelity,
    Noise,
    Protocol,
    ProxyInfo,
    Sampled,
    ScoreInfo,
    Separation,
    Separations,
    Summary,
    TauRho,
    as_float,
)

__all__ = [
    "ConfirmError",
    "CONFIRM_SUFFIX",
    "CONFIRM_SEED_OFFSET",
    "baseline_spec",
    "check_options",
    "open_confirm_study",
    "confirm_seeds",
    "plan_jobs",
    "control_finished",
    "summarize",
]

CONFIRM_SUFFIX = ":confirm"
CONFIRM_SEED_OFFSET = 1000  # confirmation seeds: train.seed + 1000 + i, apart from every proxy seed


class ConfirmError(SearchError):
    """Confirmation options that cannot work (a budget no scaled preset meets, a CI asked of
    fewer than 2 seeds)."""


def baseline_spec(name: str, space: SearchSpace, num_classes: int, in_chans: int) -> NetworkSpec:
    """The preset ``name`` scaled to the space's FLOP budget (and its max params), with the
    space's fixed network fields (a searched one, such as ``stem_stride: [2, 4]``, keeps the
    preset's), so that it is counted exactly as the candidates are.

    Raises:
        ConfirmError: no scaled version of the preset meets the budget.
    """
    c = space.constraints
    network = {**space.fixed_network, "num_classes": num_classes, "in_chans": in_chans}
    try:
        return scale_to_budget(
            load_preset(name),
            c.flops[1] if c.flops else 10**18,
            c.image_size,
            min_flops=c.flops[0] if c.flops else None,
            max_params=c.max_params,
            network=network,
        )
    except (ScalingError, SpecError, ValidationError) as err:
        raise ConfirmError(f"--baseline {name}: {err}") from None


def check_options(options: RunOptions) -> None:
    """Raises ConfirmError for options no confirmation can honour (a CI from one seed)."""
    if (options.confirm_top or options.baselines) and options.confirm_seeds < 2:
        raise ConfirmError(
            f"--confirm-seeds {options.confirm_seeds}: a 95% confidence interval needs at least "
            f"2 seeds per candidate (use 2 or more, or --confirm-top 0 --baseline none)"
        )


def open_confirm_study(address: StudyAddress, score: Metric) -> optuna.Study:
    """The study ``NAME:confirm`` beside the search's at ``address``, holding the confirmation jobs."""
    return open_job_study(address.storage_url, address.study_name + CONFIRM_SUFFIX, address.heartbeat, score)


def confirm_seeds(config: StudyConfig, options: RunOptions) -> tuple[int, ...]:
    """The confirmation runs' seeds: ``train.seed + 1000 + i``, apart from every proxy seed."""
    return tuple(config.train.seed + CONFIRM_SEED_OFFSET + i for i in range(options.confirm_seeds))


def _random_pool(config: StudyConfig, count: int, num_classes: int, in_chans: int) -> list[NetworkSpec]:
    """``count`` distinct in-budget specs drawn uniformly from the space (fixed seed)."""
    return config.space.distinct_specs(
        count, config.train.seed + 7919, "random", num_classes=num_classes, in_chans=in_chans
    )


def _proxyas_float(config: StudyConfig, record: JobRecord, spec: dict) -> float | None:
    """The study's proxy score of a random spec's proxy job (params and FLOPs from the spec)."""
    if config.proxy.name in ("params", "flops"):
        report = cost_report(NetworkSpec.model_validate(spec), config.space.constraints.image_size)
        return float(report.params if config.proxy.name == "params" else report.flops)
    return config.proxy.of_trial(record)


def plan_jobs(
    study: optuna.Study,
    cstudy: optuna.Study,
    config: StudyConfig,
    options: RunOptions,
    num_classes: int,
    in_chans: int,
    control: optuna.Study | None = None,
) -> list[Job]:
    """Every job the finished search calls for, given what has finished so far (pure: the same
    state gives the same list). Jobs that wait on other results appear once those are done: the
    best of ``random:N`` after its specs' proxy jobs, the ``random:auto`` control's best once the
    control study (``control``) has spent the search's compute."""
    rank = config.proxy.rank_key
    ranked = sorted(candidates(study), key=lambda t: (rank(t.values[0]), read_trial(t).flops or 0, t.number))
    if len(config.directions) > 1:  # a two-objective study confirms its Pareto front first, best score first
        front = {t.number for t in pareto_front(study)}
        ranked.sort(key=lambda t: t.number not in front)
    jobs = _candidate_jobs(ranked, config, options)
    n_random = max(
        [int(b.split(":")[1]) for b in options.baselines if b.startswith("random:") and b != "random:auto"], default=0
    )
    n_fidelity = options.fidelity_sample if options.confirm_top else 0  # no confirmed set to add to
    pool = _random_pool(config, max(n_random, n_fidelity), num_classes, in_chans)
    proxy_jobs = [_random_proxy_job(spec, config) for spec in pool]
    jobs.extend(proxy_jobs)
    for spec in pool[:n_fidelity]:
        jobs.append(_confirm_job(config, options, JobRole.FIDELITY, spec.name, spec.model_dump(mode="json")))
    results = job_results(cstudy)
    for name in options.baselines:
        if name in preset_names():
            spec = baseline_spec(name, config.space, num_classes, in_chans)
            jobs.append(_confirm_job(config, options, JobRole.BASELINE, spec.name, spec.model_dump(mode="json")))
        elif name == "random:auto":
            jobs += _random_search_control_jobs(study, config, options, control)
        else:
            jobs += _best_of_random_jobs(name, config, options, pool, proxy_jobs, results)
    return jobs


def _confirm_job(
    config: StudyConfig,
    options: RunOptions,
    role: JobRole,
    label: str,
    spec: dict,
    trial: int | None = None,
    proxy: bool = False,
) -> Job:
    """A confirmation run of ``spec`` with the confirmation seeds: at the proxy's epochs with
    ``proxy`` (the noise measurement), else at the confirmation's."""
    return Job(
        role=role,
        label=label,
        spec=spec,
        seeds=confirm_seeds(config, options),
        trial=trial,
        proxy=proxy,
        epochs=config.train.epochs if proxy else options.epochs_to_confirm(config.train),
    )


def _candidate_jobs(ranked: list[FrozenTrial], config: StudyConfig, options: RunOptions) -> list[Job]:
    """The top ``confirm_top`` candidates' confirmations; with ``confirm_top`` 0 and one trained
    proxy seed, the best one retrained at the proxy recipe instead (the proxy score's seed noise)."""
    # A candidate's record (and the control's) always holds the spec it was drawn with.
    jobs = [
        _confirm_job(config, options, JobRole.CANDIDATE, f"trial {t.number}", cast(dict, read_trial(t).spec), t.number)
        for t in ranked[: options.confirm_top]
    ]
    if (
        not options.confirm_top
        and ranked
        and options.confirm_seeds > 1
        and config.proxy_seeds == 1
        and config.proxy.trains
    ):
        best = ranked[0]
        label, spec = f"trial {best.number}", cast(dict, read_trial(best).spec)
        jobs.append(_confirm_job(config, options, JobRole.NOISE, label, spec, best.number, proxy=True))
    return jobs


def _random_proxy_job(spec: NetworkSpec, config: StudyConfig) -> Job:
    """The proxy evaluation of a random in-budget spec (for ``random:N`` and the fidelity sample)."""
    return Job(
        role=JobRole.RANDOM,
        label=spec.name,
        spec=spec.model_dump(mode="json"),
        proxy=True,
        zero_cost=True,
        seeds=config.proxy_seed_list if config.proxy.trains else (),
        epochs=config.train.epochs,
    )


def _random_search_control_jobs(
    study: optuna.Study, config: StudyConfig, options: RunOptions, control: optuna.Study | None
) -> list[Job]:
    """``random:auto``: the control's best, once it has spent the search's compute ([] before)."""
    best = control_best(control, config) if control is not None and control_finished(control, study) else None
    if best is None:
        return []
    label = f"random search at equal compute: trial {best.number}"
    return [_confirm_job(config, options, JobRole.BASELINE, label, cast(dict, read_trial(best).spec))]


def _best_of_random_jobs(
    name: str,
    config: StudyConfig,
    options: RunOptions,
    pool: list[NetworkSpec],
    proxy_jobs: list[Job],
    results: dict[str, list[FrozenTrial]],
) -> list[Job]:
    """``random:N``: the best by proxy score of the first N random specs, once their proxy jobs
    have all finished ([] before)."""
    n = int(name.split(":")[1])
    records = [finished_record(results.get(job.key(config.train, config.dataset), [])) for job in proxy_jobs[:n]]
    if not all(r is not None for r in records):
        return []
    values = [_proxyas_float(config, cast(JobRecord, r), job.spec) for r, job in zip(records, proxy_jobs)]
    pick = min(range(n), key=lambda i: (config.proxy.rank_key(cast(float, values[i])), i))  # finished: scored
    label = f"best of {name}: {pool[pick].name}"
    return [_confirm_job(config, options, JobRole.BASELINE, label, pool[pick].model_dump(mode="json"))]


def control_finished(control: optuna.Study, study: optuna.Study) -> bool:
    """Has the random-search control spent the search's compute (and nothing of it still runs)?"""
    unfinished = control.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    return not unfinished and spent(control) >= spent(study)


# -- the evidence --------------------------------------------------------------------------------------
def summarize(
    study: optuna.Study,
    cstudy: optuna.Study,
    config: StudyConfig,
    options: RunOptions,
    data: DataSplit,
    control: optuna.Study | None = None,
) -> Summary | None:
    """The confirmation's evidence, ``summary.json`` (:class:`~.summary.Summary`, whose fields
    describe every entry); None before any job finished. Undefined statistics are NaN here and
    ``null`` in the file."""
    score = config.score
    jobs = plan_jobs(study, cstudy, config, options, data.num_classes, data.in_chans, control)
    results = job_results(cstudy)
    groups = _job_groups(jobs, results, config)
    if not any(g["scores"] for (role, _), g in groups.items() if role != JobRole.RANDOM):
        return None
    confirmed = _confirmed_candidates(groups, study, config)
    ranked = sorted(confirmed, key=lambda c: (score.rank_key(as_float(c.confirm.mean)), c.flops))
    best = ranked[0] if ranked else None
    baselines = _confirmed_baselines(groups, best, config)
    sampled = _confirmed_fidelity_sample(groups, config)
    others: list[Sampled | Baseline] = [*sampled, *baselines]
    return Summary(
        score=ScoreInfo(name=score.name, unit=score.unit, direction=score.direction),
        proxy=_proxy_info(config),
        candidates=confirmed,
        fidelity_sample=sampled,
        best=best,
        baselines=baselines,
        baseline=baselines[0] if baselines else None,
        difference=baselines[0].difference if baselines else None,
        leaders=_difference(ranked[0].confirm, ranked[1].confirm.scores) if len(ranked) > 1 else None,
        noise=_noise(groups, confirmed),
        separation=_separations([c.confirm for c in confirmed], [x.confirm for x in others]),
        separation_top1=_separations([c.confirm_top1 for c in confirmed], [x.confirm_top1 for x in others])
        if score.name != "top1"
        else None,
        fidelity=_fidelity(confirmed, sampled, config),
        compute=_compute(study, control),
        protocol=_protocol(config, options, data),
        pending=_pending(jobs, results, config),
    )


def _job_groups(
    jobs: list[Job], results: dict[str, list[FrozenTrial]], config: StudyConfig
) -> dict[tuple[JobRole, str], dict]:
    """The jobs by ``(role, label)``: each group's job, finished record, and the score and top-1
    of every run it has finished."""
    groups: dict[tuple[JobRole, str], dict] = {}
    for job in jobs:
        record = finished_record(results.get(job.key(config.train, config.dataset), []))
        entry = groups.setdefault((job.role, job.label), {"job": job, "scores": [], "top1": [], "record": record})
        for run in record.runs if record is not None else []:
            entry["scores"].append(config.score.of_run(run))
            entry["top1"].append(TOP1.of_run(run))
    return groups


def _described(g: dict, config: StudyConfig) -> dict:
    """A confirmed group's fields common to every confirmed entry: its spec, digest, cost, and
    confirmed scores (top-1 beside a ``loss`` score)."""
    spec = NetworkSpec.model_validate(g["job"].spec)
    report = cost_report(spec, config.space.constraints.image_size)
    return {
        "spec": g["job"].spec,
        "spec_digest": spec.digest(),
        "flops": report.flops,
        "params": report.params,
        "confirm": _confirm(g["scores"]),
        "confirm_top1": _confirm(g["top1"]) if config.score.name != "top1" else None,
    }


def _confirm(scores: list[float]) -> Confirm:
    return Confirm(**seed_summary(scores))


def _difference(a: Confirm, b: list[float]) -> Difference:
    """The confirmed scores ``a`` minus the scores ``b`` (:func:`~.stats.mean_difference`)."""
    return Difference(**mean_difference(a.scores, b))


def _confirmed_candidates(groups: dict, study: optuna.Study, config: StudyConfig) -> list[Candidate]:
    """The ``candidates`` entries: each confirmed candidate beside its proxy trial's scores."""
    trials = {t.number: t for t in candidates(study)}
    confirmed = []
    for (role, _), g in groups.items():
        if role == JobRole.CANDIDATE and g["scores"]:
            t = trials[g["job"].trial]
            proxy_record = read_trial(t)
            confirmed.append(
                Candidate(
                    trial=t.number,
                    proxy_top1=proxy_record.final("top1"),
                    proxy_score=t.values[0],
                    proxy_seeds=len(proxy_record.runs),
                    **_described(g, config),
                )
            )
    return confirmed


def _confirmed_baselines(groups: dict, best: Candidate | None, config: StudyConfig) -> list[Baseline]:
    """The ``baselines`` entries, each with the best candidate's difference from it."""
    return [
        Baseline(
            name=label,
            difference=_difference(best.confirm, g["scores"]) if best else None,
            **_described(g, config),
        )
        for (role, label), g in groups.items()
        if role == JobRole.BASELINE and g["scores"]
    ]


def _confirmed_fidelity_sample(groups: dict, config: StudyConfig) -> list[Sampled]:
    """The ``fidelity_sample`` entries: each confirmed random spec beside its proxy scores."""
    proxies = {
        g["job"].label: g for (role, _), g in groups.items() if role == JobRole.RANDOM and g["record"] is not None
    }
    sampled = []
    for (role, label), g in groups.items():
        if role == JobRole.FIDELITY and g["scores"]:
            p = proxies.get(label)
            sampled.append(
                Sampled(
                    label=label,
                    proxy_top1=p["record"].final("top1") if p else None,
                    proxy_score=_proxyas_float(config, p["record"], p["job"].spec) if p else None,
                    **_described(g, config),
                )
            )
    return sampled


def _fidelity(confirmed: list[Candidate], sampled: list[Sampled], config: StudyConfig) -> Fidelity:
    """Rank fidelity of the proxy score against the confirmed means, with the noise ceiling over
    the same specs."""
    fid = [(as_float(c.proxy_score), c.confirm) for c in confirmed]
    fid += [(x.proxy_score, x.confirm) for x in sampled if x.proxy_score is not None]
    # The rank correlation is oriented so that +1 means the proxy ranks as the confirmation does.
    sign = 1.0 if config.proxy.maximize == config.score.maximize else -1.0
    ranks = rank_fidelity([sign * p for p, _ in fid], [as_float(c.mean) for _, c in fid], seed=config.train.seed)
    ceiling = Ceiling(**noise_ceiling([c.scores for _, c in fid], seed=config.train.seed))
    tau, top = ranks["kendall_tau"], as_float(ceiling.kendall_tau)
    return Fidelity(
        kendall_tau=tau,
        spearman_rho=ranks["spearman_rho"],
        n=ranks["n"],
        ci95=TauRho(**ranks["ci95"]),
        ceiling=ceiling,
        fraction_of_ceiling=tau / top if top and math.isfinite(tau) and top > 0 else math.nan,
    )


def _proxy_info(config: StudyConfig) -> ProxyInfo:
    """The ``proxy`` entry: what the search ranked by."""
    proxy = config.proxy
    return ProxyInfo(
        name=proxy.name, label=proxy.label, direction=proxy.direction, seeds=config.proxy_seeds, race=config.race
    )


def _noise(groups: dict, confirmed: list[Candidate]) -> Noise:
    """The ``noise`` entry: pooled seed std, the spread of the candidates' means, and the proxy's
    own seed std where it was measured."""
    noise_groups = [g["scores"] for (role, _), g in groups.items() if role != JobRole.RANDOM and len(g["scores"]) > 1]
    means = [as_float(c.confirm.mean) for c in confirmed]
    return Noise(
        seed_std=pooled_seed_std(noise_groups),
        between_std=statistics.stdev(means) if len(means) > 1 else math.nan,
        proxy_seed_std=next(
            (
                statistics.stdev(g["scores"])
                for (role, _), g in groups.items()
                if role == JobRole.NOISE and len(g["scores"]) > 1
            ),
            None,
        ),
    )


def _separations(top: list[Confirm | None], others: list[Confirm | None]) -> Separations:
    """A ``separation`` entry (``separation_top1`` by top-1 in a ``loss`` study): over the top
    candidates' confirmed scores, and over every confirmed spec's (``others``: the fidelity sample
    and controls)."""
    first = [c.scores for c in top if c is not None]
    rest = [c.scores for c in others if c is not None]
    return Separations(candidates=Separation(**separation(first)), all=Separation(**separation(first + rest)))


def _protocol(config: StudyConfig, options: RunOptions, data: DataSplit) -> Protocol:
    """The ``protocol`` entry: the confirmation's seeds, epochs and split, beside the proxy's."""
    return Protocol(
        seeds=list(confirm_seeds(config, options)),
        epochs=options.epochs_to_confirm(config.train),
        split="test" if data.test is not None else "val",
        proxy_epochs=config.train.epochs,
        proxy_seeds=list(config.proxy_seed_list),
        confirm_top=options.confirm_top,
    )


def _compute(study: optuna.Study, control: optuna.Study | None) -> Compute:
    """The ``compute`` entry: the proxy training the search and the random control spent."""
    return Compute(
        search=spent(study),
        control=spent(control) if control is not None else None,
        unit="replica-epochs of proxy training",
    )


def _pending(jobs: list[Job], results: dict[str, list[FrozenTrial]], config: StudyConfig) -> int:
    """How many of ``jobs`` have not finished."""
    return sum(1 for j in jobs if finished_record(results.get(j.key(config.train, config.dataset), [])) is None)
