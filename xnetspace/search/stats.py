"""Scores as measurements with an error: seed statistics, differences, and rank fidelity.

Every function takes plain lists of scores (top-1 in percent) and returns plain dicts that go
into ``summary.json`` as they are. Intervals are two-sided 95%:

- one candidate over seeds: Student's t interval of the mean, ``mean +- t(0.975, n-1) s/sqrt(n)``;
- a difference of two means: Welch's t interval (unequal variances, Welch-Satterthwaite degrees
  of freedom), the usual comparison of two independently seeded trainings;
- whether specs differ at all beyond seed noise: one-way ANOVA over their seed groups
  (``scipy.stats.f_oneway``), with the spread of their means beside the pooled seed noise;
- rank fidelity of a proxy: Kendall tau-b and Spearman rho (``scipy.stats``), with a paired
  percentile bootstrap interval over candidates (2,000 resamples; resamples with no ranking,
  all scores tied, are dropped).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "seed_summary",
    "mean_difference",
    "pooled_seed_std",
    "separation",
    "rank_fidelity",
    "noise_ceiling",
    "precision_at_k",
]


def seed_summary(scores: Sequence[float]) -> dict:
    """``{mean, std, ci95: [lo, hi], n, scores}`` of one spec's scores over seeds.

    ``std`` is the sample standard deviation (n - 1); ``ci95`` is the t interval of the mean,
    ``[nan, nan]`` with fewer than 2 scores (no interval can be given from one run).
    """
    x = np.asarray(scores, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and std > 0:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
    elif n > 1:
        lo = hi = mean
    else:
        lo = hi = math.nan
    return {"mean": mean, "std": std, "ci95": [float(lo), float(hi)], "n": n, "scores": [float(v) for v in x]}


def mean_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of ``a`` minus mean of ``b`` with Welch's 95% t interval.

    Returns ``{mean, ci95: [lo, hi], distinguishable}``; ``distinguishable`` is False when the
    interval contains 0 (and when either side has fewer than 2 scores: no interval).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return {"mean": diff, "ci95": [math.nan, math.nan], "distinguishable": False}
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return {"mean": diff, "ci95": [diff, diff], "distinguishable": diff != 0}
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    lo, hi = stats.t.interval(0.95, dof, loc=diff, scale=se)
    return {"mean": diff, "ci95": [float(lo), float(hi)], "distinguishable": bool(lo > 0 or hi < 0)}


def pooled_seed_std(groups: Sequence[Sequence[float]]) -> float:
    """Seed noise: the pooled within-spec standard deviation, ``sqrt(sum (n_i - 1) s_i^2 /
    sum (n_i - 1))`` over the specs with 2 or more scores (nan if none)."""
    num = sum((len(g) - 1) * np.var(g, ddof=1) for g in groups if len(g) > 1)
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    return float(math.sqrt(num / dof)) if dof else math.nan


def separation(groups: Sequence[Sequence[float]]) -> dict:
    """Do these specs' scores differ by more than seed noise? One group of scores (over seeds) per spec.

    Returns ``{n, between_std, seed_std, architecture_std, f, p, separated}``: the number of specs,
    the std of their means, the pooled seed std (:func:`pooled_seed_std`), the std of the specs'
    expected scores once the seed noise in their means is taken out (the random-effects ANOVA
    estimate ``sqrt(max(0, between_std^2 - seed_std^2 / n_seeds))``, ``n_seeds`` the mean group
    size: how far architectures really differ, to compare with the seed noise of one run), the
    one-way ANOVA F statistic and its p value (``scipy.stats.f_oneway``: H0, every spec has the
    same expected score), and ``separated`` = p < 0.05. F and p are nan (and ``separated`` False)
    with fewer than 2 specs of 2+ scores; p is 0 when the seed groups have no spread at all but their means differ.
    """
    groups = [list(g) for g in groups if len(g) > 1]
    means = [float(np.mean(g)) for g in groups]
    out = {
        "n": len(groups),
        "between_std": float(np.std(means, ddof=1)) if len(means) > 1 else math.nan,
        "seed_std": pooled_seed_std(groups),
        "architecture_std": math.nan,
        "f": math.nan,
        "p": math.nan,
        "separated": False,
    }
    if len(groups) < 2:
        return out
    n_seeds = float(np.mean([len(g) for g in groups]))
    out["architecture_std"] = math.sqrt(max(0.0, out["between_std"] ** 2 - out["seed_std"] ** 2 / n_seeds))
    if out["seed_std"] == 0:  # f_oneway divides by the within-group variance
        differ = np.ptp(means) > 0
        out.update(f=math.inf if differ else math.nan, p=0.0 if differ else 1.0, separated=bool(differ))
        return out
    result = stats.f_oneway(*groups)
    out.update(f=float(result.statistic), p=float(result.pvalue), separated=bool(result.pvalue < 0.05))
    return out


def blocked_separation(scores: Sequence[Sequence[float]]) -> dict:
    """:func:`separation` with the seed as a block: ``scores[i][j]`` is spec i's score with seed j,
    every spec trained with the same seeds. A seed fixes the batch order and the augmentations of
    every spec alike, so it shifts all of them together (docs/findings.md); the randomised
    complete block design's two-way ANOVA without interaction (Montgomery, *Design and Analysis of
    Experiments*, ch. 4) takes that shared shift out of the noise the specs are compared against.

    Returns ``{n, seeds, residual_std, f, p, seed_f, seed_p}``: the residual std (the seed noise a
    comparison between two specs sees), the specs' F and p (H0: every spec has the same expected
    score) and the seeds' F and p (H0: no shared seed shift). nan with fewer than 2 specs or seeds.

    Raises:
        ValueError: specs scored with different numbers of seeds.
    """
    if len({len(row) for row in scores}) > 1:
        raise ValueError(
            f"blocked_separation needs every spec scored with the same seeds, got {[len(r) for r in scores]}"
        )
    x = np.asarray(scores, dtype=float).reshape(len(scores), -1)
    n, k = x.shape
    out = {
        "n": n,
        "seeds": k,
        "residual_std": math.nan,
        "f": math.nan,
        "p": math.nan,
        "seed_f": math.nan,
        "seed_p": math.nan,
    }
    if n < 2 or k < 2:
        return out
    grand = x.mean()
    ss_specs = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_seeds = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    df_specs, df_seeds, df_error = n - 1, k - 1, (n - 1) * (k - 1)
    ms_error = max(float(((x - grand) ** 2).sum()) - ss_specs - ss_seeds, 0.0) / df_error
    out["residual_std"] = math.sqrt(ms_error)
    if ms_error > 0:
        out["f"] = (ss_specs / df_specs) / ms_error
        out["seed_f"] = (ss_seeds / df_seeds) / ms_error
        out["p"] = float(stats.f.sf(out["f"], df_specs, df_error))
        out["seed_p"] = float(stats.f.sf(out["seed_f"], df_seeds, df_error))
    return out


def rank_fidelity(proxy: Sequence[float], confirmed: Sequence[float], seed: int = 0) -> dict:
    """How well the proxy score ranks candidates as the confirmed score does.

    Returns ``{kendall_tau, spearman_rho, n, ci95: {kendall_tau: [lo, hi], spearman_rho: [lo, hi]}}``;
    values are nan with fewer than 3 candidates or a constant side (no ranking to compare).
    """
    x, y = np.asarray(proxy, dtype=float), np.asarray(confirmed, dtype=float)
    n = len(x)
    nan2 = [math.nan, math.nan]
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {
            "kendall_tau": math.nan,
            "spearman_rho": math.nan,
            "n": n,
            "ci95": {"kendall_tau": nan2, "spearman_rho": nan2},
        }
    tau = float(stats.kendalltau(x, y).statistic)
    rho = float(stats.spearmanr(x, y).statistic)
    # Paired percentile bootstrap over candidates. Written out rather than scipy.stats.bootstrap
    # because a resample whose scores are all tied has no rank correlation (nan), which must be
    # dropped, not allowed to turn the whole interval into nan.
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(2000, n))
    ci = {}
    for name, fn in (("kendall_tau", stats.kendalltau), ("spearman_rho", stats.spearmanr)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant resamples warn before they return nan
            values = np.array([fn(x[i], y[i]).statistic for i in draws], dtype=float)
        values = values[np.isfinite(values)]
        ci[name] = [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else nan2
    return {"kendall_tau": tau, "spearman_rho": rho, "n": n, "ci95": ci}


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def _halves(k: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every unordered pair of disjoint halves of ``k`` seed positions (``k // 2`` each; with
    ``k`` odd one seed is left out of each pair)."""
    h, pairs = k // 2, set()
    for a in itertools.combinations(range(k), h):
        rest = [i for i in range(k) if i not in a]
        for b in itertools.combinations(rest, h):
            first, second = sorted((a, b))
            pairs.add((first, second))
    return sorted(pairs)


