"""Study results on disk: ``summary.json``, ``best_spec.yaml``, ``trials.csv``, ``history.png``,
``fidelity.png``, ``pareto.png``, and the report printed at the end of a search.

With confirmation (the default), ``best_spec.yaml`` is the candidate with the best confirmed
mean, and the report says when it is not distinguishable from the runner-up or the baseline
(95% intervals that contain 0). Without it, the best trial by proxy score; either way among
completed, trained trials only, so it is always inside the budget (over-budget samples are never
trained). In a multi-objective study the proxy best is the Pareto-optimal trial with the highest
top-1 and ``trials.csv`` marks the front.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..cost import parse_image_size
from ..spec import NetworkSpec
from ..strict_json import to_json
from .latency_report import latency_front, latency_lines, plot_latency_front
from .names import SecondObjective
from .plots import pyplot, save_figure
from .progress import log
from .records import TrialRecord, read_trial
from .score import LOSS, PROXIES, TOP1, Metric
from .space import human_count
from .study import StudyConfig, candidates, pareto_front
from .summary import Candidate, Confirm, Difference, Sampled, Summary, as_float
from .zero_cost import ZERO_COST

__all__ = ["SearchOutcome", "write_results", "best_trial", "pareto_front", "RESULT_FILES"]

# What a search writes into its output folder (checked before it starts: xnetspace.paths.output_folder).
RESULT_FILES = (
    "study.db",
    "workers.log",
    "trials.csv",
    "history.png",
    "pareto.png",
    "pareto.json",
    "confirmed_latency.png",
    "summary.json",
    "fidelity.png",
    "best_spec.yaml",
)


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search produced."""

    study: optuna.Study
    best: FrozenTrial | None
    files: dict[str, Path] = field(default_factory=dict)
    summary: Summary | None = None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """Best proxy score: highest top-1, or lowest cross-entropy in a ``loss`` study (on the Pareto
    front for multi-objective studies); ties: fewer FLOPs."""
    pool = pareto_front(study) if len(study.directions) > 1 else candidates(study)
    sign = 1.0 if study.directions[0] == StudyDirection.MAXIMIZE else -1.0
    return max(pool, key=lambda t: (sign * t.values[0], -(read_trial(t).flops or 0)), default=None)


def write_results(
    study: optuna.Study,
    config: StudyConfig,
    summary: Summary | None,
    out: Path,
    study_name: str,
    show: bool = True,
    device: str = "cpu",
) -> SearchOutcome:
    """Write the result files into the folder ``out`` and print the report (when ``show``);
    ``summary`` is the confirmation's (:func:`xnetspace.search.confirmation.summarize`), None
    without one; ``device`` is where a latency study measures its front."""
    out = Path(out)
    files = {
        "trials": _write_trials_csv(study, out / "trials.csv", summary),
        "history": _plot_history(study, config.score, out / "history.png"),
    }
    if len(study.directions) > 1:
        files["pareto"] = _plot_pareto(study, config, out / "pareto.png")
    if summary is not None:
        files["summary"] = out / "summary.json"
        files["summary"].write_text(summary.model_dump_json(indent=2) + "\n")
        if summary.fidelity.n >= 3:
            files["fidelity"] = _plot_fidelity(summary, out / "fidelity.png")
    best = best_trial(study)
    confirmed = summary.best if summary else None
    if confirmed is not None:
        best = next(t for t in candidates(study) if t.number == confirmed.trial)
    score = config.score
    if best is not None:
        record = read_trial(best)
        spec = NetworkSpec.model_validate(record.spec)
        score_words = (
            f"confirmed {score.label} {_ci(confirmed.confirm, score)} over {confirmed.confirm.n} seeds"
            if confirmed
            else f"proxy {score.label} {score.format(best.values[0])} (one run)"
        )
        header = (
            f"# Best of study '{study_name}' (space {config.space.name}, dataset {config.dataset}): "
            f"trial {best.number}, {score_words},\n# {record.flops:,} FLOPs at "
            f"{'x'.join(map(str, parse_image_size(config.space.constraints.image_size)))}, "
            f"{record.params:,} params.\n"
        )
        files["best_spec"] = out / "best_spec.yaml"
        files["best_spec"].write_text(header + spec.to_yaml())
    for line in report_lines(summary, best, score):
        log(show, line)
    front = latency_front(study, config, summary, device)
    if front is not None:  # a latency study's answer: its confirmed front beside the controls, measured
        files["pareto_json"] = out / "pareto.json"
        files["pareto_json"].write_text(to_json(front, indent=2) + "\n")
        files["confirmed_latency"] = plot_latency_front(front, score, out / "confirmed_latency.png")
        for line in latency_lines(front, score):
            log(show, line)
    log(show, "results: " + ", ".join(str(p) for p in files.values()))
    return SearchOutcome(study, best, files, summary)


