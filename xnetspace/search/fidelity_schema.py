"""``fidelity.json`` (``xnetspace fidelity``, :func:`~.fidelity_stats.analyze_runs`) as Pydantic
models: :class:`FidelityResult`, with a :class:`ScoreRow` per score, the noise ceiling
(:class:`~.summary.Ceiling`), the seed noise (:class:`FidelityNoise`), racing replayed
(:class:`RacingRow`) and what the study or table was (:class:`StudyInfo`, :class:`TableInfo`).

Every model forbids unknown fields, so ``FidelityResult.model_validate_json(text)`` checks a file
field by field. A statistic that is undefined (precision@5 of fewer than 5 specs, a rank
correlation of a constant) is NaN in the object and ``null`` in the file. Its JSON Schema is kept in
``docs/schemas/fidelity.schema.json`` (``python -m xnetspace.search.analysis_schema docs/schemas``
writes every schema; a test fails when one is stale).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..strict_json import to_json
from .summary import Ceiling, TauRho

__all__ = ["FidelityResult", "ScoreRow", "FidelityNoise", "RacingRow", "StudyInfo", "TableInfo"]

Number = float | None  # NaN in the object where undefined, null in the file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScoreRow(_Strict):
    """One cheap score against the target (+1: it ranks the specs as the target does)."""

    name: str = Field(description="e.g. loss@1, loss@2/epoch1, top1@1, tse@1, a zero-cost score, params, flops")
    label: str = Field(description="the score in words")
    kendall_tau: Number
    spearman_rho: Number
    ci95: TauRho = Field(description="paired percentile bootstrap over specs")
    n: int = Field(description="specs ranked")
    precision_at_5: Number = Field(description="of the 5 specs it ranks best, the fraction among the target's 5 best")
    precision_at_5_ci95: list[Number] = Field(min_length=2, max_length=2)
    fraction_of_ceiling: Number = Field(
        description="kendall_tau over the noise ceiling's (null: no tau or no positive ceiling)"
    )


class FidelityNoise(_Strict):
    """Seed noise and architecture spread of the final cross-entropy."""

    proxy_seed_std: Number = Field(description="pooled std over the proxy seeds of each spec")
    proxy_architecture_std: Number = Field(
        description="std of the specs' K-seed proxy means less what the seeds' noise adds to it"
    )
    confirm_seed_std: Number = Field(description="pooled std over the confirmation seeds of each spec")


class RacingRow(_Strict):
    """Racing over seeds replayed at one threshold (:func:`~.fidelity_stats.racing_replay`),
    averaged over random arrival orders."""

    z: float = Field(description="a spec stops after its first seeds when worse than the incumbent by z std errors")
    first_seeds: int = Field(description="seeds every spec gets")
    seeds: int = Field(description="seeds a spec that goes on gets")
    fraction_of_runs: float = Field(description="of the seed-runs, the fraction spent")
    kendall_tau: Number = Field(description="of the raced scores against the target")
    best_kept_all_seeds: float = Field(description="how often the spec with the best target got all its seeds")
    best_ranked_first: float = Field(description="how often it ranked first")


class StudyInfo(_Strict):
    """What a fidelity study was (``xnetspace fidelity SPACE``)."""

    space: str
    dataset: str
    n_specs: int
    seeds: int = Field(description="K: seeds per spec and recipe")
    proxy_epochs: int
    confirm_epochs: int
    split: Literal["test", "val"] = Field(description="the split the confirmation runs are scored on")


class TableInfo(_Strict):
    """What a table's fidelity was read from (``xnetspace fidelity --table``)."""

    table: str = Field(description="the table's folder")
    space: str
    dataset: str
    seeds: int
    proxy_epochs: int
    split: str = Field(description="the split the target is scored on")


class FidelityResult(_Strict):
    """``fidelity.json``: every score's rank fidelity beside the noise ceiling, the seed noise and
    racing replayed; the time spent and the study's definition where a study wrote it, the table's
    where a table did."""

    target: str = Field(description="what every score is ranked against")
    n_specs: int = Field(description="specs with both recipes' runs")
    seeds: int = Field(description="K: proxy seeds of every spec")
    ceiling: Ceiling = Field(description="half the confirmation seeds' means against the other half's")
    scores: list[ScoreRow]
    noise: FidelityNoise
    racing: list[RacingRow] = Field(description="one row per threshold z (none with fewer than 2 seeds)")
    seconds_this_run: float | None = Field(None, description="wall-clock seconds of this sitting (a study only)")
    seconds_trained: float | None = Field(None, description="seconds the recorded jobs trained (a study only)")
    config: StudyInfo | TableInfo | None = None

    def json_text(self) -> str:
        """fidelity.json's text (and ``xnetspace fidelity --json``'s): the fields set, 2-space
        indented, non-finite floats as null (:func:`~xnetspace.strict_json.to_json`)."""
        return to_json(self.model_dump(exclude_unset=True), indent=2)
