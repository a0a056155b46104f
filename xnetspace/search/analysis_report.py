"""A design-space analysis in words (``xnetspace analyze``): the lines :func:`report_lines` makes
of an :class:`~.analysis_schema.AnalysisResult`."""

from __future__ import annotations

from pathlib import Path

from .analysis_schema import AnalysisResult, Comparison, StudySummary

__all__ = ["report_lines"]


def report_lines(result: AnalysisResult, files: dict[str, Path] | None = None) -> list[str]:
    """:func:`~.analysis.analyze`'s result in words (``xnetspace analyze``): the score, each study's
    errors, most important knobs and warnings, each comparison, and the files written when given."""
    score = result.score
    d = 4 if score.unit == "nats" else 2  # decimals of the score
    lines = [
        f"score: {score.label} ({score.unit}, lower is better)" + (f"; {score.note}" if score.note is not None else "")
    ]
    for s in result.studies:
        lines += _study_lines(s, d, score.unit)
    comparisons = result.comparisons or ([result.comparison] if result.comparison is not None else [])
    for c in comparisons:
        lines += _comparison_lines(c, d)
    if files is not None:
        lines.append("files: " + ", ".join(str(p) for p in files.values()))
    return lines


def _study_lines(s: StudySummary, d: int, unit: str) -> list[str]:
    """One study's line (``d`` decimals of errors in ``unit``) and its warnings."""
    e = s.error
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(s.importance.items())[:3]) or "none"
    line = (
        f"{s.name} ({s.space}, {s.dataset}, sampler {s.sampler}): {s.n} candidates, "
        f"{s.rejected} samples rejected; error best {e.min:.{d}f} / median {e.median:.{d}f} / "
        f"mean {e.mean:.{d}f} {unit}; most important (fANOVA): {top}"
    )
    return [line] + [f"  warning: {note}" for note in s.warnings]


def _comparison_lines(c: Comparison, d: int) -> list[str]:
    """One comparison's line (when it was made) and its warnings."""
    lines = []
    if c.ks_statistic is not None and c.mean_difference_ci95 is not None and c.best_difference_ci95 is not None:
        lo, hi = c.mean_difference_ci95
        blo, bhi = c.best_difference_ci95
        lines.append(
            f"{c.a} vs {c.b}: KS {c.ks_statistic:.3f} (p = {c.ks_pvalue:.3g}); mean error "
            f"difference {c.mean_difference:+.{d}f} [95% CI {lo:+.{d}f}, {hi:+.{d}f}], best "
            f"{c.best_difference:+.{d}f} [{blo:+.{d}f}, {bhi:+.{d}f}]: {c.verdict}"
        )
    return lines + [f"  warning: {note}" for note in c.warnings]
