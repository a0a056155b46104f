"""Reading a finished study for the design-space analysis (:mod:`.analysis`): its candidates, in
the study's score, and the counts of the trials left out.

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
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from .analysis_schema import ScoreInfo
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
    "stage_params",
    "score_info",
    "TOP1_ERROR",
    "CROSS_ENTROPY",
]

_CONFIRM_SUFFIX = ":confirm"  # confirmation runs live in a second study of the same storage


class AnalysisError(ValueError):
    """Input that cannot be analysed (not a study, no candidates, incomparable studies)."""


CROSS_ENTROPY = ScoreInfo(name="loss", label="validation cross-entropy", unit="nats", direction="minimize")
TOP1_ERROR = ScoreInfo(name="top1_error", label="top-1 error (100 - top-1)", unit="%", direction="minimize")


def score_info(config: StudyConfig) -> ScoreInfo:
    """What a study's candidates are analysed by: cross-entropy (nats) in a ``loss`` study, top-1
    error (percent) otherwise; lower is better in both."""
    return CROSS_ENTROPY if config.score == LOSS else TOP1_ERROR


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
