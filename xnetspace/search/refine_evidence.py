"""The statistics of ``xnetspace refine``: the evidence for one candidate constraint and the
verdict it earns (the constraints themselves: :mod:`.refine_constraints`; the greedy pass that
combines them: :mod:`.refine`).

**Evidence**, for the satisfying subset S of members M (the whole population, or the members
left by the constraints accepted before): the EDFs of S and M (plain and complexity-normalised,
:func:`~.analysis.complexity_weights`), the largest gap between them, the two-sample
Kolmogorov-Smirnov test of S against M minus S (``scipy.stats.ks_2samp``: disjoint samples), and
a percentile-bootstrap 95% CI (``scipy.stats.bootstrap``, members resampled, S and M together) of
mean(S) - mean(M), complexity-normalised: the mean over the FLOP bins that hold members of S of
each bin's mean, as pycls's normalised EDF weighs them (equal-width bins over the members' FLOPs,
5 or fewer so that S has at least 5 members per bin on average: :func:`bins_for`).

**Acceptance rule** (:func:`verdict`): a constraint is accepted when at least ``MIN_SUBSET``
members of M satisfy it and the 95% CI of the normalised mean(S) - mean(M) does not lie above 0
(the constrained subset is not detectably worse); rejected when the CI lies above 0; undecided
with fewer members. This is pycls's criterion (keep a constraint that simplifies the space
without a loss in the error EDF): a population of ~100 cannot show that a constraint helps, only
that it does not hurt.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from .analysis import MIN_RELIABLE, AnalysisError, complexity_weights, edf, edf_distance
from .analysis_schema import Evidence, Verdict

__all__ = ["evidence", "verdict", "bins_for", "MIN_SUBSET", "BINS", "PER_BIN"]

MIN_SUBSET = MIN_RELIABLE  # members that must satisfy a constraint before it can be accepted
BINS = 5  # FLOP bins of the complexity normalisation (analyze's default), at most
PER_BIN = 5  # satisfying members per bin on average, at least (bins_for)


def _plain_difference(e: np.ndarray, m: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (e * m).sum(axis) / m.sum(axis) - e.mean(axis)


def _normalized_difference(e: np.ndarray, m: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the FLOP bins holding members of S of (S's bin mean - M's bin mean), which is
    sum_i w_i e_i of :func:`complexity_weights` for S minus the same for M (``b``: bin indices)."""
    total_s: Any = 0.0  # floats until the first bin makes them arrays
    total_m: Any = 0.0
    shared: Any = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(int(np.max(b)) + 1):
            in_bin = b == j
            count_s = (m * in_bin).sum(axis)
            has = count_s > 0
            mean_s = np.where(has, (e * m * in_bin).sum(axis) / np.maximum(count_s, 1), 0.0)
            mean_m = np.where(has, (e * in_bin).sum(axis) / np.maximum(in_bin.sum(axis), 1), 0.0)
            total_s, total_m, shared = total_s + mean_s, total_m + mean_m, shared + has
        return (total_s - total_m) / shared


