"""Design-space analysis of finished studies: error EDFs, knob importances, per-knob marginals, and
the comparison of two design spaces through their populations of trained candidates.

The method is pycls's (Radosavovic et al. 2019, "On Network Design Spaces for Visual Recognition";
2020, "Designing Network Design Spaces", section 2): sample models from each space, train them with
one cheap recipe, and compare the *distributions* of their errors rather than the best point.

- **Candidates** are a study's completed trials that trained a spec of their own: rejected
  samples (over budget, invalid), repeats of an earlier spec (``duplicate_of``), and pruned or
  failed trials are left out.
- **The score** is the study's own (:attr:`StudyConfig.score`): in a ``loss`` study the
  "error" of a candidate is its validation cross-entropy in nats, in a ``top1`` study (and the
  two-objective ones) its top-1 error ``100 - top-1`` in percent; lower is better in both. A
  candidate trained with several seeds counts once, with the mean over its runs of the last
  epoch (:meth:`TrialRecord.final`). The top-1 error is kept beside the score in every study
  (``top1_error``, ``edf_top1_error``), and ``score`` in ``analysis.json`` names what "error"
  means there. Studies of different scores are compared only with ``force``, and then by top-1
  error (cross-entropy can tell architectures apart where top-1 cannot, docs/findings.md, but
  nats and percent are not one scale).
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

A TPE (or NSGA-II) study is a *biased* sample: the sampler concentrates on what looked good, so
its EDF describes the sampler as much as the space; a pruned study leaves its weakest candidates
out. Random-sampled, unpruned studies (``xnetspace search --population``) are the right input.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from scipy import stats

from .analysis_schema import AnalysisResult, ScoreInfo
from .names import Rejection
from .records import TrialRecord, read_trial
from .score import LOSS
from .study import StudyConfig, stored_settings

__all__ = [
    "AnalysisError",
    "Candidate",
    "StudyData",
    "load_run",
    "load_named_study",
    "study_data",
    "edf",
    "complexity_weights",
    "edf_distance",
    "importances",
    "marginals",
    "compare",
    "analyze",
    "stage_params",
    "MIN_RELIABLE",
    "UNBIASED_SAMPLERS",
    "score_info",
    "TOP1_ERROR",
    "CROSS_ENTROPY",
    "run_analysis",
    "report_lines",
]

MIN_RELIABLE = 10  # fewer candidates than this: the EDF is shown but called unreliable
UNBIASED_SAMPLERS = ("random", "qmc")
_CONFIRM_SUFFIX = ":confirm"  # confirmation runs live in a second study of the same storage
_MAX_LEVELS = 8  # knobs with more distinct values are binned for the marginals
MAX_BINS = 100  # FLOP bins of the normalisation: each must hold candidates of every study to count


class AnalysisError(ValueError):
    """Input that cannot be analysed (not a study, no candidates, incomparable studies)."""


CROSS_ENTROPY = ScoreInfo(name="loss", label="validation cross-entropy", unit="nats", direction="minimize")
TOP1_ERROR = ScoreInfo(name="top1_error", label="top-1 error (100 - top-1)", unit="%", direction="minimize")


def score_info(config: StudyConfig) -> ScoreInfo:
    """What a study's candidates are analysed by: cross-entropy (nats) in a ``loss`` study, top-1
    error (percent) otherwise; lower is better in both."""
    return CROSS_ENTROPY if config.score == LOSS else TOP1_ERROR


# -- reading studies ----------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One trained, completed spec: its trial number, error (the study's score, lower is better:
    cross-entropy in nats in a ``loss`` study, ``100 - top-1`` in percent otherwise; the mean over
    its runs), FLOPs (fvcore's count at the space's constraint image size), params, knob values
    (the trial's Optuna parameters), the top-1 error beside the score (None if a run recorded no
    top-1) and the spec it trained (``NetworkSpec`` fields as stored; None in hand-made studies)."""

    number: int
    error: float
    flops: int
    params: int
    spec_digest: str
    knobs: dict[str, Any]
    top1_error: float | None = None
    spec: dict[str, Any] | None = None