def noise_ceiling(scores: Sequence[Sequence[float]], seed: int = 0, resamples: int = 1000) -> dict:
    """The noise ceiling of a rank correlation with these specs' confirmed scores: Kendall tau
    between the means of two disjoint halves of each spec's seeds (one row of ``scores`` per
    spec, one column per seed, the same seeds for every spec), averaged over every way of halving
    the seeds. No score, however good, ranks the specs' means better than one half of their own
    seeds ranks them against the other half, up to the extra seeds in a full mean.

    Returns ``{kendall_tau, ci95: [lo, hi], n, seeds, splits}``: the interval is a percentile
    bootstrap over specs (each resample recomputes the averaged tau); nan with fewer than 3 specs
    or 2 seeds (rows with other lengths than the commonest are left out).
    """
    rows = [list(r) for r in scores]
    k = max((len(r) for r in rows), key=lambda n: sum(len(r) == n for r in rows), default=0)
    m = np.array([r for r in rows if len(r) == k], dtype=float)
    out = {"kendall_tau": math.nan, "ci95": [math.nan, math.nan], "n": len(m), "seeds": k, "splits": 0}
    if len(m) < 3 or k < 2:
        return out
    splits = _halves(k)
    means = [(m[:, list(a)].mean(axis=1), m[:, list(b)].mean(axis=1)) for a, b in splits]

    def averaged(index: np.ndarray) -> float:
        values = [_kendall(a[index], b[index]) for a, b in means]
        values = [v for v in values if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boot = np.array([averaged(rng.integers(0, len(m), size=len(m))) for _ in range(resamples)])
    boot = boot[np.isfinite(boot)]
    out.update(
        kendall_tau=averaged(np.arange(len(m))),
        splits=len(splits),
        ci95=[float(v) for v in np.percentile(boot, [2.5, 97.5])] if len(boot) else [math.nan, math.nan],
    )
    return out


def precision_at_k(predicted: npt.ArrayLike, actual: npt.ArrayLike, k: int = 5, maximize: bool = False) -> float:
    """Of the ``k`` specs ranked best by ``predicted``, the fraction that are among the ``k`` best
    by ``actual`` (both ranked in the direction ``maximize``); nan with fewer than ``k`` specs."""
    p, a = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    if len(p) < k:
        return math.nan
    sign = -1.0 if maximize else 1.0
    top_p = set(np.argsort(sign * p, kind="stable")[:k])
    top_a = set(np.argsort(sign * a, kind="stable")[:k])
    return len(top_p & top_a) / k