def _bins(flops: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each FLOP count among ``bins`` equal-width bins over their range (complexity_weights')."""
    low, high = float(flops.min()), float(flops.max())
    if high <= low:
        return np.zeros(len(flops), dtype=int)
    edges = np.linspace(low, high, bins + 1)
    return np.clip(np.searchsorted(edges, flops, side="right") - 1, 0, bins - 1)


def bins_for(satisfying: int) -> int:
    """FLOP bins for a subset of ``satisfying`` members: ``BINS``, fewer for small subsets (at
    least ``PER_BIN`` members of the subset per bin on average), since a bin holding one member
    weighs as much as a bin holding twenty."""
    return max(1, min(BINS, satisfying // PER_BIN))


def _ci(data: tuple, statistic: Callable, seed: int, n_resamples: int) -> list[float] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: a zero-width or NaN interval, handled below
        boot = stats.bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return [low, high] if math.isfinite(low) and math.isfinite(high) else None


def evidence(
    errors: npt.ArrayLike, flops: npt.ArrayLike, satisfied: npt.ArrayLike, seed: int = 0, n_resamples: int = 1999
) -> Evidence:
    """Compare the members that satisfy a constraint (S) with all of them (M).

    Args:
        errors: per member, the error (lower is better), in the study's score.
        flops: per member, FLOPs (fvcore's count: one multiply-add = one flop).
        satisfied: per member, whether it satisfies the constraint.

    Returns:
        An :class:`~.analysis_schema.Evidence`: ``members``, ``satisfying``, ``ks_statistic`` and
        ``ks_pvalue`` (S against M minus S; None when either has fewer than 2), ``edf_gap`` and
        ``edf_gap_normalized`` (sup |F_S - F_M|), ``mean_difference`` and its
        ``mean_difference_ci95`` (complexity-normalised when ``normalized``; over ``bins`` FLOP
        bins, :func:`bins_for`), ``mean_difference_plain`` and ``mean_difference_plain_ci95``.
        Values are None where S has fewer than 2 members or a CI is undefined.
    """
    e, f, m = np.asarray(errors, float), np.asarray(flops, float), np.asarray(satisfied, bool)
    if m.sum() < 2:
        return _no_evidence(int(e.size), int(m.sum()))
    ks_statistic = ks_pvalue = None
    if (~m).sum() >= 2:
        ks = stats.ks_2samp(e[m], e[~m])
        ks_statistic, ks_pvalue = float(ks.statistic), float(ks.pvalue)
    plain = float(e[m].mean() - e.mean())
    plain_ci = _ci((e, m.astype(float)), _plain_difference, seed, n_resamples)
    bins = bins_for(int(m.sum()))
    gap, difference, ci = _normalized(e, f, m, bins, seed, n_resamples)
    normalized = ci is not None
    return Evidence(
        members=int(e.size),
        satisfying=int(m.sum()),
        ks_statistic=ks_statistic,
        ks_pvalue=ks_pvalue,
        edf_gap=edf_distance(edf(e[m]), edf(e)),
        edf_gap_normalized=gap,
        mean_difference=difference if normalized else plain,
        mean_difference_ci95=ci if normalized else plain_ci,
        mean_difference_plain=plain,
        mean_difference_plain_ci95=plain_ci,
        normalized=normalized,
        bins=bins,
    )


def _no_evidence(members: int, satisfying: int) -> Evidence:
    """The evidence when fewer than 2 members satisfy the constraint: nothing to compare."""
    return Evidence(
        members=members,
        satisfying=satisfying,
        ks_statistic=None,
        ks_pvalue=None,
        edf_gap=None,
        edf_gap_normalized=None,
        mean_difference=None,
        mean_difference_ci95=None,
        mean_difference_plain=None,
        mean_difference_plain_ci95=None,
        normalized=False,
        bins=None,
    )


def _normalized(
    e: np.ndarray, f: np.ndarray, m: np.ndarray, bins: int, seed: int, n_resamples: int
) -> tuple[float | None, float | None, list[float] | None]:
    """The complexity-normalised EDF gap, mean difference and its CI over ``bins`` FLOP bins (all
    None when S and M share no bin)."""
    try:
        (ws, wm), _ = complexity_weights([f[m], f], bins=bins)
    except AnalysisError:
        return None, None, None
    ci = _ci((e, m.astype(float), _bins(f, bins)), _normalized_difference, seed, n_resamples)
    return edf_distance(edf(e[m], ws), edf(e, wm)), float(ws @ e[m] - wm @ e), ci


def verdict(test: Evidence) -> tuple[Verdict, str]:
    """The verdict the acceptance rule gives ``test``, and why (in words)."""
    if test.satisfying < MIN_SUBSET:
        return Verdict.UNDECIDED, (
            f"only {test.satisfying} of {test.members} members satisfy it (fewer than "
            f"{MIN_SUBSET}); test it on a fresh population of the refined space"
        )
    ci = test.mean_difference_ci95
    what = "complexity-normalised " if test.normalized else ""
    if ci is None:
        return Verdict.UNDECIDED, "no confidence interval could be computed"
    if ci[0] > 0:
        return Verdict.REJECTED, (
            f"worse: the 95% CI of the {what}mean difference [{ci[0]:+.4g}, {ci[1]:+.4g}] lies above 0"
        )
    return Verdict.ACCEPTED, (
        f"not worse: the 95% CI of the {what}mean difference [{ci[0]:+.4g}, {ci[1]:+.4g}] does not "
        f"lie above 0, {test.satisfying} of {test.members} members"
    )
