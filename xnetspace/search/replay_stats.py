"""What the replays say: regret with intervals, hits of the table's top, each sampler paired with
random search, the default study against its control; the figure; the words.

Per sampler and budget (:func:`summarize`): the mean and the median regret with 95% bootstrap
intervals (``scipy.stats.bootstrap``, percentile method, over repeats), the probability of
choosing a spec of the table's top 1% and of its 5 best (Wilson intervals,
``scipy.stats.binomtest``), and the sampler paired with random search repeat by repeat (the
same proxy seed in both): the mean difference of final regret with a bootstrap interval, the
Wilcoxon signed-rank p (``scipy.stats.wilcoxon``) and how often it did better, the same or worse.
The default study (``protocol``) is also paired with random search at equal compute (random
search's pick once it has spent the replica-epochs the study was charged), and its winner
compared with its own random control.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from .plots import pyplot, save_figure
from .replay_search import Oracle, ReplayConfig, Trace, regret_of

__all__ = ["summarize", "plot_replay", "report_lines", "bootstrap_ci", "proportion"]

_RESAMPLES = 2000


def bootstrap_ci(values: np.ndarray, statistic, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of ``statistic`` (a numpy reduction taking ``axis``)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        value = float(statistic(x)) if len(x) else math.nan
        return [value, value]
    result = scipy_stats.bootstrap(
        (x,), statistic, n_resamples=_RESAMPLES, method="percentile", vectorized=True, rng=np.random.default_rng(seed)
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def proportion(hits: np.ndarray) -> dict:
    """``{p, ci95}``: the fraction of True in ``hits`` with its Wilson 95% interval."""
    hits = np.asarray(hits, dtype=bool)
    if not len(hits):
        return {"p": math.nan, "ci95": [math.nan, math.nan]}
    ci = scipy_stats.binomtest(int(hits.sum()), len(hits)).proportion_ci(method="wilson")
    return {"p": float(hits.mean()), "ci95": [float(ci.low), float(ci.high)]}


def paired(mine: np.ndarray, theirs: np.ndarray, seed: int = 0) -> dict:
    """``mine - theirs`` repeat by repeat (over the repeats both have): ``{mean_difference, ci95,
    wilcoxon_p, better, ties, worse, n}`` (better: lower regret)."""
    n = min(len(mine), len(theirs))
    d = np.asarray(mine[:n], dtype=float) - np.asarray(theirs[:n], dtype=float)
    p = float(scipy_stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {
        "mean_difference": float(d.mean()),
        "ci95": bootstrap_ci(d, np.mean, seed),
        "wilcoxon_p": p,
        "better": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
        "worse": int((d > 0).sum()),
        "n": n,
    }


def _row(oracle: Oracle, name: str, budget: int, result: dict, seed: int) -> dict:
    """One sampler at one budget."""
    regret, chosen = result["regret"][budget], result["chosen"][budget]
    rank = np.empty(len(oracle.regret), dtype=int)
    rank[np.argsort(oracle.regret, kind="stable")] = np.arange(len(oracle.regret))
    top = max(1, math.ceil(0.01 * len(rank)))
    rank_of = np.array([rank[c] if c >= 0 else len(rank) for c in chosen])
    epochs = np.asarray(result["epochs"][budget], dtype=float)
    return {
        "sampler": name,
        "budget": budget,
        "repeats": len(regret),
        "mean_regret": float(regret.mean()),
        "mean_ci95": bootstrap_ci(regret, np.mean, seed),
        "median_regret": float(np.median(regret)),
        "median_ci95": bootstrap_ci(regret, np.median, seed),
        "top1pct": {"specs": top, **proportion(rank_of < top)},
        "top5": proportion(rank_of < 5),
        "epochs": float(epochs.mean()),
        "evaluations": float(epochs.mean() / oracle.epochs),
        "ended_early": float(np.mean(result["ended_early"][budget])) if "ended_early" in result else 0.0,
    }


def equal_compute(oracle: Oracle, traces: list[Trace], epochs: np.ndarray) -> np.ndarray:
    """Regret of random search in each repeat once it had spent ``epochs[r]`` replica-epochs
    (its last pick when it never did)."""
    picks = []
    for trace, target in zip(traces, epochs):
        n = next((i + 1 for i, spent in enumerate(trace.epochs) if spent >= target), len(trace.epochs))
        picks.append(trace.chosen_at(n))
    return regret_of(oracle, np.array(picks))


def summarize(oracle: Oracle, config: ReplayConfig, results: dict[str, dict], unavailable: dict[str, str]) -> dict:
    """``replay.json``: the table (``specs``, ``seeds``, ``epochs``, ``best``, ``reference``), the
    ``config``, ``unavailable`` samplers with the reason, ``seconds`` each sampler's replay took,
    and ``rows``, one per sampler and budget (:func:`_row`; ``vs_random``: :func:`paired` with
    random search; for ``protocol`` also ``vs_random_equal_compute`` and ``beats_control``)."""
    bench, seed = oracle.bench, config.seed
    best = int(np.argmin(oracle.regret))
    rows = []
    for name, result in results.items():
        for b in config.budgets:
            row = _row(oracle, name, b, result, seed)
            if name != "random" and "random" in results:
                row["vs_random"] = paired(result["regret"][b], results["random"]["regret"][b], seed)
            if name == "protocol":
                row |= _protocol_row(oracle, b, result, results.get("random"), seed)
            rows.append(row)
    return {
        "table": str(bench.folder),
        "space": oracle.space.name,
        "dataset": bench.meta["dataset"],
        "score": {"search": f"val_{config.score}", "outcome": f"test_{config.score}, mean over the table's seeds"},
        "specs": len(oracle.regret),
        "seeds": int(oracle.val.shape[1]),
        "epochs": oracle.epochs,
        "best": {"index": bench.specs()[best].index, "name": bench.specs()[best].name, "outcome": oracle.outcome[best]},
        "reference": _reference(oracle, config),
        "config": config.model_dump(mode="json"),
        "unavailable": unavailable,
        "seconds": {name: round(result["replay_seconds"], 1) for name, result in results.items()},
        "rows": rows,
    }


def _protocol_row(oracle: Oracle, budget: int, result: dict, random: dict | None, seed: int) -> dict:
    out: dict[str, Any] = {
        "beats_control": {
            key.removeprefix("beats_"): proportion(result[key][budget])
            for key in ("beats_confirmed", "beats_distinguishable", "beats_true")
        },
        "control_mean_regret": float(result["control_regret"][budget].mean()),
        "seconds_charged": float(np.mean(result["seconds"][budget])),
    }
    if random is not None:
        fair = equal_compute(oracle, random["traces"], result["epochs"][budget])
        out["vs_random_equal_compute"] = paired(result["regret"][budget], fair, seed)
    return out


def _reference(oracle: Oracle, config: ReplayConfig) -> dict | None:
    ref = oracle.bench.reference
    if ref is None:
        return None
    value = ref.mean(f"test_{config.score}")
    best = float(oracle.outcome[np.argmin(oracle.regret)])
    return {"name": ref.name, "outcome": value, "regret": (best - value) if oracle.maximize else (value - best)}


def plot_replay(oracle: Oracle, config: ReplayConfig, results: dict[str, dict], path: Path) -> Path:
    """Regret against evaluations: per sampler the median and the quartile band over repeats; the
    default study as points at the evaluations it was charged (median, quartile bars)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, result) in enumerate(results.items()):
        color = f"C{i}"
        if result.get("curve") is not None:
            curve = result["curve"]
            x = np.arange(1, curve.shape[1] + 1)
            q1, med, q3 = np.percentile(curve, [25, 50, 75], axis=0)
            width = max(1.0, 3.0 - 0.4 * i)  # samplers that coincide (a common random start) stay visible
            ax.plot(x, med, color=color, lw=width, label=f"{name} ({curve.shape[0]} repeats)")
            ax.fill_between(x, q1, q3, color=color, alpha=0.15)
            continue
        for b in config.budgets:
            at = float(np.median(result["epochs"][b])) / oracle.epochs
            q1, med, q3 = np.percentile(result["regret"][b], [25, 50, 75])
            ax.errorbar([at], [med], yerr=[[med - q1], [q3 - med]], fmt="s", color=color, capsize=3)
        ax.plot([], [], "s", color=color, label=f"{name}: the default study (charged evaluations)")
    unit = "nats" if config.score == "loss" else "top-1 points"
    ax.set(
        xlabel="evaluations (proxy runs)",
        ylabel=f"regret ({unit}, mean test over seeds)",
        title=f"{oracle.space.name}: {len(oracle.regret)} specs",
    )
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def report_lines(summary: dict, out: Path | None = None) -> list[str]:
    """The replay in words (``xnetspace replay``): one line per sampler and budget, then the
    default study against its control, the samplers left out and the files."""

    def ci(value: float, interval: list) -> str:
        return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"

    best = summary["best"]
    lines = [
        f"{summary['space']} on {summary['dataset']}: {summary['specs']} specs x {summary['seeds']} seeds; regret: "
        f"{summary['score']['outcome']} against the best spec ({best['name']}, {best['outcome']:.4f})",
        "  sampler          budget  repeats  mean regret [95% CI]        median [95% CI]             P(top 1%)  "
        "P(top 5)  vs random: difference [95% CI], Wilcoxon p",
    ]
    for r in summary["rows"]:
        vs = r.get("vs_random")
        versus = f"{ci(vs['mean_difference'], vs['ci95'])}, p {vs['wilcoxon_p']:.3g}" if vs else ""
        mean, median = ci(r["mean_regret"], r["mean_ci95"]), ci(r["median_regret"], r["median_ci95"])
        lines.append(
            f"  {r['sampler']:<16s} {r['budget']:>6d} {r['repeats']:>8d}  {mean:<27s} {median:<27s} "
            f"{r['top1pct']['p']:>9.2f} {r['top5']['p']:>9.2f}  {versus}"
        )
    for r in (r for r in summary["rows"] if r["sampler"] == "protocol"):
        beats, fair = r["beats_control"], r.get("vs_random_equal_compute")
        lines.append(
            f"  protocol, {r['budget']} trials: charged {r['evaluations']:.0f} evaluations; its winner beats its "
            f"random control {100 * beats['confirmed']['p']:.0f}% of the time by confirmed mean "
            f"({100 * beats['distinguishable']['p']:.0f}% distinguishably), {100 * beats['true']['p']:.0f}% by the "
            f"table's mean"
            + (f"; vs random search at equal compute {ci(fair['mean_difference'], fair['ci95'])}" if fair else "")
        )
    if summary["reference"] is not None:
        ref = summary["reference"]
        lines.append(f"  reference {ref['name']}: {ref['outcome']:.4f}, regret {ref['regret']:.4f}")
    for r in (r for r in summary["rows"] if r["ended_early"]):
        lines.append(
            f"  {r['sampler']}, {r['budget']} evaluations: {100 * r['ended_early']:.0f}% of the searches ended early, "
            f"stuck on rejected (over-budget or invalid) samples; their regret is that of their last pick"
        )
    for name, why in summary["unavailable"].items():
        lines.append(f"  {name}: not replayed: {why}")
    if out is not None:
        lines.append(f"files: {out / 'replay.json'}, {out / 'replay.csv'}, {out / 'replay.png'}")
    return lines