def report_lines(summary: Summary | None, best: FrozenTrial | None, score: Metric = TOP1) -> list[str]:
    """The end-of-search report: the winner with its interval, the noise, the baseline, the
    fidelity, and plain words where the differences are within noise. Scores are ``score``'s
    (top-1 in percent, or cross-entropy in nats)."""
    if summary is None or summary.best is None:
        return _proxy_report(summary, best, score)
    return [
        *_confirmation_header(summary, score),
        *_confirmed_rows(summary, score),
        *_separation_lines(summary, score),
        *_comparison_lines(summary, score),
        *_compute_lines(summary),
        *_fidelity_lines(summary),
    ]


def _proxy_report(summary: Summary | None, best: FrozenTrial | None, score: Metric) -> list[str]:
    """The report without a confirmed winner: the best by proxy score, with the proxy's seed noise
    where it was measured."""
    if best is None:
        return ["no completed candidate"]
    noise = summary.noise.proxy_seed_std if summary else None
    seeds = len(summary.protocol.seeds) if summary else 0
    record = read_trial(best)
    assert record.flops is not None and record.params is not None  # a candidate was counted before training
    runs = len(record.runs)
    return [
        f"best by proxy score: trial {best.number}, {human_count(record.flops)} FLOPs, "
        f"{human_count(record.params)} params, proxy {_num(best.values[0])} "
        f"({runs} seed{'s' if runs != 1 else ''}; "
        + (
            f"retrained with {seeds} other seeds its proxy {score.label} varies with std {score.format(noise)}: "
            f"differences of that size between candidates are noise)"
            if noise is not None
            else "confirm it with --confirm-top K)"
        )
    ]


def _confirmation_header(summary: Summary, score: Metric) -> list[str]:
    """What the confirmation ran and how it scores, and what did not finish or was missing."""
    p = summary.protocol
    lines = [
        f"confirmation: {len(summary.candidates)} candidates x {len(p.seeds)} seeds, {p.epochs} epochs, "
        f"scored by {score.label} ({score.unit}, {'higher' if score.maximize else 'lower'} is better) on the "
        f"{p.split} split" + (f" ({summary.pending} runs not finished)" if summary.pending else "")
    ]
    if len(summary.candidates) < p.confirm_top:
        lines.append(f"only {len(summary.candidates)} completed candidates to confirm (--confirm-top {p.confirm_top})")
    return lines


def _row(entry: Candidate | Sampled, score: Metric) -> str:
    """A confirmed spec's cost, proxy score and confirmed score, in aligned columns."""
    proxy = "-" if entry.proxy_score is None else _num(entry.proxy_score)
    top1 = f"  top-1 {entry.confirm_top1.mean:.2f}" if entry.confirm_top1 is not None else ""
    return (
        f"{human_count(entry.flops):>7s} FLOPs  {human_count(entry.params):>7s} params  "
        f"proxy {proxy:>7s}  confirmed {_ci(entry.confirm, score)}{top1}"
    )


def _confirmed_rows(summary: Summary, score: Metric) -> list[str]:
    """The confirmed candidates (best first), the winner, the seed noise, and the random specs of
    the fidelity sample."""
    fmt = score.format
    lines = [
        f"  trial {c.trial:4d}  " + _row(c, score)
        for c in sorted(summary.candidates, key=lambda c: score.rank_key(as_float(c.confirm.mean)))
    ]
    b, noise = summary.best, summary.noise
    assert b is not None  # report_lines reports a summary without a winner by proxy score
    lines.append(
        f"best: trial {b.trial}, {human_count(b.flops)} FLOPs, {human_count(b.params)} params, "
        f"{score.label} {_ci(b.confirm, score)}"
    )
    between = as_float(noise.between_std)
    spread = "" if math.isnan(between) else f"; spread of the candidates' means (std) {fmt(between)}"
    lines.append(f"seed noise (pooled std over seeds) {fmt(as_float(noise.seed_std))}{spread}")
    for x in sorted(summary.fidelity_sample, key=lambda x: score.rank_key(as_float(x.confirm.mean))):
        lines.append(f"  random {x.label:>10s}  " + _row(x, score))
    return lines


