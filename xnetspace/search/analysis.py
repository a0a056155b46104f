"""Design-space analysis of finished studies: error EDFs, knob importances, per-knob marginals, and
the comparison of two design spaces through their populations of trained candidates.

The method is pycls's (Radosavovic et al. 2019, "On Network Design Spaces for Visual Recognition";
2020, "Designing Network Design Spaces", section 2): sample models from each space, train them with
one cheap recipe, and compare the *distributions* of their errors rather than the best point.

The analysis is one :class:`~.analysis_schema.AnalysisResult` (``analysis.json``), built here by
:func:`analyze` from the studies :mod:`.analysis_data` reads (its candidates and the score, in the
study's own unit), with the statistics of :mod:`.analysis_stats` (EDFs, complexity normalisation,
importances, marginals, the comparison of two studies: the method of each is described there).
:mod:`.analysis_report` puts it in words, :mod:`.analysis_plots` writes its file and figures, and
:mod:`.analysis_run` is ``xnetspace analyze`` from folders to files.

A TPE (or NSGA-II) study is a *biased* sample: the sampler concentrates on what looked good, so
its EDF describes the sampler as much as the space; a pruned study leaves its weakest candidates
out. Random-sampled, unpruned studies (``xnetspace search --population``) are the right input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .analysis_data import TOP1_ERROR, AnalysisError, Candidate, StudyData
from .analysis_schema import (
    EDF,
    AnalysisResult,
    Best,
    Comparison,
    Five,
    FlopRange,
    MarginalRow,
    Normalization,
    ScoreInfo,
    StudySummary,
)
from .analysis_stats import compare, complexity_weights, edf, edf_distance, importances, marginals

__all__ = [
    "analyze",
    "MIN_RELIABLE",
    "UNBIASED_SAMPLERS",
    # re-exported for refine.py, which reads studies and their statistics from here
    "AnalysisError",
    "Candidate",
    "StudyData",
    "complexity_weights",
    "edf",
    "edf_distance",
    "importances",
    "marginals",
]

MIN_RELIABLE = 10  # fewer candidates than this: the EDF is shown but called unreliable
UNBIASED_SAMPLERS = ("random", "qmc")
_NORMALIZATION_METHOD = (
    "equal-width FLOP bins over all studies; each study weighted uniform over the bins "
    "that hold candidates of every study (Radosavovic et al. 2019, section 4)"
)


def analyze(studies: Sequence[StudyData], force: bool = False, bins: int = 5, seed: int = 0) -> AnalysisResult:
    """Analyse one or more studies in their score: the object that ``analysis.json`` holds.

    Returns:
        ``score`` (``name``: ``loss`` or ``top1_error``, ``label``, ``unit``: nats or %,
        ``direction``: minimize, ``note``) says what every "error" below is. Per study (in the
        order given, :class:`~.analysis_schema.StudySummary`): ``name``, ``source``, ``space``,
        ``dataset``, ``image_size`` (proxy training, pixels), ``sampler``, ``pruner``, ``n``
        (candidates), ``rejected`` (samples rejected before training: over budget or invalid),
        ``sampled``, ``pruned``, ``failed``, ``duplicates``, ``error`` (min/median/mean/max),
        ``top1_error`` (the same of the top-1 error, None if no candidate recorded top-1),
        ``best``, ``edf``, ``edf_normalized`` and ``edf_top1_error`` (``error`` and ``fraction``
        lists), ``importance`` (fANOVA), ``importance_ped_anova``, ``single_valued``,
        ``marginals``, ``seed_std`` (in the score's unit) and ``confirmed_best`` (from the run's
        ``summary.json``; None without one) and ``warnings``. ``importance_method`` is fanova,
        ``normalization`` describes the complexity weights. ``comparison`` (first study against
        the second; see :func:`~.analysis_stats.compare`, plus ``ks_statistic_normalized``,
        ``a``, ``b``, ``verdict``, ``warnings``) is set for 2+ studies, and ``comparisons``
        lists every later study against the first when there are 3+ (unset fields are left out
        of ``analysis.json``: ``model_dump(exclude_unset=True)``).

    Raises:
        AnalysisError: no studies, a study without candidates, or studies of different datasets,
            proxy image sizes or scores without ``force`` (with ``force``, studies of different
            scores are compared by top-1 error, and ``score.note`` says so).
    """
    mismatch = _check_comparable(studies, force)
    studies, score = _one_score(studies)
    weights, normalization = _normalization(studies, bins)
    summaries = [_study_summary(s, w, seed, score) for s, w in zip(studies, weights)]
    comparisons = [
        _comparison(studies[0], studies[j], summaries[0], summaries[j], mismatch, seed, score)
        for j in range(1, len(studies))
    ]
    result = AnalysisResult(score=score, studies=summaries, importance_method="fanova", normalization=normalization)
    if comparisons:  # set only when made, so analysis.json holds them only then
        result.comparison = comparisons[0]
    if len(comparisons) > 1:
        result.comparisons = comparisons
    return result


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


def _normalization(studies: Sequence[StudyData], bins: int) -> tuple[list[np.ndarray], Normalization]:
    """Each study's complexity weights and ``analysis.json``'s ``normalization`` (all weights 0,
    and the reason, when no normalisation exists)."""
    try:
        weights, described = complexity_weights([[c.flops for c in s.candidates] for s in studies], bins)
    except AnalysisError as err:  # the plain analysis still stands
        zeros = [np.zeros(len(s.candidates)) for s in studies]
        return zeros, Normalization(method=_NORMALIZATION_METHOD, error=str(err))
    return weights, Normalization(method=_NORMALIZATION_METHOD, **described)


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


def _five(values: Sequence[float]) -> Five:
    return Five(
        min=float(np.min(values)),
        median=float(np.median(values)),
        mean=float(np.mean(values)),
        max=float(np.max(values)),
    )


def _edf(errors: Sequence[float], weights: np.ndarray | None = None) -> EDF:
    """The EDF of ``errors`` as ``analysis.json`` holds it (empty for no errors or zero weights)."""
    if not errors or (weights is not None and weights.sum() <= 0):
        return EDF(error=[], fraction=[])
    values, fractions = edf(errors, weights)
    return EDF(error=values, fraction=fractions)


def _study_summary(s: StudyData, weights: np.ndarray, seed: int, score: ScoreInfo) -> StudySummary:
    """One study's entry of ``analysis.json`` (``weights``: its candidates' complexity weights)."""
    errors = [c.error for c in s.candidates]
    top1_errors = [c.top1_error for c in s.candidates if c.top1_error is not None]
    sampler, pruner = s.settings.get("sampler", "unknown"), s.settings.get("pruner", "unknown")
    importance, single, importance_notes = importances(s.candidates, s.distributions, seed)
    return StudySummary(
        name=s.name,
        source=s.source,
        space=s.config.space.name,
        dataset=s.config.dataset,
        image_size=_size(s),
        sampler=sampler,
        pruner=pruner,
        n=len(errors),
        rejected=s.rejected,
        rejected_over_budget=s.rejected_over_budget,
        sampled=s.rejected + len(errors) + s.pruned + s.failed + s.duplicates,
        pruned=s.pruned,
        failed=s.failed,
        duplicates=s.duplicates,
        error=_five(errors),
        top1_error=_five(top1_errors) if top1_errors else None,
        flops=FlopRange(min=min(c.flops for c in s.candidates), max=max(c.flops for c in s.candidates)),
        best=_best(s.candidates),
        edf=_edf(errors),
        edf_normalized=_edf(errors, weights),
        edf_top1_error=_edf(top1_errors),
        importance=importance["fanova"],
        importance_ped_anova=importance["ped_anova"],
        single_valued=single,
        marginals={k: [MarginalRow(**row) for row in rows] for k, rows in marginals(s.candidates).items()},
        seed_std=s.seed_std,
        confirmed_best=s.confirmed_best,
        warnings=_study_notes(s, sampler, score) + importance_notes,
    )


def _best(candidates: Sequence[Candidate]) -> Best:
    """The candidate of the lowest error (the fewer FLOPs among equals)."""
    best = min(candidates, key=lambda c: (c.error, c.flops))
    return Best(trial=best.number, error=best.error, flops=best.flops, params=best.params, spec_digest=best.spec_digest)


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


def _comparison(
    a: StudyData, b: StudyData, sa: StudySummary, sb: StudySummary, mismatch: str, seed: int, score: ScoreInfo
) -> Comparison:
    """Study ``a`` against study ``b`` (``sa``, ``sb``: their summaries), with what weakens it."""
    notes = [f"compared despite {mismatch} (--force)"] if mismatch else []
    if min(sa.n, sb.n) < 2:
        return Comparison(
            a=a.name,
            b=b.name,
            ks_statistic=None,
            ks_pvalue=None,
            mean_difference_ci95=None,
            best_difference_ci95=None,
            warnings=notes + ["a comparison needs 2+ candidates in each study"],
        )
    compared = compare([c.error for c in a.candidates], [c.error for c in b.candidates], seed)
    na, nb = sa.edf_normalized, sb.edf_normalized
    low, high = compared["mean_difference_ci95"]
    if low > 0 or high < 0:
        better = b.name if low > 0 else a.name
        verdict = f"{better} has the lower mean error (the 95% CI of the difference excludes 0)"
    else:
        verdict = "no detectable difference in mean error (the 95% CI of the difference contains 0)"
    return Comparison(
        a=a.name,
        b=b.name,
        **compared,
        ks_statistic_normalized=(
            edf_distance((na.error, na.fraction), (nb.error, nb.fraction)) if na.error and nb.error else None
        ),
        verdict=verdict,
        warnings=notes + _comparison_notes(a, b, sa, sb, compared["best_difference"], score),
    )


def _comparison_notes(
    a: StudyData, b: StudyData, sa: StudySummary, sb: StudySummary, best_difference: float, score: ScoreInfo
) -> list[str]:
    """What weakens a comparison made: few candidates, a biased sampler, different seeds, a best
    difference within the seed noise."""
    notes = []
    if min(sa.n, sb.n) < MIN_RELIABLE:
        notes.append(f"fewer than {MIN_RELIABLE} candidates in a study: the comparison is not reliable")
    if {sa.sampler, sb.sampler} - set(UNBIASED_SAMPLERS):
        notes.append("a study that is not randomly sampled is compared: the difference may be the sampler's")
    if a.config.train.seed != b.config.train.seed:  # one seed's initialisation and batch order, shared by a study
        notes.append(
            f"the studies were trained with different seeds ({a.name}: {a.config.train.seed}, {b.name}: "
            f"{b.config.train.seed}): every member of a study shares its seed's initialisation and batch order, "
            f"which can move a whole population (docs/design_spaces.md measures it); compare populations "
            f"trained with one --seed"
        )
    noise = max((x for x in (a.seed_std, b.seed_std) if x is not None), default=None)
    if noise is not None and abs(best_difference) < 2 * noise:
        digits, unit = (2, "points") if score.unit == "%" else (4, score.unit)
        notes.append(
            f"the best-error difference ({best_difference:+.{digits}f}) is within twice the proxy's "
            f"seed noise (std {noise:.{digits}f} {unit}): a population's best is partly its luckiest seed; "
            f"compare the confirmed bests (confirmed_best)"
        )
    return notes
