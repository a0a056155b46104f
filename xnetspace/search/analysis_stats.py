"""The statistics of the design-space analysis (:mod:`.analysis`), pure computation on errors,
FLOPs and knob values: EDFs, complexity weights, knob importances, marginals, and the comparison
of two studies' errors.

- **EDF**: F(e) = fraction of candidates with error <= e, evaluated at each distinct error.
  pycls writes F(e) = (1/n) sum 1[e_i < e]; the right-continuous form used here differs only at
  the observed errors themselves, and equals ``scipy.stats.ecdf``.
- **Complexity normalisation** (Radosavovic et al. 2019, section 4, "normalized comparison";
  pycls's ``pycls/sweep`` plots the plain EDF only): spaces whose samples have different FLOP
  distributions are not compared fairly, since larger models tend to have lower error. Each
  candidate gets a weight ``w_i`` and F(e) = sum_i w_i 1[e_i <= e], with the weights chosen so that
  every space has the *same* FLOP distribution, uniform over FLOP bins: the FLOP range of all the
  studies analysed together is cut into ``k`` equal-width bins, and a candidate in bin ``j``
  holding ``m_j`` of its study's candidates gets ``w = 1 / (k' * m_j)``, where ``k'`` counts the
  bins that hold candidates of *every* study (candidates in the other bins get weight 0, and
  the summary says how many). Then each study puts weight ``1/k'`` on each shared bin.
- **Importance**: Optuna's fANOVA evaluator (functional ANOVA on a random forest: the share of the
  error's variance each knob explains over the whole population) is what ``importance`` reports;
  the PED-ANOVA evaluator (which knobs separate the best 10% of candidates from the rest) is
  reported beside it as ``importance_ped_anova``. Neither is computed from fewer candidates than
  knobs, and a knob that took a single value has no importance (listed in ``single_valued``).
- **Marginals**: each knob's values against the mean error of the candidates with that value,
  with the standard error and a 95% t-interval (knobs with more than 8 distinct numeric values are
  grouped into quantile bins).
- **Comparison** of two studies A and B: the two-sample Kolmogorov-Smirnov statistic of their
  EDFs (``scipy.stats.ks_2samp``; also the largest gap of the complexity-normalised EDFs), and
  percentile-bootstrap 95% CIs (``scipy.stats.bootstrap``, each sample resampled on its own) of
  mean(A) - mean(B) and min(A) - min(B) in error points (negative: A is better). The bootstrap of a
  minimum is a rough guide only: it can never produce a value below the observed best.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
from optuna.distributions import BaseDistribution
from scipy import stats

from .analysis_data import AnalysisError, Candidate

__all__ = ["edf", "edf_distance", "complexity_weights", "importances", "marginals", "compare"]

_MAX_LEVELS = 8  # knobs with more distinct values are binned for the marginals


# -- EDFs ---------------------------------------------------------------------------------------------
def edf(errors: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> tuple[list[float], list[float]]:
    """The (weighted) empirical distribution function of ``errors``: the distinct errors, sorted,
    and F(e) = sum of the weights of the errors <= e (plain EDF: each weight 1/n).

    Args:
        errors: n errors in percent.
        weights: n non-negative weights (normalised here to sum 1); zero-weight errors still appear.

    Raises:
        AnalysisError: no errors, or weights of another length, negative, or summing to 0.
    """
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        raise AnalysisError("an EDF needs at least one error")
    w = np.full(e.size, 1.0 / e.size) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != e.shape or (w < 0).any() or w.sum() <= 0:
        raise AnalysisError(f"EDF weights must be {e.size} non-negative numbers with a positive sum")
    values = np.unique(e)
    cumulative = np.cumsum(w[np.argsort(e, kind="stable")])
    cumulative /= cumulative[-1]  # the last fraction is exactly 1
    index = np.searchsorted(np.sort(e), values, side="right") - 1  # last position of each value
    return values.tolist(), cumulative[index].tolist()


def edf_distance(a: tuple[list[float], list[float]], b: tuple[list[float], list[float]]) -> float:
    """The largest gap sup_e |F_A(e) - F_B(e)| between two EDFs given as (errors, fractions),
    the Kolmogorov-Smirnov statistic (for plain EDFs it equals ``scipy.stats.ks_2samp``'s)."""
    grid = np.union1d(a[0], b[0])

    def at(f: tuple[list[float], list[float]]) -> np.ndarray:
        index = np.searchsorted(f[0], grid, side="right") - 1
        return np.where(index >= 0, np.asarray(f[1])[np.maximum(index, 0)], 0.0)

    return float(np.max(np.abs(at(a) - at(b))))


def complexity_weights(flops: Sequence[Sequence[float] | np.ndarray], bins: int = 5) -> tuple[list[np.ndarray], dict]:
    """Weights that give each study the same FLOP distribution (Radosavovic et al. 2019, section 4):
    uniform over the equal-width FLOP bins that hold candidates of every study.

    Args:
        flops: per study, its candidates' FLOPs (fvcore's count: one multiply-add = one flop).
        bins: k, the number of equal-width bins over the FLOP range of all studies together.

    Returns:
        per study, one weight per candidate (each study's weights sum to 1), and a description:
        ``bins`` (k), ``edges`` (k + 1 FLOP counts), ``shared_bins`` (k') and ``dropped`` (per
        study, candidates with weight 0 because their bin is empty in another study).

    Raises:
        AnalysisError: bins < 1, a study without candidates, or no bin shared by all studies.
    """
    if bins < 1:
        raise AnalysisError(f"bins must be at least 1, got {bins}")
    if not flops or any(len(f) == 0 for f in flops):
        raise AnalysisError("complexity normalisation needs candidates in every study")
    arrays = [np.asarray(f, dtype=float) for f in flops]
    low, high = min(a.min() for a in arrays), max(a.max() for a in arrays)
    edges = np.linspace(low, high, bins + 1) if high > low else np.array([low, low + 1.0])
    k = len(edges) - 1
    # bin j holds [edges[j], edges[j+1]); the last bin also holds the maximum
    index = [np.clip(np.searchsorted(edges, a, side="right") - 1, 0, k - 1) for a in arrays]
    counts = [np.bincount(i, minlength=k) for i in index]
    shared = np.logical_and.reduce([c > 0 for c in counts])
    if not shared.any():
        raise AnalysisError(
            f"no FLOP bin (of {k}) holds candidates of every study: their FLOP ranges do not "
            f"overlap, so no complexity-normalised comparison exists; try fewer --bins"
        )
    weights = []
    for i, c in zip(index, counts):
        w = np.where(shared[i], 1.0 / (shared.sum() * np.maximum(c[i], 1)), 0.0)
        weights.append(w)
    return weights, {
        "bins": k,
        "edges": edges.tolist(),
        "shared_bins": int(shared.sum()),
        "dropped": [int((w == 0).sum()) for w in weights],
    }


# -- importance and marginals -------------------------------------------------------------------------
def importances(
    candidates: Sequence[Candidate], distributions: dict[str, BaseDistribution], seed: int = 0
) -> tuple[dict[str, dict[str, float]], list[str], list[str]]:
    """Knob importances for the error, by Optuna's fANOVA and PED-ANOVA evaluators.

    Each evaluator's values are non-negative and normalised to sum 1 over the knobs that varied.
    Repeats of a spec are not candidates, so no spec is counted twice.

    Returns:
        ``{"fanova": {knob: value}, "ped_anova": {knob: value}}`` (empty dicts where nothing can be
        computed), the knobs that took a single value (no importance), and warnings.
    """
    notes: list[str] = []
    values: dict[str, set] = {}
    for c in candidates:
        for knob, value in c.knobs.items():
            values.setdefault(knob, set()).add(value)
    single = sorted(k for k, v in values.items() if len(v) == 1)
    varying = sorted(k for k, v in values.items() if len(v) > 1)
    if single:
        notes.append(
            f"{len(single)} knob(s) took a single value in every candidate, so they have no importance: "
            + ", ".join(f"{k} = {next(iter(values[k]))}" for k in single)
        )
    reason = _no_importance(candidates, varying)
    if reason is not None:
        notes.append(reason)
        return {"fanova": {}, "ped_anova": {}}, single, notes
    study = _scratch_study(candidates, distributions)
    evaluators = {
        "fanova": optuna.importance.FanovaImportanceEvaluator(seed=seed),
        "ped_anova": optuna.importance.PedAnovaImportanceEvaluator(),
    }
    result = {}
    for name, evaluator in evaluators.items():
        result[name] = _normalized_importance(study, name, evaluator, varying, notes)
    if len(candidates) < 50:
        notes.append(
            f"PED-ANOVA compares the best 10% ({math.ceil(0.1 * len(candidates))} candidates) with the "
            f"rest; below 50 candidates it is unstable"
        )
    return result, single, notes


def _no_importance(candidates: Sequence[Candidate], varying: list[str]) -> str | None:
    """Why no importance can be computed for the knobs ``varying`` (None: it can)."""
    if not varying:
        return "no knob varied between candidates: no importance"
    if len({c.error for c in candidates}) == 1:  # fANOVA divides by the errors' variance
        return "every candidate has the same error: no knob can explain a difference, no importance"
    if len(candidates) < len(varying):
        return (
            f"no importance from {len(candidates)} candidates for {len(varying)} knobs "
            f"(it needs at least as many candidates as knobs)"
        )
    return None


def _scratch_study(candidates: Sequence[Candidate], distributions: dict[str, BaseDistribution]) -> optuna.Study:
    """An in-memory study of the candidates alone, each error as its trial's value."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a scratch study
    try:
        study = optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params=c.knobs, distributions={k: distributions[k] for k in c.knobs}, value=c.error
            )
            for c in candidates
        ]
    )
    return study


def _normalized_importance(
    study: optuna.Study,
    name: str,
    evaluator: optuna.importance.BaseImportanceEvaluator,
    varying: list[str],
    notes: list[str],
) -> dict[str, float]:
    """One evaluator's importances of the knobs ``varying``, clipped at 0 and normalised to sum 1,
    largest first (all 0, with a note in ``notes``, when none is positive)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-argument notices and "importances equal" notes
        raw = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying, normalize=False)
    raw = {k: max(0.0, float(v)) for k, v in raw.items()}
    total = sum(raw.values())
    if total == 0:
        notes.append(f"{name}: every knob's importance is 0 (no knob separates the candidates' errors)")
    return {k: (v / total if total else 0.0) for k, v in sorted(raw.items(), key=lambda kv: -kv[1])}