def _separation_lines(summary: Summary, score: Metric) -> list[str]:
    """Whether the top candidates, and all confirmed specs, differ beyond seed noise (by the
    study's score, and by top-1 in a ``loss`` study)."""
    lines = []
    for section, by, by_fmt in (
        (summary.separation, "", score.format),
        (summary.separation_top1, " by top-1", TOP1.format),
    ):
        if section is None:  # no top-1 section in a top-1 study
            continue
        for sep, words, over_all in (
            (section.candidates, "the top candidates", False),
            (section.all, "all confirmed specs", True),
        ):
            # "all" over no more specs than the candidates would repeat their line
            if sep.n >= 2 and not (over_all and sep.n == len(summary.candidates)):
                verdict = "they differ beyond seed noise" if sep.separated else "no difference beyond seed noise"
                between, alone, noise = (
                    by_fmt(as_float(v)) for v in (sep.between_std, sep.architecture_std, sep.seed_std)
                )
                lines.append(
                    f"{words} ({sep.n}){by}: spread of means {between} (architectures "
                    f"alone {alone}) against seed noise {noise}, "
                    f"one-way ANOVA F {sep.f:.2f}, p {sep.p:.3g}: {verdict}"
                )
    return lines


def _comparison_lines(summary: Summary, score: Metric) -> list[str]:
    """The winner against the runner-up and against each baseline, with plain verdicts."""
    lines = []
    leaders = summary.leaders
    if leaders is not None:
        verdict = "distinguishable" if leaders.distinguishable else "NOT distinguishable (within seed noise)"
        lines.append(f"best minus runner-up: {_diff(leaders, score)}: {verdict}")
    for base in summary.baselines:
        d = base.difference
        assert d is not None  # a summary with a winner has its difference from every baseline
        lines.append(
            f"baseline {base.name}: {human_count(base.flops)} FLOPs, {human_count(base.params)} params, "
            f"{score.label} {_ci(base.confirm, score)}"
        )
        verdict = (
            ("the winner is better" if score.improves(as_float(d.mean)) else "the baseline is better")
            if d.distinguishable
            else "not distinguishable"
        )
        lines.append(f"  winner minus it: {_diff(d, score)}: {verdict}")
    return lines


def _compute_lines(summary: Summary) -> list[str]:
    """The proxy training the search and the random control spent (with a control only)."""
    compute = summary.compute
    if compute.control is None:
        return []
    return [f"proxy training spent: search {compute.search}, random control {compute.control} replica-epochs"]


def _fidelity_lines(summary: Summary) -> list[str]:
    """The proxy's rank fidelity and the noise ceiling, over 3 specs or more."""
    f = summary.fidelity
    if f.n < 3 or math.isnan(as_float(f.kendall_tau)):
        return []
    ci = f.ci95
    lines = [
        f"proxy fidelity over {f.n} specs: Kendall tau {f.kendall_tau:.2f} "
        f"[{ci.kendall_tau[0]:.2f}, {ci.kendall_tau[1]:.2f}], Spearman rho "
        f"{f.spearman_rho:.2f} [{ci.spearman_rho[0]:.2f}, {ci.spearman_rho[1]:.2f}]"
    ]
    c = f.ceiling
    if c.kendall_tau is not None and math.isfinite(c.kendall_tau):
        lines.append(
            f"noise ceiling (Kendall tau between the means of two halves of the {c.seeds} confirmation "
            f"seeds, over the same {c.n} specs): {c.kendall_tau:.2f} [{c.ci95[0]:.2f}, "
            f"{c.ci95[1]:.2f}]; the proxy reaches {100 * as_float(f.fraction_of_ceiling):.0f}% of it"
        )
    return lines


def _num(value: float) -> str:
    """A proxy score in 4 significant digits (cross-entropy, top-1, log10 synflow, params alike)."""
    return f"{value:.4g}"


