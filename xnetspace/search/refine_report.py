"""``refine.json`` in words: what ``xnetspace refine`` prints (:func:`report_lines`)."""

from __future__ import annotations

from pathlib import Path

from .analysis_schema import RefineResult, RefineStep

__all__ = ["report_lines"]


def report_lines(result: RefineResult, files: dict[str, Path] | None = None) -> list[str]:
    """``refine.json`` in words (``xnetspace refine``): each tested constraint with its verdict, the
    members that satisfy it and why, the knobs before and after, the --verify comparison when
    there is one, the notes, and the files written when given."""
    score = result.score
    lines = [f"{result.study} ({result.space}): {result.members} members, {score.label} ({score.unit})"]
    lines += [_step_line(step) for step in sorted(result.steps, key=_greedy_order)]
    lines.append(
        f"accepted {len(result.accepted)}; knobs {len(result.knobs_before)} -> "
        f"{len(result.knobs_after)}; members satisfying all accepted: {result.members_left}"
    )
    if result.verify is not None:
        c = result.verify.comparison
        if c.mean_difference_ci95:
            lo, hi = c.mean_difference_ci95
            lines.append(
                f"verify: {result.verify.members} fresh members; refined minus original mean "
                f"{c.mean_difference:+.4g} [95% CI {lo:+.4g}, {hi:+.4g}], KS {c.ks_statistic:.3f} "
                f"(p = {c.ks_pvalue:.3g}): {c.verdict}"
            )
    lines += [f"  note: {note}" for note in result.warnings]
    if files is not None:
        lines.append("files: " + ", ".join(str(p) for p in files.values()))
    return lines


def _greedy_order(step: RefineStep) -> tuple[bool, int]:
    """The steps of the greedy pass in their order, then the others as they were tested."""
    return step.order is None, step.order or 0


def _step_line(step: RefineStep) -> str:
    test = step.test or step.first_test
    where = f"{test.satisfying}/{test.members}" if test else "-"
    return f"  {step.verdict:<14} {where:>8}  {step.description}: {step.reason}"