def marginals(candidates: Sequence[Candidate]) -> dict[str, list[dict]]:
    """Per knob, per value (or value bin): ``n``, ``mean_error``, ``sem`` (standard error of the
    mean, ddof 1; None for n = 1) and ``ci95`` (t-interval, [lo, hi]; None for n = 1), in percent.
    Knobs with more than 8 distinct numeric values are cut into 5 quantile bins, each shown as its
    mean value with ``range`` [lo, hi]."""
    knobs = sorted({k for c in candidates for k in c.knobs})
    out: dict[str, list[dict]] = {}
    for knob in knobs:
        pairs = [(c.knobs[knob], c.error) for c in candidates if knob in c.knobs]
        levels = sorted({v for v, _ in pairs}, key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels)
        if numeric and len(levels) > _MAX_LEVELS:
            edges = np.unique(np.quantile([v for v, _ in pairs], np.linspace(0, 1, 6)))
            groups: dict[int, list[tuple[Any, float]]] = {}
            for v, e in pairs:
                j = int(np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2))
                groups.setdefault(j, []).append((v, e))
            rows = [
                _row(float(np.mean([v for v, _ in g])), [e for _, e in g], [float(edges[j]), float(edges[j + 1])])
                for j, g in sorted(groups.items())
            ]
        else:
            rows = [_row(level, [e for v, e in pairs if v == level]) for level in levels]
        out[knob] = rows
    return out


