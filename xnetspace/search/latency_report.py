"""The latency study's answer (issue 33): its confirmed Pareto front beside the controls, each
network's latency measured once, after the search.

A ``top1-latency`` or ``loss-latency`` study ranks by the proxy score and the latency the space's
table predicts (or measures, without a table). Its confirmation retrains the front first
(:func:`~.confirmation.plan_jobs`); this module measures the inference form of every confirmed
front member, control (the budget-scaled TransXNet-T) and random in-budget spec of the fidelity
sample (:func:`xnetspace.latency.fastest_latencies`: the fastest of three rounds, on the table's
device and threads), and answers the question the study was for: the fastest confirmed network
whose score is not detectably worse than the scaled T's (Welch's t-test, one-sided at 5%).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import torch
from scipy import stats

from ..latency import fastest_latencies
from ..latency_table import read_table
from ..model import build_model
from ..spec import NetworkSpec
from .names import SecondObjective
from .plots import pyplot, save_figure
from .score import Metric
from .study import StudyConfig, pareto_front
from .summary import Baseline, Candidate, Sampled, Summary

__all__ = ["latency_front", "latency_lines", "plot_latency_front"]


def _rows(study: optuna.Study, summary: Summary) -> list[dict]:
    """The confirmed specs to place: the front's candidates, the controls, the random specs."""
    front = {t.number for t in pareto_front(study)}
    rows = [
        dict(role="front", label=f"trial {c.trial}", predicted_ms=_trial_latency(study, c.trial), **_kept(c))
        for c in summary.candidates
        if c.trial in front
    ]
    rows += [dict(role="baseline", label=b.name, **_kept(b)) for b in summary.baselines]
    rows += [dict(role="random", label=x.label, **_kept(x)) for x in summary.fidelity_sample]
    return [r for r in rows if r["spec"] is not None]


def _kept(entry: Candidate | Baseline | Sampled) -> dict:
    return dict(spec=entry.spec, flops=entry.flops, confirm=entry.confirm.model_dump())


def _trial_latency(study: optuna.Study, number: int) -> float:
    return study.trials[number].values[1]


def latency_front(
    study: optuna.Study, config: StudyConfig, summary: Summary | None, device: str = "cpu", rounds: int = 3
) -> dict | None:
    """The confirmed front, controls and random specs with their measured latency (ms), and the
    fastest front member not detectably worse than the first control; None for a study that is
    not a latency study or has no confirmed front member.

    ``pareto.json`` holds it: ``rows`` (``role``: front, baseline or random; ``label``; ``confirm``;
    ``predicted_ms`` for front members, from the study; ``measured_ms``), ``answer`` and the
    measurement's settings.
    """
    if config.second_objective != SecondObjective.LATENCY or summary is None:
        return None
    rows = _rows(study, summary)
    if not any(r["role"] == "front" for r in rows):
        return None
    c = config.space.constraints
    table = read_table(c.latency_table) if c.latency_table else None
    batch, threads = (table.batch_size, table.threads) if table else (c.latency_batch_size, torch.get_num_threads())
    device = table.device if table else device
    models = [
        (spec, build_model(spec).reparameterize()) for spec in (NetworkSpec.model_validate(r["spec"]) for r in rows)
    ]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for r, ms in zip(rows, fastest_latencies(models, batch, c.image_size, device, rounds=rounds)):
            r["measured_ms"] = ms
    finally:
        torch.set_num_threads(saved)
    return dict(
        device=table.device_name if table else device,
        batch_size=batch,
        threads=threads,
        rows=rows,
        answer=_answer(rows, config.score),
    )


def _answer(rows: list[dict], score: Metric) -> dict | None:
    """The fastest front member whose scores are not detectably worse than the first control's
    (Welch, one-sided, 5%), its latency against the control's and the random specs' median."""
    controls = [r for r in rows if r["role"] == "baseline"]
    if not controls:
        return None
    control = controls[0]
    worse = "less" if score.maximize else "greater"  # the alternative: the front member is worse
    fits = []
    for r in (r for r in rows if r["role"] == "front"):
        a, b = r["confirm"]["scores"], control["confirm"]["scores"]
        p = stats.ttest_ind(a, b, equal_var=False, alternative=worse).pvalue if len(a) > 1 and len(b) > 1 else 0.0
        if p >= 0.05:
            fits.append((r, float(p)))
    if not fits:
        return dict(control=control["label"], found=None)
    best, p = min(fits, key=lambda f: f[0]["measured_ms"])
    randoms = [r["measured_ms"] for r in rows if r["role"] == "random"]
    median = statistics.median(randoms) if randoms else None
    return dict(
        control=control["label"],
        found=best["label"],
        p_worse=p,
        speedup_vs_control=control["measured_ms"] / best["measured_ms"],
        speedup_vs_random_median=median / best["measured_ms"] if median else None,
    )


def latency_lines(front: dict, score: Metric) -> list[str]:
    """The report's lines: each row with its confirmed score and latency, then the answer."""
    lines = [f"latency (measured, {front['device']}, batch {front['batch_size']}, {front['threads']} thread(s)):"]
    for r in sorted(front["rows"], key=lambda r: (r["role"] != "front", r["measured_ms"])):
        c = r["confirm"]
        predicted = f", predicted {r['predicted_ms']:.2f}" if r.get("predicted_ms") is not None else ""
        lines.append(
            f"  {r['role']:8s} {r['label']:24s} {score.label} {score.format(c['mean'])} "
            f"[{score.format(c['ci95'][0])}, {score.format(c['ci95'][1])}]  {r['measured_ms']:.2f} ms{predicted}"
        )
    answer = front["answer"]
    if answer is None:
        lines.append("no control to compare with (--baseline)")
    elif answer["found"] is None:
        lines.append(f"every confirmed front member scores detectably worse than {answer['control']} (Welch, 5%)")
    else:
        versus = answer["speedup_vs_random_median"]
        lines.append(
            f"fastest front member not detectably worse than {answer['control']} (Welch p {answer['p_worse']:.2f}): "
            f"{answer['found']}, {answer['speedup_vs_control']:.2f}x as fast"
            + (f", {versus:.2f}x the random specs' median" if versus else "")
        )
    return lines


def plot_latency_front(front: dict, score: Metric, path: Path) -> Path:
    """Confirmed score against measured latency: the front, the controls, the random specs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"random": ("o", "grey", "random in-budget specs"), "front": ("o", "C3", "Pareto front (confirmed)")}
    styles["baseline"] = ("*", "k", "controls (scaled preset)")
    for role, (marker, color, label) in styles.items():
        rows = [r for r in front["rows"] if r["role"] == role]
        if rows:
            ax.errorbar(
                [r["measured_ms"] for r in rows],
                [r["confirm"]["mean"] for r in rows],
                yerr=[
                    [r["confirm"]["mean"] - r["confirm"]["ci95"][0] for r in rows],
                    [r["confirm"]["ci95"][1] - r["confirm"]["mean"] for r in rows],
                ],
                fmt=marker,
                color=color,
                label=label,
                markersize=8 if marker == "*" else 5,
                capsize=2,
            )
    ax.set(xlabel="measured latency (ms)", ylabel=f"confirmed {score.label} ({score.unit})", title="confirmed networks")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)