def _ci(c: Confirm, score: Metric = TOP1) -> str:
    fmt = score.format
    lo, hi = (as_float(v) for v in c.ci95)
    if c.n < 2:
        return f"{fmt(as_float(c.mean))} (1 seed)"
    return f"{fmt(as_float(c.mean))} +- {fmt(as_float(c.std))} (95% CI {fmt(lo)}-{fmt(hi)})"


def _diff(d: Difference, score: Metric = TOP1) -> str:
    unit = "points" if score.name == "top1" else score.unit
    sign = f"+.{score.digits}f"
    return f"{d.mean:{sign}} {unit} (95% CI {d.ci95[0]:{sign}} to {d.ci95[1]:{sign}})"


def _state(trial: FrozenTrial) -> str:
    return "REJECTED" if read_trial(trial).rejected else trial.state.name


def _write_trials_csv(study: optuna.Study, path: Path, summary: Summary | None = None) -> Path:
    """One row per trial (surplus ones left out): state, reason, the proxy score and how many seeds
    it is the mean of, the last epoch's validation top-1 and cross-entropy (means over seeds),
    TSE, zero-cost scores, FLOPs, params, one column per proxy seed (its validation cross-entropy
    and top-1), the confirmed mean/std/CI of confirmed candidates, and the knobs."""
    trials = [(t, read_trial(t)) for t in study.get_trials(deepcopy=False)]
    trials = [(t, r) for t, r in trials if not r.surplus]
    knobs = sorted({name for t, _ in trials for name in t.params})
    seeds = sorted({run.seed for _, r in trials for run in r.runs})
    front = {t.number for t in pareto_front(study)} if len(study.directions) > 1 else set()
    confirmed = {c.trial: c.confirm for c in summary.candidates} if summary else {}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_trials_csv_fields(seeds, knobs))
        writer.writeheader()
        for t, r in trials:
            writer.writerow(
                {
                    **_trial_columns(t, r, front),
                    **_confirm_columns(confirmed.get(t.number)),
                    **{k: t.params.get(k, "") for k in knobs},
                }
            )
    return path


def _trials_csv_fields(seeds: list[int], knobs: list[str]) -> list[str]:
    """The columns of ``trials.csv``, in order."""
    return [
        "number",
        "state",
        "reason",
        "top1",
        "loss",
        "proxy",
        "n_seeds",
        "tse",
        *ZERO_COST,
        "flops",
        "params",
        "latency_ms",
        "latency_source",
        "seconds",
        "epochs",
        "rejected_samples",
        "duplicate_of",
        "race",
        "pareto",
        "spec_digest",
        *[f"{kind}_seed{s}" for s in seeds for kind in ("loss", "top1")],
        "confirm_mean",
        "confirm_std",
        "confirm_ci95_lo",
        "confirm_ci95_hi",
        "confirm_n",
        *knobs,
    ]


def _trial_columns(t: FrozenTrial, r: TrialRecord, front: set[int]) -> dict:
    """A trial's own cells of ``trials.csv``: its state, scores, cost and per-seed scores."""
    top1, loss, tse = r.final("top1"), r.final("loss"), PROXIES["tse"].of_trial(r)
    return {
        "number": t.number,
        "state": _state(t),
        "reason": r.reason or "",
        "proxy": f"{t.values[0]:.6g}" if t.values else "",
        "n_seeds": len(r.runs) or "",
        "top1": f"{top1:.4f}" if top1 is not None else "",
        "loss": f"{loss:.6f}" if loss is not None else "",
        "tse": f"{tse:.6f}" if tse is not None else "",
        **{name: f"{r.zero_cost[name]:.6g}" if name in r.zero_cost else "" for name in ZERO_COST},
        "flops": _blank(r.flops),
        "params": _blank(r.params),
        "latency_ms": f"{r.latency_ms:.3f}" if r.latency_ms is not None else "",
        "latency_source": "" if r.latency_ms is None else "predicted" if r.latency_predicted else "measured",
        "seconds": _blank(r.seconds),
        "epochs": len(r.top1_history) or "",
        "rejected_samples": r.rejected_samples if r.spec else "",
        "duplicate_of": _blank(r.duplicate_of),
        "race": r.race or "",
        "pareto": int(t.number in front) if front else "",
        "spec_digest": r.spec_digest or "",
        **{
            f"{kind}_seed{run.seed}": f"{getattr(run, kind)[-1]:.6f}"
            for run in r.runs
            for kind in ("loss", "top1")
            if getattr(run, kind)
        },
    }