@dataclass
class StudyData:
    """What the analysis needs from one study, read once from its storage."""

    name: str
    source: str
    config: StudyConfig
    settings: dict
    candidates: list[Candidate]
    distributions: dict[str, BaseDistribution]
    rejected: int = 0
    rejected_over_budget: int = 0
    pruned: int = 0
    failed: int = 0
    duplicates: int = 0
    pruned_by_pruner: int = 0
    unreadable: int = 0  # completed trials whose score is not a finite number (a damaged or edited storage)
    seed_std: float | None = None  # in the study's score (points of top-1, or nats)
    confirmed_best: dict | None = None

    @property
    def score(self) -> ScoreInfo:
        """What ``Candidate.error`` is in this study (:func:`score_info`)."""
        return score_info(self.config)


def load_run(folder: Path | str) -> optuna.Study:
    """The xnetspace study stored in ``FOLDER/study.db`` (the default storage of ``xnetspace
    search --out FOLDER``); a study named ``NAME:confirm`` (confirmation runs) is not a candidate.

    Raises:
        AnalysisError: no such folder, no ``study.db`` in it, a file that is not an Optuna
            SQLite storage, no study in it, or several (name one with ``--storage``/``--study-name``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a study folder" if folder.exists() else "does not exist"
        raise AnalysisError(
            f"run folder {str(folder)!r} {what} (give a study's output folder, the --out of xnetspace search)"
        )
    db = folder / "study.db"
    if not db.is_file():
        raise AnalysisError(
            f"{str(folder)!r} is not a study folder: it has no study.db (the default storage of "
            f"xnetspace search --out); for another storage use --storage URL --study-name NAME"
        )
    try:  # read-only look first: opening it through Optuna would create tables in any SQLite file
        with sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    except sqlite3.DatabaseError as err:
        raise AnalysisError(f"{str(db)!r} is not an SQLite database ({err})") from None
    if "studies" not in tables:
        raise AnalysisError(f"{str(db)!r} is not an Optuna storage (it has no 'studies' table)")
    url = f"sqlite:///{db.resolve()}"
    names = [n for n in optuna.get_all_study_names(url) if not n.endswith(_CONFIRM_SUFFIX)]
    if not names:
        raise AnalysisError(f"{str(db)!r} holds no study")
    if len(names) > 1:
        raise AnalysisError(
            f"{str(db)!r} holds {len(names)} studies ({', '.join(sorted(names))}); name one: "
            f"--storage {url} --study-name NAME"
        )
    return optuna.load_study(study_name=names[0], storage=url)


def load_named_study(storage: str, study_name: str) -> optuna.Study:
    """Study ``study_name`` in the Optuna storage URL ``storage``.

    Raises:
        AnalysisError: the storage cannot be opened or holds no study of that name.
    """
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors for bad URLs are many kinds
        raise AnalysisError(f"cannot open storage {storage!r}: {str(err).splitlines()[0]}") from None
    if study_name not in names:
        raise AnalysisError(
            f"storage {storage!r} has no study named {study_name!r} (it has: {', '.join(sorted(names)) or 'none'})"
        )
    return optuna.load_study(study_name=study_name, storage=storage)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (NaN, inf, text, a list...)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def study_data(study: optuna.Study, source: str = "", summary: Path | None = None) -> StudyData:
    """Read a finished (or unfinished) xnetspace study's candidates and counts, each in the study's
    score (:func:`score_info`; the mean over a candidate's runs) with its top-1 error beside it;
    with ``summary`` (the run's ``summary.json``, if it exists), also the proxy's seed noise
    (``noise.proxy_seed_std``, else ``noise.seed_std``: the std of one spec's score over seeds, in
    the study's score: points of top-1 or nats) and the confirmed winner.

    Raises:
        AnalysisError: the study was not made by xnetspace (no stored config).
    """
    config, settings = stored_settings(study)
    if config is None:
        raise AnalysisError(
            f"study {study.study_name!r} was not made by xnetspace search (it has no stored "
            f"config), so its trials' top-1, FLOPs and slots are unknown"
        )
    trials = study.get_trials(deepcopy=False)
    data = StudyData(study.study_name, source or study.study_name, config, settings, [], {})
    if summary is not None and Path(summary).is_file():
        _read_summary(data, Path(summary))
    for t in trials:
        _add_trial(data, t)
    return data


def _read_summary(data: StudyData, summary: Path) -> None:
    """The seed noise (when it is in the study's score) and the confirmed best from the run's
    ``summary.json``."""
    try:
        found = json.loads(summary.read_text())
        noise = found.get("noise") or {}
        if (found.get("score") or {}).get("name", "top1") == data.config.score.name:  # the noise's unit is the score's
            data.seed_std = noise.get("proxy_seed_std", noise.get("seed_std"))
        data.confirmed_best = found.get("best")
    except (ValueError, AttributeError):
        pass  # a damaged summary costs the noise figure only


def _add_trial(data: StudyData, t: FrozenTrial) -> None:
    """Count trial ``t`` where it belongs: a candidate, a rejected sample, a repeat, a pruned or a
    failed trial (a surplus trial or one without a slot counts nowhere)."""
    try:
        r = read_trial(t)
    except ValidationError:  # a damaged or edited storage
        data.unreadable += 1
        return
    if r.surplus:
        return
    if r.rejected:
        data.rejected += 1
        data.rejected_over_budget += Rejection.of(r.reason) == Rejection.OVER_BUDGET
    elif not r.slot:
        return
    elif r.duplicate_of is not None:
        data.duplicates += 1
    elif t.state == TrialState.COMPLETE:
        _add_candidate(data, t, r)
    elif t.state == TrialState.PRUNED:
        data.pruned += 1
        data.pruned_by_pruner += (r.reason or "").startswith("pruner")
    elif t.state == TrialState.FAIL and r.reason is not None:
        data.failed += 1


def _add_candidate(data: StudyData, t: FrozenTrial, r: TrialRecord) -> None:
    """Completed trial ``t`` as a candidate, in the study's score (unreadable when it has none)."""
    top1 = _finite(r.final("top1"))
    value = top1 if data.config.score.name == "top1" else _finite(r.final("loss"))
    if value is None:
        data.unreadable += 1
        return
    error = 100.0 - value if data.config.score.name == "top1" else value
    params, distributions = stage_params(t.params, t.distributions)
    data.candidates.append(
        Candidate(
            t.number,
            error,
            r.flops or 0,
            r.params or 0,
            r.spec_digest or "",
            params,
            None if top1 is None else 100.0 - top1,
            r.spec,
        )
    )
    data.distributions.update(distributions)


_CHAIN = re.compile(r"stage(\d+)-(\d+)\.(\w+)")


def stage_params(
    params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """A trial's parameters with each monotone chain (``stage3-4.embed_dim`` = ``"48,96"``, one
    categorical over the chain's non-decreasing combinations, :mod:`.space_rules`) split into its
    stages' values (``stage3.embed_dim`` = 48, ``stage4.embed_dim`` = 96), each a numeric range
    over the values the chain allows in that stage: importances and marginals per stage, as in a
    space without the constraint (fANOVA would one-hot encode every combination)."""
    out_params, out_dists = {}, {}
    for name, value in params.items():
        match = _CHAIN.fullmatch(name)
        dist = distributions[name]
        if match is None or not isinstance(dist, CategoricalDistribution) or not isinstance(value, str):
            out_params[name], out_dists[name] = value, dist
            continue
        first, knob = int(match[1]), match[3]
        combos = [[float(v) for v in str(c).split(",")] for c in dist.choices]
        for offset, v in enumerate(value.split(",")):
            stage = f"stage{first + offset}.{knob}"
            seen = sorted({c[offset] for c in combos})
            whole = all(x.is_integer() for x in seen)
            out_params[stage] = int(float(v)) if whole else float(v)
            out_dists[stage] = (
                IntDistribution(int(seen[0]), int(seen[-1]))
                if whole and seen[0] < seen[-1]
                else FloatDistribution(seen[0], seen[-1])
                if seen[0] < seen[-1]
                else CategoricalDistribution([out_params[stage]])
            )
    return out_params, out_dists


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


# -- the whole analysis -------------------------------------------------------------------------------
def analyze(studies: Sequence[StudyData], force: bool = False, bins: int = 5, seed: int = 0) -> dict:
    """Analyse one or more studies in their score (the object that ``analysis.json`` holds: the
    JSON form of :class:`~xnetspace.search.analysis_schema.AnalysisResult`, validated against it).

    Returns:
        ``{"score": {...}, "studies": [...], "importance_method": "fanova", "normalization": {...},
        "comparison": {...}}``. ``score`` (``name``: ``loss`` or ``top1_error``, ``label``,
        ``unit``: nats or %, ``direction``: minimize, ``note``) says what every "error" below is.
        Per study (in the order given): ``name``, ``source``, ``space``, ``dataset``,
        ``image_size`` (proxy training, pixels), ``sampler``, ``pruner``, ``n`` (candidates),
        ``rejected`` (samples rejected before training: over budget or invalid), ``sampled``,
        ``pruned``, ``failed``, ``duplicates``, ``error`` (min/median/mean/max), ``top1_error``
        (the same of the top-1 error, None if no candidate recorded top-1), ``best``, ``edf``,
        ``edf_normalized`` and ``edf_top1_error`` (``error`` and ``fraction`` lists),
        ``importance`` (fANOVA), ``importance_ped_anova``, ``single_valued``, ``marginals``,
        ``seed_std`` (in the score's unit) and ``confirmed_best`` (from the run's ``summary.json``;
        None without one) and ``warnings``. ``comparison`` (first study against the second; see
        :func:`compare`, plus ``ks_statistic_normalized``, ``a``, ``b``, ``verdict``,
        ``warnings``) is present for 2+ studies, and ``comparisons`` lists every later study
        against the first when there are 3+.

    Raises:
        AnalysisError: no studies, a study without candidates, or studies of different datasets,
            proxy image sizes or scores without ``force`` (with ``force``, studies of different
            scores are compared by top-1 error, and ``score.note`` says so).
    """
    mismatch = _check_comparable(studies, force)
    studies, score = _one_score(studies)
    weights, normalization = _normalization(studies, bins)
    result: dict[str, Any] = {
        "score": score.model_dump(exclude_none=True),
        "studies": [],
        "importance_method": "fanova",
        "normalization": normalization,
    }
    for s, w in zip(studies, weights):
        result["studies"].append(_study_summary(s, w, seed, score))
    if len(studies) >= 2:
        pairs = [(0, j) for j in range(1, len(studies))]
        comparisons = [
            _comparison(studies[i], studies[j], result["studies"][i], result["studies"][j], mismatch, seed, score)
            for i, j in pairs
        ]
        result["comparison"] = comparisons[0]
        if len(comparisons) > 1:
            result["comparisons"] = comparisons
    return AnalysisResult.model_validate(result).model_dump(exclude_unset=True)


def _check_comparable(studies: Sequence[StudyData], force: bool) -> str:
    """Refuse no studies, a study without candidates, and (without ``force``) studies that differ
    in dataset, image size or score; returns how they differ ("" when they do not)."""
    if not studies:
        raise AnalysisError("nothing to analyse: give at least one study")
    for s in studies:
        if not s.candidates:
            raise AnalysisError(
                f"study {s.name!r} ({s.source}) has no completed candidates yet: nothing to analyse "
                f"({s.rejected} rejected, {s.pruned} pruned, {s.failed} failed trials"
                f"{f', {s.unreadable} without a finite {_word(s.score)}' if s.unreadable else ''})"
            )
    mismatch = _mismatch(studies)
    if mismatch and not force:
        what = (
            "their errors are not on one scale (another task or resolution changes every error)"
            if "different scores" not in mismatch
            else "cross-entropy in nats and top-1 error in percent are not one scale"
        )
        raise AnalysisError(
            f"refusing to compare studies of {mismatch}: {what}; pass --force to compare anyway"
            + (" (by top-1 error)" if "different scores" in mismatch else "")
        )
    return mismatch


def _one_score(studies: Sequence[StudyData]) -> tuple[Sequence[StudyData], ScoreInfo]:
    """The studies in the score they share: their own, or top-1 error when their scores differ
    (forced), with a note saying so."""
    score = studies[0].score
    if len({s.score.name for s in studies}) > 1:  # forced: the one score every study recorded
        studies = [_by_top1_error(s) for s in studies]
        score = TOP1_ERROR.model_copy(
            update={
                "note": "the studies rank by different scores ("
                + ", ".join(f"{s.name}: {s.config.score.label}" for s in studies)
                + "); compared by top-1 error, which all of them record (--force)"
            }
        )
    return studies, score


def _normalization(studies: Sequence[StudyData], bins: int) -> tuple[list[np.ndarray], dict]:
    """Each study's complexity weights and ``analysis.json``'s ``normalization`` (all weights 0,
    and the reason, when no normalisation exists)."""
    try:
        weights, normalization = complexity_weights([[c.flops for c in s.candidates] for s in studies], bins)
    except AnalysisError as err:  # the plain analysis still stands
        weights, normalization = [np.zeros(len(s.candidates)) for s in studies], {"error": str(err)}
    normalization["method"] = (
        "equal-width FLOP bins over all studies; each study weighted uniform over the bins "
        "that hold candidates of every study (Radosavovic et al. 2019, section 4)"
    )
    return weights, normalization


def run_analysis(
    runs: Sequence[Path | str] = (),
    storage: str | None = None,
    study_names: Sequence[str] = (),
    out: Path | None = None,
    bins: int = 5,
    force: bool = False,
) -> tuple[dict, dict[str, Path], list[str]]:
    """``xnetspace analyze``: load the studies in the folders ``runs`` (each with its
    ``summary.json``) and those named ``study_names`` in ``storage``, :func:`analyze` them in that
    order and write ``analysis.json`` and the figures into ``out`` (default: the run's folder for
    one run, else ``runs/analysis``).

    Returns:
        ``(the analysis, {"json": ..., "edf": ..., ...} the files written, notices)``: the notices
        are the numerical libraries' warnings met on the way, each once and on one line.

    Raises:
        AnalysisError: ``bins`` outside 1..MAX_BINS, ``storage`` without ``study_names`` or the
            reverse, nothing to analyse, and what :func:`load_run`, :func:`load_named_study` and
            :func:`analyze` raise (all before anything is written).
        xnetspace.paths.PathError: an ``out`` that cannot be written (checked before the analysis).
    """
    from ..paths import output_folder
    from ..text import shorten
    from .analysis_plots import ANALYSIS_FILES, write_analysis

    folders, study_names = [Path(r) for r in runs], list(study_names)
    if not 1 <= bins <= MAX_BINS:  # a billion bins would fill the memory before anything is said
        raise AnalysisError(f"--bins {bins:,} must be between 1 and {MAX_BINS} (FLOP bins of the normalisation)")
    if bool(storage) != bool(study_names):
        raise AnalysisError("--storage and --study-name go together: give both, or study folders only")
    if not folders and not study_names:
        raise AnalysisError(
            "nothing to analyse: give study output folders (RUN ...) or --storage URL --study-name NAME"
        )
    one = len(folders) + len(study_names) == 1
    out = out or (folders[0] if one and folders else Path("runs") / "analysis")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:  # numerical libraries' notices: one line each
        warnings.simplefilter("always")
        data = [study_data(load_run(run), str(run), run / "summary.json") for run in folders]
        # study_names come with storage (checked above)
        data += [study_data(load_named_study(cast(str, storage), name), f"{storage} :: {name}") for name in study_names]
        output_folder(out, "--out", ANALYSIS_FILES, create=False)  # before the analysis; made when written
        result = analyze(data, force=force, bins=bins)
        files = write_analysis(result, out)
    notices = dict.fromkeys(
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, (DeprecationWarning, FutureWarning))
    )
    return result, files, [shorten(notice.splitlines()[0], 200) for notice in notices]


def report_lines(result: dict, files: dict[str, Path] | None = None) -> list[str]:
    """:func:`analyze`'s result in words (``xnetspace analyze``): the score, each study's errors,
    most important knobs and warnings, each comparison, and the files written when given."""
    score = result["score"]
    d = 4 if score["unit"] == "nats" else 2  # decimals of the score
    lines = [
        f"score: {score['label']} ({score['unit']}, lower is better)"
        + (f"; {score['note']}" if "note" in score else "")
    ]
    for s in result["studies"]:
        e = s["error"]
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(s["importance"].items())[:3]) or "none"
        lines.append(
            f"{s['name']} ({s['space']}, {s['dataset']}, sampler {s['sampler']}): {s['n']} candidates, "
            f"{s['rejected']} samples rejected; error best {e['min']:.{d}f} / median {e['median']:.{d}f} / "
            f"mean {e['mean']:.{d}f} {score['unit']}; most important (fANOVA): {top}"
        )
        lines += [f"  warning: {note}" for note in s["warnings"]]
    for c in result.get("comparisons", [result["comparison"]] if "comparison" in result else []):
        if c.get("ks_statistic") is not None:
            lo, hi = c["mean_difference_ci95"]
            blo, bhi = c["best_difference_ci95"]
            lines.append(
                f"{c['a']} vs {c['b']}: KS {c['ks_statistic']:.3f} (p = {c['ks_pvalue']:.3g}); mean error "
                f"difference {c['mean_difference']:+.{d}f} [95% CI {lo:+.{d}f}, {hi:+.{d}f}], best "
                f"{c['best_difference']:+.{d}f} [{blo:+.{d}f}, {bhi:+.{d}f}]: {c['verdict']}"
            )
        lines += [f"  warning: {note}" for note in c["warnings"]]
    if files is not None:
        lines.append("files: " + ", ".join(str(p) for p in files.values()))
    return lines


def _word(score: ScoreInfo) -> str:
    return "cross-entropy" if score.name == "loss" else "top-1"


def _by_top1_error(s: StudyData) -> StudyData:
    """The study with each candidate's error replaced by its top-1 error (candidates without a
    recorded top-1 counted as unreadable); the seed noise is kept only if it was in top-1 points."""
    if s.score.name == "top1_error":
        return s
    kept = [replace(c, error=c.top1_error) for c in s.candidates if c.top1_error is not None]
    return replace(s, candidates=kept, unreadable=s.unreadable + len(s.candidates) - len(kept), seed_std=None)


def _mismatch(studies: Sequence[StudyData]) -> str:
    datasets = {s.config.dataset for s in studies}
    sizes = {tuple(_size(s)) for s in studies}
    problems = []
    if len(datasets) > 1:
        problems.append("different datasets (" + ", ".join(f"{s.name}: {s.config.dataset}" for s in studies) + ")")
    if len(sizes) > 1:
        problems.append(
            "different image sizes (" + ", ".join(f"{s.name}: {'x'.join(map(str, _size(s)))}" for s in studies) + ")"
        )
    if len({s.score.name for s in studies}) > 1:
        problems.append("different scores (" + ", ".join(f"{s.name}: {s.config.score.label}" for s in studies) + ")")
    return " and ".join(problems)


def _size(s: StudyData) -> list[int]:
    size = s.config.train.image_size
    return list(size) if isinstance(size, (tuple, list)) else [int(size), int(size)]


def _five(values: Sequence[float]) -> dict:
    return {
        "min": float(np.min(values)),
        "median": float(np.median(values)),
        "mean": float(np.mean(values)),
        "max": float(np.max(values)),
    }


def _study_summary(s: StudyData, weights: np.ndarray, seed: int, score: ScoreInfo) -> dict:
    """One study's entry of ``analysis.json`` (``weights``: its candidates' complexity weights)."""
    errors = [c.error for c in s.candidates]
    top1_errors = [c.top1_error for c in s.candidates if c.top1_error is not None]
    sampler, pruner = s.settings.get("sampler", "unknown"), s.settings.get("pruner", "unknown")
    notes = _study_notes(s, sampler, score)
    importance, single, importance_notes = importances(s.candidates, s.distributions, seed)
    best = min(s.candidates, key=lambda c: (c.error, c.flops))
    plain = edf(errors)
    normalized = edf(errors, weights) if weights.sum() > 0 else ([], [])
    plain_top1 = edf(top1_errors) if top1_errors else ([], [])
    return {
        "name": s.name,
        "source": s.source,
        "space": s.config.space.name,
        "dataset": s.config.dataset,
        "image_size": _size(s),
        "sampler": sampler,
        "pruner": pruner,
        "n": len(errors),
        "rejected": s.rejected,
        "rejected_over_budget": s.rejected_over_budget,
        "sampled": s.rejected + len(errors) + s.pruned + s.failed + s.duplicates,
        "pruned": s.pruned,
        "failed": s.failed,
        "duplicates": s.duplicates,
        "error": _five(errors),
        "top1_error": _five(top1_errors) if top1_errors else None,
        "flops": {"min": min(c.flops for c in s.candidates), "max": max(c.flops for c in s.candidates)},
        "best": {
            "trial": best.number,
            "error": best.error,
            "flops": best.flops,
            "params": best.params,
            "spec_digest": best.spec_digest,
        },
        "edf": {"error": plain[0], "fraction": plain[1]},
        "edf_normalized": {"error": normalized[0], "fraction": normalized[1]},
        "edf_top1_error": {"error": plain_top1[0], "fraction": plain_top1[1]},
        "importance": importance["fanova"],
        "importance_ped_anova": importance["ped_anova"],
        "single_valued": single,
        "marginals": marginals(s.candidates),
        "seed_std": s.seed_std,
        "confirmed_best": s.confirmed_best,
        "warnings": notes + importance_notes,
    }


def _study_notes(s: StudyData, sampler: str, score: ScoreInfo) -> list[str]:
    """What weakens one study's EDF: a biased sampler, a pruner, few candidates, trials left out."""
    n = len(s.candidates)
    notes = []
    if sampler not in UNBIASED_SAMPLERS:
        what = "was not recorded" if sampler == "unknown" else f"is {sampler}"
        notes.append(
            f"the sampler {what}: a {sampler.upper() if sampler != 'unknown' else 'TPE'} study is a biased "
            f"sample (it concentrates on what looked good), so its EDF describes the sampler as much as the "
            f"space; use a population study (xnetspace search --population) for EDFs"
        )
    if s.pruned_by_pruner:
        notes.append(
            f"{s.pruned_by_pruner} trial(s) stopped by the pruner are not in the EDF (the weak ones): "
            f"it is optimistic; population studies use --pruner none"
        )
    if n < MIN_RELIABLE:
        notes.append(
            f"only {n} completed candidates (fewer than {MIN_RELIABLE}): the EDF is not reliable "
            f"(pycls samples about 100 models per space)"
        )
    if s.failed:
        notes.append(f"{s.failed} trial(s) failed and are not in the EDF")
    if s.duplicates:
        notes.append(f"{s.duplicates} trial(s) repeated an earlier spec and are counted once")
    if s.unreadable:
        notes.append(
            f"{s.unreadable} completed trial(s) have no finite {_word(score)} (NaN, inf or not a number in "
            f"the storage) and are not in the EDF"
        )
    return notes


def _comparison(a: StudyData, b: StudyData, sa: dict, sb: dict, mismatch: str, seed: int, score: ScoreInfo) -> dict:
    notes = [f"compared despite {mismatch} (--force)"] if mismatch else []
    if min(sa["n"], sb["n"]) < 2:
        return {
            "a": a.name,
            "b": b.name,
            "ks_statistic": None,
            "ks_pvalue": None,
            "mean_difference_ci95": None,
            "best_difference_ci95": None,
            "warnings": notes + ["a comparison needs 2+ candidates in each study"],
        }
    errors_a, errors_b = [c.error for c in a.candidates], [c.error for c in b.candidates]
    result = {"a": a.name, "b": b.name, **compare(errors_a, errors_b, seed)}
    na, nb = sa["edf_normalized"], sb["edf_normalized"]
    result["ks_statistic_normalized"] = (
        edf_distance((na["error"], na["fraction"]), (nb["error"], nb["fraction"]))
        if na["error"] and nb["error"]
        else None
    )
    low, high = result["mean_difference_ci95"]
    if low > 0 or high < 0:
        better = b.name if low > 0 else a.name
        result["verdict"] = f"{better} has the lower mean error (the 95% CI of the difference excludes 0)"
    else:
        result["verdict"] = "no detectable difference in mean error (the 95% CI of the difference contains 0)"
    if min(sa["n"], sb["n"]) < MIN_RELIABLE:
        notes.append(f"fewer than {MIN_RELIABLE} candidates in a study: the comparison is not reliable")
    if {sa["sampler"], sb["sampler"]} - set(UNBIASED_SAMPLERS):
        notes.append("a study that is not randomly sampled is compared: the difference may be the sampler's")
    if a.config.train.seed != b.config.train.seed:  # one seed's initialisation and batch order, shared by a study
        notes.append(
            f"the studies were trained with different seeds ({a.name}: {a.config.train.seed}, {b.name}: "
            f"{b.config.train.seed}): every member of a study shares its seed's initialisation and batch order, "
            f"which can move a whole population (docs/design_spaces.md measures it); compare populations "
            f"trained with one --seed"
        )
    noise = max((x for x in (a.seed_std, b.seed_std) if x is not None), default=None)
    if noise is not None and abs(result["best_difference"]) < 2 * noise:
        digits, unit = (2, "points") if score.unit == "%" else (4, score.unit)
        notes.append(
            f"the best-error difference ({result['best_difference']:+.{digits}f}) is within twice the proxy's "
            f"seed noise (std {noise:.{digits}f} {unit}): a population's best is partly its luckiest seed; "
            f"compare the confirmed bests (confirmed_best)"
        )
    result["warnings"] = notes
    return result
