"""Figures and files of a design-space analysis: ``analysis.json``, ``edf.png``, ``importance.png``,
``marginals.png`` (matplotlib, Agg), all drawn from the :class:`~.analysis_schema.AnalysisResult`
that :func:`.analysis.analyze` returns, in the score it names (cross-entropy in a ``loss`` study,
with the top-1 error EDF beside it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import output_folder
from ..strict_json import to_json
from .analysis_schema import AnalysisResult, ScoreInfo, StudySummary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_analysis", "axis_label", "ANALYSIS_FILES"]

ANALYSIS_FILES = ("analysis.json", "edf.png", "importance.png", "marginals.png")


def write_analysis(result: AnalysisResult, out: Path) -> dict[str, Path]:
    """Write ``analysis.json`` (``result`` without its unset fields) and the three figures into
    ``out`` (created if missing; checked by :func:`xnetspace.paths.output_folder`, which raises
    PathError).

    Returns:
        ``{"json": ..., "edf": ..., "importance": ..., "marginals": ...}``: the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = output_folder(out, "--out", ANALYSIS_FILES)
    files = {"json": out / "analysis.json"}
    files["json"].write_text(to_json(result.model_dump(exclude_unset=True), indent=2) + "\n")
    files["edf"] = _plot_edf(result, out / "edf.png")
    files["importance"] = _plot_importance(result, out / "importance.png")
    files["marginals"] = _plot_marginals(result, out / "marginals.png")
    return files


def _label(study: StudySummary, top1: bool = False, digits: int = 2) -> str:
    e = study.top1_error if top1 else study.error
    assert e is not None  # drawn only where the study has it
    return f"{study.name} (n={study.n}, best {e.min:.{digits}f}, mean {e.mean:.{digits}f})"


def axis_label(score: ScoreInfo) -> str:
    """The x-axis words of an EDF of ``score`` (the ``score`` object of analysis.json)."""
    return "validation cross-entropy (nats)" if score.name == "loss" else "error = 100 - top-1 (%)"


def _plot_edf(result: AnalysisResult, path: Path) -> Path:
    """EDFs in the analysis's score; in a cross-entropy analysis the top-1 error EDFs beside them."""
    import matplotlib.pyplot as plt

    beside = result.score.name == "loss" and any(s.edf_top1_error.error for s in result.studies)
    fig, axes = plt.subplots(1, 2 if beside else 1, figsize=(12 if beside else 7, 4.5), squeeze=False)
    _draw_score_edfs(axes[0][0], result)
    if beside:
        _draw_top1_edfs(axes[0][1], result)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_score_edfs(ax: Axes, result: AnalysisResult) -> None:
    """Each study's plain and complexity-normalised EDF in the analysis's score, the first
    comparison in the title."""
    score = result.score
    digits = 4 if score.name == "loss" else 2
    for i, study in enumerate(result.studies):
        color = f"C{i}"
        ax.step(
            study.edf.error,
            study.edf.fraction,
            where="post",
            color=color,
            label=_label(study, digits=digits),
        )
        if study.edf_normalized.error:
            ax.step(
                study.edf_normalized.error,
                study.edf_normalized.fraction,
                where="post",
                color=color,
                linestyle="--",
                alpha=0.7,
                label=f"{study.name}, complexity-normalised",
            )
    title = f"EDF of each study's candidates: {score.label}"
    c = result.comparison
    if c is not None and c.ks_statistic is not None and c.mean_difference_ci95 is not None:
        title += (
            f"\nKS {c.ks_statistic:.3f} (p = {c.ks_pvalue:.3g}); mean(A) - mean(B) 95% CI "
            f"[{c.mean_difference_ci95[0]:.{digits}f}, {c.mean_difference_ci95[1]:.{digits}f}]"
        )
    ax.set(xlabel=axis_label(score), ylabel="fraction of candidates with error <= e", ylim=(0, 1.02), title=title)
    _finish_edf_axes(ax)


def _draw_top1_edfs(ax: Axes, result: AnalysisResult) -> None:
    """Each study's top-1 error EDF (beside a cross-entropy analysis)."""
    for i, study in enumerate(result.studies):
        if study.edf_top1_error.error:
            ax.step(
                study.edf_top1_error.error,
                study.edf_top1_error.fraction,
                where="post",
                color=f"C{i}",
                label=_label(study, top1=True),
            )
    ax.set(
        xlabel="error = 100 - top-1 (%)",
        ylabel="fraction of candidates with error <= e",
        ylim=(0, 1.02),
        title="the same candidates' top-1 error (beside the score)",
    )
    _finish_edf_axes(ax)


def _finish_edf_axes(ax: Axes) -> None:
    """The EDF panels' common dress: a small title, a light grid, the legend at the lower right."""
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)


def _plot_importance(result: AnalysisResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    studies = result.studies
    knobs: list[str] = []
    for study in studies:  # the first study's order, then knobs only later studies have
        knobs += [k for k in study.importance if k not in knobs]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * max(1, len(knobs)) * max(1, len(studies)) ** 0.5))
    if not knobs:
        reasons = "; ".join(w for s in studies for w in s.warnings if "importance" in w) or "none computed"
        ax.text(0.5, 0.5, "no knob importance:\n" + reasons, ha="center", va="center", wrap=True, fontsize=8)
        ax.set_axis_off()
    else:
        height = 0.8 / len(studies)
        for i, study in enumerate(studies):
            ys = [k + (i - (len(studies) - 1) / 2) * height for k in range(len(knobs))]
            ax.barh(ys, [study.importance.get(k, 0.0) for k in knobs], height=height, color=f"C{i}", label=study.name)
        ax.set_yticks(range(len(knobs)), knobs, fontsize=7)
        ax.invert_yaxis()
        ax.set(
            xlabel=f"fANOVA importance (share of the variance of the {result.score.label})",
            title="knob importance (Optuna fANOVA)",
        )
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_marginals(result: AnalysisResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    studies = result.studies
    knobs = sorted({k for s in studies for k in s.marginals})
    cols = min(5, max(1, len(knobs)))
    rows = max(1, math.ceil(len(knobs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat[len(knobs) :]:
        ax.set_axis_off()
    for ax, knob in zip(axes.flat, knobs):
        levels: list = []
        for s in studies:
            levels += [r.value for r in s.marginals.get(knob, []) if r.value not in levels]
        for i, s in enumerate(studies):
            rows_ = s.marginals.get(knob, [])
            xs = [levels.index(r.value) + (i - (len(studies) - 1) / 2) * 0.12 for r in rows_]
            ys = [r.mean_error for r in rows_]
            err = [
                [(r.mean_error - r.ci95[0]) if r.ci95 else 0 for r in rows_],
                [(r.ci95[1] - r.mean_error) if r.ci95 else 0 for r in rows_],
            ]
            ax.errorbar(xs, ys, yerr=err, fmt="o", ms=3, capsize=2, color=f"C{i}", label=s.name)
        ax.set_xticks(range(len(levels)), [f"{v:g}" if isinstance(v, float) else str(v) for v in levels], fontsize=7)
        ax.set_title(knob, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    if knobs:
        unit = result.score.unit
        axes.flat[0].set_ylabel(f"mean {'cross-entropy' if unit == 'nats' else 'error'} ({unit}), 95% CI", fontsize=7)
        axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