def _row(value: Any, errors: list[float], value_range: list[float] | None = None) -> dict:
    n, mean = len(errors), float(np.mean(errors))
    sem = float(stats.sem(errors)) if n > 1 else None
    ci = None
    if sem is not None:  # n > 1
        half = float(stats.t.ppf(0.975, n - 1)) * sem
        ci = [mean - half, mean + half]
    row = {"value": value, "n": n, "mean_error": mean, "sem": sem, "ci95": ci}
    if value_range is not None:
        row["range"] = value_range
    return row


# -- comparison ---------------------------------------------------------------------------------------
def _difference_of(fn: Callable) -> Callable:
    """The bootstrap statistic ``fn(x) - fn(y)`` along ``axis`` (vectorized)."""
    return lambda x, y, axis: fn(x, axis=axis) - fn(y, axis=axis)


def compare(a: npt.ArrayLike, b: npt.ArrayLike, seed: int = 0, n_resamples: int = 9999) -> dict:
    """Compare the errors of study A with those of study B (percent).

    Returns:
        ``ks_statistic`` and ``ks_pvalue`` (``scipy.stats.ks_2samp``, two-sided),
        ``mean_difference`` and ``best_difference`` (mean(A) - mean(B), min(A) - min(B); negative:
        A is better), and their percentile-bootstrap 95% CIs ``mean_difference_ci95``,
        ``best_difference_ci95`` (``scipy.stats.bootstrap``, A and B resampled independently,
        ``n_resamples`` resamples, seeded).

    Raises:
        AnalysisError: a study with fewer than 2 candidates.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise AnalysisError(f"a comparison needs at least 2 candidates in each study (got {a.size} and {b.size})")
    ks = stats.ks_2samp(a, b)
    result: dict[str, Any] = {
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "mean_difference": float(a.mean() - b.mean()),
        "best_difference": float(a.min() - b.min()),
    }
    for key, fn in (("mean_difference", np.mean), ("best_difference", np.min)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # identical resamples: a zero-width CI
            boot = stats.bootstrap(
                (a, b),
                _difference_of(fn),
                vectorized=True,
                n_resamples=n_resamples,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        result[f"{key}_ci95"] = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
    return result