def _blank(value) -> object:
    """A CSV cell: empty for None."""
    return "" if value is None else value


def _confirm_columns(confirm: Confirm | None) -> dict:
    if confirm is None:
        return {"confirm_mean": "", "confirm_std": "", "confirm_ci95_lo": "", "confirm_ci95_hi": "", "confirm_n": ""}
    return {
        "confirm_mean": f"{confirm.mean:.4f}",
        "confirm_std": f"{confirm.std:.4f}",
        "confirm_ci95_lo": f"{confirm.ci95[0]:.4f}",
        "confirm_ci95_hi": f"{confirm.ci95[1]:.4f}",
        "confirm_n": confirm.n,
    }


def _plot_fidelity(summary: Summary, path: Path) -> Path:
    """Proxy score against confirmed mean (95% CI bars): the confirmed candidates (labelled by
    trial) and the random fidelity sample, the specs the rank correlation is computed over."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4.5))
    score = LOSS if summary.score.name == "loss" else TOP1
    sampled = [x for x in summary.fidelity_sample if x.proxy_score is not None]
    entries: list[Candidate] | list[Sampled]
    for entries, fmt, label in ((summary.candidates, "o", "confirmed candidates"), (sampled, "s", "random specs")):
        if not entries:
            continue
        means = [as_float(e.confirm.mean) for e in entries]
        ax.errorbar(
            [as_float(e.proxy_score) for e in entries],
            means,
            fmt=fmt,
            capsize=3,
            label=f"{label} (95% CI)",
            yerr=[
                [m - as_float(e.confirm.ci95[0]) for m, e in zip(means, entries)],
                [as_float(e.confirm.ci95[1]) - m for m, e in zip(means, entries)],
            ],
        )
    for c in summary.candidates:
        ax.annotate(
            str(c.trial),
            (as_float(c.proxy_score), as_float(c.confirm.mean)),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    f, p = summary.fidelity, summary.protocol
    ax.set(
        xlabel=f"proxy {score.label} ({score.unit}), one run",
        ylabel=f"confirmed {score.label} ({score.unit}), {p.split} split",
        title=f"proxy fidelity: Kendall tau {f.kendall_tau:.2f}, Spearman rho {f.spearman_rho:.2f} (n={f.n})",
    )
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def _plot_history(study: optuna.Study, score: Metric, path: Path) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in study.get_trials(deepcopy=False) if read_trial(t).runs and not read_trial(t).rejected]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    stopped = [(t.number, read_trial(t).final(score.name)) for t in done if t.state != TrialState.COMPLETE]
    ax.scatter([t.number for t in complete], [t.values[0] for t in complete], s=18, label="completed")
    ax.scatter(
        [n for n, _ in stopped],
        [v for _, v in stopped],
        marker="x",
        s=18,
        color="grey",
        label="pruned / failed (last epoch)",
    )
    best, xs, ys = None, [], []
    for t in sorted(complete, key=lambda t: t.number):
        best = t.values[0] if best is None else min(best, t.values[0], key=score.rank_key)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=f"validation {score.label} ({score.unit})", title=f"study '{study.study_name}'")
    ax.legend(loc="best")
    return save_figure(fig, path)


def _plot_pareto(study: optuna.Study, config, path: Path) -> Path:
    plt = pyplot()

    trials, front = candidates(study), sorted(pareto_front(study), key=lambda t: t.values[1])
    flops = config.second_objective == SecondObjective.FLOPS
    scale, unit = (1e6, "MFLOPs") if flops else (1.0, "latency (ms)")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([t.values[1] / scale for t in trials], [t.values[0] for t in trials], s=18, color="C0", label="trials")
    ax.plot([t.values[1] / scale for t in front], [t.values[0] for t in front], "o-", color="C3", label="Pareto front")
    score = config.proxy
    ax.set(xlabel=unit, ylabel=score.label, title=f"study '{study.study_name}': {score.label} vs {unit}")
    ax.legend(loc="best")
    return save_figure(fig, path)
