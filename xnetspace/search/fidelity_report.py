"""The fidelity study shown: its figure (``fidelity.png``: Kendall tau of each score with its 95%
interval beside the noise ceiling's band) and its lines on the terminal (``xnetspace fidelity``),
both from the analysis (:func:`~.fidelity_stats.analyze_runs`, ``fidelity.json``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .fidelity_schema import FidelityResult
from .plots import pyplot, save_figure

__all__ = ["plot_fidelity", "report_lines"]


def plot_fidelity(result: FidelityResult, path: Path) -> Path | None:
    """Kendall tau of each score (95% CI) against the noise ceiling's band."""
    scores = [s for s in result.scores if s.kendall_tau is not None and math.isfinite(s.kendall_tau)]
    if not scores:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(scores) + 1.5))
    y = np.arange(len(scores))
    taus = [_number(s.kendall_tau) for s in scores]  # finite: kept above
    lo = [t - _number(s.ci95.kendall_tau[0]) for t, s in zip(taus, scores)]
    hi = [_number(s.ci95.kendall_tau[1]) - t for t, s in zip(taus, scores)]
    ax.errorbar(taus, y, xerr=[lo, hi], fmt="o", capsize=3)
    c = result.ceiling
    if c.kendall_tau is not None and math.isfinite(c.kendall_tau):
        ax.axvspan(_number(c.ci95[0]), _number(c.ci95[1]), color="C2", alpha=0.2, label="noise ceiling (95% CI)")
        ax.axvline(c.kendall_tau, color="C2")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_yticks(y, [s.name for s in scores], fontsize=8)
    ax.set(
        xlabel=f"Kendall tau against the {result.target}",
        title=f"fidelity over {result.n_specs} specs x {result.seeds} seeds",
    )
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _number(value: float | None) -> float:
    """A statistic as a float (NaN where it is undefined: None, as read back from a file)."""
    return math.nan if value is None else value


def report_lines(result: FidelityResult, out: Path | None = None) -> list[str]:
    """The fidelity study in words (``xnetspace fidelity``): the noise ceiling, each score's rank
    correlations with their 95% intervals, racing replayed, and the files in ``out`` when given."""

    def ci(value: float | None, interval: list[float | None]) -> str:
        if value is None or value != value:
            return "n/a"
        return f"{value:.2f} [{_number(interval[0]):.2f}, {_number(interval[1]):.2f}]"

    c = result.ceiling
    lines = [
        f"{result.n_specs} specs x {result.seeds} seeds; target: {result.target}; noise ceiling "
        f"(Kendall tau, half the seeds against the other half): {ci(c.kendall_tau, c.ci95)}"
    ]
    for s in result.scores:
        lines.append(
            f"  {s.name:>18s}  tau {ci(s.kendall_tau, s.ci95.kendall_tau)}  rho "
            f"{ci(s.spearman_rho, s.ci95.spearman_rho)}  precision@5 {_number(s.precision_at_5):.2f}"
        )
    for r in result.racing:
        lines.append(
            f"  racing z={r.z:g}: {100 * r.fraction_of_runs:.0f}% of the runs, tau {_number(r.kendall_tau):.2f}, "
            f"the best spec kept all its seeds {100 * r.best_kept_all_seeds:.0f}% of the time"
        )
    if out is not None:
        lines.append(f"files: {out / 'runs.csv'}, {out / 'fidelity.json'}, {out / 'fidelity.png'}")
    return lines
